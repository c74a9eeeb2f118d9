//! The virtio-mmio transport, version 2 register layout (virtio 1.x §4.2.2):
//! feature negotiation, queue set-up, device status, interrupt status and
//! acknowledge, configuration space. Queue notifications normally arrive as
//! ioeventfds; a notify write that still reaches here is handled the same.

use virtio_queue::{Queue, QueueT};

use super::{DeviceContext, Interrupt, Registrar, VIRTIO_F_VERSION_1, VirtioDevice};
use crate::bus::BusDevice;
use crate::memory::GuestMemory;
use crate::vcpu::Flow;

/// Register offsets.
pub const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const VENDOR_ID: u64 = 0x00c;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
/// Queue notify register (the ioeventfd address).
pub const QUEUE_NOTIFY: u64 = 0x050;
const INTERRUPT_STATUS: u64 = 0x060;
const INTERRUPT_ACK: u64 = 0x064;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG: u64 = 0x100;

/// Device status bits.
pub mod status {
    /// The guest noticed the device.
    pub const ACKNOWLEDGE: u32 = 1;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = 2;
    /// The driver is ready.
    pub const DRIVER_OK: u32 = 4;
    /// Feature negotiation is done.
    pub const FEATURES_OK: u32 = 8;
    /// The device needs a reset.
    pub const NEEDS_RESET: u32 = 64;
    /// The driver gave up.
    pub const FAILED: u32 = 128;
}

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VENDOR: u32 = 0x5355_4952; // "RIUS"

/// One device's MMIO window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Interrupt,
    registrar: Registrar,
    queues: Vec<Queue>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    active: Option<DeviceContext>,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// `device` behind a fresh transport.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemory, interrupt: Interrupt, registrar: Registrar) -> Self {
        let queues = Self::fresh_queues(&*device);
        Self {
            device,
            mem,
            interrupt,
            registrar,
            queues,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            active: None,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        // A queue's max size comes from the device and is a power of two.
        device.queue_max_sizes().iter().filter_map(|&max| Queue::new(max).ok()).collect()
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Whether the driver has started the device.
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// Queue `index` was notified (from the device thread's ioeventfd).
    pub fn queue_event(&mut self, index: usize) {
        if let Some(ctx) = self.active.as_mut() {
            self.device.queue_event(ctx, index, &self.registrar);
        }
    }

    /// A device fd is ready.
    pub fn fd_event(&mut self, token: u32, events: u32) {
        if let Some(ctx) = self.active.as_mut() {
            self.device.fd_event(ctx, token, events, &self.registrar);
        }
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            MAGIC => MAGIC_VALUE,
            VERSION => 2,
            DEVICE_ID => self.device.device_type(),
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, value: u32) {
        let setup = self.status & status::DRIVER_OK == 0;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = value,
            DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            DRIVER_FEATURES if setup => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32),
                _ => {}
            },
            QUEUE_SEL => self.queue_sel = value,
            QUEUE_NUM if setup => {
                if let Some(q) = self.selected() {
                    q.set_size(value as u16);
                }
            }
            QUEUE_READY if setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(value == 1);
                }
            }
            QUEUE_DESC_LOW | QUEUE_DESC_HIGH | QUEUE_DRIVER_LOW | QUEUE_DRIVER_HIGH | QUEUE_DEVICE_LOW
            | QUEUE_DEVICE_HIGH
                if setup =>
            {
                let (low, high) = if offset & 4 == 0 { (Some(value), None) } else { (None, Some(value)) };
                if let Some(q) = self.selected() {
                    match offset & !4 {
                        QUEUE_DESC_LOW => q.set_desc_table_address(low, high),
                        QUEUE_DRIVER_LOW => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            QUEUE_NOTIFY => self.queue_event(value as usize),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        self.status = value;
        if value & status::FEATURES_OK != 0 && old & status::FEATURES_OK == 0 {
            // Only what the device offered, and virtio 1.x is required.
            let offered = self.device.features();
            if self.driver_features & !offered != 0 || self.driver_features & VIRTIO_F_VERSION_1 == 0 {
                self.status &= !status::FEATURES_OK;
            }
        }
        if value & status::DRIVER_OK != 0 && old & status::DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let valid = self.queues.iter().all(|q| q.ready() && q.is_valid(&self.mem));
        if !valid || self.status & status::FEATURES_OK == 0 {
            self.status |= status::NEEDS_RESET;
            return;
        }
        let event_idx = self.driver_features & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = std::mem::take(&mut self.queues);
        for q in &mut queues {
            q.set_event_idx(event_idx);
        }
        let mut ctx = DeviceContext { mem: self.mem.clone(), queues, interrupt: self.interrupt.clone() };
        self.device.activate(&mut ctx, &self.registrar);
        self.active = Some(ctx);
    }

    fn reset(&mut self) {
        self.device.reset(&self.registrar);
        self.active = None;
        self.queues = Self::fresh_queues(&*self.device);
        self.status = 0;
        self.queue_sel = 0;
        self.driver_features = 0;
        self.interrupt.ack(u32::MAX);
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG {
            self.device.read_config(offset - CONFIG, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Flow {
        if offset >= CONFIG {
            self.device.write_config(offset - CONFIG, data);
        } else if let (Ok(bytes), 0) = (<[u8; 4]>::try_from(data), offset % 4) {
            self.write_reg(offset, u32::from_le_bytes(bytes));
        }
        Flow::Continue
    }
}
