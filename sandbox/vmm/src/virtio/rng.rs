//! virtio-rng: fills each buffer the guest offers with bytes from the
//! host's `/dev/urandom`.

use std::fs::File;
use std::io::{Read, Write};

use virtio_queue::{QueueT, Writer};

use super::{DeviceContext, Registrar, VIRTIO_F_VERSION_1, VirtioDevice, device_type};

/// Most bytes handed out per request.
const MAX_REQUEST: usize = 64 << 10;

/// The entropy device.
#[derive(Debug, Default)]
pub struct Rng {
    source: Option<File>,
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        device_type::RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[256]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, _ctx: &mut DeviceContext, _reg: &Registrar) {
        self.source = File::open("/dev/urandom").ok();
    }

    fn queue_event(&mut self, ctx: &mut DeviceContext, index: usize, _reg: &Registrar) {
        let mem = &ctx.mem;
        let Some(queue) = ctx.queues.get_mut(index) else { return };
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let written = match (Writer::<()>::new(mem, chain), self.source.as_mut()) {
                (Ok(mut writer), Some(source)) => {
                    let mut buf = vec![0u8; writer.available_bytes().min(MAX_REQUEST)];
                    match source.read_exact(&mut buf).and_then(|()| writer.write_all(&buf)) {
                        Ok(()) => buf.len(),
                        Err(_) => 0,
                    }
                }
                _ => 0,
            };
            used |= queue.add_used(mem, head, written as u32).is_ok();
        }
        if used {
            ctx.notify(index);
        }
    }
}
