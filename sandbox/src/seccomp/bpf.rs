//! Plan to one classic-BPF program.
//!
//! seccompiler compiles a filter with a single match action. A profile has
//! several (allow, errno, kill...), so each action group is compiled on its
//! own with a private *sentinel* as its mismatch action, and every `ret
//! sentinel` is then rewritten into a jump to the next group. The program
//! ends with a group-less filter that returns the default action. The first
//! group (in profile order) whose rule matches decides.
//!
//! ```text
//! [x86_64: x32 guard] [group 1: arch check, chains, ja next] [group 2 ...] [arch check, ret default]
//! ```

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch, sock_filter};

use super::SeccompError;
use super::plan::Plan;

/// The kernel's limit on classic BPF program length (`BPF_MAXINSNS`).
pub(super) const MAX_INSNS: usize = 4096;

// Classic BPF opcodes (linux/bpf_common.h).
/// `BPF_LD | BPF_W | BPF_ABS`.
const BPF_LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`.
const BPF_JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const BPF_JMP_JGE_K: u16 = 0x35;
/// `BPF_RET | BPF_K`.
const BPF_RET_K: u16 = 0x06;
/// Offset of `nr` in `struct seccomp_data`.
const DATA_NR: u32 = 0;
/// x32 syscalls arrive with `AUDIT_ARCH_X86_64` and this bit set in `nr`.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Emits the program for `plan`.
pub(super) fn emit(plan: &Plan, arch: TargetArch, origin: &str) -> Result<BpfProgram, SeccompError> {
    let backend = |source| SeccompError::Compile { profile: origin.to_owned(), source };
    let mut program = Vec::new();
    if arch == TargetArch::x86_64 {
        program.extend(x32_guard());
    }
    for group in &plan.groups {
        let sentinel = sentinel_for(&group.action);
        let rules: BTreeMap<i64, Vec<_>> =
            group.rules.iter().map(|(nr, rules)| (*nr, rules.clone().unwrap_or_default())).collect();
        let filter = SeccompFilter::new(rules, sentinel.clone(), group.action.clone(), arch).map_err(backend)?;
        let mut segment = BpfProgram::try_from(filter).map_err(backend)?;
        fall_through(&mut segment, u32::from(sentinel));
        program.append(&mut segment);
    }
    let sentinel = sentinel_for(&plan.default);
    let tail = SeccompFilter::new(BTreeMap::new(), plan.default.clone(), sentinel, arch).map_err(backend)?;
    program.append(&mut BpfProgram::try_from(tail).map_err(backend)?);
    if program.len() > MAX_INSNS {
        return Err(SeccompError::TooLarge { profile: origin.to_owned(), len: program.len(), max: MAX_INSNS });
    }
    Ok(program)
}

/// A mismatch action different from `action`; it never reaches the kernel,
/// every `ret` of it is rewritten by [`fall_through`].
fn sentinel_for(action: &SeccompAction) -> SeccompAction {
    let sentinel = SeccompAction::Trace(0xffff);
    if *action == sentinel { SeccompAction::Trace(0xfffe) } else { sentinel }
}

/// Rewrites every `ret sentinel` of `segment` into a jump just past its end.
fn fall_through(segment: &mut [sock_filter], sentinel: u32) {
    let len = segment.len();
    for (i, insn) in segment.iter_mut().enumerate() {
        if insn.code == BPF_RET_K && insn.k == sentinel {
            // `ja k` continues at i + 1 + k; the next segment starts at len.
            *insn = sock_filter { code: BPF_JMP_JA, jt: 0, jf: 0, k: (len - i - 1) as u32 };
        }
    }
}

/// Kills x32-ABI calls, which carry the x86_64 audit arch but other numbers.
fn x32_guard() -> [sock_filter; 3] {
    [
        sock_filter { code: BPF_LD_W_ABS, jt: 0, jf: 0, k: DATA_NR },
        sock_filter { code: BPF_JMP_JGE_K, jt: 0, jf: 1, k: X32_SYSCALL_BIT },
        sock_filter { code: BPF_RET_K, jt: 0, jf: 0, k: u32::from(SeccompAction::KillProcess) },
    ]
}
