//! Running vCPUs: the `KVM_RUN` loop, exit statistics, and stopping a vCPU
//! that sits in the kernel.
//!
//! Stopping: [`Kicker::kick`] sets the stop flag and sends [`kick_signal`]
//! to the vCPU's thread. The signal handler sets `immediate_exit` in that
//! thread's `kvm_run` (found through a thread-local pointer), so `KVM_RUN`
//! returns `EINTR` even when the signal lands just before the ioctl; the
//! loop then sees the flag and returns.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};

/// Errors of the vCPU loop.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_RUN` failed with something other than an interruption.
    #[error("KVM_RUN on vcpu {index}")]
    Run {
        /// The vCPU.
        index: usize,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The kick signal could not be installed.
    #[error("install the vcpu kick signal handler")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// What the device side tells the vCPU loop after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep running.
    Continue,
    /// The guest asked to power off.
    PowerOff,
    /// The guest asked to reset.
    Reset,
}

/// Handles the exits the VMM emulates: port and MMIO accesses.
pub trait ExitHandler: Send + Sync {
    /// `in` from `port`: fill `data`.
    fn pio_read(&self, port: u16, data: &mut [u8]);
    /// `out` to `port`.
    fn pio_write(&self, port: u16, data: &[u8]) -> Flow;
    /// A read of unbacked guest-physical `addr`: fill `data`.
    fn mmio_read(&self, addr: u64, data: &mut [u8]);
    /// A write to unbacked guest-physical `addr`.
    fn mmio_write(&self, addr: u64, data: &[u8]) -> Flow;
}

/// Why a vCPU stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `hlt` reached userspace (no in-kernel irqchip: the guest is done).
    Halted,
    /// The guest powered off.
    PowerOff,
    /// The guest reset or triple-faulted (`KVM_EXIT_SHUTDOWN`).
    Reset,
    /// The VMM asked it to stop.
    Stopped,
    /// KVM could not go on: internal error, failed entry, emulation failure.
    Failed(String),
}

/// Exit counts and run time of one vCPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExitStats {
    /// Exits by reason (`IoOut`, `Hlt`, `MmioRead`, ...).
    pub counts: BTreeMap<&'static str, u64>,
    /// Time from the first `KVM_RUN` to the stop.
    pub run_time: Duration,
}

impl ExitStats {
    fn count(&mut self, reason: &'static str) {
        *self.counts.entry(reason).or_default() += 1;
    }

    /// All exits.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds `other`'s counts (run time: the longer one).
    pub fn merge(&mut self, other: &ExitStats) {
        for (k, v) in &other.counts {
            *self.counts.entry(k).or_default() += v;
        }
        self.run_time = self.run_time.max(other.run_time);
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN() + 3
}

thread_local! {
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // `try_with` and `Cell::get` neither allocate nor lock: async-signal-safe.
    let _ = KVM_RUN.try_with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer was set by this thread's vCPU loop to its
            // own `kvm_run` mapping, which outlives the loop, and is reset
            // to null before the loop returns; a volatile byte store cannot
            // tear.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Installs the kick signal handler (once per process; idempotent).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick).map_err(VcpuError::Signal)
}

/// Stops one vCPU thread.
#[derive(Debug, Clone)]
pub struct Kicker {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    thread: Option<libc::pthread_t>,
}

impl Kicker {
    /// A kicker for a vCPU loop run with `stop`/`done` on `thread`.
    pub fn new(stop: Arc<AtomicBool>, done: Arc<AtomicBool>, thread: Option<libc::pthread_t>) -> Self {
        Self { stop, done, thread }
    }

    /// A kicker for the vCPU loop run in the thread `handle`.
    pub fn for_thread<T>(stop: Arc<AtomicBool>, done: Arc<AtomicBool>, handle: &JoinHandle<T>) -> Self {
        Self::new(stop, done, Some(handle.as_pthread_t()))
    }

