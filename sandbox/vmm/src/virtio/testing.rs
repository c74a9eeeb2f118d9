//! An in-memory split virtqueue the way a guest driver fills one: for the
//! device unit tests and the fuzz target, no KVM needed.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceContext, Interrupt};
use crate::memory::GuestMemory;

/// Where the test rings live.
pub const DESC_TABLE: u64 = 0x1000;
/// Available ring.
pub const AVAIL_RING: u64 = 0x3000;
/// Used ring.
pub const USED_RING: u64 = 0x4000;
/// Where test buffers may go.
pub const DATA: u64 = 0x10000;

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Whether the device writes it.
    pub write: bool,
}

/// A queue of `size` entries in `mem`, driven like a guest driver.
#[derive(Debug)]
pub struct TestQueue {
    /// The guest memory.
    pub mem: GuestMemory,
    base: u64,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    /// A queue in fresh memory of `mem_size` bytes.
    pub fn new(mem_size: u64, size: u16) -> Self {
        let mem = crate::memory::create(mem_size).expect("test memory");
        Self { mem, base: 0, size, next_desc: 0, avail_idx: 0 }
    }

    /// Another queue in the same memory, its rings `index` MiB up (the
    /// memory must reach that far).
    pub fn sibling(&self, index: u64) -> Self {
        Self { mem: self.mem.clone(), base: index << 20, size: self.size, next_desc: 0, avail_idx: 0 }
    }

    /// The device's view: a ready queue over these rings.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).expect("queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some((self.base + DESC_TABLE) as u32), Some(0));
        q.set_avail_ring_address(Some((self.base + AVAIL_RING) as u32), Some(0));
        q.set_used_ring_address(Some((self.base + USED_RING) as u32), Some(0));
        q.set_ready(true);
        q
    }

    /// A device context with this one queue.
    pub fn context(&self) -> DeviceContext {
        Self::context_of(&[self])
    }

    /// A device context with these queues, in order.
    pub fn context_of(queues: &[&TestQueue]) -> DeviceContext {
        let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        DeviceContext {
            mem: queues[0].mem.clone(),
            queues: queues.iter().map(|q| q.queue()).collect(),
            interrupt: Interrupt::new(irq),
        }
    }

    /// Writes descriptor `index`.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.write_desc_at(self.base + DESC_TABLE, index, addr, len, flags, next);
    }

    /// Writes descriptor `index` of a table at `table`.
    pub fn write_desc_at(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = table + 16 * u64::from(index);
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem.write_slice(&d, GuestAddress(at)).expect("descriptor");
    }

    /// Adds a chain of `bufs` and makes it available; returns its head.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % self.size;
            let last = i + 1 == bufs.len();
            let flags =
                if last { 0 } else { VRING_DESC_F_NEXT as u16 } | if b.write { VRING_DESC_F_WRITE as u16 } else { 0 };
            self.write_desc(index, b.addr, b.len, flags, (index + 1) % self.size);
        }
        self.next_desc = (head + bufs.len() as u16) % self.size;
        self.publish(head);
        head
    }

    /// Adds a chain whose buffers sit in an indirect table at `table`.
    pub fn add_indirect(&mut self, table: u64, bufs: &[Buf]) -> u16 {
        for (i, b) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags =
                if last { 0 } else { VRING_DESC_F_NEXT as u16 } | if b.write { VRING_DESC_F_WRITE as u16 } else { 0 };
            self.write_desc_at(table, i as u16, b.addr, b.len, flags, i as u16 + 1);
        }
        let head = self.next_desc;
        self.write_desc(head, table, 16 * bufs.len() as u32, VRING_DESC_F_INDIRECT as u16, 0);
        self.next_desc = (head + 1) % self.size;
        self.publish(head);
        head
    }

    /// Puts `head` in the available ring and bumps its index.
    pub fn publish(&mut self, head: u16) {
        let slot = self.base + AVAIL_RING + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).expect("avail ring");
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(self.base + AVAIL_RING + 2)).expect("avail idx");
    }

    /// Starts the rings at `idx` (to test index wrap-around); the device's
    /// queue must be told with `set_next_avail`/`set_next_used`.
    pub fn start_at(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem.write_obj(idx, GuestAddress(self.base + AVAIL_RING + 2)).expect("avail idx");
        self.mem.write_obj(idx, GuestAddress(self.base + USED_RING + 2)).expect("used idx");
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.base + USED_RING + 2)).expect("used idx")
    }

    /// Used element `n` (counting from 0, wrapping): (descriptor id, length).
    pub fn used(&self, n: u16) -> (u32, u32) {
        let at = self.base + USED_RING + 4 + 8 * u64::from(n % self.size);
        (self.mem.read_obj(GuestAddress(at)).expect("id"), self.mem.read_obj(GuestAddress(at + 4)).expect("len"))
    }

    /// Writes guest bytes.
    pub fn put(&self, addr: u64, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(addr)).expect("write");
    }

    /// Reads guest bytes.
    pub fn get(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, GuestAddress(addr)).expect("read");
        buf
    }
}
