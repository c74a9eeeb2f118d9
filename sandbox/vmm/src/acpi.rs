//! ACPI tables, the way a stock distribution kernel finds a micro-VM's
//! hardware without MP tables or command-line devices: RSDP → XSDT → FADT
//! (hardware-reduced ACPI, DSDT, sleep registers), MADT (one local APIC per
//! vCPU, the IOAPIC) and a DSDT declaring each virtio-mmio device as
//! `LNRO0005` with its MMIO window and interrupt, and `\_S5` so that the
//! guest powers off through the sleep control register.
//!
//! Built with the rust-vmm `acpi_tables` crate, written at
//! [`layout::ACPI_START`](crate::layout::ACPI_START) (the RSDP is also found
//! by the kernel's legacy scan of 0xe0000..0xfffff).

use acpi_tables::Aml;
use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, MADT, ProcessorLocalApic};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    ACPI_END, ACPI_SLEEP_CONTROL_PORT, ACPI_SLEEP_STATUS_PORT, ACPI_START, COM1_IRQ, COM1_PORT, IOAPIC_ADDR, LAPIC_ADDR,
};
use crate::memory::GuestMemory;

const OEM_ID: [u8; 6] = *b"CRIUS ";
const OEM_TABLE: [u8; 8] = *b"CRIUSVMM";

/// `SLP_TYP` of S5 (soft off) in `\_S5`; the guest writes it with `SLP_EN`.
pub const S5_SLEEP_TYPE: u8 = 5;
/// `SLP_EN` in the sleep control register.
pub const SLEEP_ENABLE: u8 = 1 << 5;

/// Errors writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The tables do not fit in the ACPI area.
    #[error("ACPI tables of {0} bytes do not fit below 1 MiB")]
    TooBig(usize),
    /// Writing guest memory failed.
    #[error("write ACPI tables into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// A virtio-mmio device as the DSDT declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Start of its register window.
    pub addr: u64,
    /// Size of the window.
    pub len: u32,
    /// Its GSI (IOAPIC pin).
    pub irq: u32,
}

/// The DSDT: `\_SB.COM1`, `\_SB.Vnnn` for each virtio-mmio device, and
/// `\_S5`.
///
/// COM1 is declared although its port and IRQ are the PC's: a
/// hardware-reduced ACPI platform has no legacy PIC, so Linux sets up no ISA
/// IRQ mappings and would program IOAPIC pin 4 level-triggered, active-low;
/// the edge the serial port raises would then never arrive.
pub fn dsdt(devices: &[MmioDevice]) -> Vec<u8> {
    let mut body = Vec::new();
    let com1_io = aml::IO::new(COM1_PORT, COM1_PORT, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &0u8);
    let com1_res = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_res]);
    let mut children: Vec<aml::Device<'_>> = Vec::new();
    let crs: Vec<(aml::Memory32Fixed, aml::Interrupt)> = devices
        .iter()
        .map(|d| {
            (aml::Memory32Fixed::new(true, d.addr as u32, d.len), aml::Interrupt::new(true, true, false, false, d.irq))
        })
        .collect();
    let templates: Vec<aml::ResourceTemplate<'_>> =
        crs.iter().map(|(mem, irq)| aml::ResourceTemplate::new(vec![mem, irq])).collect();
    let names: Vec<(aml::Name, aml::Name, aml::Name)> = templates
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                aml::Name::new("_HID".into(), &"LNRO0005"),
                aml::Name::new("_UID".into(), &(i as u32)),
                aml::Name::new("_CRS".into(), t),
            )
        })
        .collect();
    let paths: Vec<String> = (0..devices.len()).map(|i| format!("V{i:03X}")).collect();
    for ((hid, uid, crs), path) in names.iter().zip(&paths) {
        children.push(aml::Device::new(path.as_str().into(), vec![hid, uid, crs]));
    }
    let refs: Vec<&dyn Aml> =
        std::iter::once(&com1 as &dyn Aml).chain(children.iter().map(|d| d as &dyn Aml)).collect();
    aml::Scope::new("\\_SB_".into(), refs).to_aml_bytes(&mut body);
    let s5 = aml::Package::new(vec![&S5_SLEEP_TYPE, &0u8, &0u8, &0u8]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    let mut sdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE, 1);
    sdt.append_slice(&body);
    sdt.as_slice().to_vec()
}

/// The FADT: hardware-reduced ACPI, no VGA, no CMOS RTC, no i8042 (boot
/// architecture flags), the DSDT, and the sleep control and status
/// registers as I/O ports.
pub fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut builder = FADTBuilder::new(OEM_ID, OEM_TABLE, 1).dsdt_64(dsdt_addr).flag(Flags::HwReducedAcpi);
    builder.flags = (u32::from(builder.flags) | Flags::PwrButton as u32 | Flags::SlpButton as u32).into();
    // IAPC_BOOT_ARCH: bit 2 VGA not present, bit 4 MSI not supported, bit 5 CMOS RTC not present;
    // bit 1 (8042) stays clear: there is no keyboard controller.
    builder.iapc_boot_arch = ((1u16 << 2) | (1 << 4) | (1 << 5)).into();
    builder.sleep_control_reg =
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(ACPI_SLEEP_CONTROL_PORT));
    builder.sleep_status_reg =
        GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, u64::from(ACPI_SLEEP_STATUS_PORT));
    let mut bytes = Vec::new();
    builder.finalize().to_aml_bytes(&mut bytes);
    bytes
}

/// The MADT: local APICs 0..vcpus and the IOAPIC (GSI base 0).
pub fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(OEM_ID, OEM_TABLE, 1, LocalInterruptController::Address(LAPIC_ADDR));
    for i in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(i, i, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut bytes = Vec::new();
    madt.to_aml_bytes(&mut bytes);
    bytes
}

