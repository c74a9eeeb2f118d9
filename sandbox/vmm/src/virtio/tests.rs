//! Virtqueues and devices against in-memory guest memory.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use virtio_queue::{QueueT, Reader};
use vmm_sys_util::epoll::EventSet;

use super::blk::Block;
use super::mmio::{MmioTransport, status};
use super::rng::Rng;
use super::testing::{Buf, DATA, TestQueue};
use super::vsock::packet::{self, Header, op};
use super::vsock::{HOST_CID, Vsock, VsockConfig};
use super::*;
use crate::bus::BusDevice;

fn r(addr: u64, len: u32) -> Buf {
    Buf { addr, len, write: false }
}
fn w(addr: u64, len: u32) -> Buf {
    Buf { addr, len, write: true }
}

fn registrar() -> Registrar {
    Registrar::new().expect("epoll").for_device(0)
}

#[test]
fn a_chain_is_read_across_its_descriptors() {
    let mut tq = TestQueue::new(1 << 20, 16);
    tq.put(DATA, b"hello ");
    tq.put(DATA + 0x100, b"world");
    tq.add_chain(&[r(DATA, 6), r(DATA + 0x100, 5), w(DATA + 0x200, 8)]);
    let mut q = tq.queue();
    let chain = q.pop_descriptor_chain(&tq.mem).expect("a chain");
    assert_eq!(chain.clone().count(), 3);
    let mut text = String::new();
    Reader::<()>::new(&tq.mem, chain).expect("reader").read_to_string(&mut text).expect("read");
    assert_eq!(text, "hello world");
    assert!(q.pop_descriptor_chain(&tq.mem).is_none());
}

#[test]
fn indirect_descriptors_are_followed() {
    let mut tq = TestQueue::new(1 << 20, 16);
    tq.put(DATA, b"indirect");
    tq.add_indirect(0x8000, &[r(DATA, 4), r(DATA + 4, 4)]);
    let mut q = tq.queue();
    let chain = q.pop_descriptor_chain(&tq.mem).expect("a chain");
    let mut text = String::new();
    Reader::<()>::new(&tq.mem, chain).expect("reader").read_to_string(&mut text).expect("read");
    assert_eq!(text, "indirect");
}

#[test]
fn ring_indexes_wrap_around_u16() {
    let mut tq = TestQueue::new(1 << 20, 4);
    tq.start_at(u16::MAX - 1);
    let mut ctx = tq.context();
    ctx.queues[0].set_next_avail(u16::MAX - 1);
    ctx.queues[0].set_next_used(u16::MAX - 1);
    let mut rng = Rng::default();
    rng.activate(&mut ctx, &registrar());
    for i in 0..6u64 {
        tq.add_chain(&[w(DATA + 0x100 * i, 32)]);
        rng.queue_event(&mut ctx, 0, &registrar());
    }
    assert_eq!(tq.used_idx(), 4, "65534 + 6 wraps to 4");
    for n in [u16::MAX - 1, u16::MAX, 0, 1, 2, 3] {
        assert_eq!(tq.used(n).1, 32, "used element {n}");
    }
    assert!(tq.get(DATA + 0x500, 32).iter().any(|b| *b != 0), "random bytes written");
}

#[test]
fn out_of_bounds_and_malformed_chains_are_refused_without_panic() {
    let mut tq = TestQueue::new(1 << 20, 8);
    // A buffer beyond guest memory.
    tq.add_chain(&[r(0xffff_0000, 16), w(DATA, 1)]);
    // A descriptor whose next index is outside the table.
    tq.write_desc(2, DATA, 16, 1, 200);
    tq.publish(2);
    // A loop: 3 -> 4 -> 3.
    tq.write_desc(3, DATA, 16, 1, 4);
    tq.write_desc(4, DATA, 16, 1, 3);
    tq.publish(3);
    // An indirect table pointing outside memory, and one of bad length.
    tq.write_desc(5, 0xffff_f000, 32, 4, 0);
    tq.publish(5);
    tq.write_desc(6, 0x8000, 7, 4, 0);
    tq.publish(6);
    // A head index past the queue size.
    tq.publish(9);
    let mut ctx = tq.context();
    let mut block = Block::from_file(tempfile::tempfile().expect("file"), 8, false);
    block.activate(&mut ctx, &registrar());
    block.queue_event(&mut ctx, 0, &registrar());
    // Whatever the queue made of them, every buffer the device touched is
    // inside guest memory and nothing panicked; the valid-looking ones are
    // returned with nothing written.
    for n in 0..tq.used_idx() {
        assert_eq!(tq.used(n).1, 0, "used element {n}");
    }
    // An avail index more than a queue size ahead is refused as a whole.
    let mut tq = TestQueue::new(1 << 20, 4);
    tq.start_at(0);
    tq.put(testing::AVAIL_RING + 2, &100u16.to_le_bytes());
    let mut q = tq.queue();
    assert!(q.pop_descriptor_chain(&tq.mem).is_none());
}

