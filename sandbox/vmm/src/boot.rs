//! Linux boot: the kernel (ELF vmlinux, or bzImage through its 64-bit
//! entry, or the vmlinux taken out of a bzImage on the host), the command
//! line, the initramfs and the zero page (`boot_params`: setup header, e820
//! map, RSDP address). The vCPU then enters at the kernel's 64-bit entry in
//! long mode with RSI pointing at the zero page (Linux boot protocol,
//! "64-bit boot protocol").

use std::io::Cursor;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::kernel_image::{self, KernelFormat, KernelImageError};
use crate::layout::{CMDLINE, CMDLINE_MAX, HIMEM_START, MMIO_GAP_START, ZERO_PAGE};
use crate::memory::{E820, GuestMemory};

/// Errors loading a guest kernel.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A file could not be read.
    #[error("read {0}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The kernel image is not usable.
    #[error("kernel {0}")]
    Image(PathBuf, #[source] KernelImageError),
    /// linux-loader refused the kernel.
    #[error("load kernel {0}")]
    Load(PathBuf, #[source] linux_loader::loader::Error),
    /// The command line is too long or has a NUL.
    #[error("kernel command line: {0}")]
    Cmdline(&'static str),
    /// The initramfs does not fit.
    #[error("initramfs of {size} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooBig {
        /// Its size.
        size: u64,
        /// Where the kernel ends.
        kernel_end: u64,
        /// Highest address allowed.
        limit: u64,
    },
    /// Writing guest memory failed.
    #[error("write {0} into guest memory")]
    Memory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// How to boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, possibly compressed).
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// For an LZ4 bzImage: decompress its vmlinux on the host and boot that
    /// (other compressions boot the bzImage).
    pub extract_vmlinux: bool,
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    /// 64-bit entry point.
    pub rip: u64,
    /// The zero page, for RSI.
    pub zero_page: u64,
    /// What was loaded.
    pub format: KernelFormat,
    /// Whether a bzImage was booted through its extracted vmlinux.
    pub extracted: bool,
}

const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
const LOADER_UNDEFINED: u8 = 0xff;
/// `initrd_addr_max` a kernel without the field guarantees.
const DEFAULT_INITRD_MAX: u64 = 0x37ff_ffff;

/// Loads kernel, command line and initramfs into `mem` (of `mem_size`
/// bytes) and writes the zero page with `e820` and `rsdp`.
pub fn load(
    mem: &GuestMemory,
    mem_size: u64,
    spec: &BootSpec,
    e820: &[E820],
    rsdp: u64,
) -> Result<BootEntry, BootError> {
    let image = std::fs::read(&spec.kernel).map_err(|e| BootError::Read(spec.kernel.clone(), e))?;
    let image_err = |e| BootError::Image(spec.kernel.clone(), e);
    let load_err = |e| BootError::Load(spec.kernel.clone(), e);
    let format = kernel_image::format(&image).map_err(image_err)?;
    let mut params = boot_params::default();
    // The vmlinux inside an LZ4 bzImage, when asked for; any other
    // compression boots the bzImage itself.
    let extracted = match format {
        KernelFormat::BzImage if spec.extract_vmlinux => match kernel_image::extract_vmlinux(&image) {
            Ok(elf) => Some(elf),
            Err(KernelImageError::UnsupportedCompression(_)) => None,
            Err(e) => return Err(image_err(e)),
        },
        _ => None,
    };
    let (rip, kernel_end) = match (format, extracted.as_ref()) {
        (KernelFormat::BzImage, None) => {
            let result = BzImage::load(mem, None, &mut Cursor::new(&image), Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            if let Some(hdr) = result.setup_header {
                params.hdr = hdr;
            }
            (result.kernel_load.0 + 0x200, result.kernel_load.0 + result.kernel_end)
        }
        (_, elf) => {
            // A bzImage's setup header still describes the kernel (initrd limit, version).
            if format == KernelFormat::BzImage
                && let Some(hdr) = bzimage_header(&image)
            {
                params.hdr = hdr;
            }
            let elf = elf.unwrap_or(&image);
            let result =
                Elf::load(mem, None, &mut Cursor::new(elf), Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            (result.kernel_load.0, result.kernel_end)
        }
    };
    let extracted = extracted.is_some();
    write_cmdline(mem, &spec.cmdline)?;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDRS;
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = spec.cmdline.len() as u32;
    if let Some(initrd) = &spec.initrd {
        let max = match params.hdr.initrd_addr_max {
            0 => DEFAULT_INITRD_MAX,
            n => u64::from(n),
        };
        let (addr, size) = load_initrd(mem, initrd, mem_size.min(MMIO_GAP_START).min(max + 1), kernel_end)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        *slot = boot_e820_entry { addr: e.addr, size: e.size, r#type: e.kind };
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    write_zero_page(mem, &params)?;
    Ok(BootEntry { rip, zero_page: ZERO_PAGE, format, extracted })
}

/// The setup header of a bzImage, copied out of the file.
fn bzimage_header(image: &[u8]) -> Option<linux_loader::loader::bootparam::setup_header> {
    let mut hdr = linux_loader::loader::bootparam::setup_header::default();
    let size = size_of_val(&hdr);
    let bytes = image.get(0x1f1..0x1f1 + size)?;
    // SAFETY: `setup_header` is a packed C struct of integers (any bit
    // pattern is valid) and `bytes` has exactly its size.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), std::ptr::from_mut(&mut hdr).cast::<u8>(), size) };
    Some(hdr)
}

fn write_zero_page(mem: &GuestMemory, params: &boot_params) -> Result<(), BootError> {
    // SAFETY: `boot_params` is a packed C struct of integers and arrays of
    // them, so all of its bytes are initialised; the slice lives no longer
    // than the borrow of `params`.
    let bytes = unsafe { std::slice::from_raw_parts(std::ptr::from_ref(params).cast::<u8>(), size_of_val(params)) };
    mem.write_slice(bytes, GuestAddress(ZERO_PAGE)).map_err(|e| BootError::Memory("the zero page", e))
}

fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() >= CMDLINE_MAX {
        return Err(BootError::Cmdline("longer than 4095 bytes"));
    }
    if cmdline.contains('\0') {
        return Err(BootError::Cmdline("contains a NUL byte"));
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE)).map_err(|e| BootError::Memory("the command line", e))
}

/// Loads the initramfs page-aligned as high as possible below `limit`, above
/// `kernel_end`; returns its address and size.
fn load_initrd(mem: &GuestMemory, path: &Path, limit: u64, kernel_end: u64) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|e| BootError::Read(path.to_path_buf(), e))?;
    let size = data.len() as u64;
    let addr = limit.checked_sub(size).map(|a| a & !0xfff).filter(|a| *a >= kernel_end);
    let Some(addr) = addr else { return Err(BootError::InitrdTooBig { size, kernel_end, limit }) };
    mem.write_slice(&data, GuestAddress(addr)).map_err(|e| BootError::Memory("the initramfs", e))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_nul_terminated_and_bounded() {
        let mem = crate::memory::create(1 << 20).expect("memory");
        write_cmdline(&mem, "console=ttyS0 quiet").expect("write");
        let mut buf = [0u8; 20];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE)).expect("read");
        assert_eq!(&buf, b"console=ttyS0 quiet\0");
        assert!(write_cmdline(&mem, &"x".repeat(CMDLINE_MAX)).is_err());
        assert!(write_cmdline(&mem, "a\0b").is_err());
    }

    #[test]
    fn the_initramfs_goes_high_and_page_aligned_above_the_kernel() {
        let mem = crate::memory::create(8 << 20).expect("memory");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("initrd");
        std::fs::write(&path, vec![0x5a; 5000]).expect("write");
        let (addr, size) = load_initrd(&mem, &path, 8 << 20, 2 << 20).expect("load");
        assert_eq!((addr, size), (((8 << 20) - 5000) & !0xfff, 5000));
        let err = load_initrd(&mem, &path, 8 << 20, (8 << 20) - 100).expect_err("no room");
        assert!(matches!(err, BootError::InitrdTooBig { .. }), "{err}");
    }

    #[test]
    fn an_elf_kernel_loads_at_its_entry_with_a_zero_page() {
        let Some(kernel) = debian_kernel() else { return };
        let mem = crate::memory::create(256 << 20).expect("memory");
        let spec = BootSpec { kernel, initrd: None, cmdline: "console=ttyS0".into(), extract_vmlinux: true };
        let e820 = crate::memory::e820_map(256 << 20);
        let entry = load(&mem, 256 << 20, &spec, &e820, 0xe0000).expect("load");
        assert!(entry.extracted && entry.format == KernelFormat::BzImage);
        assert_eq!(entry.rip, 0x100_0000, "startup_64 at 16 MiB");
        let mut params = vec![0u8; 4096];
        mem.read_slice(&mut params, GuestAddress(ZERO_PAGE)).expect("read");
        assert_eq!(&params[0x202..0x206], b"HdrS");
        assert_eq!(params[0x1e8] as usize, e820.len());
        assert_eq!(u64::from_le_bytes(params[0x70..0x78].try_into().expect("8")), 0xe0000);
    }

    #[test]
    fn a_bzimage_enters_at_its_64_bit_entry() {
        let Some(kernel) = debian_kernel() else { return };
        let mem = crate::memory::create(256 << 20).expect("memory");
        let spec = BootSpec { kernel, initrd: None, cmdline: String::new(), extract_vmlinux: false };
        let entry = load(&mem, 256 << 20, &spec, &crate::memory::e820_map(256 << 20), 0).expect("load");
        assert_eq!((entry.rip, entry.extracted), (HIMEM_START + 0x200, false));
    }

    fn debian_kernel() -> Option<PathBuf> {
        std::fs::read_dir("/boot").ok()?.flatten().map(|e| e.path()).find(|p| {
            let name = p.to_string_lossy();
            name.contains("vmlinuz-") && name.ends_with("cloud-amd64")
        })
    }
}
