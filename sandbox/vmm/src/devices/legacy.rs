//! Power control through ports: the ACPI sleep control register (the
//! guest's `poweroff` writes S5 there) and the i8042 command port (0xfe is a
//! reset request, what `reboot=k` does).

use crate::acpi;
use crate::bus::BusDevice;
use crate::vcpu::Flow;

/// The hardware-reduced ACPI sleep control and status registers.
#[derive(Debug, Default)]
pub struct AcpiSleep;

impl BusDevice for AcpiSleep {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Flow {
        match (offset, data.first()) {
            (0, Some(&value)) if acpi::is_poweroff(value) => Flow::PowerOff,
            _ => Flow::Continue,
        }
    }
}

/// Just enough of an i8042 to take a reset request (command 0xfe).
#[derive(Debug, Default)]
pub struct I8042Reset;

impl BusDevice for I8042Reset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status: output buffer empty, input buffer empty.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Flow {
        if data.first() == Some(&0xfe) { Flow::Reset } else { Flow::Continue }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_powers_off_and_0xfe_resets() {
        assert_eq!(AcpiSleep.write(0, &[(5 << 2) | (1 << 5)]), Flow::PowerOff);
        assert_eq!(AcpiSleep.write(0, &[5 << 2]), Flow::Continue);
        assert_eq!(AcpiSleep.write(1, &[(5 << 2) | (1 << 5)]), Flow::Continue);
        assert_eq!(I8042Reset.write(0, &[0xfe]), Flow::Reset);
        assert_eq!(I8042Reset.write(0, &[0xd1]), Flow::Continue);
    }
}
