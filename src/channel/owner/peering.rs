//! The owner's side of peer links (PROTOCOL.md §7): each link's state, the
//! sync that ends a link's history, the resync that aligns it with ours,
//! the routes that are advertised over links, and the refusal of a link
//! that would close a cycle.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Action, Owner, Tally, channel_mut};
use crate::channel::links::{Alignment, Control, LinkEnds, MAX_ROUTES, align};
use crate::channel::sequencer::{Origin, Sequencer};
use crate::channel::{ChannelKey, MemberKind, SessionId};
use crate::protocol::close;

/// How long a link's frames count as the peer's history when the peer sends
/// no sync (a server without control messages): its history replay arrives
/// at once on joining, so a few seconds is ample even on a loaded machine.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// What the owner keeps about one link member.
#[derive(Debug)]
pub struct LinkState {
    kind: MemberKind,
    since: Instant,
    /// The peer's frames before its sync (its history, to align with ours);
    /// `None` once synced.
    resync: Option<Vec<Bytes>>,
    resync_bytes: usize,
    /// The peer's node id, from its sync.
    peer: Option<u64>,
    /// Nodes reachable through this link: the peer and what it advertises.
    routes: Vec<u64>,
    /// What this server last advertised over the link.
    advertised: Vec<u64>,
    /// Refused for closing a cycle: it carries nothing more.
    refused: bool,
    /// Counted in [`super::Tally::links`] (synced and not refused).
    counted: bool,
    /// When it synced, in the owner's order (0: not yet).
    synced_as: u64,
}

impl LinkState {
    fn new(kind: MemberKind, now: Instant) -> LinkState {
        LinkState {
            kind,
            since: now,
            resync: Some(Vec::new()),
            resync_bytes: 0,
            peer: None,
            routes: Vec::new(),
            advertised: Vec::new(),
            refused: false,
            counted: false,
            synced_as: 0,
        }
    }

    /// Keeps a frame of the peer's history until its sync, within the
    /// history bounds; false when the link is synced (the frame is live).
    pub(super) fn buffer(&mut self, frame: &Bytes, max_frames: usize, max_bytes: usize) -> bool {
        if self.refused {
            return true;
        }
        let Some(frames) = &mut self.resync else {
            return false;
        };
        frames.push(frame.clone());
        self.resync_bytes += frame.len();
        while frames.len() > max_frames || self.resync_bytes > max_bytes {
            self.resync_bytes -= frames.remove(0).len();
        }
        true
    }

    /// A link from another server that synced and was not refused: its
    /// frames are passed on over this server's own links.
    pub(super) fn carries_in(&self) -> bool {
        self.kind == MemberKind::Link && !self.refused && self.resync.is_none()
    }

    /// Whether nodes are reached through this link.
    pub(super) fn routes_through(&self) -> bool {
        !self.refused && !self.routes.is_empty()
    }

    /// Whether the peer's sync arrived (or was waited for long enough).
    pub fn synced(&self) -> bool {
        self.resync.is_none()
    }

    /// The peer's node id, once known.
    pub fn peer(&self) -> Option<u64> {
        self.peer
    }

    /// Nodes reachable through this link.
    pub fn routes(&self) -> &[u64] {
        &self.routes
    }

    fn ends(&self, me: u64) -> Option<LinkEnds> {
        let peer = self.peer?;
        Some(match self.kind {
            MemberKind::OwnLink => LinkEnds {
                initiator: me,
                acceptor: peer,
            },
            _ => LinkEnds {
                initiator: peer,
                acceptor: me,
            },
        })
    }
}

impl<Q: Sequencer> Owner<Q> {
    /// A link was admitted: after its history it gets this server's sync.
    pub(super) fn link_admitted(
        &mut self,
        slot: usize,
        session: SessionId,
        kind: MemberKind,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ch = &mut self.channels[slot];
        let mut link = LinkState::new(kind, now);
        link.advertised = advertisement(&ch.links, session);
        let payload = Control {
            sync: true,
            node: self.node,
            routes: link.advertised.clone(),
        }
        .encode();
        ch.links.insert(session, link);
        self.unsynced += 1;
        out.push(Action::LinkControl { session, payload });
    }

