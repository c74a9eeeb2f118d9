//! The kvm-test agent's own life: a host replaced by the next, SIGTERM and
//! SIGKILL from the host by the pid in `guest.pid`.
//! Root, `unshare` (util-linux) and busybox-static are needed.

mod support;

use crius_sandbox::cgroups::{Cgroup, detect_host};
use guest_proto::codec::GoodbyeCode;
use guest_proto::message::{ContainerStatus, GuestReply, HostRequest};
use guest_proto::session::SessionEvent;
use nix::sys::signal::{Signal, kill};
use support::{Agent, Host, can_run, create, setup_pod, state};

/// A container that ends at SIGTERM.
const POLITE: &[&str] = &["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.05; done"];

#[test]
fn a_new_host_connection_replaces_the_old_one() {
    if !can_run("a_new_host_connection_replaces_the_old_one") {
        return;
    }
    let mut agent = Agent::start("replace");
    let mut old = Host::connect(&agent.socket);
    setup_pod(&mut old);
    old.ok(&create(&agent, "c1", POLITE, false));
    old.ok(&HostRequest::StartContainer { id: "c1".into() });
    let mut new = Host::connect(&agent.socket);
    let bye = old.wait_event("Goodbye", |e| matches!(e, SessionEvent::Goodbye { .. }));
    assert!(matches!(bye, SessionEvent::Goodbye { code: GoodbyeCode::Normal, .. }), "{bye:?}");
    assert!(old.wait_closed());
    assert!(matches!(state(&mut new, "c1"), ContainerStatus::Running { .. }), "the container stays");
    assert_eq!(new.ok(&HostRequest::Shutdown), GuestReply::Ok);
    assert_eq!(agent.wait_exit(), 0);
}

#[test]
fn sigterm_stops_the_containers_and_the_agent() {
    if !can_run("sigterm_stops_the_containers_and_the_agent") {
        return;
    }
    let mut agent = Agent::start("sigterm");
    let mut host = Host::connect(&agent.socket);
    setup_pod(&mut host);
    host.ok(&create(&agent, "c1", POLITE, true));
    host.ok(&HostRequest::StartContainer { id: "c1".into() });
    let mode = detect_host().expect("cgroups");
    let cgroup = Cgroup::open(&mode, &agent.cgroup("c1")).expect("cgroup");
    assert!(cgroup.exists());
    kill(agent.pid, Signal::SIGTERM).expect("SIGTERM");
    assert!(host.wait_closed(), "the agent ends the connection; log:\n{}", agent.log());
    assert_eq!(agent.wait_exit(), 0, "log:\n{}", agent.log());
    assert!(!cgroup.exists(), "the container was removed");
    assert!(agent.processes_in_netns().is_empty());
    assert!(!agent.socket.exists());
}

#[test]
fn sigkill_of_the_agent_leaves_no_process() {
    if !can_run("sigkill_of_the_agent_leaves_no_process") {
        return;
    }
    let mut agent = Agent::start("sigkill");
    let mut host = Host::connect(&agent.socket);
    setup_pod(&mut host);
    host.ok(&create(&agent, "c1", POLITE, true));
    host.ok(&HostRequest::StartContainer { id: "c1".into() });
    kill(agent.pid, Signal::SIGKILL).expect("SIGKILL");
    assert_eq!(agent.wait_exit(), 128 + Signal::SIGKILL as i32);
    assert!(host.wait_closed());
    assert!(support::wait_until(|| agent.processes_in_netns().is_empty()), "left: {:?}", agent.processes_in_netns());
    // The container's cgroup is left for the host to remove (Agent's drop does).
}
