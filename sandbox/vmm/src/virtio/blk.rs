//! virtio-blk over a file: read, write, flush and get-id requests, with
//! every request checked against the disk's size. A read-only disk refuses
//! writes (and offers `VIRTIO_BLK_F_RO`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use virtio_queue::{QueueT, Reader, Writer};

use super::{DeviceContext, Registrar, VIRTIO_F_VERSION_1, VirtioDevice, VirtioError, device_type};

/// A disk to give the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// The image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    #[serde(default)]
    pub read_only: bool,
}

const SECTOR: u64 = 512;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Largest data part of one request (the guest's segment limits are far below).
const MAX_REQUEST: usize = 4 << 20;

/// A virtio-blk disk.
#[derive(Debug)]
pub struct Block {
    file: File,
    sectors: u64,
    read_only: bool,
    id: [u8; 20],
}

impl Block {
    /// Opens the disk image of `config`.
    pub fn open(config: &DiskConfig) -> Result<Self, VirtioError> {
        let err = |e| VirtioError::Disk(config.path.clone(), e);
        let file = OpenOptions::new().read(true).write(!config.read_only).open(&config.path).map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        Ok(Self::from_file(file, len / SECTOR, config.read_only))
    }

    /// A disk of `sectors` on an open `file`.
    pub fn from_file(file: File, sectors: u64, read_only: bool) -> Self {
        let mut id = [0u8; 20];
        let name = b"crius-disk";
        id[..name.len()].copy_from_slice(name);
        Self { file, sectors, read_only, id }
    }

    /// Serves one request; returns the bytes written into the guest's
    /// buffers (data and status).
    fn request(&mut self, reader: &mut Reader<'_>, writer: &mut Writer<'_>) -> u32 {
        // The status byte is the last writable byte of the chain.
        let Some(data_len) = writer.available_bytes().checked_sub(1) else { return 0 };
        let Ok(mut status) = writer.split_at(data_len) else { return 0 };
        let (code, written) = match self.serve(reader, writer, data_len) {
            Ok(written) => (S_OK, written),
            Err(code) => (code, 0),
        };
        match status.write_all(&[code]) {
            Ok(()) => written as u32 + 1,
            Err(_) => written as u32,
        }
    }

    fn serve(&mut self, reader: &mut Reader<'_>, writer: &mut Writer<'_>, data_len: usize) -> Result<usize, u8> {
        let mut header = [0u8; 16];
        reader.read_exact(&mut header).map_err(|_| S_IOERR)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let sector = u64::from_le_bytes(header[8..16].try_into().map_err(|_| S_IOERR)?);
        let within = |len: usize| {
            let end = sector.checked_mul(SECTOR).and_then(|start| start.checked_add(len as u64));
            end.filter(|end| *end <= self.sectors * SECTOR).map(|_| sector * SECTOR)
        };
        match kind {
            T_IN => {
                if data_len > MAX_REQUEST {
                    return Err(S_IOERR);
                }
                let offset = within(data_len).ok_or(S_IOERR)?;
                let mut buf = vec![0u8; data_len];
                self.file.read_exact_at(&mut buf, offset).map_err(|_| S_IOERR)?;
                writer.write_all(&buf).map_err(|_| S_IOERR)?;
                Ok(data_len)
            }
            T_OUT => {
                if self.read_only {
                    return Err(S_IOERR);
                }
                let len = reader.available_bytes();
                if len > MAX_REQUEST {
                    return Err(S_IOERR);
                }
                let offset = within(len).ok_or(S_IOERR)?;
                let mut buf = vec![0u8; len];
                reader.read_exact(&mut buf).map_err(|_| S_IOERR)?;
                self.file.write_all_at(&buf, offset).map_err(|_| S_IOERR)?;
                Ok(0)
            }
            T_FLUSH => self.file.sync_data().map(|()| 0).map_err(|_| S_IOERR),
            T_GET_ID => {
                let n = data_len.min(self.id.len());
                writer.write_all(&self.id[..n]).map_err(|_| S_IOERR)?;
                Ok(n)
            }
            _ => Err(S_UNSUPP),
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // Only `capacity` (sectors, u64 at offset 0) is offered.
        let config = self.sectors.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset).ok().and_then(|o| config.get(o + i)).copied().unwrap_or(0);
        }
    }

    fn activate(&mut self, _ctx: &mut DeviceContext, _reg: &Registrar) {}

    fn queue_event(&mut self, ctx: &mut DeviceContext, index: usize, _reg: &Registrar) {
        let mem = &ctx.mem;
        let Some(queue) = ctx.queues.get_mut(index) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match (Reader::new(mem, chain.clone()), Writer::new(mem, chain)) {
                (Ok(mut reader), Ok(mut writer)) => self.request(&mut reader, &mut writer),
                _ => 0,
            };
            used |= queue.add_used(mem, head, written).is_ok();
        }
        if used {
            ctx.notify(index);
        }
    }
}
