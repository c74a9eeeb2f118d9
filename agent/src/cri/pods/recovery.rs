//! Recovery at start: what a crash or a reboot left of the pods.

use crius_network::bridge::AttachedPod;

use super::super::AgentState;
use super::{details, teardown_or_mark};
use crate::error::AgentError;
use crate::store::{PodRecord, PodState};

/// At start: rolls back pods a crash left half-made, marks NOTREADY the pods
/// whose namespaces are gone (after a reboot `run_root` is empty), removes
/// containers whose creation was interrupted, and puts the network back for
/// every pod still attached. Each pod is handled on its own: one that cannot
/// be recovered is left NOTREADY with why, and the others still are.
pub fn recover(state: &AgentState) -> Result<(), AgentError> {
    let mut failed = 0;
    for record in state.store.list::<PodRecord>()? {
        if let Err(e) = recover_pod(state, &record) {
            failed += 1;
            tracing::error!(pod_id = %record.id, error = %crate::error::chain(&e), "pod sandbox not recovered");
        }
    }
    let pods = state.store.list::<PodRecord>()?;
    failed += super::super::containers::recover(state, &pods)?;
    let attached: Vec<AttachedPod> = pods
        .iter()
        .filter_map(|record| {
            let network = details(record).ok()?.network.filter(|n| n.attached)?;
            Some(AttachedPod { id: record.id.clone(), ips: network.ips, ports: network.ports })
        })
        .collect();
    state.network.restore(&attached);
    if failed > 0 {
        tracing::warn!(failed, "recovery at start left pods or containers with problems (see their status)");
    }
    Ok(())
}

fn recover_pod(state: &AgentState, record: &PodRecord) -> Result<(), AgentError> {
    if record.state == PodState::Creating {
        tracing::info!(pod_id = %record.id, "removing a pod sandbox whose creation was interrupted");
        return teardown_or_mark(state, record);
    }
    let mark = |problem: String| {
        state.store.update::<PodRecord, AgentError>(&record.id, |r| {
            r.state = PodState::NotReady;
            r.problem.clone_from(&problem);
            Ok(())
        })
    };
    let details = match details(record) {
        Ok(details) => details,
        Err(e) => {
            mark(crate::error::chain(&e))?;
            return Err(e);
        }
    };
    let backend = state.backends.get(&record.runtime_handler)?;
    let intact = details.handle.as_ref().is_some_and(|handle| backend.pod_intact(handle));
    if record.state == PodState::Ready && !intact {
        tracing::warn!(pod_id = %record.id, "pod namespaces are gone (reboot?): marking the sandbox NOTREADY");
        state.store.update::<PodRecord, AgentError>(&record.id, |r| {
            r.state = PodState::NotReady;
            Ok(())
        })?;
    }
    Ok(())
}
