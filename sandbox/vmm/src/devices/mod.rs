//! Emulated platform devices: the 8250 serial console and the few legacy
//! ports a Linux guest uses to power off or reset.

pub mod legacy;
pub mod serial;