    /// Asks the vCPU to stop and interrupts `KVM_RUN` until it has (at most
    /// about a second: a vCPU that does not return by then is left).
    pub fn kick(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let Some(thread) = self.thread else { return };
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.done.load(Ordering::SeqCst) && Instant::now() < deadline {
            // SAFETY: `thread` is a live thread: `done` is set by the loop
            // before its thread returns, and the owner joins it only after
            // kicking.
            unsafe { libc::pthread_kill(thread, kick_signal()) };
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Runs `vcpu` until it stops; counts exits and hands port and MMIO
/// accesses to `handler`. `stop` is checked after every exit; `done` is set
/// on return. `halt_stops`: a `hlt` exit ends the run (raw guests without an
/// in-kernel irqchip).
pub fn run_loop(
    index: usize,
    vcpu: &mut VcpuFd,
    handler: &dyn ExitHandler,
    stop: &AtomicBool,
    done: &AtomicBool,
    halt_stops: bool,
) -> (StopReason, ExitStats, Option<VcpuError>) {
    let mut stats = ExitStats::default();
    KVM_RUN.with(|p| p.set(std::ptr::from_mut(vcpu.get_kvm_run())));
    let start = Instant::now();
    let mut error = None;
    let reason = loop {
        if stop.load(Ordering::SeqCst) {
            break StopReason::Stopped;
        }
        let flow = match vcpu.run() {
            Ok(exit) => handle_exit(exit, handler, &mut stats, halt_stops),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                stats.count("Interrupted");
                vcpu.set_kvm_immediate_exit(0);
                Ok(Flow::Continue)
            }
            Err(source) => {
                error = Some(VcpuError::Run { index, source });
                Err(StopReason::Failed(format!("KVM_RUN failed: {source}")))
            }
        };
        match flow {
            Ok(Flow::Continue) => {}
            Ok(Flow::PowerOff) => break StopReason::PowerOff,
            Ok(Flow::Reset) => break StopReason::Reset,
            Err(reason) => break reason,
        }
    };
    stats.run_time = start.elapsed();
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
    done.store(true, Ordering::SeqCst);
    (reason, stats, error)
}

fn handle_exit(
    exit: VcpuExit<'_>,
    handler: &dyn ExitHandler,
    stats: &mut ExitStats,
    halt_stops: bool,
) -> Result<Flow, StopReason> {
    match exit {
        VcpuExit::IoIn(port, data) => {
            stats.count("IoIn");
            handler.pio_read(port, data);
            Ok(Flow::Continue)
        }
        VcpuExit::IoOut(port, data) => {
            stats.count("IoOut");
            Ok(handler.pio_write(port, data))
        }
        VcpuExit::MmioRead(addr, data) => {
            stats.count("MmioRead");
            handler.mmio_read(addr, data);
            Ok(Flow::Continue)
        }
        VcpuExit::MmioWrite(addr, data) => {
            stats.count("MmioWrite");
            Ok(handler.mmio_write(addr, data))
        }
        VcpuExit::Hlt => {
            stats.count("Hlt");
            if halt_stops { Err(StopReason::Halted) } else { Ok(Flow::Continue) }
        }
        VcpuExit::Shutdown => {
            stats.count("Shutdown");
            Ok(Flow::Reset)
        }
        VcpuExit::SystemEvent(kind, _) => {
            stats.count("SystemEvent");
            match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Ok(Flow::PowerOff),
                _ => Ok(Flow::Reset),
            }
        }
        VcpuExit::InternalError => {
            stats.count("InternalError");
            Err(StopReason::Failed("KVM internal error (instruction emulation failed)".into()))
        }
        VcpuExit::FailEntry(reason, cpu) => {
            stats.count("FailEntry");
            Err(StopReason::Failed(format!("VM entry failed on cpu {cpu}: hardware reason {reason:#x}")))
        }
        VcpuExit::IrqWindowOpen => {
            stats.count("IrqWindowOpen");
            Ok(Flow::Continue)
        }
        VcpuExit::Intr => {
            stats.count("Intr");
            Ok(Flow::Continue)
        }
        VcpuExit::Exception => {
            stats.count("Exception");
            Err(StopReason::Failed("unhandled guest exception".into()))
        }
        other => {
            stats.count("Other");
            Err(StopReason::Failed(format!("unexpected exit {other:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_merge_adds_counts_and_keeps_the_longest_run() {
        let mut a = ExitStats::default();
        a.count("IoOut");
        a.run_time = Duration::from_millis(5);
        let mut b = ExitStats::default();
        b.count("IoOut");
        b.count("Hlt");
        b.run_time = Duration::from_millis(9);
        a.merge(&b);
        assert_eq!(a.counts.get("IoOut"), Some(&2));
        assert_eq!(a.total(), 3);
        assert_eq!(a.run_time, Duration::from_millis(9));
    }
}