fn blk_request(tq: &mut TestQueue, kind: u32, sector: u64, data: Buf) -> u16 {
    let mut header = [0u8; 16];
    header[..4].copy_from_slice(&kind.to_le_bytes());
    header[8..].copy_from_slice(&sector.to_le_bytes());
    tq.put(0x9000, &header);
    tq.add_chain(&[r(0x9000, 16), data, w(0x9100, 1)])
}

#[test]
fn block_reads_writes_and_refuses_out_of_range_sectors() {
    let mut file = tempfile::tempfile().expect("file");
    file.write_all(&[0xab; 4096]).expect("write");
    let mut tq = TestQueue::new(1 << 20, 16);
    let mut ctx = tq.context();
    let mut block = Block::from_file(file.try_clone().expect("clone"), 8, false);
    let reg = registrar();
    // Read sector 1.
    blk_request(&mut tq, 0, 1, w(DATA, 512));
    block.queue_event(&mut ctx, 0, &reg);
    assert_eq!(tq.get(DATA, 512), vec![0xab; 512]);
    assert_eq!(tq.get(0x9100, 1), [0], "status OK");
    assert_eq!(tq.used(0).1, 513);
    // Write sector 7 (the last one).
    tq.put(DATA, &[0x11; 512]);
    blk_request(&mut tq, 1, 7, r(DATA, 512));
    block.queue_event(&mut ctx, 0, &reg);
    assert_eq!(tq.get(0x9100, 1), [0]);
    let mut back = vec![0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 7 * 512).expect("read back");
    assert_eq!(back, vec![0x11; 512]);
    // Sector 8 is past the end; an unknown type is unsupported.
    blk_request(&mut tq, 0, 8, w(DATA, 512));
    block.queue_event(&mut ctx, 0, &reg);
    assert_eq!(tq.get(0x9100, 1), [1], "IOERR");
    blk_request(&mut tq, 99, 0, w(DATA, 512));
    block.queue_event(&mut ctx, 0, &reg);
    assert_eq!(tq.get(0x9100, 1), [2], "UNSUPP");
    // A read-only disk refuses writes.
    let mut ro = Block::from_file(file, 8, true);
    assert_ne!(ro.features() & (1 << 5), 0);
    blk_request(&mut tq, 1, 0, r(DATA, 512));
    ro.queue_event(&mut ctx, 0, &reg);
    assert_eq!(tq.get(0x9100, 1), [1]);
    let mut capacity = [0u8; 8];
    ro.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 8);
}

fn mmio_write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

fn mmio_read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

