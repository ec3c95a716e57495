//! The owner side of a channel: joins (with the half-open probe), publishes,
//! leaves. The owner's handling order is the channel's total order.
//!
//! These run only on the shard that owns the channel (`router::owner`).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use ahash::AHashMap;
use bytes::Bytes;

use super::channel::{OwnedChannel, PendingJoin};
use super::mesh::{ChannelKey, SessionId, ShardMsg, shard_of};
use super::{Shard, write_members};
use crate::metrics::Counters;
use crate::protocol::close;
use crate::session::Session;

impl Shard {
    pub(super) fn on_join(
        &self,
        channel: Arc<str>,
        uid: Arc<str>,
        session: SessionId,
        header: Bytes,
    ) {
        let now = Instant::now();
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let slot = match st.by_name.get(&channel) {
            Some(&s) => s,
            None => {
                let s = st.next_slot;
                st.next_slot += 1;
                st.by_name.insert(channel.clone(), s);
                st.owned
                    .insert(s, OwnedChannel::new(channel, self.mesh.shards(), now));
                s
            }
        };
        let key = ((self.id as u64) << 48) | slot as u64;
        let ch = st.owned.get_mut(&slot).expect("inserted above");
        if ch.pending.contains_key(&uid) {
            self.submit(
                shard_of(session),
                ShardMsg::Refused {
                    session,
                    close: close::DUPLICATE,
                },
            );
            return;
        }
        if let Some(&incumbent) = ch.members.get(&uid) {
            ch.pending
                .insert(uid.clone(), PendingJoin { session, header });
            self.submit(
                shard_of(incumbent),
                ShardMsg::Probe {
                    session: incumbent,
                    key,
                    uid,
                },
            );
            return;
        }
        self.admit(ch, &st.members, key, uid, session, header, now);
    }

    /// Joins `session`: header to the members, history to the joiner, header into history.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &self,
        ch: &mut OwnedChannel,
        members: &AHashMap<ChannelKey, Vec<Rc<Session>>>,
        key: ChannelKey,
        uid: Arc<str>,
        session: SessionId,
        header: Bytes,
        now: Instant,
    ) {
        let link = header.is_empty();
        if !link {
            self.fan_out(ch, members, key, session, &header);
        }
        let history = ch.history.snapshot();
        if !link {
            ch.history.push(
                header,
                self.limits.history_frames,
                self.limits.history_bytes,
            );
        }
        ch.add_member(uid.clone(), session);
        if !link && !ch.linked {
            ch.linked = true;
            self.start_links(&ch.name);
        } else if link && ch.client_members() == 0 {
            // Every client left while this link was connecting.
            self.stop_links(ch);
        }
        ch.last_activity = now;
        Counters::add(&self.counters().joins, 1);
        tracing::debug!(channel = %ch.name, %uid, members = ch.members.len(), "joined");
        self.submit(
            shard_of(session),
            ShardMsg::Joined {
                session,
                key,
                uid,
                history,
            },
        );
    }

    /// Sends `frame` to every shard with members, writing local members directly.
    fn fan_out(
        &self,
        ch: &OwnedChannel,
        members: &AHashMap<ChannelKey, Vec<Rc<Session>>>,
        key: ChannelKey,
        origin: SessionId,
        frame: &Bytes,
    ) {
        for &s in &ch.member_shards {
            if s == self.id {
                let n = write_members(members.get(&key), origin, frame, self.limits.max_queue);
                Counters::add(&self.counters().delivered, n);
            } else {
                let msg = ShardMsg::Deliver {
                    key,
                    origin,
                    frame: frame.clone(),
                };
                if self.mesh.send(s, msg).is_err() {
                    tracing::debug!(
                        shard = self.id,
                        to = s,
                        "deliver to a stopped shard dropped"
                    );
                }
            }
        }
    }

    pub(super) fn on_publish(&self, key: ChannelKey, origin: SessionId, frame: Bytes, dedup: bool) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(ch) = st.owned.get_mut(&(key as u32)) else {
            return;
        };
        if dedup && ch.history.contains(&frame) {
            Counters::add(&self.counters().dedup_dropped, 1);
            return;
        }
        Counters::add(&self.counters().published, 1);
        self.fan_out(ch, &st.members, key, origin, &frame);
        ch.history
            .push(frame, self.limits.history_frames, self.limits.history_bytes);
        ch.last_activity = Instant::now();
    }

    pub(super) fn on_leave(&self, key: ChannelKey, uid: &str, session: SessionId) {
        let mut st = self.state.borrow_mut();
        if let Some(ch) = st.owned.get_mut(&(key as u32))
            && ch.remove_member(uid, session)
        {
            ch.last_activity = Instant::now();
            tracing::debug!(channel = %ch.name, %uid, members = ch.members.len(), "left");
            if ch.linked && ch.client_members() == 0 {
                self.stop_links(ch);
            }
        }
    }

    /// The last client left: close the channel's peer links (they end rather
    /// than reconnect); the next client to join starts them again, and they
    /// resync. Without this, every channel ever used would keep its links.
    fn stop_links(&self, ch: &mut OwnedChannel) {
        ch.linked = false;
        for session in ch.link_sessions() {
            self.submit(
                shard_of(session),
                ShardMsg::Refused {
                    session,
                    close: close::CHANNEL_EMPTY,
                },
            );
        }
    }

    pub(super) fn on_probe_result(
        &self,
        key: ChannelKey,
        uid: Arc<str>,
        incumbent: SessionId,
        alive: bool,
    ) {
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let Some(ch) = st.owned.get_mut(&(key as u32)) else {
            return;
        };
        let Some(pending) = ch.pending.remove(&uid) else {
            return;
        };
        if alive && ch.members.get(&uid) == Some(&incumbent) {
            self.submit(
                shard_of(pending.session),
                ShardMsg::Refused {
                    session: pending.session,
                    close: close::DUPLICATE,
                },
            );
            return;
        }
        ch.remove_member(&uid, incumbent);
        Counters::add(&self.counters().probe_replaced, 1);
        tracing::debug!(channel = %ch.name, %uid, "half-open incumbent replaced");
        self.admit(
            ch,
            &st.members,
            key,
            uid,
            pending.session,
            pending.header,
            Instant::now(),
        );
    }
}
