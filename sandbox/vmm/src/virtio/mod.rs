//! Virtio devices over the virtio-mmio transport (virtio 1.x, "modern"
//! register layout), with split virtqueues from the rust-vmm `virtio-queue`
//! crate.
//!
//! Threads: the vCPU that touches a device's registers runs the transport
//! ([`mmio`]) under the device's lock; queue notifications come through
//! ioeventfds, and every device's own file descriptors (tap, unix sockets),
//! to one device thread ([`event_loop`]) that calls the device under the
//! same lock. Interrupts go to the guest through irqfds.
//!
//! Everything a device reads from a queue comes from the guest: chains are
//! walked with bounds-checked readers and writers, and a malformed chain
//! fails that request (or is dropped), never the VMM.

pub mod blk;
pub mod event_loop;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod vsock;

pub mod testing;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use serde::{Deserialize, Serialize};
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use self::event_loop::{DeviceThread, Registrar};
use self::mmio::MmioTransport;
use crate::acpi::MmioDevice;
use crate::bus::{Bus, BusError};
use crate::layout;
use crate::memory::GuestMemory;

/// `VIRTIO_F_VERSION_1`: the device speaks virtio 1.x.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device type ids.
pub mod device_type {
    /// virtio-net.
    pub const NET: u32 = 1;
    /// virtio-blk.
    pub const BLOCK: u32 = 2;
    /// virtio-rng (entropy).
    pub const RNG: u32 = 4;
    /// virtio-vsock.
    pub const VSOCK: u32 = 19;
}

