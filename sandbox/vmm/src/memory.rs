//! Guest RAM: anonymous mappings (vm-memory) laid out around the 32-bit
//! device hole, registered with KVM as memory slots, and described to the
//! guest as an e820 map.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::layout::{ACPI_END, ACPI_START, HIMEM_START, LOW_RAM_END, MMIO_GAP_END, MMIO_GAP_START};

/// Guest memory as this crate uses it.
pub type GuestMemory = GuestMemoryMmap;

/// Errors creating or registering guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested size is zero, too large or not page aligned.
    #[error("guest memory of {0} bytes is not a positive multiple of 4 KiB below 1 TiB")]
    BadSize(u64),
    /// The mapping failed.
    #[error("map {0} bytes of guest memory")]
    Map(u64, #[source] vm_memory::mmap::FromRangesError),
    /// KVM refused a memory slot.
    #[error("register guest memory slot {0} with KVM")]
    Register(u32, #[source] kvm_ioctls::Error),
}

/// Ranges of guest RAM for `size` bytes: one below the device hole and,
/// past 3 GiB, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Result<Vec<(GuestAddress, usize)>, MemoryError> {
    if size == 0 || !size.is_multiple_of(4096) || size > (1 << 40) {
        return Err(MemoryError::BadSize(size));
    }
    let low = size.min(MMIO_GAP_START);
    let mut ranges = vec![(GuestAddress(0), low as usize)];
    if size > low {
        ranges.push((GuestAddress(MMIO_GAP_END), (size - low) as usize));
    }
    Ok(ranges)
}

/// Maps `size` bytes of guest RAM.
pub fn create(size: u64) -> Result<GuestMemory, MemoryError> {
    GuestMemoryMmap::from_ranges(&ram_ranges(size)?).map_err(|e| MemoryError::Map(size, e))
}

/// Registers every region of `mem` with the VM, one slot each.
pub fn register(vm: &VmFd, mem: &GuestMemory) -> Result<(), MemoryError> {
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let host = region.as_ptr() as u64;
        let region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host,
        };
        // SAFETY: the region is a live mapping of `memory_size` bytes owned
        // by `mem`, which the VM keeps alive for as long as the VM fd exists
        // (the `Vm` holds both and drops the VM fd first).
        unsafe { vm.set_user_memory_region(region) }.map_err(|e| MemoryError::Register(slot, e))?;
    }
    Ok(())
}

/// The host address ranges of guest RAM (to leave them out of the VMM's own
/// memory figures).
pub fn host_ranges(mem: &GuestMemory) -> Vec<(u64, u64)> {
    mem.iter().map(|r| (r.as_ptr() as u64, r.len())).collect()
}

/// Total guest RAM in bytes.
pub fn total(mem: &GuestMemory) -> u64 {
    mem.iter().map(GuestMemoryRegion::len).sum()
}

/// An e820 entry: address, size, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820 {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// 1 = RAM, 2 = reserved.
    pub kind: u32,
}

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map for guest RAM of `size` bytes: low RAM below the EBDA, the
/// ACPI/BIOS area reserved, then RAM from 1 MiB (split around the hole).
pub fn e820_map(size: u64) -> Vec<E820> {
    let mut map = vec![
        E820 { addr: 0, size: LOW_RAM_END, kind: E820_RAM },
        E820 { addr: ACPI_START, size: ACPI_END - ACPI_START, kind: E820_RESERVED },
    ];
    let low_end = size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(E820 { addr: HIMEM_START, size: low_end - HIMEM_START, kind: E820_RAM });
    }
    if size > low_end {
        map.push(E820 { addr: MMIO_GAP_END, size: size - low_end, kind: E820_RAM });
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_memory_is_one_range_and_large_memory_skips_the_hole() {
        assert_eq!(ram_ranges(256 << 20).expect("ok"), vec![(GuestAddress(0), 256 << 20)]);
        let big = ram_ranges(4 << 30).expect("ok");
        assert_eq!(big, vec![(GuestAddress(0), 3 << 30), (GuestAddress(4 << 30), 1 << 30)]);
        assert!(ram_ranges(0).is_err());
        assert!(ram_ranges(4097).is_err());
    }

    #[test]
    fn e820_reserves_the_acpi_area_and_covers_all_ram() {
        let map = e820_map(512 << 20);
        assert_eq!(map[1], E820 { addr: 0xe0000, size: 0x20000, kind: E820_RESERVED });
        let ram: u64 = map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum();
        assert_eq!(ram, LOW_RAM_END + (512 << 20) - HIMEM_START);
        let big = e820_map(5 << 30);
        assert_eq!(big.last().copied(), Some(E820 { addr: 4 << 30, size: 2 << 30, kind: E820_RAM }));
    }

    #[test]
    fn guest_memory_maps_and_reports_its_host_ranges() {
        let mem = create(2 << 20).expect("map");
        assert_eq!(total(&mem), 2 << 20);
        let ranges = host_ranges(&mem);
        assert_eq!(ranges.len(), 1);
        assert_eq!(ranges[0].1, 2 << 20);
    }
}
