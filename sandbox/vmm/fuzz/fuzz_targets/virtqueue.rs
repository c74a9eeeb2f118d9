//! Guest-controlled virtqueue contents: the descriptor table, the available
//! ring and the buffers all come from the fuzzer. The block device serves
//! whatever chains come out (over /dev/zero), and every chain's readable
//! bytes are parsed as a vsock packet. Nothing may panic or touch memory
//! outside the guest's.
#![no_main]

use std::fs::OpenOptions;

use crius_vmm::virtio::blk::Block;
use crius_vmm::virtio::testing::{AVAIL_RING, DATA, DESC_TABLE, TestQueue};
use crius_vmm::virtio::vsock::packet;
use crius_vmm::virtio::{Registrar, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueT, Reader};

const QUEUE_SIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    let tq = TestQueue::new(1 << 20, QUEUE_SIZE);
    let (table, rest) = data.split_at(data.len().min(16 * usize::from(QUEUE_SIZE)));
    let (avail, buffers) = rest.split_at(rest.len().min(4 + 2 * usize::from(QUEUE_SIZE)));
    tq.put(DESC_TABLE, table);
    tq.put(AVAIL_RING, avail);
    tq.put(DATA, &buffers[..buffers.len().min(0x10000)]);

    let Ok(zero) = OpenOptions::new().read(true).write(true).open("/dev/zero") else { return };
    let mut block = Block::from_file(zero, 64, false);
    let Ok(reg) = Registrar::new() else { return };
    let reg = reg.for_device(0);
    let mut ctx = tq.context();
    block.activate(&mut ctx, &reg);
    block.queue_event(&mut ctx, 0, &reg);

    let mut queue = tq.queue();
    while let Some(chain) = queue.pop_descriptor_chain(&tq.mem) {
        if let Ok(mut reader) = Reader::<()>::new(&tq.mem, chain) {
            let mut bytes = vec![0u8; reader.available_bytes().min(1 << 16)];
            if std::io::Read::read_exact(&mut reader, &mut bytes).is_ok() {
                let _ = packet::parse(&bytes);
            }
        }
    }
});
