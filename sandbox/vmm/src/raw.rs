//! Raw guests: a flat binary run in real mode or 64-bit long mode, with a
//! serial port that prints what the guest writes to 0x3f8. The KVM smoke
//! test of a host (`crius vm run --raw`): it runs on PVM too, since only
//! simple hand-written code runs at CPL0.
//!
//! No interrupt controller is created, so `hlt` comes back to userspace and
//! ends the run; a deadline kicks vCPUs that never halt.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use kvm_ioctls::{Cap, Kvm};
use vm_memory::{Bytes, GuestAddress};

use crate::cpu::{self, CpuError, CpuidOptions};
use crate::host::{self, HostError, KvmKind};
use crate::layout::{BOOT_STACK, COM1_PORT};
use crate::memory::{self, MemoryError};
use crate::vcpu::{self, ExitHandler, ExitStats, Flow, Kicker, StopReason, VcpuError};

/// Where a real-mode raw guest is loaded (segment 0x100, offset 0).
pub const REAL_LOAD_ADDR: u64 = 0x1000;
/// Where a long-mode raw guest is loaded.
pub const LONG_LOAD_ADDR: u64 = 0x10_0000;

/// The raw guests the tests and `crius vm run --raw` demos use, assembled
/// from `sandbox/vmm/guests/*.S` (a test checks they still match).
pub mod guests {
    /// `hello_real.S`: 16-bit real mode, prints "Hello from VM\n", halts.
    pub const HELLO_REAL: &[u8] = &[
        0xba, 0xf8, 0x03, // mov $0x3f8, %dx
        0xbe, 0x11, 0x00, // mov $msg, %si
        0xac, // 1: lodsb
        0x84, 0xc0, // test %al, %al
        0x74, 0x03, // jz 2f
        0xee, // out %al, (%dx)
        0xeb, 0xf8, // jmp 1b
        0xf4, // 2: hlt
        0xeb, 0xfd, // jmp 2b
        b'H', b'e', b'l', b'l', b'o', b' ', b'f', b'r', b'o', b'm', b' ', b'V', b'M', b'\n', 0,
    ];

    /// `hello_long.S`: 64-bit code; checks it runs in long mode, prints
    /// "Hello from 64-bit long mode\n" (or "not in 64-bit mode\n"), halts.
    pub const HELLO_LONG: &[u8] = &[
        0x66, 0xba, 0xf8, 0x03, // mov $0x3f8, %dx
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, // movabs $0x1122334455667788, %rax
        0x48, 0xc1, 0xe8, 0x38, // shr $56, %rax
        0x48, 0x8d, 0x35, 0x16, 0x00, 0x00, 0x00, // lea msg(%rip), %rsi
        0x3c, 0x11, // cmp $0x11, %al
        0x74, 0x07, // je 1f
        0x48, 0x8d, 0x35, 0x28, 0x00, 0x00, 0x00, // lea bad(%rip), %rsi
        0xac, // 1: lodsb
        0x84, 0xc0, // test %al, %al
        0x74, 0x03, // jz 2f
        0xee, // out %al, (%dx)
        0xeb, 0xf8, // jmp 1b
        0xf4, // 2: hlt
        0xeb, 0xfd, // jmp 2b
        b'H', b'e', b'l', b'l', b'o', b' ', b'f', b'r', b'o', b'm', b' ', b'6', b'4', b'-', b'b', b'i', b't', b' ',
        b'l', b'o', b'n', b'g', b' ', b'm', b'o', b'd', b'e', b'\n', 0, //
        b'n', b'o', b't', b' ', b'i', b'n', b' ', b'6', b'4', b'-', b'b', b'i', b't', b' ', b'm', b'o', b'd', b'e',
        b'\n', 0,
    ];
}

