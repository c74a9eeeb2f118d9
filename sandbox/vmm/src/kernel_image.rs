//! Kernel image formats: telling a bzImage from an ELF vmlinux, and taking
//! the vmlinux out of a bzImage on the host (LZ4-compressed kernels, like
//! Debian's cloud kernel).
//!
//! Why extract: a bzImage decompresses itself in the guest. Under PVM every
//! instruction of guest kernel code goes through KVM's emulator, so the
//! decompressor alone would take minutes; handing the guest the ELF skips it.
//! Everything read from the image is bounds-checked: a malformed image is an
//! error, never a panic.

/// Errors reading a kernel image.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelImageError {
    /// Neither an ELF file nor a bzImage.
    #[error("not an ELF vmlinux or a bzImage (no ELF magic, no HdrS signature)")]
    UnknownFormat,
    /// The header points outside the file.
    #[error("bzImage payload at {offset:#x}+{len:#x} lies outside the {size}-byte image")]
    PayloadOutOfBounds {
        /// Payload offset in the file.
        offset: usize,
        /// Payload length.
        len: usize,
        /// File size.
        size: usize,
    },
    /// The payload is compressed with something this reader does not decode.
    #[error("bzImage payload is not LZ4 (magic {0:02x?}); boot the bzImage itself instead")]
    UnsupportedCompression([u8; 4]),
    /// The LZ4 stream is corrupt or truncated.
    #[error("LZ4 payload corrupt at offset {0:#x}")]
    Corrupt(usize),
    /// The decompressed kernel would exceed the limit.
    #[error("decompressed kernel larger than {0} bytes")]
    TooLarge(usize),
}

/// What a kernel file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An ELF vmlinux.
    Elf,
    /// A bzImage (x86 boot protocol 2.x).
    BzImage,
}

/// LZ4 legacy frame magic (as the kernel's `lz4 -l` writes it).
const LZ4_LEGACY_MAGIC: [u8; 4] = [0x02, 0x21, 0x4c, 0x18];
/// Largest block of the legacy format, decompressed.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// No kernel this VMM boots is larger than this, decompressed.
const MAX_VMLINUX: usize = 512 << 20;

/// The format of `image`.
pub fn format(image: &[u8]) -> Result<KernelFormat, KernelImageError> {
    if image.starts_with(b"\x7fELF") {
        Ok(KernelFormat::Elf)
    } else if image.get(0x202..0x206) == Some(b"HdrS") {
        Ok(KernelFormat::BzImage)
    } else {
        Err(KernelImageError::UnknownFormat)
    }
}

