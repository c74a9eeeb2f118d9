//! virtio-net over a tap device (no vhost-net here): frames the guest sends
//! go to the tap, frames read from the tap fill the guest's receive buffers.
//! No offloads are offered, so the virtio-net header is always plain.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use serde::{Deserialize, Serialize};
use virtio_queue::{QueueT, Reader, Writer};
use vmm_sys_util::epoll::EventSet;

use super::{DeviceContext, Registrar, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, device_type};

/// The network device's host side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap device (created if it does not exist).
    pub tap: String,
    /// The guest's MAC address, `aa:bb:cc:dd:ee:ff`; a fixed local one when absent.
    #[serde(default)]
    pub mac: Option<String>,
}

const F_MAC: u64 = 1 << 5;
/// `struct virtio_net_hdr_v1`.
const NET_HDR_LEN: usize = 12;
const RX: usize = 0;
const TX: usize = 1;
const TAP_TOKEN: u32 = 1;
/// Largest frame read from or written to the tap.
const MAX_FRAME: usize = 65562;
const DEFAULT_MAC: [u8; 6] = [0x06, 0xc1, 0x10, 0x5a, 0x00, 0x01];

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Opens (creating if needed) tap `name`, non-blocking, without packet info.
pub fn open_tap(name: &str) -> std::io::Result<File> {
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    const IFF_TAP: libc::c_short = 0x0002;
    const IFF_NO_PI: libc::c_short = 0x1000;
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(std::io::Error::new(ErrorKind::InvalidInput, "tap name must be 1 to 15 bytes"));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which lives across
    // the call; the fd is the tun device just opened.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut ifr) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file)
}

/// The network device.
#[derive(Debug)]
pub struct Net {
    tap: File,
    mac: [u8; 6],
    tap_readable: bool,
    /// A frame read from the tap that found no receive buffer yet.
    pending: Option<Vec<u8>>,
}

impl Net {
    /// Opens the tap of `config`.
    pub fn open(config: &NetConfig) -> Result<Self, VirtioError> {
        let tap = open_tap(&config.tap).map_err(|e| VirtioError::Tap(config.tap.clone(), e))?;
        let mac = match &config.mac {
            Some(text) => parse_mac(text).ok_or_else(|| {
                VirtioError::Tap(config.tap.clone(), std::io::Error::new(ErrorKind::InvalidInput, "bad MAC address"))
            })?,
            None => DEFAULT_MAC,
        };
        Ok(Self::with_tap(tap, mac))
    }

    /// A device over an open tap (or any non-blocking frame pipe).
    pub fn with_tap(tap: File, mac: [u8; 6]) -> Self {
        Self { tap, mac, tap_readable: true, pending: None }
    }

    fn transmit(&mut self, ctx: &mut DeviceContext) {
        let mem = &ctx.mem;
        let Some(queue) = ctx.queues.get_mut(TX) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            if let Ok(mut reader) = Reader::<()>::new(mem, chain) {
                let len = reader.available_bytes();
                if (NET_HDR_LEN..=NET_HDR_LEN + MAX_FRAME).contains(&len) {
                    let mut frame = vec![0u8; len];
                    if reader.read_exact(&mut frame).is_ok() {
                        // A full tap queue drops the frame, as a wire would.
                        let _ = self.tap.write(&frame[NET_HDR_LEN..]);
                    }
                }
            }
            used |= queue.add_used(mem, head, 0).is_ok();
        }
        if used {
            ctx.notify(TX);
        }
    }

    fn receive(&mut self, ctx: &mut DeviceContext) {
        let mem = &ctx.mem;
        let Some(queue) = ctx.queues.get_mut(RX) else { return };
        let mut used = false;
        loop {
            let frame = match self.pending.take() {
                Some(frame) => frame,
                None if !self.tap_readable => break,
                None => {
                    let mut buf = vec![0u8; MAX_FRAME];
                    match self.tap.read(&mut buf) {
                        Ok(n) => {
                            buf.truncate(n);
                            buf
                        }
                        Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                        Err(_) => {
                            self.tap_readable = false;
                            break;
                        }
                    }
                }
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                self.pending = Some(frame);
                break;
            };
            let head = chain.head_index();
            let mut header = [0u8; NET_HDR_LEN];
            header[10] = 1; // num_buffers
            let written = match Writer::<()>::new(mem, chain) {
                Ok(mut w) if w.available_bytes() >= NET_HDR_LEN + frame.len() => {
                    match w.write_all(&header).and_then(|()| w.write_all(&frame)) {
                        Ok(()) => (NET_HDR_LEN + frame.len()) as u32,
                        Err(_) => 0,
                    }
                }
                _ => 0, // too small a buffer: the frame is dropped
            };
            used |= queue.add_used(mem, head, written).is_ok();
        }
        if used {
            ctx.notify(RX);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_MAC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| self.mac.get(o + i)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, ctx: &mut DeviceContext, reg: &Registrar) {
        let events = EventSet::IN | EventSet::EDGE_TRIGGERED;
        if let Err(e) = reg.add(self.tap.as_raw_fd(), TAP_TOKEN, events) {
            tracing::warn!("virtio-net: cannot watch the tap: {e}");
        }
        self.receive(ctx);
    }

    fn queue_event(&mut self, ctx: &mut DeviceContext, index: usize, _reg: &Registrar) {
        if index == TX {
            self.transmit(ctx);
        }
        self.receive(ctx);
    }

    fn fd_event(&mut self, ctx: &mut DeviceContext, _token: u32, _events: u32, _reg: &Registrar) {
        self.tap_readable = true;
        self.receive(ctx);
    }

    fn reset(&mut self, reg: &Registrar) {
        reg.remove(self.tap.as_raw_fd());
        self.pending = None;
        self.tap_readable = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("06:c1:10:5a:00:02"), Some([6, 0xc1, 0x10, 0x5a, 0, 2]));
        assert_eq!(parse_mac("06:c1:10:5a:00"), None);
        assert_eq!(parse_mac("06:c1:10:5a:00:02:03"), None);
        assert_eq!(parse_mac("zz:c1:10:5a:00:02"), None);
    }
}
