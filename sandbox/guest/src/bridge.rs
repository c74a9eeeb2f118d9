//! Exec, attach and port forwards: the runtime's processes and connections
//! ([`ProcessIo`], [`DuplexStream`]) joined to the host's streams.
//!
//! Output is read from a process only when its stream has credit: a task
//! reads at most the credit (and 32 KiB), hands the chunk to the
//! connection and waits until the session took it and credit is left
//! before it reads again, so a slow host stalls the process (its pipe
//! fills), never the guest's memory. If the host resets an output stream
//! the output is still read, and dropped, so the process never blocks on
//! it. Input is written as it comes and credited back once written.
//!
//! An exec ends with its output drained (at most [`DRAIN_GRACE`] after the
//! process exits, for output that background processes keep open), its
//! streams half-closed, then `ExecExited`. If the host resets the main
//! stream, or the connection ends, the process is stopped (dropping its
//! wait future kills the exec helper).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use crius_sandbox::backend::{
    ContainerHandle, ExecStart, Input, Outcome, Output, ProcessIo, StreamOptions, StreamRuntime,
};
use guest_proto::codec::StreamId;
use guest_proto::message::{AttachRequest, ErrorCode, ErrorReply, ExecRequest, GuestEvent, GuestReply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::conn::{Cmd, Inbound, Link};
use crate::guest::{Guest, backend_error};

/// Largest chunk read from a process at once.
const CHUNK: usize = 32 << 10;
/// How long output may still flow after the process exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The exit code reported when the exec's end is unknown.
const UNKNOWN_EXIT: i32 = 255;

/// Runs an `Exec` request on its streams.
pub async fn exec(guest: Arc<Guest>, request_id: u64, req: ExecRequest, main: Link, err: Option<Link>) {
    let cmds = main.cmds.clone();
    let started = start_exec(&guest, &req, err.is_some()).await;
    let io = match started {
        Ok(io) => io,
        Err(e) => return refuse(&cmds, request_id, e, [Some(main.id), err.map(|l| l.id)]).await,
    };
    let stream = main.id;
    let Some(outcome) = run(io, request_id, main, err).await else { return };
    let exit_code = match outcome {
        Outcome::Exited(code) => code,
        Outcome::Failed(why) => {
            tracing::warn!(%stream, %why, "exec failed");
            UNKNOWN_EXIT
        }
    };
    let _ = cmds.send(Cmd::Event(GuestEvent::ExecExited { stream, exit_code })).await;
}

async fn start_exec(guest: &Guest, req: &ExecRequest, has_err_stream: bool) -> Result<ProcessIo, ErrorReply> {
    let options = StreamOptions { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
    options.check().map_err(invalid)?;
    if req.stderr && !has_err_stream {
        return Err(invalid("stderr needs a stderr_stream"));
    }
    if req.tty && has_err_stream {
        return Err(invalid("a terminal has no stderr_stream"));
    }
    if req.args.is_empty() {
        return Err(invalid("exec needs a command"));
    }
    if !req.env_extra.is_empty() {
        return Err(ErrorReply::new(ErrorCode::Unsupported, "env_extra is not supported for Exec"));
    }
    let container = guest.container(&req.id)?;
    let start = ExecStart { args: req.args.clone(), options };
    let handle: &ContainerHandle = &container.handle;
    guest.backend().exec(handle, start).await.map_err(|e| backend_error(&e))
}

/// Runs an `Attach` request on its streams.
pub async fn attach(guest: Arc<Guest>, request_id: u64, req: AttachRequest, main: Link, err: Option<Link>) {
    let cmds = main.cmds.clone();
    let io = match start_attach(&guest, &req, err.is_some()).await {
        Ok(io) => io,
        Err(e) => return refuse(&cmds, request_id, e, [Some(main.id), err.map(|l| l.id)]).await,
    };
    run(io, request_id, main, err).await;
}

async fn start_attach(guest: &Guest, req: &AttachRequest, has_err_stream: bool) -> Result<ProcessIo, ErrorReply> {
    let container = guest.container(&req.id)?;
    let tty = container.terminal;
    let options = StreamOptions { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr && !tty, tty };
    options.check().map_err(invalid)?;
    if options.stderr && !has_err_stream {
        return Err(invalid("stderr needs a stderr_stream"));
    }
    if req.stdin && !container.stdin {
        return Err(invalid(format!("container {:?} has no stdin to attach to", req.id)));
    }
    guest.backend().attach(&container.handle, options).await.map_err(|e| backend_error(&e))
}

/// Runs a `PortForward` request on its stream.
pub async fn port_forward(guest: Arc<Guest>, request_id: u64, port: u16, link: Link) {
    let cmds = link.cmds.clone();
    let connected = match guest.pod_handle() {
        Ok(pod) => guest.backend().port_forward(&pod, port).await.map_err(|e| backend_error(&e)),
        Err(e) => Err(e),
    };
    let connection = match connected {
        Ok(c) => c,
        Err(e) => return refuse(&cmds, request_id, e, [Some(link.id), None]).await,
    };
    let _ = cmds.send(Cmd::Respond { id: request_id, reply: Ok(GuestReply::Ok) }).await;
    let (reader, writer) = tokio::io::split(connection);
    let Link { id, inbound, mut gone, credit, cmds } = link;
    let input = tokio::spawn(pump_in(Some(Box::new(writer)), inbound, id, cmds.clone()));
    let out_cmds = cmds.clone();
    let mut output = tokio::spawn(async move {
        pump_out(Some(Box::new(reader)), Some(id), credit, &out_cmds).await;
        let _ = out_cmds.send(Cmd::Close(id)).await;
    });
    tokio::select! {
        _ = &mut output => {
            // The pod side closed: the host's side may still send until it closes.
            tokio::select! {
                _ = input => {}
                _ = &mut gone => {}
            }
        }
        _ = &mut gone => {
            output.abort();
            input.abort();
        }
    }
}

/// Answers a request that could not start, and resets its streams.
async fn refuse(cmds: &mpsc::Sender<Cmd>, request_id: u64, error: ErrorReply, streams: [Option<StreamId>; 2]) {
    let reason = error.message.clone();
    let _ = cmds.send(Cmd::Respond { id: request_id, reply: Err(error) }).await;
    for stream in streams.into_iter().flatten() {
        let _ = cmds.send(Cmd::Reset { stream, reason: reason.clone() }).await;
    }
}

/// Answers the request that started a process, then joins the process to
/// its streams until it ends and its output is drained, and half-closes
/// them; `None` when the main stream went first (the process is stopped).
async fn run(io: ProcessIo, request_id: u64, main: Link, err: Option<Link>) -> Option<Outcome> {
    let ProcessIo { stdin, stdout, stderr, resize, wait } = io;
    let Link { id, inbound, mut gone, credit, cmds } = main;
    // The resizer first: the host may resize as soon as it has the answer.
    if let Some(resize) = resize {
        let _ = cmds.send(Cmd::Resizer { stream: id, resize }).await;
    }
    let _ = cmds.send(Cmd::Respond { id: request_id, reply: Ok(GuestReply::Ok) }).await;
    let input = tokio::spawn(pump_in(stdin, inbound, id, cmds.clone()));
    let out_cmds = cmds.clone();
    let mut out = tokio::spawn(async move { pump_out(stdout, Some(id), credit, &out_cmds).await });
    let (err_id, err_credit) = err.as_ref().map_or((None, 0), |l| (Some(l.id), l.credit));
    let err_cmds = cmds.clone();
    let mut errs = tokio::spawn(async move { pump_out(stderr, err_id, err_credit, &err_cmds).await });
    let outcome = tokio::select! {
        outcome = wait => outcome,
        _ = &mut gone => {
            input.abort();
            out.abort();
            errs.abort();
            return None;
        }
    };
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        let _ = (&mut out).await;
        let _ = (&mut errs).await;
    })
    .await;
    if drained.is_err() {
        out.abort();
        errs.abort();
    }
    input.abort();
    let _ = cmds.send(Cmd::Close(id)).await;
    if let Some(err_id) = err_id {
        let _ = cmds.send(Cmd::Close(err_id)).await;
    }
    drop(err);
    Some(outcome)
}