/// Errors running a raw guest.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The host has no usable KVM.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The image does not fit.
    #[error("raw image of {size} bytes does not fit in {mem} bytes of guest memory at {addr:#x}")]
    TooBig {
        /// Image size.
        size: usize,
        /// Guest memory.
        mem: u64,
        /// Load address.
        addr: u64,
    },
    /// Memory for long mode must cover the page tables, stack and image.
    #[error("long mode needs at least 2 MiB of guest memory")]
    LongModeMemory,
    /// vCPU count out of range.
    #[error("{0} vcpus: between 1 and 64")]
    Vcpus(u8),
    /// A KVM VM ioctl failed.
    #[error("{op}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// vCPU set-up.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// vCPU loop.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Loading the image.
    #[error("load the raw image into guest memory")]
    Load(#[source] vm_memory::GuestMemoryError),
    /// A vCPU thread could not start.
    #[error("start a vcpu thread")]
    Thread(#[source] std::io::Error),
}

/// The CPU mode a raw guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// 16-bit real mode at 0x100:0 (guest 0x1000).
    Real,
    /// 64-bit long mode at 0x100000, identity-mapped first GiB.
    Long,
}

/// A raw guest to run.
#[derive(Debug, Clone)]
pub struct RawConfig {
    /// The flat binary.
    pub image: Vec<u8>,
    /// Starting mode.
    pub mode: RawMode,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// vCPUs (each runs the image from its start).
    pub vcpus: u8,
    /// Kick the vCPUs after this long.
    pub timeout: Duration,
}

/// What a raw run did.
#[derive(Debug, Clone)]
pub struct RawOutcome {
    /// Bytes written to the serial port.
    pub serial: Vec<u8>,
    /// Why each vCPU stopped.
    pub reasons: Vec<StopReason>,
    /// Exit counts of all vCPUs together; run time of the longest.
    pub stats: ExitStats,
    /// Wall time from VM creation to the last vCPU's stop.
    pub wall: Duration,
    /// The host's KVM.
    pub kvm_kind: KvmKind,
}