fn le32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// The compressed payload of a bzImage (`payload_offset`/`payload_length`
/// of the setup header, relative to the protected-mode code).
pub fn bzimage_payload(image: &[u8]) -> Result<&[u8], KernelImageError> {
    if format(image)? != KernelFormat::BzImage {
        return Err(KernelImageError::UnknownFormat);
    }
    let setup_sects = match image[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let pm_start = (setup_sects + 1) * 512;
    let bad = || KernelImageError::PayloadOutOfBounds { offset: 0, len: 0, size: image.len() };
    let offset = pm_start + le32(image, 0x248).ok_or_else(bad)? as usize;
    let len = le32(image, 0x24c).ok_or_else(bad)? as usize;
    offset.checked_add(len).and_then(|end| image.get(offset..end)).ok_or(KernelImageError::PayloadOutOfBounds {
        offset,
        len,
        size: image.len(),
    })
}

/// Decompresses an LZ4 legacy stream (the kernel's format: magic, then
/// blocks of `u32` compressed length + data, optionally a 4-byte size
/// trailer).
pub fn lz4_legacy(data: &[u8]) -> Result<Vec<u8>, KernelImageError> {
    let magic: [u8; 4] = data.get(..4).and_then(|m| m.try_into().ok()).unwrap_or_default();
    if magic != LZ4_LEGACY_MAGIC {
        return Err(KernelImageError::UnsupportedCompression(magic));
    }
    let mut out = Vec::new();
    let mut at = 4;
    while at < data.len() {
        // The kernel appends the decompressed size: 4 bytes left is the end.
        if data.len() - at <= 4 {
            break;
        }
        let len = le32(data, at).ok_or(KernelImageError::Corrupt(at))? as usize;
        if len.to_le_bytes()[..4] == LZ4_LEGACY_MAGIC {
            at += 4; // a concatenated stream starts again
            continue;
        }
        let block = data.get(at + 4..at + 4 + len).ok_or(KernelImageError::Corrupt(at))?;
        let start = out.len();
        if start + LZ4_LEGACY_BLOCK > MAX_VMLINUX {
            return Err(KernelImageError::TooLarge(MAX_VMLINUX));
        }
        out.resize(start + LZ4_LEGACY_BLOCK, 0);
        let n =
            lz4_flex::block::decompress_into(block, &mut out[start..]).map_err(|_| KernelImageError::Corrupt(at))?;
        out.truncate(start + n);
        at += 4 + len;
    }
    Ok(out)
}

/// The ELF vmlinux inside an LZ4-compressed bzImage.
pub fn extract_vmlinux(image: &[u8]) -> Result<Vec<u8>, KernelImageError> {
    let vmlinux = lz4_legacy(bzimage_payload(image)?)?;
    if format(&vmlinux) != Ok(KernelFormat::Elf) {
        return Err(KernelImageError::Corrupt(0));
    }
    Ok(vmlinux)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy(blocks: &[&[u8]], trailer: Option<u32>) -> Vec<u8> {
        let mut out = LZ4_LEGACY_MAGIC.to_vec();
        for block in blocks {
            let c = lz4_flex::block::compress(block);
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(&c);
        }
        if let Some(size) = trailer {
            out.extend_from_slice(&size.to_le_bytes());
        }
        out
    }

    fn bzimage(payload: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        image[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        image.extend_from_slice(&[0; 16]);
        image.extend_from_slice(payload);
        image
    }

    #[test]
    fn formats_are_told_apart() {
        assert_eq!(format(b"\x7fELF\x02\x01"), Ok(KernelFormat::Elf));
        assert_eq!(format(&bzimage(&[])), Ok(KernelFormat::BzImage));
        assert_eq!(format(b"MZ"), Err(KernelImageError::UnknownFormat));
    }

    #[test]
    fn legacy_lz4_blocks_with_the_size_trailer_decompress() {
        let a = b"\x7fELF".iter().chain([7u8; 5000].iter()).copied().collect::<Vec<_>>();
        let b = vec![9u8; 3000];
        let stream = legacy(&[&a, &b], Some(8004));
        let out = lz4_legacy(&stream).expect("decompress");
        assert_eq!(out.len(), 8004);
        assert_eq!(&out[..4], b"\x7fELF");
        assert_eq!((out[5003], out[5004]), (7, 9));
        assert_eq!(extract_vmlinux(&bzimage(&stream)).expect("extract").len(), 8004);
    }

    #[test]
    fn malformed_images_are_errors_not_panics() {
        let stream = legacy(&[&[1u8; 100]], None);
        assert!(matches!(lz4_legacy(&stream[..stream.len() - 3]), Err(KernelImageError::Corrupt(_))));
        assert!(matches!(lz4_legacy(b"\x1f\x8b\x08\x00"), Err(KernelImageError::UnsupportedCompression(_))));
        let mut image = bzimage(&stream);
        image[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(bzimage_payload(&image), Err(KernelImageError::PayloadOutOfBounds { .. })));
        let mut short = bzimage(&stream);
        short.truncate(0x240);
        assert!(bzimage_payload(&short).is_err());
        // A block length past the end.
        let mut bad = LZ4_LEGACY_MAGIC.to_vec();
        bad.extend_from_slice(&1000u32.to_le_bytes());
        bad.extend_from_slice(&[0; 10]);
        assert!(lz4_legacy(&bad).is_err());
        assert!(matches!(extract_vmlinux(&bzimage(&legacy(&[b"not elf"], None))), Err(KernelImageError::Corrupt(0))));
    }

    #[test]
    fn the_debian_cloud_kernel_extracts_to_an_elf_when_installed() {
        let Some(kernel) = std::fs::read_dir("/boot").ok().and_then(|d| {
            d.flatten()
                .map(|e| e.path())
                .find(|p| p.to_string_lossy().contains("vmlinuz-") && p.to_string_lossy().ends_with("cloud-amd64"))
        }) else {
            return; // Not a requirement of the unit tests: the boot tests check it.
        };
        let image = std::fs::read(&kernel).expect("read kernel");
        let vmlinux = extract_vmlinux(&image).expect("extract");
        assert!(vmlinux.len() > image.len(), "{} -> {}", image.len(), vmlinux.len());
    }
}