    /// A control message (a Ping payload) arrived from link `session`.
    pub fn link_control(
        &mut self,
        key: ChannelKey,
        session: SessionId,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = Control::parse(payload) else {
            return;
        };
        let Some(ch) = channel_mut(&mut self.channels, key) else {
            return;
        };
        let Some(link) = ch.links.get_mut(&session) else {
            return;
        };
        if link.refused {
            return;
        }
        if c.node == self.node {
            // Another server with our --peer-uid (or a link to ourselves):
            // routes would be meaningless, so the link cannot be kept.
            tracing::warn!(channel = %ch.name, "a peer link reached a server with this server's --peer-uid; refusing it");
            let slot = key as u32 as usize;
            return self.refuse(slot, session, out);
        }
        let history = link.resync.take();
        self.unsynced -= usize::from(history.is_some());
        let mut routes = c.routes;
        routes.push(c.node);
        routes.sort_unstable();
        routes.dedup();
        link.peer = Some(c.node);
        link.routes = routes;
        if !link.counted {
            link.counted = true;
            self.tally.links += 1;
            self.syncs += 1;
            link.synced_as = self.syncs;
        }
        let slot = key as u32 as usize;
        if let Some(refuse) = self.cycle(slot, session) {
            self.refuse(slot, refuse, out);
        }
        let refused = self.channels[slot].links[&session].refused;
        if let Some(frames) = history.filter(|_| !refused) {
            self.resync(slot, session, frames, now, out);
            out.push(Action::OpenLink { session });
        }
        self.advertise(slot, out);
        self.update_links(slot, out);
    }

    /// Links whose peer sent no sync in time: what they sent is their history.
    pub fn tick(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.unsynced == 0 {
            return;
        }
        let mut due = Vec::new();
        for (slot, ch) in self.channels.iter_mut() {
            for (&session, link) in ch.links.iter_mut() {
                if link.resync.is_some() && now.saturating_duration_since(link.since) >= SYNC_WAIT {
                    due.push((slot, session, link.resync.take().unwrap_or_default()));
                    self.unsynced -= 1;
                }
            }
        }
        for (slot, session, frames) in due {
            self.resync(slot, session, frames, now, out);
            out.push(Action::OpenLink { session });
            self.update_links(slot, out);
        }
    }

    /// Adds the part of a peer's history that is new here, as if the link
    /// had just published it; what members already had is not sent again.
    fn resync(
        &mut self,
        slot: usize,
        session: SessionId,
        frames: Vec<Bytes>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let ch = &mut self.channels[slot];
        let (key, name) = (ch.key, ch.name.clone());
        match align(ch.history.iter(), &frames) {
            Alignment::Overlap { new } => {
                if !new.is_empty() {
                    tracing::debug!(channel = %name, new = new.len(), "resync: frames new from the peer");
                }
                let mut frames: Vec<Option<Bytes>> = frames.into_iter().map(Some).collect();
                for i in new {
                    let f = frames[i].take().expect("each index once");
                    let last = self.channels[slot].history.last_seq();
                    let origin = Origin::local(session);
                    if let Some(o) = self.sequencer.order(key, &name, last, origin, f) {
                        self.ordered(key, o, now, out);
                    }
                }
            }
            Alignment::Disjoint if frames.is_empty() => {}
            Alignment::Disjoint => {
                // Nothing in common: a restarted server, or an outage longer
                // than either history. The peer's frames go before ours, and
                // members are not sent them live: they may well have them.
                let n = frames.len();
                let added = ch
                    .history
                    .prepend(frames, self.history_frames, self.history_bytes);
                tracing::info!(
                    channel = %name,
                    added,
                    offered = n,
                    "resync: the peer's history did not line up with ours; \
                     kept as older history, not sent live (frames from the outage may be missing)"
                );
            }
        }
    }