/// Writes every table into guest memory; returns the RSDP's address.
pub fn write(mem: &GuestMemory, vcpus: u8, devices: &[MmioDevice]) -> Result<u64, AcpiError> {
    let align = |x: u64| (x + 15) & !15;
    let rsdp_addr = ACPI_START;
    let mut next = align(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: Vec<u8>| {
        let addr = next;
        next = align(next + bytes.len() as u64);
        (addr, bytes)
    };
    let (dsdt_addr, dsdt) = place(dsdt(devices));
    let (fadt_addr, fadt) = place(fadt(dsdt_addr));
    let (madt_addr, madt) = place(madt(vcpus));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let (xsdt_addr, xsdt_bytes) = place(xsdt_bytes);
    if next > ACPI_END {
        return Err(AcpiError::TooBig((next - ACPI_START) as usize));
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    for (addr, bytes) in
        [(rsdp_addr, rsdp), (dsdt_addr, dsdt), (fadt_addr, fadt), (madt_addr, madt), (xsdt_addr, xsdt_bytes)]
    {
        mem.write_slice(&bytes, GuestAddress(addr)).map_err(AcpiError::Write)?;
    }
    Ok(rsdp_addr)
}

/// Whether a byte written to the sleep control register asks for S5.
pub fn is_poweroff(value: u8) -> bool {
    value & SLEEP_ENABLE != 0 && (value >> 2) & 7 == S5_SLEEP_TYPE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(table: &[u8]) -> bool {
        table.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn length(table: &[u8]) -> usize {
        u32::from_le_bytes(table[4..8].try_into().expect("4 bytes")) as usize
    }

    #[test]
    fn dsdt_declares_each_virtio_device_with_its_window_and_irq() {
        let devices = [
            MmioDevice { addr: 0xd000_0000, len: 0x1000, irq: 5 },
            MmioDevice { addr: 0xd000_1000, len: 0x1000, irq: 6 },
        ];
        let table = dsdt(&devices);
        assert_eq!(&table[..4], b"DSDT");
        assert_eq!(length(&table), table.len());
        assert!(checksum_ok(&table));
        let find = |needle: &[u8]| table.windows(needle.len()).filter(|w| *w == needle).count();
        assert_eq!(find(b"LNRO0005"), 2);
        assert_eq!(find(b"V000"), 1);
        assert_eq!(find(b"V001"), 1);
        assert_eq!(find(b"_S5_"), 1);
        assert_eq!(find(b"COM1"), 1);
        // COM1's interrupt: edge, active high, IRQ 4.
        assert_eq!(find(&[0x89, 6, 0, 0b11, 1, 4, 0, 0, 0]), 1);
        // Memory32Fixed: tag 0x86, length 9, read-write, base, length.
        let mut mem = vec![0x86, 9, 0, 1];
        mem.extend_from_slice(&0xd000_1000u32.to_le_bytes());
        mem.extend_from_slice(&0x1000u32.to_le_bytes());
        assert_eq!(find(&mem), 1);
        // Extended interrupt: tag 0x89, length 6, consumer + edge, one interrupt, GSI 6.
        assert_eq!(find(&[0x89, 6, 0, 0b11, 1, 6, 0, 0, 0]), 1);
    }

    #[test]
    fn fadt_is_hardware_reduced_with_sleep_registers() {
        let table = fadt(0xe0040);
        assert_eq!(&table[..4], b"FACP");
        assert_eq!(length(&table), table.len());
        assert!(checksum_ok(&table));
        let flags = u32::from_le_bytes(table[112..116].try_into().expect("4 bytes"));
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        let x_dsdt = u64::from_le_bytes(table[140..148].try_into().expect("8 bytes"));
        assert_eq!(x_dsdt, 0xe0040);
        // SLEEP_CONTROL_REG at offset 244: I/O space, 8 bits, the port.
        assert_eq!(table[244], 1);
        assert_eq!(u64::from_le_bytes(table[248..256].try_into().expect("8 bytes")), 0x3c0);
    }

    #[test]
    fn madt_has_a_local_apic_per_vcpu_and_the_ioapic() {
        let table = madt(3);
        assert_eq!(&table[..4], b"APIC");
        assert!(checksum_ok(&table));
        assert_eq!(table.len(), 44 + 3 * 8 + 12);
        assert_eq!(&table[44 + 16..44 + 20], &[0, 8, 2, 2], "third local APIC: uid 2, apic id 2");
        assert_eq!(table[44 + 24], 1, "IOAPIC entry");
    }

    #[test]
    fn tables_land_in_the_acpi_area_and_the_rsdp_points_at_the_xsdt() {
        let mem = crate::memory::create(2 << 20).expect("memory");
        let rsdp = write(&mem, 2, &[MmioDevice { addr: 0xd000_0000, len: 0x1000, irq: 5 }]).expect("write");
        let mut head = [0u8; 36];
        mem.read_slice(&mut head, GuestAddress(rsdp)).expect("read");
        assert_eq!(&head[..8], b"RSD PTR ");
        let xsdt = u64::from_le_bytes(head[24..32].try_into().expect("8 bytes"));
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(xsdt)).expect("read");
        assert_eq!(&sig, b"XSDT");
    }

    #[test]
    fn only_s5_with_slp_en_powers_off() {
        assert!(is_poweroff((5 << 2) | SLEEP_ENABLE));
        assert!(!is_poweroff(5 << 2));
        assert!(!is_poweroff((3 << 2) | SLEEP_ENABLE));
    }
}
