//! crius's virtual machine monitor: one KVM virtual machine per process.
//!
//! What it does: creates the VM and its vCPU threads (kvm-ioctls), guest
//! memory (vm-memory), the in-kernel interrupt controllers and PIT, CPUID and
//! MSRs; boots Linux (bzImage or ELF vmlinux, boot parameters, e820,
//! command line, initramfs) with ACPI tables that describe the vCPUs, the
//! IOAPIC and each virtio-mmio device, so a stock distribution kernel finds
//! them without MP tables or command-line devices; emulates an 8250 serial
//! console into a per-VM log and the virtio devices (vsock bridged to unix
//! sockets, block, net over a tap, rng). It also runs raw guests (a flat
//! binary in real or long mode) for KVM smoke tests, and checks the host
//! before booting anything ([`host`]).
//!
//! What it must not do: know about pods, containers or CRI. It takes a
//! [`vm::VmConfig`] (kernel, initramfs, command line, memory, vCPUs,
//! devices) and gives back a running VM to wait for or stop; `crius internal
//! vmm` ([`process`]) wraps one VM in its own process with a control socket.
//!
//! This is the one crate of the workspace where `unsafe` is routine (ioctls,
//! guest memory mappings, signal handlers); every block carries a
//! `// SAFETY:` note.
#![allow(unsafe_code)]
#![warn(missing_docs)]

pub mod acpi;
pub mod boot;
pub mod bus;
pub mod cpu;
pub mod devices;
pub mod host;
pub mod kernel_image;
pub mod layout;
pub mod memory;
pub mod process;
pub mod raw;
pub mod vcpu;
pub mod virtio;
pub mod vm;
