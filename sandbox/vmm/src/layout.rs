//! Where things live in guest physical memory and in the port and MMIO
//! address spaces. One table, so the boot code, the ACPI tables and the
//! e820 map agree.

/// Boot GDT (Linux boot protocol: `__BOOT_CS` = 0x10, `__BOOT_DS` = 0x18).
pub const BOOT_GDT: u64 = 0x500;
/// An empty IDT (the kernel installs its own before enabling interrupts).
pub const BOOT_IDT: u64 = 0x520;
/// The zero page (`struct boot_params`) handed to a 64-bit Linux entry in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// Boot stack top for the first vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 of the boot identity map; the PDPT and PD follow in the next pages.
pub const PML4: u64 = 0x9000;
/// Page directory pointer table of the boot identity map.
pub const PDPT: u64 = 0xa000;
/// Page directory of the boot identity map (1 GiB in 2 MiB pages).
pub const PD: u64 = 0xb000;
/// Kernel command line (NUL-terminated).
pub const CMDLINE: u64 = 0x20000;
/// Room for the command line.
pub const CMDLINE_MAX: usize = 4096;
/// End of the low RAM below the EBDA hole.
pub const LOW_RAM_END: u64 = 0x9fc00;
/// ACPI tables: RSDP first (where the kernel's legacy scan of
/// 0xe0000..0xfffff also finds it), then the other tables.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area (the BIOS ROM area, reserved in e820).
pub const ACPI_END: u64 = 0x10_0000;
/// Start of high memory: where a bzImage's protected-mode code goes.
pub const HIMEM_START: u64 = 0x10_0000;
/// Guest RAM stops here below 4 GiB; the rest up to 4 GiB is for devices.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit device hole.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's registers.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// The local APICs' registers.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// TSS area KVM needs on Intel (three pages below the IOAPIC).
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// COM1: 8250 UART ports and its IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// COM1's interrupt (ISA IRQ 4).
pub const COM1_IRQ: u32 = 4;
/// First GSI for virtio-mmio devices (ISA IRQs below are taken or legacy).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Last usable IOAPIC pin (24 pins).
pub const IRQ_MAX: u32 = 23;
/// ACPI sleep control register (hardware-reduced ACPI): the guest writes
/// SLP_TYP and SLP_EN here to power off.
pub const ACPI_SLEEP_CONTROL_PORT: u16 = 0x3c0;
/// ACPI sleep status register.
pub const ACPI_SLEEP_STATUS_PORT: u16 = 0x3c1;
/// The i8042 command port: 0xfe written here is a reset request.
pub const I8042_COMMAND_PORT: u16 = 0x64;

/// The GSI of the `index`th virtio-mmio device, if there are pins left.
pub fn virtio_irq(index: usize) -> Option<u32> {
    let irq = VIRTIO_IRQ_BASE.checked_add(u32::try_from(index).ok()?)?;
    (irq <= IRQ_MAX).then_some(irq)
}

/// The MMIO window of the `index`th virtio-mmio device.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + VIRTIO_MMIO_SIZE * index as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtio_irqs_stop_at_the_last_ioapic_pin() {
        assert_eq!(virtio_irq(0), Some(5));
        assert_eq!(virtio_irq(18), Some(23));
        assert_eq!(virtio_irq(19), None);
        assert_eq!(virtio_mmio_addr(2), 0xd000_2000);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let areas =
            [(BOOT_GDT, 0x20), (BOOT_IDT, 8), (ZERO_PAGE, 0x1000), (PML4, 0x1000), (PDPT, 0x1000), (PD, 0x1000)];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.0 + a.1 <= b.0 || b.0 + b.1 <= a.0, "{a:x?} overlaps {b:x?}");
            }
        }
        assert!(CMDLINE + CMDLINE_MAX as u64 <= LOW_RAM_END);
    }
}