/// Errors of the virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// More devices than interrupt pins.
    #[error("no interrupt left for virtio device {0}")]
    NoIrq(usize),
    /// An eventfd could not be created or registered.
    #[error("{what} for virtio device {index}")]
    Event {
        /// What was being done.
        what: &'static str,
        /// Which device.
        index: usize,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused an ioeventfd or irqfd.
    #[error("{what} for virtio device {index}")]
    Kvm {
        /// What was being done.
        what: &'static str,
        /// Which device.
        index: usize,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The MMIO window was taken.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A block device backing file.
    #[error("block device {0}")]
    Disk(std::path::PathBuf, #[source] std::io::Error),
    /// The tap device.
    #[error("tap device {0}")]
    Tap(String, #[source] std::io::Error),
    /// The vsock unix socket.
    #[error("vsock socket {0}")]
    VsockSocket(std::path::PathBuf, #[source] std::io::Error),
    /// The device thread.
    #[error("device thread")]
    Thread(#[source] std::io::Error),
}

/// Virtio devices of a VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfigs {
    /// virtio-vsock, its host side as unix sockets.
    #[serde(default)]
    pub vsock: Option<vsock::VsockConfig>,
    /// virtio-blk disks, in order (`/dev/vda`, `/dev/vdb`, ...).
    #[serde(default)]
    pub disks: Vec<blk::DiskConfig>,
    /// virtio-net over a tap device.
    #[serde(default)]
    pub net: Option<net::NetConfig>,
    /// virtio-rng.
    #[serde(default)]
    pub rng: bool,
}

/// What a device's interrupt line does: sets the "used buffer" bit of the
/// interrupt status register and signals the irqfd.
#[derive(Debug, Clone)]
pub struct Interrupt {
    status: Arc<AtomicU32>,
    irqfd: Arc<EventFd>,
}

/// Interrupt status bit: a queue has used buffers.
pub const INT_VRING: u32 = 1;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = 2;

impl Interrupt {
    /// An interrupt raising `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self { status: Arc::new(AtomicU32::new(0)), irqfd: Arc::new(irqfd) }
    }

    /// Tells the guest that a queue has used buffers.
    pub fn signal_used(&self) {
        self.status.fetch_or(INT_VRING, Ordering::SeqCst);
        // An eventfd write only fails when its counter would overflow,
        // and then an interrupt is pending anyway.
        let _ = self.irqfd.write(1);
    }

    /// The interrupt status register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledged `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The eventfd (for tests).
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

/// What an active device works with.
#[derive(Debug)]
pub struct DeviceContext {
    /// Guest memory.
    pub mem: GuestMemory,
    /// The queues the driver set up, in order.
    pub queues: Vec<Queue>,
    /// The device's interrupt.
    pub interrupt: Interrupt,
}

impl DeviceContext {
    /// Signals the guest if queue `index` needs it (event index aware).
    pub fn notify(&mut self, index: usize) {
        use virtio_queue::QueueT;
        let Some(queue) = self.queues.get_mut(index) else { return };
        // A queue whose rings are unreadable gets an interrupt anyway.
        if queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used();
        }
    }
}

/// A virtio device behind the MMIO transport.
pub trait VirtioDevice: Send {
    /// Its device type id.
    fn device_type(&self) -> u32;
    /// The largest size of each of its queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits it offers (including [`VIRTIO_F_VERSION_1`]).
    fn features(&self) -> u64;
    /// Reads its configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes its configuration space (ignored by default).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver is ready: start work, register own fds with `reg`.
    fn activate(&mut self, ctx: &mut DeviceContext, reg: &Registrar);
    /// The driver notified queue `index`.
    fn queue_event(&mut self, ctx: &mut DeviceContext, index: usize, reg: &Registrar);
    /// One of the device's own fds, registered with `token`, is ready.
    fn fd_event(&mut self, _ctx: &mut DeviceContext, _token: u32, _events: u32, _reg: &Registrar) {}
    /// The driver reset the device: drop connections and pending work.
    fn reset(&mut self, _reg: &Registrar) {}
}

/// A device on its transport, shared by the vCPUs and the device thread.
pub type SharedTransport = Arc<Mutex<MmioTransport>>;

/// Devices attached to a VM, before the device thread starts.
#[derive(Debug)]
pub struct Attached {
    /// How the DSDT describes them.
    pub acpi: Vec<MmioDevice>,
    transports: Vec<SharedTransport>,
    queue_events: Vec<Vec<EventFd>>,
    registrar: Registrar,
}

impl Attached {
    /// Starts the device thread.
    pub fn start(self) -> Result<DeviceThread, VirtioError> {
        event_loop::start(self.registrar, self.transports, self.queue_events)
    }
}

/// Builds the devices of `configs`, puts each on the MMIO bus at its window
/// with ioeventfds for its queues and an irqfd for its interrupt.
pub fn attach(vm: &VmFd, mem: &GuestMemory, bus: &mut Bus, configs: &DeviceConfigs) -> Result<Attached, VirtioError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(vsock) = &configs.vsock {
        devices.push(Box::new(vsock::Vsock::new(vsock)?));
    }
    for disk in &configs.disks {
        devices.push(Box::new(blk::Block::open(disk)?));
    }
    if let Some(net) = &configs.net {
        devices.push(Box::new(net::Net::open(net)?));
    }
    if configs.rng {
        devices.push(Box::new(rng::Rng::default()));
    }
    let registrar = Registrar::new().map_err(|source| VirtioError::Event { what: "epoll", index: 0, source })?;
    let mut attached = Attached { acpi: Vec::new(), transports: Vec::new(), queue_events: Vec::new(), registrar };
    for (index, device) in devices.into_iter().enumerate() {
        let irq = layout::virtio_irq(index).ok_or(VirtioError::NoIrq(index))?;
        let addr = layout::virtio_mmio_addr(index);
        let event = |what| move |source| VirtioError::Event { what, index, source };
        let kvm = |what| move |source| VirtioError::Kvm { what, index, source };
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(event("irqfd"))?;
        vm.register_irqfd(&irqfd, irq).map_err(kvm("register the irqfd"))?;
        let mut queue_events = Vec::new();
        for q in 0..device.queue_max_sizes().len() {
            let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(event("ioeventfd"))?;
            let notify = IoEventAddress::Mmio(addr + mmio::QUEUE_NOTIFY);
            vm.register_ioevent(&evt, &notify, q as u32).map_err(kvm("register a queue ioeventfd"))?;
            queue_events.push(evt);
        }
        let registrar = attached.registrar.for_device(index);
        let transport = Arc::new(Mutex::new(MmioTransport::new(device, mem.clone(), Interrupt::new(irqfd), registrar)));
        bus.insert(addr, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        attached.acpi.push(MmioDevice { addr, len: layout::VIRTIO_MMIO_SIZE as u32, irq });
        attached.transports.push(transport);
        attached.queue_events.push(queue_events);
    }
    Ok(attached)
}
