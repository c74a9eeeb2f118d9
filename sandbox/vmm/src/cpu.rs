//! vCPU state for booting: CPUID, MSRs, the boot GDT and identity-mapped
//! page tables, and the registers for real mode or 64-bit long mode.

use kvm_bindings::{CpuId, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{BOOT_GDT, BOOT_IDT, PD, PDPT, PML4};
use crate::memory::GuestMemory;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// A vCPU ioctl failed.
    #[error("vcpu {op}")]
    Ioctl {
        /// What was being done.
        op: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Writing boot structures into guest memory failed.
    #[error("write {what} into guest memory")]
    Memory {
        /// Which structure.
        what: &'static str,
        /// The guest memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A building block of the MSR list was refused.
    #[error("build the MSR list")]
    MsrList,
}

fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuError {
    move |source| CpuError::Ioctl { op, source }
}

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// GDT selectors of the boot GDT (Linux's `__BOOT_CS` and `__BOOT_DS`).
pub const BOOT_CS: u16 = 0x10;
/// Data selector.
pub const BOOT_DS: u16 = 0x18;
/// Task register selector.
pub const BOOT_TSS: u16 = 0x20;

/// One GDT descriptor from its flags (access byte in bits 0-7, flags nibble
/// in bits 12-15 of `flags`), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let base = u64::from(base);
    let limit = u64::from(limit);
    let flags = u64::from(flags);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT: null, null, 64-bit code, data, TSS.
pub fn boot_gdt() -> [u64; 5] {
    [0, 0, gdt_entry(0xa09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x808b, 0, 0xfffff)]
}

/// The KVM segment a GDT descriptor describes, for `selector`.
pub fn segment(entry: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = bit(55);
    kvm_segment {
        base,
        limit: if g == 1 { ((limit << 12) | 0xfff) as u32 } else { limit as u32 },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: u8::from(bit(47) == 0),
        padding: 0,
    }
}

/// Writes the boot GDT, an empty IDT and page tables identity-mapping the
/// first GiB with 2 MiB pages.
pub fn write_boot_tables(mem: &GuestMemory) -> Result<(), CpuError> {
    let mem_err = |what| move |source| CpuError::Memory { what, source };
    for (i, entry) in boot_gdt().iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT + 8 * i as u64)).map_err(mem_err("the boot GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT)).map_err(mem_err("the boot IDT"))?;
    // Present | writable for the upper levels; | page size for 2 MiB leaves.
    mem.write_obj(PDPT | 0x3, GuestAddress(PML4)).map_err(mem_err("the PML4"))?;
    mem.write_obj(PD | 0x3, GuestAddress(PDPT)).map_err(mem_err("the PDPT"))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD + i * 8)).map_err(mem_err("the page directory"))?;
    }
    Ok(())
}

/// Special registers for 64-bit long mode with the boot GDT and page tables.
pub fn long_mode_sregs(mut sregs: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt();
    let code = segment(gdt[2], BOOT_CS);
    let data = segment(gdt[3], BOOT_DS);
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[4], BOOT_TSS);
    sregs.cr3 = PML4;
    sregs.cr4 |= CR4_PAE;
    sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// Special registers for real mode with code and data at segment `seg`.
pub fn real_mode_sregs(mut sregs: kvm_sregs, seg: u16) -> kvm_sregs {
    for s in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
        s.selector = seg;
        s.base = u64::from(seg) << 4;
    }
    sregs
}

/// Puts the vCPU in long mode at `rip` with RSI = `rsi` and a stack at `rsp`.
pub fn enter_long_mode(vcpu: &VcpuFd, rip: u64, rsp: u64, rsi: u64) -> Result<(), CpuError> {
    let sregs = vcpu.get_sregs().map_err(ioctl("get sregs"))?;
    vcpu.set_sregs(&long_mode_sregs(sregs)).map_err(ioctl("set sregs"))?;
    let regs = kvm_regs { rip, rsp, rbp: rsp, rsi, rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(ioctl("set regs"))?;
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(ioctl("set fpu"))
}

/// Puts the vCPU in real mode at `seg:ip`.
pub fn enter_real_mode(vcpu: &VcpuFd, seg: u16, ip: u16) -> Result<(), CpuError> {
    let sregs = vcpu.get_sregs().map_err(ioctl("get sregs"))?;
    vcpu.set_sregs(&real_mode_sregs(sregs, seg)).map_err(ioctl("set sregs"))?;
    let regs = kvm_regs { rip: u64::from(ip), rflags: 2, ..Default::default() };
    vcpu.set_regs(&regs).map_err(ioctl("set regs"))
}

/// Options for the CPUID a guest sees.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuidOptions {
    /// Hide CMPXCHG16B: PVM's instruction emulator spins on `lock
    /// cmpxchg16b` at CPL0, so a stock kernel hangs in SLUB with it.
    pub hide_cx16: bool,
    /// Offer the LAPIC's TSC-deadline timer mode (KVM emulates it when it
    /// has `KVM_CAP_TSC_DEADLINE_TIMER`, but leaves the CPUID bit to the
    /// VMM). Without it the guest calibrates the LAPIC timer at boot.
    pub tsc_deadline: bool,
}

