//! One Linux virtual machine: KVM VM with in-kernel IOAPIC/PIC/LAPIC and
//! PIT, guest RAM, the kernel booted through the 64-bit boot protocol, ACPI
//! tables, COM1, power-off/reset ports, the virtio-mmio devices of
//! [`VmConfig`], one thread per vCPU and one device thread ([`crate::virtio::event_loop`]).
//!
//! [`Vm::start`] returns once every thread runs; [`Vm::wait`] blocks until a
//! vCPU stops (power-off, reset, failure) and [`Vm::shutdown`] stops the
//! rest and collects the exit statistics.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{KVM_PIT_SPEAKER_DUMMY, kvm_pit_config};
use kvm_ioctls::{Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi;
use crate::boot::{self, BootEntry, BootError, BootSpec};
use crate::bus::{BusError, Buses};
use crate::cpu::{self, CpuError, CpuidOptions};
use crate::devices::legacy::{AcpiSleep, I8042Reset};
use crate::devices::serial::{ConsoleOut, SerialConsole};
use crate::host::{self, KvmKind};
use crate::layout::{ACPI_SLEEP_CONTROL_PORT, BOOT_STACK, COM1_IRQ, COM1_PORT, I8042_COMMAND_PORT, KVM_TSS_ADDR};
use crate::memory::{self, GuestMemory, MemoryError};
use crate::vcpu::{self, ExitStats, Kicker, StopReason, VcpuError};
use crate::virtio::{self, DeviceConfigs, VirtioError};

/// The kernel command line crius uses when none is given: serial console,
/// quiet boot, no PCI probing, reset on panic (the VMM sees the triple
/// fault), and no I/O delay port writes (each is an exit). The legacy
/// keyboard controller is not probed: the FADT says there is none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t pci=off io_delay=none";

/// A VM to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initramfs.
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line ([`DEFAULT_CMDLINE`] when `None`).
    #[serde(default)]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u8,
    /// Console log file (appended); `None`: the VMM's stdout.
    #[serde(default)]
    pub console_log: Option<PathBuf>,
    /// For an LZ4 bzImage, boot the vmlinux decompressed on the host instead
    /// of letting the guest decompress itself (default: yes; on PVM the
    /// in-guest decompressor would take minutes, elsewhere the host does it
    /// faster than a guest's early boot code).
    #[serde(default)]
    pub extract_vmlinux: Option<bool>,
    /// Virtio devices.
    #[serde(default)]
    pub devices: DeviceConfigs,
}

impl VmConfig {
    /// The command line the guest gets.
    pub fn cmdline(&self) -> &str {
        self.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE)
    }
}