    /// The link to refuse if `session`'s routes close a cycle: of two links
    /// that reach the same node, the one that synced last. Its frames were
    /// held or buffered until now, so refusing it leaves nothing in flight.
    fn cycle(&self, slot: usize, session: SessionId) -> Option<SessionId> {
        let ch = &self.channels[slot];
        let link = &ch.links[&session];
        for (&other, l) in &ch.links {
            if other == session || !l.routes_through() {
                continue;
            }
            if l.routes.iter().any(|r| link.routes.contains(r)) {
                return Some(if l.synced_as > link.synced_as {
                    other
                } else {
                    session
                });
            }
        }
        link.routes.contains(&self.node).then_some(session)
    }

    /// Ends link `session`, which would close a cycle (one warning per channel).
    fn refuse(&mut self, slot: usize, session: SessionId, out: &mut Vec<Action>) {
        let ch = &mut self.channels[slot];
        let Some(link) = ch.links.get_mut(&session) else {
            return;
        };
        link.refused = true;
        self.unsynced -= usize::from(link.resync.take().is_some());
        self.tally.cycles_refused += 1;
        if std::mem::take(&mut link.counted) {
            self.tally.links -= 1;
        }
        let ends = link.ends(self.node);
        if !ch.cycle_logged {
            ch.cycle_logged = true;
            tracing::warn!(
                channel = %ch.name,
                link = ?ends,
                "peer links would form a cycle: refusing this link (links must form a tree)"
            );
        } else {
            tracing::debug!(channel = %ch.name, link = ?ends, "peer link refused: cycle");
        }
        out.push(Action::Refused {
            session,
            close: close::PEER_CYCLE,
        });
        self.update_links(slot, out);
    }

    /// Starts this server's own links for a channel that wants them (see
    /// `OwnedChannel::wants_links`) and ends them when it no longer does.
    /// Accepted links form a tree (cycles are refused), so a chain of links
    /// kept up by links ends at a server with clients, and it comes down
    /// when those clients leave.
    pub(super) fn update_links(&mut self, slot: usize, out: &mut Vec<Action>) {
        let ch = &mut self.channels[slot];
        let wants = ch.wants_links();
        if wants && !ch.linked {
            ch.linked = true;
            out.push(Action::StartLinks {
                key: ch.key,
                channel: ch.name.clone(),
            });
        } else if !wants && ch.linked {
            ch.linked = false;
            out.extend(ch.own_links().map(|session| Action::Refused {
                session,
                close: close::CHANNEL_EMPTY,
            }));
        }
    }

    /// Tells every link what is now reachable through this server, where it changed.
    pub(super) fn advertise(&mut self, slot: usize, out: &mut Vec<Action>) {
        let ch = &mut self.channels[slot];
        let sessions: Vec<SessionId> = ch.links.keys().copied().collect();
        for session in sessions {
            let adv = advertisement(&ch.links, session);
            let link = ch.links.get_mut(&session).expect("listed above");
            if link.refused || link.advertised == adv {
                continue;
            }
            link.advertised = adv.clone();
            let c = Control {
                sync: false,
                node: self.node,
                routes: adv,
            };
            out.push(Action::LinkControl {
                session,
                payload: c.encode(),
            });
        }
    }
}

/// A link member left (or was replaced): forget what was counted for it.
pub(super) fn link_gone(tally: &mut Tally, unsynced: &mut usize, link: Option<LinkState>) {
    if let Some(l) = link {
        tally.links -= i64::from(l.counted);
        *unsynced -= usize::from(l.resync.is_some());
    }
}

/// The nodes reachable through this server for the link `to`: everything
/// the other links reach (split horizon: never what `to` itself brought).
fn advertisement(links: &ahash::AHashMap<SessionId, LinkState>, to: SessionId) -> Vec<u64> {
    let mut v: Vec<u64> = links
        .iter()
        .filter(|(s, l)| **s != to && l.routes_through())
        .flat_map(|(_, l)| l.routes.iter().copied())
        .collect();
    v.sort_unstable();
    v.dedup();
    v.truncate(MAX_ROUTES);
    v
}