/// Receives a raw guest's serial output as it is written.
pub type SerialSink = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The serial port of a raw guest: data register writes are collected (and
/// streamed to `sink`); the line status register says "transmitter empty".
struct RawPorts {
    serial: Mutex<Vec<u8>>,
    sink: SerialSink,
}

impl ExitHandler for RawPorts {
    fn pio_read(&self, port: u16, data: &mut [u8]) {
        let value = match port.wrapping_sub(COM1_PORT) {
            5 => 0x60, // LSR: THR empty, transmitter idle
            _ => 0xff,
        };
        data.fill(value);
    }

    fn pio_write(&self, port: u16, data: &[u8]) -> Flow {
        if port == COM1_PORT {
            self.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(data);
            (self.sink)(data);
        }
        Flow::Continue
    }

    fn mmio_read(&self, _addr: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn mmio_write(&self, _addr: u64, _data: &[u8]) -> Flow {
        Flow::Continue
    }
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RawError {
    move |source| RawError::Kvm { op, source }
}

/// Runs a raw guest; `sink` sees its serial output as it comes.
pub fn run(config: &RawConfig, sink: SerialSink) -> Result<RawOutcome, RawError> {
    if config.vcpus == 0 || config.vcpus > 64 {
        return Err(RawError::Vcpus(config.vcpus));
    }
    let kvm = Kvm::new().map_err(|source| HostError::NoKvm { path: host::KVM_DEV.into(), source })?;
    let kind = host::kvm_kind();
    let start = Instant::now();
    let mem_size = u64::from(config.mem_mib) << 20;
    let addr = match config.mode {
        RawMode::Real => REAL_LOAD_ADDR,
        RawMode::Long if mem_size < (2 << 20) => return Err(RawError::LongModeMemory),
        RawMode::Long => LONG_LOAD_ADDR,
    };
    let limit = if config.mode == RawMode::Real { mem_size.min(0x10_0000) } else { mem_size };
    if addr + config.image.len() as u64 > limit {
        return Err(RawError::TooBig { size: config.image.len(), mem: limit, addr });
    }
    let vm = kvm.create_vm().map_err(kvm_err("create the VM"))?;
    if kvm.check_extension(Cap::SetTssAddr) {
        vm.set_tss_address(crate::layout::KVM_TSS_ADDR).map_err(kvm_err("set the TSS address"))?;
    }
    let mem = memory::create(mem_size)?;
    memory::register(&vm, &mem)?;
    mem.write_slice(&config.image, GuestAddress(addr)).map_err(RawError::Load)?;
    if config.mode == RawMode::Long {
        cpu::write_boot_tables(&mem)?;
    }
    let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("get cpuid"))?;
    vcpu::install_kick_handler()?;
    let ports = Arc::new(RawPorts { serial: Mutex::new(Vec::new()), sink });
    let (tx, rx) = mpsc::channel();
    let mut threads = Vec::new();
    for index in 0..config.vcpus {
        let mut fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("create a vcpu"))?;
        cpu::set_cpuid(&fd, &supported, index, config.vcpus, CpuidOptions::default())?;
        match config.mode {
            RawMode::Real => cpu::enter_real_mode(&fd, (REAL_LOAD_ADDR >> 4) as u16, 0)?,
            RawMode::Long => cpu::enter_long_mode(&fd, LONG_LOAD_ADDR, BOOT_STACK, 0)?,
        }
        let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (ports, tx) = (Arc::clone(&ports), tx.clone());
        let (stop2, done2) = (Arc::clone(&stop), Arc::clone(&done));
        let handle = std::thread::Builder::new()
            .name(format!("raw-vcpu{index}"))
            .spawn(move || {
                let result = vcpu::run_loop(usize::from(index), &mut fd, &*ports, &stop2, &done2, true);
                let _ = tx.send(());
                result
            })
            .map_err(RawError::Thread)?;
        let kicker = Kicker::for_thread(stop, done, &handle);
        threads.push((handle, kicker));
    }
    drop(tx);
    wait_or_kick(&rx, threads.len(), config.timeout, threads.iter().map(|(_, k)| k));
    let mut outcome = RawOutcome {
        serial: Vec::new(),
        reasons: Vec::new(),
        stats: ExitStats::default(),
        wall: Duration::ZERO,
        kvm_kind: kind,
    };
    for (handle, _) in threads {
        let (reason, stats, error) = handle
            .join()
            .unwrap_or_else(|_| (StopReason::Failed("vcpu thread panicked".into()), ExitStats::default(), None));
        if let Some(e) = error {
            return Err(e.into());
        }
        outcome.reasons.push(reason);
        outcome.stats.merge(&stats);
    }
    outcome.wall = start.elapsed();
    outcome.serial = std::mem::take(&mut *ports.serial.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(outcome)
}

/// Waits for `count` vCPUs to report; past `timeout`, kicks them all.
fn wait_or_kick<'a>(
    rx: &mpsc::Receiver<()>,
    count: usize,
    timeout: Duration,
    kickers: impl Iterator<Item = &'a Kicker>,
) {
    let deadline = Instant::now() + timeout;
    let mut left = count;
    while left > 0 {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(()) => left -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
        }
    }
    if left > 0 {
        for kicker in kickers {
            kicker.kick();
        }
    }
}

/// One line per vCPU stop reason and exit count, for `crius vm run --raw`.
pub fn report(outcome: &RawOutcome) -> String {
    let mut text = String::new();
    let kind = match outcome.kvm_kind {
        KvmKind::Pvm => "PVM",
        KvmKind::Hardware => "hardware",
    };
    text.push_str(&format!("kvm: {kind}\n"));
    for (i, reason) in outcome.reasons.iter().enumerate() {
        text.push_str(&format!("vcpu {i}: {reason:?}\n"));
    }
    text.push_str(&format!("exits: {} in all\n", outcome.stats.total()));
    for (reason, count) in &outcome.stats.counts {
        text.push_str(&format!("  {reason:<14} {count}\n"));
    }
    text.push_str(&format!(
        "run time: {:.3} ms in the guest, {:.3} ms in all\n",
        outcome.stats.run_time.as_secs_f64() * 1e3,
        outcome.wall.as_secs_f64() * 1e3
    ));
    text
}

#[cfg(test)]
#[path = "raw_tests.rs"]
mod tests;
