//! Requests, responses and events: request-id bookkeeping and version checks.

use super::{MAX_PENDING_REQUESTS, Session, SessionError, SessionEvent, Side, chain, violation};
use crate::codec::Frame;
use crate::message::{self, ErrorCode, ErrorReply, GuestEvent, HostRequest, Reply};

impl Session {
    /// (Host) sends a request; its id comes back with the answer in
    /// [`SessionEvent::Response`].
    pub fn send_request(&mut self, request: &HostRequest) -> Result<u64, SessionError> {
        let version = self.ready()?;
        if self.side != Side::Host {
            return Err(SessionError::WrongSide("send_request"));
        }
        check_since_local(request.kind(), request.since(), version)?;
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return Err(SessionError::TooManyRequests);
        }
        let body = message::encode_request(request)?;
        let id = self.next_request_id;
        self.push_app(Frame::Request { id, body: body.into() })?;
        self.next_request_id += 1;
        self.requests.insert(id);
        Ok(id)
    }

    /// (Guest) answers request `id`. On an error (the reply too large to
    /// encode, the queue full) the request stays pending: answer it again.
    pub fn respond(&mut self, id: u64, reply: &Reply) -> Result<(), SessionError> {
        let version = self.ready()?;
        if self.side != Side::Guest {
            return Err(SessionError::WrongSide("respond"));
        }
        if !self.requests.contains(&id) {
            return Err(SessionError::UnknownRequest(id));
        }
        if let Ok(r) = reply {
            check_since_local(r.kind(), r.since(), version)?;
        }
        let body = message::encode_reply(reply)?;
        self.push_app(Frame::Response { id, body: body.into() })?;
        self.requests.remove(&id);
        Ok(())
    }

    /// (Guest) sends an event.
    pub fn send_event(&mut self, event: &GuestEvent) -> Result<(), SessionError> {
        let version = self.ready()?;
        if self.side != Side::Guest {
            return Err(SessionError::WrongSide("send_event"));
        }
        check_since_local(event.kind(), event.since(), version)?;
        let body = message::encode_event(event)?;
        self.push_app(Frame::Event { body: body.into() })
    }

    pub(super) fn on_request(
        &mut self,
        id: u64,
        body: &[u8],
        version: u16,
    ) -> Result<Option<SessionEvent>, SessionError> {
        if self.requests.contains(&id) {
            return Err(violation(format!("request id {id} reused while pending")));
        }
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return Err(violation(format!("more than {MAX_PENDING_REQUESTS} pending requests")));
        }
        let refusal = match message::decode_request(body) {
            Ok(request) if request.since() <= version => {
                self.requests.insert(id);
                return Ok(Some(SessionEvent::Request { id, request }));
            }
            Ok(request) => ErrorReply::new(
                ErrorCode::Unsupported,
                format!("{} needs protocol version {}, session speaks {version}", request.kind(), request.since()),
            ),
            Err(e) => message::undecodable_request_reply(body, &e),
        };
        let body = message::encode_reply(&Err(refusal))?;
        self.push_answer(Frame::Response { id, body: body.into() })?;
        Ok(None)
    }

    pub(super) fn on_event(body: &[u8], version: u16) -> Result<Option<SessionEvent>, SessionError> {
        let event = message::decode_event(body).map_err(|e| violation(format!("event: {}", chain(&e))))?;
        check_since(event.kind(), event.since(), version)?;
        Ok(Some(SessionEvent::Event(event)))
    }

    pub(super) fn on_response(
        &mut self,
        id: u64,
        body: &[u8],
        version: u16,
    ) -> Result<Option<SessionEvent>, SessionError> {
        if !self.requests.remove(&id) {
            return Err(violation(format!("response to unknown request {id}")));
        }
        let reply = message::decode_reply(body).map_err(|e| violation(format!("response {id}: {}", chain(&e))))?;
        if let Ok(r) = &reply {
            check_since(r.kind(), r.since(), version)?;
        }
        Ok(Some(SessionEvent::Response { id, reply }))
    }
}

fn check_since(kind: &'static str, since: u16, version: u16) -> Result<(), SessionError> {
    if since > version {
        return Err(violation(format!("{kind} needs protocol version {since}, session speaks {version}")));
    }
    Ok(())
}

fn check_since_local(kind: &'static str, since: u16, version: u16) -> Result<(), SessionError> {
    if since > version {
        return Err(SessionError::Unsupported { kind, since, version });
    }
    Ok(())
}
