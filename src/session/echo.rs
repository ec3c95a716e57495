//! The echo conformance mode (`--conformance-echo`, hidden): a [`Host`]
//! that sends every message a session publishes back to that session, for
//! running Autobahn|Testsuite against the real session and frame code.
//!
//! Only routing differs from a real session: no header frame is expected
//! (the session is a member from its first byte, of no channel) and nothing
//! reaches a channel owner. Framing, UTF-8 and close handling, limits,
//! keepalive and shutdown are the wrapped host's and the session's own.
//! Never used unless the flag is given.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use super::{Host, Session};
use crate::channel::{ChannelKey, MemberId, SessionId};
use crate::config::Limits;
use crate::protocol::header::Header;

/// The key an echo session is a "member" of; never routed anywhere.
const ECHO_KEY: ChannelKey = 0;

/// Wraps a session's real host, replacing routing with echo.
pub struct EchoHost<H: Host> {
    inner: Rc<H>,
    session: Weak<Session>,
}

impl<H: Host> EchoHost<H> {
    /// Makes `session` a member at once and returns its echoing host.
    pub fn new(inner: Rc<H>, session: &Rc<Session>) -> EchoHost<H> {
        session.begin_join();
        session.joined(ECHO_KEY, Arc::from(""), Vec::new(), false);
        EchoHost {
            inner,
            session: Rc::downgrade(session),
        }
    }
}

impl<H: Host> Host for EchoHost<H> {
    fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    fn scratch(&self) -> &RefCell<Box<[u8]>> {
        self.inner.scratch()
    }

    fn join(&self, _session: SessionId, _header: Header) {
        // Unreachable: an echo session starts as a member and never sends a header.
    }

    fn publish(&self, _key: ChannelKey, _origin: SessionId, frame: Bytes, _dedup: bool) {
        if let Some(s) = self.session.upgrade() {
            s.push(frame, self.inner.limits().max_queue);
        }
    }

    fn probe_answered(&self, _key: ChannelKey, _id: MemberId, _session: SessionId, _alive: bool) {
        // Echo sessions are never probed: they join no channel.
    }

    fn link_control(&self, _key: ChannelKey, _session: SessionId, _payload: Bytes) {
        // Echo sessions are never peer links.
    }

    fn must_pause(&self, waker: &Waker) -> bool {
        self.inner.must_pause(waker)
    }

    fn ended(&self, session: &Session) {
        self.inner.ended(session)
    }

    fn charge(&self, bytes: usize) -> bool {
        self.inner.charge(bytes)
    }

    fn discharge(&self, bytes: usize) {
        self.inner.discharge(bytes)
    }
}
