//! `crius-guest`: the guest agent of crius KVM pods.
//!
//! PID 1 of the pod's VM (or, for the `kvm-test` handler, a host process in
//! namespaces of its own): it runs the pod's containers with the same
//! namespace runtime as crius's namespace pods (`crius_sandbox::ns`) and
//! serves the host↔guest protocol (`guest_proto`) over one byte stream:
//! vsock port 1024 in a VM, a unix socket in kvm-test. The roles and their
//! command lines are in [`cli`]; how the processes are arranged in [`boot`].
//!
//! It must not trust the host: every request is checked and answered (an
//! error reply, never a panic), and nothing the host sends makes it buffer
//! beyond the protocol's bounds.

mod boot;
mod bridge;
mod cli;
mod conn;
mod crilog;
mod guest;
mod logging;
mod netconf;
mod server;
#[allow(unsafe_code)]
mod sys;
mod vsock;
mod watch;

use std::process::ExitCode;

use cli::Role;

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let role = match cli::parse(&args, std::process::id()) {
        Ok(role) => role,
        Err(e) => {
            eprintln!("crius-guest: {e}");
            return ExitCode::from(2);
        }
    };
    // Internal processes run before any logging or threads.
    if let Role::Internal(rest) = &role {
        return crius_sandbox::ns::internal::run("crius-guest", rest);
    }
    logging::init();
    match role {
        Role::VmInit => boot::vm_init(),
        Role::KvmTest(args) => report(boot::launch_kvm_test(&args).map(|()| 0)),
        Role::KvmTestInit(args) => report(boot::kvm_test_init(&args)),
        Role::Serve(args) => server::serve(&args),
        Role::Internal(_) => ExitCode::FAILURE,
    }
}

fn report(result: Result<i32, boot::BootError>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(255)),
        Err(e) => {
            tracing::error!(error = %crius_sandbox::error_report(&e), "crius-guest failed");
            ExitCode::FAILURE
        }
    }
}
