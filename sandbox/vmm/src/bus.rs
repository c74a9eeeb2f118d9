//! The port-I/O and MMIO buses: which emulated device answers an access
//! that exited to userspace. Accesses nobody claims read as all ones and
//! writes to them are dropped, as on a PC with nothing at that address.

use std::sync::{Arc, Mutex, PoisonError};

use crate::vcpu::{ExitHandler, Flow};

/// A device on a bus, addressed relative to the start of its range.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Flow;
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("bus range {base:#x}+{len:#x} overlaps another device")]
    Overlap {
        /// Start of the new range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// An empty range.
    #[error("bus range at {0:#x} is empty")]
    Empty(u64),
}

/// Address ranges and their devices, sorted by start.
#[derive(Default)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.ranges.iter().map(|(b, l, _)| (b, l))).finish()
    }
}

impl Bus {
    /// Adds `device` at `base..base+len`.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::Empty(base));
        }
        let end = base.checked_add(len).ok_or(BusError::Overlap { base, len })?;
        if self.ranges.iter().any(|(b, l, _)| base < b + l && *b < end) {
            return Err(BusError::Overlap { base, len });
        }
        let at = self.ranges.partition_point(|(b, _, _)| *b < base);
        self.ranges.insert(at, (base, len, device));
        Ok(())
    }

    /// The device whose range holds `addr`, and the offset in it.
    pub fn find(&self, addr: u64) -> Option<(&SharedDevice, u64)> {
        let at = self.ranges.partition_point(|(b, _, _)| *b <= addr).checked_sub(1)?;
        let (base, len, device) = &self.ranges[at];
        (addr - base < *len).then(|| (device, addr - base))
    }

    /// A read at `addr`: the device's answer, or all ones.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((device, offset)) => device.lock().unwrap_or_else(PoisonError::into_inner).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// A write at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> Flow {
        match self.find(addr) {
            Some((device, offset)) => device.lock().unwrap_or_else(PoisonError::into_inner).write(offset, data),
            None => Flow::Continue,
        }
    }
}

/// The port and MMIO buses of a VM, as the vCPUs' exit handler.
#[derive(Debug, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

impl ExitHandler for Buses {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        self.pio.read(u64::from(port), data);
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Flow {
        self.pio.write(u64::from(port), data)
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        self.mmio.read(addr, data);
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) -> Flow {
        self.mmio.write(addr, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, Vec<u8>)>, u8);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.1.wrapping_add(offset as u8));
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Flow {
            self.0.push((offset, data.to_vec()));
            if data == [0xde] { Flow::PowerOff } else { Flow::Continue }
        }
    }

    #[test]
    fn accesses_reach_the_device_at_their_offset() {
        let dev = Arc::new(Mutex::new(Recorder(Vec::new(), 0x10)));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, dev.clone()).expect("insert");
        let mut data = [0u8; 1];
        bus.read(0x3fd, &mut data);
        assert_eq!(data, [0x15]);
        assert_eq!(bus.write(0x3f8, b"x"), Flow::Continue);
        assert_eq!(bus.write(0x3f9, &[0xde]), Flow::PowerOff);
        assert_eq!(dev.lock().expect("lock").0, vec![(0, vec![b'x']), (1, vec![0xde])]);
    }

    #[test]
    fn unclaimed_addresses_read_all_ones_and_drop_writes() {
        let mut bus = Bus::default();
        bus.insert(0x100, 0x10, Arc::new(Mutex::new(Recorder(Vec::new(), 0)))).expect("insert");
        let mut data = [0u8; 4];
        bus.read(0x110, &mut data);
        assert_eq!(data, [0xff; 4]);
        bus.read(0xff, &mut data);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.write(0x0, &[1]), Flow::Continue);
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let mut bus = Bus::default();
        let dev = || Arc::new(Mutex::new(Recorder(Vec::new(), 0)));
        bus.insert(0x1000, 0x1000, dev()).expect("insert");
        bus.insert(0x3000, 0x1000, dev()).expect("insert");
        bus.insert(0x2000, 0x1000, dev()).expect("between");
        assert_eq!(bus.insert(0x2fff, 2, dev()), Err(BusError::Overlap { base: 0x2fff, len: 2 }));
        assert_eq!(bus.insert(0x500, 0, dev()), Err(BusError::Empty(0x500)));
        assert_eq!(bus.insert(u64::MAX, 2, dev()), Err(BusError::Overlap { base: u64::MAX, len: 2 }));
        assert!(bus.find(0x2800).is_some_and(|(_, off)| off == 0x800));
    }
}
