//! The device thread: one epoll over every queue's ioeventfd and every
//! device's own descriptors (tap, unix sockets), calling the device under
//! its transport's lock.
//!
//! An epoll event's data is `device index << 32 | token`; tokens from
//! [`QUEUE_TOKEN`] up are queue notifications, the ones below belong to the
//! device ([`Registrar::add`]).

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::{SharedTransport, VirtioError};

/// First token of queue notifications (queue index added).
pub const QUEUE_TOKEN: u32 = 0x8000_0000;
const STOP_DEVICE: u32 = u32::MAX;

/// Registers a device's descriptors with the device thread's epoll.
#[derive(Debug, Clone)]
pub struct Registrar {
    epoll: Arc<Epoll>,
    device: u32,
}

impl Registrar {
    /// A new epoll.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { epoll: Arc::new(Epoll::new()?), device: STOP_DEVICE })
    }

    /// The same epoll, for device `index`.
    pub fn for_device(&self, index: usize) -> Self {
        Self { epoll: Arc::clone(&self.epoll), device: index as u32 }
    }

    fn data(&self, token: u32) -> u64 {
        (u64::from(self.device) << 32) | u64::from(token)
    }

    /// Watches `fd` for `events`; readiness comes back as `token`.
    pub fn add(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, self.data(token)))
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: RawFd, token: u32, events: EventSet) -> std::io::Result<()> {
        self.epoll.ctl(ControlOperation::Modify, fd, EpollEvent::new(events, self.data(token)))
    }

    /// Stops watching `fd` (before it is closed).
    pub fn remove(&self, fd: RawFd) {
        // Removing an fd that is not watched is harmless.
        let _ = self.epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// The running device thread.
#[derive(Debug)]
pub struct DeviceThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl DeviceThread {
    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let _ = self.stop.write(1);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for DeviceThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts the device thread for `transports` and their queue eventfds.
pub fn start(
    registrar: Registrar,
    transports: Vec<SharedTransport>,
    queue_events: Vec<Vec<EventFd>>,
) -> Result<DeviceThread, VirtioError> {
    let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| VirtioError::Event {
        what: "stop eventfd",
        index: 0,
        source,
    })?;
    registrar.add(stop.as_raw_fd(), 0, EventSet::IN).map_err(VirtioError::Thread)?;
    for (index, events) in queue_events.iter().enumerate() {
        let reg = registrar.for_device(index);
        for (q, evt) in events.iter().enumerate() {
            reg.add(evt.as_raw_fd(), QUEUE_TOKEN + q as u32, EventSet::IN).map_err(VirtioError::Thread)?;
        }
    }
    let handle = std::thread::Builder::new()
        .name("virtio".into())
        .spawn(move || run(&registrar, &transports, &queue_events))
        .map_err(VirtioError::Thread)?;
    let stop_clone = stop.try_clone().map_err(VirtioError::Thread)?;
    drop(stop);
    Ok(DeviceThread { stop: stop_clone, handle: Some(handle) })
}

fn run(registrar: &Registrar, transports: &[SharedTransport], queue_events: &[Vec<EventFd>]) {
    let mut events = vec![EpollEvent::default(); 64];
    loop {
        let n = match registrar.epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("virtio device thread: epoll failed: {e}");
                return;
            }
        };
        for event in &events[..n] {
            let data = event.data();
            let (device, token) = ((data >> 32) as u32, data as u32);
            if device == STOP_DEVICE {
                return;
            }
            let Some(transport) = transports.get(device as usize) else { continue };
            if token >= QUEUE_TOKEN {
                let q = (token - QUEUE_TOKEN) as usize;
                if let Some(evt) = queue_events.get(device as usize).and_then(|e| e.get(q)) {
                    let _ = evt.read();
                }
                transport.lock().unwrap_or_else(PoisonError::into_inner).queue_event(q);
            } else {
                transport.lock().unwrap_or_else(PoisonError::into_inner).fd_event(token, event.events());
            }
        }
    }
}