/// Adjusts the host-supported CPUID for vCPU `index` of `count`: its APIC
/// id, the hypervisor bit, and what `options` hide.
pub fn patch_cpuid(cpuid: &mut CpuId, index: u8, count: u8, options: CpuidOptions) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << 31;
                if options.hide_cx16 {
                    entry.ecx &= !(1 << 13);
                }
                if options.tsc_deadline {
                    entry.ecx |= 1 << 24;
                }
                // HTT: the logical processor count in EBX is valid.
                if count > 1 {
                    entry.edx |= 1 << 28;
                }
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
}

/// Sets the vCPU's CPUID from the host-supported set.
pub fn set_cpuid(
    vcpu: &VcpuFd,
    supported: &CpuId,
    index: u8,
    count: u8,
    options: CpuidOptions,
) -> Result<(), CpuError> {
    let mut cpuid = supported.clone();
    patch_cpuid(&mut cpuid, index, count, options);
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("set cpuid"))
}

/// MSRs a 64-bit kernel expects at boot: SYSENTER/SYSCALL zeroed, fast
/// strings on, and MTRRs enabled with write-back as the default type (with
/// MTRRs off the guest treats all memory as uncached).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    const MSRS: [(u32, u64); 10] = [
        (0x174, 0),             // IA32_SYSENTER_CS
        (0x175, 0),             // IA32_SYSENTER_ESP
        (0x176, 0),             // IA32_SYSENTER_EIP
        (0xc000_0081, 0),       // STAR
        (0xc000_0082, 0),       // LSTAR
        (0xc000_0083, 0),       // CSTAR
        (0xc000_0084, 0),       // SYSCALL_MASK
        (0xc000_0102, 0),       // KERNEL_GS_BASE
        (0x1a0, 1),             // IA32_MISC_ENABLE: fast strings
        (0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    MSRS.iter().map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() }).collect()
}

/// Sets [`boot_msrs`]; returns how many KVM accepted (PVM refuses some).
pub fn set_boot_msrs(vcpu: &VcpuFd) -> Result<usize, CpuError> {
    let msrs = Msrs::from_entries(&boot_msrs()).map_err(|_| CpuError::MsrList)?;
    vcpu.set_msrs(&msrs).map_err(ioctl("set msrs"))
}

/// Local APIC: LINT0 as ExtINT (the PIC) and LINT1 as NMI, as on a PC.
pub fn set_lint(vcpu: &VcpuFd) -> Result<(), CpuError> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    const EXTINT: u32 = 0x7 << 8;
    const NMI: u32 = 0x4 << 8;
    let mut lapic = vcpu.get_lapic().map_err(ioctl("get lapic"))?;
    for (offset, mode) in [(LVT_LINT0, EXTINT), (LVT_LINT1, NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | mode;
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(ioctl("set lapic"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_the_segments_linux_expects() {
        let gdt = boot_gdt();
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        let cs = segment(gdt[2], BOOT_CS);
        assert_eq!((cs.type_, cs.present, cs.l, cs.db, cs.s, cs.g), (0xb, 1, 1, 0, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(gdt[3], BOOT_DS);
        assert_eq!((ds.type_, ds.db, ds.l), (3, 1, 0));
        let tss = segment(gdt[4], BOOT_TSS);
        assert_eq!((tss.type_, tss.s, tss.unusable), (0xb, 0, 0));
    }

    #[test]
    fn long_mode_turns_on_paging_pae_and_lma() {
        let s = long_mode_sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!(s.cr4 & CR4_PAE, CR4_PAE);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cr3, s.gdt.base, s.gdt.limit), (PML4, BOOT_GDT, 39));
    }

    #[test]
    fn page_tables_identity_map_the_first_gib() {
        let mem = crate::memory::create(2 << 20).expect("memory");
        write_boot_tables(&mem).expect("tables");
        let pml4: u64 = mem.read_obj(GuestAddress(PML4)).expect("read");
        assert_eq!(pml4, PDPT | 3);
        let last: u64 = mem.read_obj(GuestAddress(PD + 511 * 8)).expect("read");
        assert_eq!(last, (511 << 21) | 0x83);
    }

    #[test]
    fn cpuid_gets_the_apic_id_and_can_hide_cx16() {
        let entries = [
            kvm_bindings::kvm_cpuid_entry2 { function: 1, ecx: 1 << 13, ebx: 0xff00_1234, ..Default::default() },
            kvm_bindings::kvm_cpuid_entry2 { function: 0xb, edx: 7, ..Default::default() },
        ];
        let mut cpuid = CpuId::from_entries(&entries).expect("cpuid");
        patch_cpuid(&mut cpuid, 3, 4, CpuidOptions { hide_cx16: true, tsc_deadline: true });
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx, 0x0304_1234);
        assert_eq!(e[0].ecx & (1 << 13), 0);
        assert_ne!(e[0].ecx & (1 << 24), 0, "TSC deadline");
        assert_ne!(e[0].ecx & (1 << 31), 0);
        assert_eq!(e[1].edx, 3);
    }
}
