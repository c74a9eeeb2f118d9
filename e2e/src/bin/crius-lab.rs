//! `crius-lab`: the small programs the KVM lab's tests run on both sides of
//! a VM (`e2e/kvm-lab/`): inside the guest over AF_VSOCK, and in the lab
//! host over the VMM's unix sockets and control socket.
//!
//! ```text
//! crius-lab vsock-echo-server PORT      guest: answer one connection's line with "guest got: LINE"
//! crius-lab vsock-send CID PORT MSG     guest: send MSG to CID:PORT, print the answer line
//! crius-lab uds-connect UDS PORT MSG    host: CONNECT PORT through the VMM's vsock socket, send MSG, print the answer
//! crius-lab uds-echo-server PATH        host: answer one connection's line with "host got: LINE"
//! crius-lab ctl DIR status|shutdown     host: ask the VMM in DIR over its control socket
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use vsock::{VMADDR_CID_ANY, VsockAddr, VsockListener, VsockStream};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crius-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[&str]) -> Result<()> {
    match args {
        ["vsock-echo-server", port] => {
            let listener =
                VsockListener::bind(&VsockAddr::new(VMADDR_CID_ANY, port.parse()?)).context("vsock listen")?;
            println!("crius-lab: listening on vsock port {port}");
            let (stream, _) = listener.accept().context("vsock accept")?;
            answer(stream, "guest got")
        }
        ["vsock-send", cid, port, msg] => {
            let stream = VsockStream::connect(&VsockAddr::new(cid.parse()?, port.parse()?)).context("vsock connect")?;
            println!("{}", exchange(stream, msg)?);
            Ok(())
        }
        ["uds-connect", uds, port, msg] => {
            let mut stream = UnixStream::connect(uds).with_context(|| format!("connect {uds}"))?;
            writeln!(stream, "CONNECT {port}")?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut ok = String::new();
            reader.read_line(&mut ok)?;
            if !ok.starts_with("OK ") {
                bail!("the VMM answered {ok:?} to CONNECT {port}");
            }
            writeln!(stream, "{msg}")?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            println!("{}", line.trim_end());
            Ok(())
        }
        ["uds-echo-server", path] => {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).with_context(|| format!("bind {path}"))?;
            let (stream, _) = listener.accept()?;
            answer(stream, "host got")
        }
        ["ctl", dir, "status"] => {
            let status = crius_vmm::process::Client::new(Path::new(dir)).status()?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(())
        }
        ["ctl", dir, "shutdown"] => {
            let status = crius_vmm::process::Client::new(Path::new(dir)).shutdown()?;
            println!("{}", serde_json::to_string(&status)?);
            Ok(())
        }
        _ => bail!("usage: see the top of e2e/src/bin/crius-lab.rs"),
    }
}

/// Reads one line and answers `"<prefix>: <line>"`.
fn answer(stream: impl Read + Write, prefix: &str) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let reply = format!("{prefix}: {}\n", line.trim_end());
    reader.get_mut().write_all(reply.as_bytes())?;
    print!("{reply}");
    Ok(())
}

/// Sends `msg` and a newline, returns the answer line.
fn exchange(stream: impl Read + Write, msg: &str) -> Result<String> {
    let mut reader = BufReader::new(stream);
    reader.get_mut().write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}