/// Errors starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A VM-level KVM ioctl failed.
    #[error("{op}")]
    Kvm {
        /// What was being done.
        op: &'static str,
        /// The ioctl's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// vCPU count out of range.
    #[error("{0} vcpus: between 1 and 64")]
    Vcpus(u8),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] acpi::AcpiError),
    /// vCPU set-up.
    #[error(transparent)]
    Cpu(#[from] CpuError),
    /// vCPU signal handling.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Device placement.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// Virtio devices.
    #[error(transparent)]
    Virtio(#[from] VirtioError),
    /// The console log.
    #[error("open console log {0}")]
    Console(PathBuf, #[source] std::io::Error),
    /// An eventfd or thread could not be made.
    #[error("{0}")]
    Os(&'static str, #[source] std::io::Error),
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> VmError {
    move |source| VmError::Kvm { op, source }
}

type VcpuResult = (StopReason, ExitStats, Option<VcpuError>);

/// How a VM ended.
#[derive(Debug, Clone)]
pub struct VmExit {
    /// The first vCPU stop that was not a stop request, else `Stopped`.
    pub reason: StopReason,
    /// Exits of all vCPUs.
    pub stats: ExitStats,
    /// From [`Vm::start`] to the end.
    pub elapsed: Duration,
}

/// A running VM.
pub struct Vm {
    vcpus: Vec<(JoinHandle<VcpuResult>, Kicker)>,
    stops: mpsc::Receiver<StopReason>,
    first_stop: Option<StopReason>,
    devices: Option<virtio::DeviceThread>,
    entry: BootEntry,
    kind: KvmKind,
    started: Instant,
    guest_ram: Vec<(u64, u64)>,
    vsock_uds: Option<PathBuf>,
    // Dropped after the threads above are joined: the VM fd, then guest memory.
    _vm: Arc<VmFd>,
    _memory: GuestMemory,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm").field("vcpus", &self.vcpus.len()).field("entry", &self.entry).finish_non_exhaustive()
    }
}

impl Vm {
    /// Creates and starts the VM described by `config` on `kvm`. Check the
    /// host first ([`host::check_linux_guest`]): this does not.
    pub fn start(kvm: &Kvm, config: &VmConfig) -> Result<Vm, VmError> {
        let console = open_console(config)?;
        Self::start_with_console(kvm, config, console)
    }

    /// [`Vm::start`] with the console going to `console` instead of what
    /// the config says.
    pub fn start_with_console(kvm: &Kvm, config: &VmConfig, console: ConsoleOut) -> Result<Vm, VmError> {
        if config.vcpus == 0 || config.vcpus > 64 {
            return Err(VmError::Vcpus(config.vcpus));
        }
        let started = Instant::now();
        let kind = host::kvm_kind();
        let vm = Arc::new(kvm.create_vm().map_err(kvm_err("create the VM"))?);
        vm.set_tss_address(KVM_TSS_ADDR).map_err(kvm_err("set the TSS address"))?;
        vm.create_irq_chip().map_err(kvm_err("create the in-kernel irqchip"))?;
        let pit = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
        vm.create_pit2(pit).map_err(kvm_err("create the PIT"))?;
        let mem_size = u64::from(config.mem_mib) << 20;
        let mem = memory::create(mem_size)?;
        memory::register(&vm, &mem)?;

        let mut buses = Buses::default();
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| VmError::Os("eventfd", e))?;
        vm.register_irqfd(&serial_irq, COM1_IRQ).map_err(kvm_err("register the serial irqfd"))?;
        buses.pio.insert(u64::from(COM1_PORT), 8, Arc::new(Mutex::new(SerialConsole::new(serial_irq, console))))?;
        buses.pio.insert(u64::from(ACPI_SLEEP_CONTROL_PORT), 2, Arc::new(Mutex::new(AcpiSleep)))?;
        buses.pio.insert(u64::from(I8042_COMMAND_PORT), 1, Arc::new(Mutex::new(I8042Reset)))?;
        let devices = virtio::attach(&vm, &mem, &mut buses.mmio, &config.devices)?;

        let rsdp = acpi::write(&mem, config.vcpus, &devices.acpi)?;
        let spec = BootSpec {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: config.cmdline().to_owned(),
            extract_vmlinux: config.extract_vmlinux.unwrap_or(true),
        };
        let entry = boot::load(&mem, mem_size, &spec, &memory::e820_map(mem_size), rsdp)?;
        cpu::write_boot_tables(&mem)?;
        let device_thread = devices.start()?;

        let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES).map_err(kvm_err("get cpuid"))?;
        let options = CpuidOptions {
            hide_cx16: kind == KvmKind::Pvm,
            tsc_deadline: kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer),
        };
        vcpu::install_kick_handler()?;
        let buses = Arc::new(buses);
        let (tx, stops) = mpsc::channel();
        let mut vcpus = Vec::new();
        for index in 0..config.vcpus {
            let mut fd = vm.create_vcpu(u64::from(index)).map_err(kvm_err("create a vcpu"))?;
            cpu::set_cpuid(&fd, &supported, index, config.vcpus, options)?;
            cpu::set_boot_msrs(&fd)?;
            cpu::set_lint(&fd)?;
            if index == 0 {
                cpu::enter_long_mode(&fd, entry.rip, BOOT_STACK, entry.zero_page)?;
            }
            let (stop, done) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
            let (buses, tx, stop2, done2) = (Arc::clone(&buses), tx.clone(), Arc::clone(&stop), Arc::clone(&done));
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    let result = vcpu::run_loop(usize::from(index), &mut fd, &*buses, &stop2, &done2, false);
                    let _ = tx.send(result.0.clone());
                    result
                })
                .map_err(|e| VmError::Os("start a vcpu thread", e))?;
            let kicker = Kicker::for_thread(stop, done, &handle);
            vcpus.push((handle, kicker));
        }
        Ok(Vm {
            vcpus,
            stops,
            first_stop: None,
            devices: Some(device_thread),
            entry,
            kind,
            started,
            guest_ram: memory::host_ranges(&mem),
            vsock_uds: config.devices.vsock.as_ref().map(|v| v.uds_path.clone()),
            _vm: vm,
            _memory: mem,
        })
    }
}

