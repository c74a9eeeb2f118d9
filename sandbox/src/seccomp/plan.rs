//! Profile to plan: resolves names to numbers, evaluates capability conditions
//! and groups the rules by action. Pure: no I/O, no kernel.

use std::collections::{BTreeMap, HashSet};

use seccompiler::{SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::SeccompError;
use super::profile::{Arg, CapFilter, Profile, Syscall};

/// Largest errno the kernel hands back to user space.
const MAX_ERRNO: u32 = 4095;
/// `SECCOMP_RET_DATA` is 16 bits wide.
const MAX_RET_DATA: u32 = 0xffff;
/// Highest syscall argument index.
const MAX_ARG_INDEX: u32 = 5;

/// What the profile asks for, ready to be emitted as BPF.
#[derive(Debug)]
pub(super) struct Plan {
    /// Action when no group matches.
    pub(super) default: SeccompAction,
    /// Groups in order of first appearance in the profile; the first match wins.
    pub(super) groups: Vec<Group>,
    /// Syscall names the architecture's table does not know, skipped.
    pub(super) skipped: Vec<String>,
}

/// All rules sharing one action.
#[derive(Debug)]
pub(super) struct Group {
    /// Action taken when a rule of the group matches.
    pub(super) action: SeccompAction,
    /// Syscall number to its conditional rules (OR'ed); `None` matches unconditionally.
    pub(super) rules: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

/// Where the profile came from, for error messages.
struct Ctx<'a> {
    origin: &'a str,
}

impl Ctx<'_> {
    fn malformed(&self, field: impl Into<String>, reason: impl Into<String>) -> SeccompError {
        SeccompError::Malformed { profile: self.origin.to_owned(), field: field.into(), reason: reason.into() }
    }

    fn backend(&self, source: seccompiler::BackendError) -> SeccompError {
        SeccompError::Compile { profile: self.origin.to_owned(), source }
    }
}

/// Builds the plan for `profile`.
///
/// `caps` are the container's capability names in canonical form (`CAP_X`);
/// `table` maps syscall names to numbers for the target architecture.
pub(super) fn build(
    profile: &Profile,
    origin: &str,
    caps: &HashSet<String>,
    table: &[(&str, i64)],
) -> Result<Plan, SeccompError> {
    let ctx = Ctx { origin };
    let default = action(&ctx, "defaultAction", &profile.default_action, profile.default_errno_ret)?;
    if profile.flags.as_ref().is_some_and(|f| !f.is_empty()) {
        tracing::debug!(profile = origin, flags = ?profile.flags, "seccomp profile flags are not applied");
    }
    let mut plan = Plan { default, groups: Vec::new(), skipped: Vec::new() };
    for (i, entry) in profile.syscalls.iter().flatten().enumerate() {
        let field = format!("syscalls[{i}]");
        if !applies(entry, caps) {
            continue;
        }
        let act = action(&ctx, &format!("{field}.action"), &entry.action, entry.errno_ret)?;
        let rules = entry_rules(&ctx, &field, entry.args.as_deref().unwrap_or_default())?;
        let names: Vec<&String> = entry.names.iter().flatten().chain(entry.name.iter()).collect();
        if names.is_empty() {
            return Err(ctx.malformed(format!("{field}.names"), "no syscall names"));
        }
        let group = group_for(&mut plan.groups, act);
        for name in names {
            let Some(nr) = lookup(table, name) else {
                plan.skipped.push(name.clone());
                continue;
            };
            merge(group.rules.entry(nr).or_insert_with(|| Some(Vec::new())), rules.clone());
        }
    }
    plan.groups.retain(|g| !g.rules.is_empty());
    Ok(plan)
}

/// Looks a syscall name up in an architecture table.
pub(super) fn lookup(table: &[(&str, i64)], name: &str) -> Option<i64> {
    table.iter().find(|(n, _)| *n == name).map(|&(_, nr)| nr)
}

/// Whether the Docker-style capability conditions of `entry` hold.
fn applies(entry: &Syscall, caps: &HashSet<String>) -> bool {
    let names = |f: &Option<CapFilter>| -> Vec<String> {
        f.as_ref().and_then(|f| f.caps.as_ref()).into_iter().flatten().map(|c| ::caps::to_canonical(c)).collect()
    };
    names(&entry.includes).iter().all(|c| caps.contains(c)) && !names(&entry.excludes).iter().any(|c| caps.contains(c))
}

