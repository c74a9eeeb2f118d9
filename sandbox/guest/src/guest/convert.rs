//! Pure conversions from the runtime's terms to the protocol's.

use crius_sandbox::backend::{ContainerUsage, ExitInfo, RunState};
use guest_proto::message::{
    ContainerStats, ContainerStatus, CpuStats, ExitStatus, InterfaceStats, MemoryStats, PodStats,
};

/// The exit code of a container that is gone without a trace.
const GONE_EXIT_CODE: i32 = 255;

/// A container's state for the host.
pub fn status(state: &RunState, created_at_ns: u64, started_at_ns: u64) -> ContainerStatus {
    match state {
        RunState::Creating | RunState::Created => ContainerStatus::Created { created_at_ns },
        RunState::Running => ContainerStatus::Running { started_at_ns },
        RunState::Exited(info) => ContainerStatus::Exited(exit_status(info)),
        RunState::Gone(why) => ContainerStatus::Exited(ExitStatus {
            exit_code: GONE_EXIT_CODE,
            signal: None,
            started_at_ns,
            finished_at_ns: 0,
            oom_killed: false,
            reason: "Unknown".into(),
            message: why.clone(),
        }),
    }
}

/// How a container ended, with the reason CRI reports. The runtime does
/// not say which signal killed a process (an exit code above 128 may be
/// either), so `signal` is left unset.
pub fn exit_status(info: &ExitInfo) -> ExitStatus {
    let reason = if info.oom_killed {
        "OOMKilled"
    } else if info.start_error.is_some() {
        "StartError"
    } else if info.exit_code == 0 {
        "Completed"
    } else {
        "Error"
    };
    ExitStatus {
        exit_code: info.exit_code,
        signal: None,
        started_at_ns: u64::try_from(info.started_at_ns).unwrap_or(0),
        finished_at_ns: u64::try_from(info.finished_at_ns).unwrap_or(0),
        oom_killed: info.oom_killed,
        reason: reason.into(),
        message: info.start_error.clone().unwrap_or_default(),
    }
}

/// A container's usage. Page faults are not read from the cgroup (0).
pub fn container_stats(id: &str, usage: &ContainerUsage) -> ContainerStats {
    ContainerStats {
        id: id.to_owned(),
        cpu: CpuStats { usage_ns: usage.cpu_usage_ns },
        memory: MemoryStats {
            working_set_bytes: usage.memory_working_set_bytes,
            usage_bytes: usage.memory_usage_bytes,
            rss_bytes: usage.memory_rss,
            page_faults: 0,
            major_page_faults: 0,
            available_bytes: usage.memory_limit.map(|limit| limit.saturating_sub(usage.memory_working_set_bytes)),
        },
        pids: usage.pids_current,
    }
}

/// The pod's usage: the sum of its containers', and the interfaces.
pub fn pod_stats(containers: &[ContainerStats], network: Vec<InterfaceStats>) -> PodStats {
    let mut pod = PodStats { network, ..PodStats::default() };
    for c in containers {
        pod.cpu.usage_ns = pod.cpu.usage_ns.saturating_add(c.cpu.usage_ns);
        let (m, add) = (&mut pod.memory, &c.memory);
        m.working_set_bytes = m.working_set_bytes.saturating_add(add.working_set_bytes);
        m.usage_bytes = m.usage_bytes.saturating_add(add.usage_bytes);
        m.rss_bytes = m.rss_bytes.saturating_add(add.rss_bytes);
        pod.pids = pod.pids.saturating_add(c.pids);
    }
    pod
}

/// Interfaces and counters from `/proc/net/dev` (loopback left out).
pub fn parse_net_dev(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let fields: Vec<u64> = counters.split_whitespace().map(|f| f.parse().ok()).collect::<Option<_>>()?;
            // Receive: bytes packets errs ...(8 fields); transmit: bytes packets errs ...
            if name == "lo" || fields.len() < 16 {
                return None;
            }
            Some(InterfaceStats {
                name: name.to_owned(),
                rx_bytes: fields[0],
                rx_errors: fields[2],
                tx_bytes: fields[8],
                tx_errors: fields[10],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_map_to_the_protocols() {
        assert_eq!(status(&RunState::Creating, 5, 0), ContainerStatus::Created { created_at_ns: 5 });
        assert_eq!(status(&RunState::Created, 5, 0), ContainerStatus::Created { created_at_ns: 5 });
        assert_eq!(status(&RunState::Running, 5, 9), ContainerStatus::Running { started_at_ns: 9 });
        let exited = |info: ExitInfo| match status(&RunState::Exited(info), 5, 9) {
            ContainerStatus::Exited(exit) => exit,
            other => panic!("{other:?}"),
        };
        let base =
            ExitInfo { exit_code: 0, started_at_ns: 10, finished_at_ns: 20, start_error: None, oom_killed: false };
        let done = exited(base.clone());
        assert_eq!((done.reason.as_str(), done.started_at_ns, done.finished_at_ns), ("Completed", 10, 20));
        assert_eq!(exited(ExitInfo { exit_code: 1, ..base.clone() }).reason, "Error");
        let oom = exited(ExitInfo { exit_code: 137, oom_killed: true, ..base.clone() });
        assert_eq!((oom.reason.as_str(), oom.oom_killed), ("OOMKilled", true));
        let failed = exited(ExitInfo { exit_code: 128, start_error: Some("no such file".into()), ..base });
        assert_eq!((failed.reason.as_str(), failed.message.as_str()), ("StartError", "no such file"));
        match status(&RunState::Gone("rebooted".into()), 5, 9) {
            ContainerStatus::Exited(e) => assert_eq!((e.exit_code, e.reason.as_str()), (255, "Unknown")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_pod_sums_its_containers() {
        let usage = ContainerUsage {
            cpu_usage_ns: 100,
            memory_usage_bytes: 50,
            memory_working_set_bytes: 40,
            memory_rss: 30,
            memory_limit: Some(100),
            pids_current: 2,
            oom_kills: 0,
        };
        let one = container_stats("a", &usage);
        assert_eq!(one.memory.available_bytes, Some(60));
        let pod = pod_stats(&[one.clone(), container_stats("b", &usage)], Vec::new());
        assert_eq!((pod.cpu.usage_ns, pod.memory.working_set_bytes, pod.pids), (200, 80, 4));
        assert_eq!(container_stats("c", &ContainerUsage::default()).memory.available_bytes, None);
    }

    #[test]
    fn net_dev_is_parsed() {
        let text = "Inter-|   Receive                            |  Transmit\n \
            face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
            lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
            eth0: 1000 10 1 0 0 0 0 0 2000 20 2 0 0 0 0 0\n";
        let got = parse_net_dev(text);
        assert_eq!(got.len(), 1);
        let eth0 = &got[0];
        assert_eq!(
            (eth0.name.as_str(), eth0.rx_bytes, eth0.rx_errors, eth0.tx_bytes, eth0.tx_errors),
            ("eth0", 1000, 1, 2000, 2)
        );
    }
}
