//! The 8250 UART on COM1 (vm-superio): the guest's console. Output goes to
//! a writer (the VM's console log); the interrupt is an eventfd KVM injects
//! as IRQ 4 (irqfd).

use std::io::Write;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::vcpu::Flow;

/// Raises the serial interrupt through an irqfd.
#[derive(Debug)]
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where console output goes.
pub type ConsoleOut = Box<dyn Write + Send>;

/// COM1.
pub struct SerialConsole {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole").finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A UART writing to `out`, interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleOut) -> Self {
        Self { uart: Serial::new(IrqTrigger(irq), out) }
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map(|o| self.uart.read(o)).unwrap_or(0xff);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Flow {
        if let (Ok(offset), Some(&value)) = (u8::try_from(offset), data.first()) {
            // A failed console write or interrupt loses output, not the VM.
            let _ = self.uart.write(offset, value);
            if offset == 0 {
                let _ = self.uart.writer_mut().flush();
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_console() {
        let out = Shared::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let mut serial = SerialConsole::new(irq.try_clone().expect("clone"), Box::new(out.clone()));
        serial.write(1, &[0x02]); // IER: THR empty interrupt
        for b in b"Linux version" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().expect("lock"), b"Linux version");
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
        assert!(irq.read().expect("interrupt raised") >= 1);
    }
}