/// The group for `act`, created at the end if new.
fn group_for(groups: &mut Vec<Group>, act: SeccompAction) -> &mut Group {
    let pos = match groups.iter().position(|g| g.action == act) {
        Some(pos) => pos,
        None => {
            groups.push(Group { action: act, rules: BTreeMap::new() });
            groups.len() - 1
        }
    };
    &mut groups[pos]
}

/// ORs `new` into `slot`; an unconditional match (`None`) absorbs everything.
fn merge(slot: &mut Option<Vec<SeccompRule>>, new: Option<Vec<SeccompRule>>) {
    match (slot.as_mut(), new) {
        (Some(existing), Some(mut new)) => existing.append(&mut new),
        (Some(_), None) => *slot = None,
        (None, _) => {}
    }
}

/// Translates an `SCMP_ACT_*` name and its errno/trace value.
fn action(ctx: &Ctx<'_>, field: &str, name: &str, ret: Option<u32>) -> Result<SeccompAction, SeccompError> {
    let with_ret = |max: u32| match ret {
        None => Ok(libc::EPERM as u32),
        Some(v) if v <= max => Ok(v),
        Some(v) => Err(ctx.malformed(field, format!("return value {v} is larger than {max}"))),
    };
    let no_ret = |act: SeccompAction| match ret {
        None => Ok(act),
        Some(_) => Err(ctx.malformed(field, format!("{name} takes no errnoRet"))),
    };
    match name {
        "SCMP_ACT_ALLOW" => no_ret(SeccompAction::Allow),
        "SCMP_ACT_ERRNO" => Ok(SeccompAction::Errno(with_ret(MAX_ERRNO)?)),
        "SCMP_ACT_TRACE" => Ok(SeccompAction::Trace(with_ret(MAX_RET_DATA)?)),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => no_ret(SeccompAction::KillThread),
        "SCMP_ACT_KILL_PROCESS" => no_ret(SeccompAction::KillProcess),
        "SCMP_ACT_TRAP" => no_ret(SeccompAction::Trap),
        "SCMP_ACT_LOG" => no_ret(SeccompAction::Log),
        "SCMP_ACT_NOTIFY" => Err(SeccompError::Unsupported { what: format!("{name} in {field}") }),
        other => Err(ctx.malformed(field, format!("unknown action {other:?}"))),
    }
}

/// The rules of one entry: `None` when it has no argument conditions.
///
/// Like runc: conditions on distinct arguments are AND'ed into one rule; if
/// any argument index repeats, every condition becomes a rule of its own (OR).
fn entry_rules(ctx: &Ctx<'_>, field: &str, args: &[Arg]) -> Result<Option<Vec<SeccompRule>>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let conds = args
        .iter()
        .enumerate()
        .map(|(j, a)| condition(ctx, &format!("{field}.args[{j}]"), a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut seen = HashSet::new();
    let repeated = args.iter().any(|a| !seen.insert(a.index));
    let rules = if repeated {
        conds.into_iter().map(|c| SeccompRule::new(vec![c])).collect::<Result<Vec<_>, _>>()
    } else {
        SeccompRule::new(conds).map(|r| vec![r])
    };
    rules.map(Some).map_err(|e| ctx.backend(e))
}

/// Translates one argument condition (64-bit comparison, as libseccomp does).
fn condition(ctx: &Ctx<'_>, field: &str, arg: &Arg) -> Result<SeccompCondition, SeccompError> {
    let index = u8::try_from(arg.index)
        .ok()
        .filter(|i| u32::from(*i) <= MAX_ARG_INDEX)
        .ok_or_else(|| ctx.malformed(format!("{field}.index"), format!("{} is not 0 to 5", arg.index)))?;
    let (op, datum) = match arg.op.as_str() {
        "SCMP_CMP_EQ" => (SeccompCmpOp::Eq, arg.value),
        "SCMP_CMP_NE" => (SeccompCmpOp::Ne, arg.value),
        "SCMP_CMP_LT" => (SeccompCmpOp::Lt, arg.value),
        "SCMP_CMP_LE" => (SeccompCmpOp::Le, arg.value),
        "SCMP_CMP_GT" => (SeccompCmpOp::Gt, arg.value),
        "SCMP_CMP_GE" => (SeccompCmpOp::Ge, arg.value),
        "SCMP_CMP_MASKED_EQ" => (SeccompCmpOp::MaskedEq(arg.value), arg.value_two),
        other => return Err(ctx.malformed(format!("{field}.op"), format!("unknown operator {other:?}"))),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, datum).map_err(|e| ctx.backend(e))
}