impl Vm {
    /// Waits until a vCPU stops (the guest powered off, reset or failed),
    /// at most `timeout`; returns why, or `None` on timeout.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Option<StopReason> {
        if let Some(reason) = &self.first_stop {
            return Some(reason.clone());
        }
        let reason = match timeout {
            Some(t) => self.stops.recv_timeout(t).ok()?,
            None => self.stops.recv().ok()?,
        };
        self.first_stop = Some(reason.clone());
        Some(reason)
    }

    /// Stops every vCPU and the device thread and joins them.
    pub fn shutdown(mut self) -> VmExit {
        for (_, kicker) in &self.vcpus {
            kicker.kick();
        }
        let mut stats = ExitStats::default();
        let mut reason = self.first_stop.take();
        for (handle, _) in self.vcpus.drain(..) {
            match handle.join() {
                Ok((r, s, _)) => {
                    stats.merge(&s);
                    if reason.is_none() && r != StopReason::Stopped {
                        reason = Some(r);
                    }
                }
                Err(_) => reason = reason.or(Some(StopReason::Failed("vcpu thread panicked".into()))),
            }
        }
        if let Some(devices) = self.devices.take() {
            devices.stop();
        }
        VmExit { reason: reason.unwrap_or(StopReason::Stopped), stats, elapsed: self.started.elapsed() }
    }

    /// Where the kernel was entered.
    pub fn entry(&self) -> BootEntry {
        self.entry
    }

    /// The host's KVM kind.
    pub fn kvm_kind(&self) -> KvmKind {
        self.kind
    }

    /// Host address ranges of guest RAM (start, length).
    pub fn guest_ram(&self) -> &[(u64, u64)] {
        &self.guest_ram
    }

    /// The unix socket host processes connect to for vsock, if any.
    pub fn vsock_uds(&self) -> Option<&PathBuf> {
        self.vsock_uds.as_ref()
    }

    /// Time since start.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // Threads still running use guest memory: stop them before it goes.
        for (_, kicker) in &self.vcpus {
            kicker.kick();
        }
        for (handle, _) in self.vcpus.drain(..) {
            let _ = handle.join();
        }
        if let Some(devices) = self.devices.take() {
            devices.stop();
        }
    }
}

fn open_console(config: &VmConfig) -> Result<ConsoleOut, VmError> {
    match &config.console_log {
        None => Ok(Box::new(std::io::stdout())),
        Some(path) => {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| VmError::Console(path.clone(), e))?;
            Ok(Box::new(std::io::LineWriter::new(file)))
        }
    }
}

/// Why a stopped guest went no further, in one line, with what the host
/// check knows (PVM).
pub fn explain(reason: &StopReason, kind: KvmKind) -> String {
    match (reason, kind) {
        (StopReason::Failed(what), KvmKind::Pvm) => format!(
            "guest stopped: {what}; this host's /dev/kvm is PVM, whose instruction emulator runs guest kernel code and cannot run a stock kernel past early boot"
        ),
        (StopReason::Failed(what), KvmKind::Hardware) => format!("guest stopped: {what}"),
        (StopReason::PowerOff, _) => "guest powered off".to_owned(),
        (StopReason::Reset, _) => "guest reset (reboot, triple fault or panic with reboot=t)".to_owned(),
        (StopReason::Halted, _) => "guest halted".to_owned(),
        (StopReason::Stopped, _) => "guest stopped by the VMM".to_owned(),
    }
}