#[test]
fn the_mmio_transport_negotiates_and_activates_the_device() {
    let tq = TestQueue::new(1 << 20, 16);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(Box::new(Rng::default()), tq.mem.clone(), Interrupt::new(irq), registrar());
    assert_eq!(mmio_read(&mut t, 0), 0x7472_6976);
    assert_eq!(mmio_read(&mut t, 4), 2);
    assert_eq!(mmio_read(&mut t, 8), device_type::RNG);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    mmio_write(&mut t, 0x14, 1);
    assert_eq!(mmio_read(&mut t, 0x10), 1, "VERSION_1 offered");
    // Asking for a feature the device does not offer fails FEATURES_OK.
    mmio_write(&mut t, 0x24, 0);
    mmio_write(&mut t, 0x20, 1 << 3);
    mmio_write(&mut t, 0x24, 1);
    mmio_write(&mut t, 0x20, 1);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_eq!(mmio_read(&mut t, 0x70) & status::FEATURES_OK, 0);
    mmio_write(&mut t, 0x70, 0);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    mmio_write(&mut t, 0x24, 1);
    mmio_write(&mut t, 0x20, 1);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    assert_ne!(mmio_read(&mut t, 0x70) & status::FEATURES_OK, 0);
    mmio_write(&mut t, 0x30, 0);
    assert_eq!(mmio_read(&mut t, 0x34), 256);
    mmio_write(&mut t, 0x38, 16);
    for (offset, addr) in [(0x80, 0x1000u32), (0x90, 0x3000), (0xa0, 0x4000)] {
        mmio_write(&mut t, offset, addr);
        mmio_write(&mut t, offset + 4, 0);
    }
    mmio_write(&mut t, 0x44, 1);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
    assert!(t.is_active());
    assert_eq!(mmio_read(&mut t, 0x70) & status::NEEDS_RESET, 0);
    mmio_write(&mut t, 0x70, 0);
    assert!(!t.is_active());
}

#[test]
fn activating_with_an_unready_queue_asks_for_a_reset() {
    let tq = TestQueue::new(1 << 20, 16);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut t = MmioTransport::new(Box::new(Rng::default()), tq.mem.clone(), Interrupt::new(irq), registrar());
    mmio_write(&mut t, 0x24, 1);
    mmio_write(&mut t, 0x20, 1);
    mmio_write(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK);
    assert!(!t.is_active());
    assert_ne!(mmio_read(&mut t, 0x70) & status::NEEDS_RESET, 0);
}

/// Sends one vsock packet from the "guest" on the tx queue (queue 1).
fn guest_sends(tq: &mut TestQueue, vsock: &mut Vsock, ctx: &mut DeviceContext, header: Header, payload: &[u8]) {
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    tq.put(0xa000, &bytes);
    tq.add_chain(&[r(0xa000, bytes.len() as u32)]);
    vsock.queue_event(ctx, 1, &registrar());
}

/// Offers an rx buffer and returns the packet the device put there, if any.
fn guest_receives(tq: &mut TestQueue, vsock: &mut Vsock, ctx: &mut DeviceContext) -> Option<(Header, Vec<u8>)> {
    let before = tq.used_idx();
    tq.add_chain(&[w(0xc000, 4096)]);
    vsock.queue_event(ctx, 0, &registrar());
    if tq.used_idx() == before {
        return None;
    }
    let len = tq.used(before).1 as usize;
    let bytes = tq.get(0xc000, len);
    let (h, p) = packet::parse(&bytes).expect("valid packet");
    Some((h, p.to_vec()))
}

fn vsock_queues() -> (TestQueue, TestQueue, TestQueue) {
    let rx = TestQueue::new(4 << 20, 64);
    let (tx, ev) = (rx.sibling(1), rx.sibling(2));
    (rx, tx, ev)
}

#[test]
fn vsock_guest_connects_to_a_host_unix_socket_and_data_flows_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let host = UnixListener::bind(dir.path().join("v.sock_5000")).expect("listen");
    let mut vsock = Vsock::new(&VsockConfig { guest_cid: 3, uds_path: uds }).expect("vsock");
    let (mut rx, mut tq, ev) = vsock_queues();
    let mut ctx = TestQueue::context_of(&[&rx, &tq, &ev]);
    vsock.activate(&mut ctx, &registrar());
    let base = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 777,
        dst_port: 5000,
        kind: 1,
        buf_alloc: 65536,
        ..Default::default()
    };
    guest_sends(&mut tq, &mut vsock, &mut ctx, Header { op: op::REQUEST, ..base }, &[]);
    let (resp, _) = guest_receives(&mut rx, &mut vsock, &mut ctx).expect("response");
    assert_eq!((resp.op, resp.src_port, resp.dst_port, resp.dst_cid), (op::RESPONSE, 5000, 777, 3));
    let (mut conn, _) = host.accept().expect("accepted");
    guest_sends(&mut tq, &mut vsock, &mut ctx, Header { op: op::RW, len: 5, ..base }, b"hello");
    let mut buf = [0u8; 5];
    conn.read_exact(&mut buf).expect("host reads");
    assert_eq!(&buf, b"hello");
    conn.write_all(b"world").expect("host writes");
    vsock.fd_event(&mut ctx, 16, EventSet::IN.bits(), &registrar());
    let (data, payload) = guest_receives(&mut rx, &mut vsock, &mut ctx).expect("data");
    assert_eq!((data.op, payload.as_slice()), (op::RW, &b"world"[..]));
    // The host closes: the guest hears a shutdown.
    drop(conn);
    vsock.fd_event(&mut ctx, 16, EventSet::IN.bits(), &registrar());
    let (shut, _) = guest_receives(&mut rx, &mut vsock, &mut ctx).expect("shutdown");
    assert_eq!((shut.op, shut.flags), (op::SHUTDOWN, packet::SHUTDOWN_BOTH));
}