/// Copies a process's output to a stream, within the stream's credit.
/// Without a stream (or once it is gone) the output is read and dropped.
async fn pump_out(reader: Option<Output>, stream: Option<StreamId>, mut credit: u32, cmds: &mpsc::Sender<Cmd>) {
    let Some(mut reader) = reader else { return };
    let mut stream = stream;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let want = match stream {
            Some(id) if credit == 0 => {
                match send(cmds, id, Bytes::new()).await {
                    Some(c) => credit = c,
                    None => stream = None,
                }
                continue;
            }
            Some(_) => CHUNK.min(credit as usize),
            None => CHUNK,
        };
        let n = match reader.read(&mut buf[..want]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let Some(id) = stream else { continue };
        match send(cmds, id, Bytes::copy_from_slice(&buf[..n])).await {
            Some(c) => credit = c,
            None => stream = None,
        }
    }
}

/// Sends a chunk and waits until the stream has credit again; `None` once
/// the stream is gone.
async fn send(cmds: &mpsc::Sender<Cmd>, stream: StreamId, data: Bytes) -> Option<u32> {
    let (ready, credit) = oneshot::channel();
    cmds.send(Cmd::Data { stream, data, ready }).await.ok()?;
    credit.await.ok()
}

/// Copies what the host sends on a stream into a process's input; at the
/// host's end of input, closes it. Without an input the data is dropped.
async fn pump_in(
    writer: Option<Input>,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    id: StreamId,
    cmds: mpsc::Sender<Cmd>,
) {
    let mut writer = writer;
    while let Some(item) = inbound.recv().await {
        match item {
            Inbound::Data(bytes) => {
                if let Some(w) = writer.as_mut() {
                    let written = w.write_all(&bytes).await.and(w.flush().await);
                    if written.is_err() {
                        writer = None;
                    }
                }
                if cmds.send(Cmd::Consumed { stream: id, n: bytes.len() }).await.is_err() {
                    return;
                }
            }
            Inbound::End => break,
        }
    }
    if let Some(mut w) = writer {
        let _ = w.shutdown().await;
    }
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::InvalidArgument, message)
}
