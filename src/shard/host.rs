//! The narrow handle sessions use: [`Host`] for [`Shard`]. Everything a
//! session asks of its shard goes through these calls.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::task::Waker;

use bytes::Bytes;

use super::Shard;
use super::mesh::ShardMsg;
use crate::channel::{ChannelKey, MemberId, MemberKind, SessionId, owner_of};
use crate::config::Limits;
use crate::protocol::frame::{self, OP_TEXT};
use crate::protocol::header::Header;
use crate::session::{Host, Session};

impl crate::http::Sessions for Shard {
    fn new_session(&self) -> std::rc::Rc<Session> {
        Shard::new_session(self)
    }

    fn start_plain(&self, task: super::PlainSession) {
        match self.plain.get() {
            Some(tasks) => tasks.spawn(task),
            None => {
                tokio::task::spawn_local(task);
            }
        }
    }
}

impl Host for Shard {
    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn scratch(&self) -> &RefCell<Box<[u8]>> {
        &self.scratch
    }

    fn join(&self, session: SessionId, h: Header) {
        let (kind, header) = if h.peer {
            // Another server's link: its header is shown to no one.
            (MemberKind::Link, Bytes::new())
        } else {
            (MemberKind::Client, frame::encode(OP_TEXT, &h.relay))
        };
        self.join_as(session, h.channel.into(), h.uid.into(), kind, header);
    }

    fn publish(&self, key: ChannelKey, origin: SessionId, frame: Bytes, dedup: bool) {
        let msg = ShardMsg::Publish {
            key,
            origin,
            frame,
            dedup,
        };
        self.submit(owner_of(key), msg);
    }

    fn probe_answered(&self, key: ChannelKey, id: MemberId, session: SessionId, alive: bool) {
        let msg = ShardMsg::ProbeResult {
            key,
            id,
            session,
            alive,
        };
        self.submit(owner_of(key), msg);
    }

    fn link_control(&self, key: ChannelKey, session: SessionId, payload: Bytes) {
        let msg = ShardMsg::LinkControl {
            key,
            session,
            payload,
        };
        self.submit(owner_of(key), msg);
    }

    fn must_pause(&self, waker: &Waker) -> bool {
        if !self.mesh.congested() {
            return false;
        }
        // Only while congested (rare), so a linear check is fine; it keeps a
        // session polled again and again from piling up copies.
        let mut paused = self.paused.wakers.borrow_mut();
        if !paused.iter().any(|w| w.will_wake(waker)) {
            paused.push(waker.clone());
        }
        true
    }

    fn charge(&self, bytes: usize) -> bool {
        let c = self.counters();
        if self.mesh.memory.try_grow(bytes) {
            c.partial_bytes.fetch_add(bytes as i64, Ordering::Relaxed);
            true
        } else {
            c.budget_refusals.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    fn discharge(&self, bytes: usize) {
        if bytes > 0 {
            self.mesh.memory.shrink(bytes);
            let c = self.counters();
            c.partial_bytes.fetch_sub(bytes as i64, Ordering::Relaxed);
        }
    }

    fn ended(&self, s: &Session) {
        let c = self.counters();
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        c.closed(s.close_code());
        let joined = s.take_joined();
        let kind = self
            .registry
            .borrow_mut()
            .remove(s.id, joined.as_ref().map(|j| j.0));
        if let (Some((key, uid)), Some(kind)) = (joined, kind) {
            let msg = ShardMsg::Leave {
                key,
                id: (kind, uid),
                session: s.id,
            };
            self.submit(owner_of(key), msg);
        }
        if self.is_shutting_down() && self.registry.borrow().is_empty() {
            self.shutdown.drained.notify_one();
        }
    }
}