#[test]
fn vsock_host_connect_line_reaches_the_guest_and_bad_packets_are_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("v.sock");
    let mut vsock = Vsock::new(&VsockConfig { guest_cid: 3, uds_path: uds.clone() }).expect("vsock");
    let (mut rx, mut tq, ev) = vsock_queues();
    let mut ctx = TestQueue::context_of(&[&rx, &tq, &ev]);
    vsock.activate(&mut ctx, &registrar());
    let mut client = UnixStream::connect(&uds).expect("connect");
    client.write_all(b"CONNECT 1024\n").expect("write");
    vsock.fd_event(&mut ctx, 1, EventSet::IN.bits(), &registrar());
    vsock.fd_event(&mut ctx, 16, EventSet::IN.bits(), &registrar());
    let (req, _) = guest_receives(&mut rx, &mut vsock, &mut ctx).expect("request");
    assert_eq!((req.op, req.dst_port, req.dst_cid), (op::REQUEST, 1024, 3));
    let reply = Header {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port: 1024,
        dst_port: req.src_port,
        kind: 1,
        op: op::RESPONSE,
        buf_alloc: 65536,
        ..Default::default()
    };
    guest_sends(&mut tq, &mut vsock, &mut ctx, reply, &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).expect("OK line");
    assert_eq!(std::str::from_utf8(&line).expect("utf8"), format!("OK {}\n", req.src_port));
    // A packet for a connection that does not exist is answered with RST.
    let stray =
        Header { src_cid: 3, dst_cid: HOST_CID, src_port: 9, dst_port: 9, kind: 1, op: op::RW, ..Default::default() };
    guest_sends(&mut tq, &mut vsock, &mut ctx, stray, &[]);
    let (rst, _) = guest_receives(&mut rx, &mut vsock, &mut ctx).expect("rst");
    assert_eq!(rst.op, op::RST);
    // Garbage on the tx queue is dropped.
    tq.put(0xa000, &[0xff; 10]);
    tq.add_chain(&[r(0xa000, 10)]);
    vsock.queue_event(&mut ctx, 1, &registrar());
}

#[test]
fn net_moves_frames_between_the_queues_and_the_tap() {
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().expect("pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let tap = std::fs::File::from(std::os::fd::OwnedFd::from(ours));
    let mut net = net::Net::with_tap(tap, [2, 0, 0, 0, 0, 1]);
    let mut rx = TestQueue::new(4 << 20, 64);
    let mut tq = rx.sibling(1);
    let mut ctx = TestQueue::context_of(&[&rx, &tq]);
    net.activate(&mut ctx, &registrar());
    // Guest transmits: header + frame on the tx queue.
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(b"frame-out");
    tq.put(DATA, &frame);
    tq.add_chain(&[r(DATA, frame.len() as u32)]);
    net.queue_event(&mut ctx, 1, &registrar());
    let mut got = [0u8; 64];
    let n = theirs.recv(&mut got).expect("tap got a frame");
    assert_eq!(&got[..n], b"frame-out");
    // The tap delivers: the guest's rx buffer gets header + frame.
    theirs.send(b"frame-in").expect("send");
    let before = rx.used_idx();
    rx.add_chain(&[w(0xd000, 2048)]);
    net.fd_event(&mut ctx, 1, 0, &registrar());
    assert_eq!(rx.used_idx(), before + 1);
    assert_eq!(rx.used(before).1, 12 + 8);
    assert_eq!(rx.get(0xd000 + 12, 8), b"frame-in");
    let mut mac = [0u8; 6];
    net.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 1]);
}
