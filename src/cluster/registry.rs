//! The cluster-wide (channel, uid) registry: one joined session per pair,
//! whichever node it is on (PROTOCOL.md §4 across nodes).
//!
//! A JetStream KV bucket holds one entry per joined pair, value
//! `<node> <session>`. Joining *creates* the entry (create-if-absent, so of
//! two nodes racing for one pair exactly one wins); leaving deletes it, but
//! only the revision this node wrote, never a successor's.
//!
//! An entry can outlive its session (a node killed with -9, or NATS down
//! when the session left). So a newcomer that finds the pair taken asks the
//! holder node, over a request on `<prefix>.node.<id>.probe`, whether that
//! session is still there; the holder applies the half-open rule (ping a
//! silent incumbent, 2 s to answer) and says `alive` or `gone`. `gone`, or no
//! node listening on that subject (the node is dead), lets the newcomer take
//! the entry over with a compare-and-set on its revision. So a dead node's
//! pairs are free at once, not after a timeout. Entries nobody reclaims
//! expire with the bucket's `max_age`; the holder re-writes its live entries
//! well before that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_nats::jetstream::{self, stream::StorageType};
use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use futures_util::StreamExt;

use super::envelope::NodeId;
use super::link::BoxFuture;
use super::settings::ClusterSettings;
use super::subject::member_key;

/// Answers another node's question "is your session still there?".
pub trait Prober: Send + Sync + 'static {
    /// Whether `session` on this node is still joined to `channel` as `uid`
    /// (after the half-open ping, when it has been silent).
    fn probe(&self, channel: String, uid: String, session: u64) -> BoxFuture<bool>;

    /// The entry `session` on this node held for (channel, uid) is another
    /// node's now (taken while this node could not keep it up, say cut off
    /// from NATS past the entry's age): the session is closed, so that the
    /// uid stays joined once.
    fn taken_over(&self, channel: String, uid: String, session: u64);
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The pair is this session's now.
    Claimed,
    /// A live session holds it (on `node`).
    Taken { node: String },
}

/// The registry could not be asked (NATS down): refuse the join with 1013.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("cluster registry unavailable: {0}")]
pub struct RegistryError(pub String);

/// An entry lives this long without being written again. Long, because the
/// probe, not the age, frees a dead node's pairs; the age only clears entries
/// nobody comes back for.
pub const ENTRY_MAX_AGE: Duration = Duration::from_secs(3600);
/// Live entries are re-written this often (a third of their life, so two
/// refreshes can fail before one expires).
pub const ENTRY_REFRESH: Duration = Duration::from_secs(1200);
/// Long enough for the holder's half-open rule: 2 s of silence, a ping, 2 s
/// for the pong, and room for the request itself.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(6);
/// Tries of a claim that keeps losing races (each loss means someone else
/// changed the entry in between, so this only bounds a pathological storm).
const CLAIM_ROUNDS: usize = 5;

/// A probe request: which session of the holder node, for which pair.
struct ProbeQuery {
    channel: String,
    uid: String,
    session: u64,
}

impl ProbeQuery {
    fn encode(&self) -> Bytes {
        let v =
            serde_json::json!({"channel": self.channel, "uid": self.uid, "session": self.session});
        Bytes::from(v.to_string())
    }

    fn decode(b: &[u8]) -> Option<ProbeQuery> {
        let v: serde_json::Value = serde_json::from_slice(b).ok()?;
        Some(ProbeQuery {
            channel: v.get("channel")?.as_str()?.to_string(),
            uid: v.get("uid")?.as_str()?.to_string(),
            session: v.get("session")?.as_u64()?,
        })
    }
}

const ALIVE: &[u8] = b"alive";
const GONE: &[u8] = b"gone";

/// A handle on the registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    bucket: String,
    replicas: usize,
    probe_subject: String,
    prefix: String,
    node: NodeId,
    js: jetstream::Context,
    client: Client,
    store: tokio::sync::OnceCell<kv::Store>,
    /// Tells the link to check the bucket exists (a claim failed).
    recheck: Arc<tokio::sync::Notify>,
    /// Closes this node's sessions whose entries another node took.
    prober: Arc<dyn Prober>,
    /// Entries this node wrote and still holds, by (channel, uid). One per
    /// joined session of the node, so kept small: the names are the ones
    /// the channel and the session already share, the KV key and the value
    /// written ("node session") are rebuilt when the entry is refreshed.
    held: Mutex<HashMap<Pair, Held>>,
}

/// (channel, uid).
type Pair = (Arc<str>, Arc<str>);

/// An entry this node holds: the revision it wrote, for the session it holds it for.
#[derive(Clone, Copy)]
struct Held {
    revision: u64,
    session: u64,
}

impl Registry {
    pub(super) fn new(
        settings: &ClusterSettings,
        node: NodeId,
        js: jetstream::Context,
        client: Client,
        recheck: Arc<tokio::sync::Notify>,
        prober: Arc<dyn Prober>,
    ) -> Registry {
        Registry {
            inner: Arc::new(RegistryInner {
                bucket: settings.members_bucket(),
                replicas: settings.replicas,
                probe_subject: settings.probe_subject(node.as_str()),
                prefix: settings.prefix.clone(),
                node,
                js,
                client,
                store: tokio::sync::OnceCell::new(),
                recheck,
                prober,
                held: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Creates the bucket (or updates it to our settings).
    pub(super) async fn setup(&self) -> Result<(), String> {
        let i = &self.inner;
        let store =
            i.js.create_or_update_key_value(kv::Config {
                bucket: i.bucket.clone(),
                description: "mles: who holds each (channel, uid)".into(),
                history: 1,
                max_age: ENTRY_MAX_AGE,
                storage: StorageType::File,
                num_replicas: i.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("NATS bucket {}: {e}", i.bucket))?;
        // Keep the first store: a later setup (after a reconnect) only re-asserts the config.
        let _ = i.store.set(store);
        Ok(())
    }

    /// The JetStream stream that holds the bucket.
    pub(super) fn bucket_stream(&self) -> String {
        format!("KV_{}", self.inner.bucket)
    }

    /// Writes every entry this node holds again, into a bucket created anew
    /// (NATS lost the old one): until then a newcomer on another node would
    /// find its uid free while our session holds it. An entry someone else
    /// wrote meanwhile is theirs (as when a refresh finds it taken over).
    pub(super) async fn restore(&self) {
        let Ok(store) = self.store() else { return };
        let held = self.held_now();
        for (pair, Held { session, .. }) in held {
            self.reassert(store, pair, session).await;
        }
    }

    /// The entries held now (a copy: each is then written with the lock let go).
    fn held_now(&self) -> Vec<(Pair, Held)> {
        self.inner
            .held
            .lock()
            .map(|h| h.iter().map(|(p, e)| (p.clone(), *e)).collect())
            .unwrap_or_default()
    }

    /// Writes the entry of `pair` for `session` where it is missing (the
    /// bucket lost it, or it aged out): kept at its new revision; taken
    /// by another node meanwhile: let go, and the session told.
    async fn reassert(&self, store: &kv::Store, pair: Pair, session: u64) {
        let key = member_key(&pair.0, &pair.1);
        let value = self.value(session);
        let (revision, wrote) = match store.create(&key, value.clone()).await {
            Ok(revision) => (Some(revision), true),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                match store.entry(key.clone()).await {
                    Ok(Some(entry)) if entry.value == value => (Some(entry.revision), false),
                    Ok(_) => (None, false),
                    Err(e) => {
                        tracing::debug!(error = %e, "cluster registry: entry unreadable; next round");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster registry: entry not written; next round");
                return;
            }
        };
        // Only if still held for that session: released meanwhile, what
        // was just written goes again.
        let still = {
            let Ok(mut h) = self.inner.held.lock() else {
                return;
            };
            match (h.get_mut(&pair).filter(|e| e.session == session), revision) {
                (None, _) => false,
                (Some(e), Some(new)) => {
                    e.revision = new;
                    true
                }
                (Some(_), None) => {
                    tracing::warn!(
                        key,
                        "cluster registry: an entry this node held was taken over"
                    );
                    h.remove(&pair);
                    true
                }
            }
        };
        if !still {
            if let (Some(revision), true) = (revision, wrote) {
                let _ = store.delete_expect_revision(&key, Some(revision)).await;
            }
        } else if revision.is_none() {
            self.inner
                .prober
                .taken_over(pair.0.to_string(), pair.1.to_string(), session);
        }
    }

    fn store(&self) -> Result<&kv::Store, RegistryError> {
        self.inner
            .store
            .get()
            .ok_or_else(|| RegistryError("not connected to NATS yet".into()))
    }

    /// Claims (channel, uid) for `session` of this node.
    pub async fn claim(
        &self,
        channel: impl Into<Arc<str>>,
        uid: impl Into<Arc<str>>,
        session: u64,
    ) -> Result<Claim, RegistryError> {
        let claimed = self.try_claim((channel.into(), uid.into()), session).await;
        if claimed.is_err() {
            // Perhaps the bucket is gone (a NATS that lost its data): have the link look.
            self.inner.recheck.notify_one();
        }
        claimed
    }

    async fn try_claim(&self, pair: Pair, session: u64) -> Result<Claim, RegistryError> {
        let store = self.store()?;
        let (channel, uid) = (&*pair.0, &*pair.1);
        let key = member_key(channel, uid);
        let value = self.value(session);
        for _ in 0..CLAIM_ROUNDS {
            match store.create(&key, value.clone()).await {
                Ok(revision) => return Ok(self.hold(pair, revision, session)),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(RegistryError(e.to_string())),
            }
            let entry = store
                .entry(key.clone())
                .await
                .map_err(|e| RegistryError(e.to_string()))?;
            let Some(entry) = entry.filter(|e| e.operation == Operation::Put) else {
                continue; // deleted in between: create again
            };
            let holder = String::from_utf8_lossy(&entry.value).into_owned();
            let (node, held_session) = match holder.split_once(' ') {
                Some((n, s)) => (n.to_string(), s.parse::<u64>().ok()),
                None => (holder.clone(), None),
            };
            let alive = match held_session {
                Some(s) => self.ask(&node, channel, uid, s).await?,
                None => false, // not ours to read: a malformed entry holds nothing
            };
            if alive {
                return Ok(Claim::Taken { node });
            }
            match store.update(&key, value.clone(), entry.revision).await {
                Ok(revision) => {
                    tracing::debug!(%node, "cluster registry: took over a stale entry");
                    return Ok(self.hold(pair, revision, session));
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(RegistryError(e.to_string())),
            }
        }
        Err(RegistryError("the entry kept changing; try again".into()))
    }

    /// What this node writes for `session`: "node session".
    fn value(&self, session: u64) -> Bytes {
        Bytes::from(format!("{} {session}", self.inner.node))
    }

    fn hold(&self, pair: Pair, revision: u64, session: u64) -> Claim {
        if let Ok(mut held) = self.inner.held.lock() {
            held.insert(pair, Held { revision, session });
        }
        Claim::Claimed
    }

    /// Whether `session` on `node` still holds the pair.
    async fn ask(
        &self,
        node: &str,
        channel: &str,
        uid: &str,
        session: u64,
    ) -> Result<bool, RegistryError> {
        let query = ProbeQuery {
            channel: channel.to_string(),
            uid: uid.to_string(),
            session,
        }
        .encode();
        let subject = format!("{}.node.{node}.probe", self.inner.prefix);
        let request = self.inner.client.request(subject, query);
        match tokio::time::timeout(PROBE_TIMEOUT, request).await {
            Ok(Ok(reply)) => Ok(&reply.payload[..] != GONE),
            // Nobody listens for that node any more: it is dead.
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => Ok(false),
            Ok(Err(e)) if e.kind() == RequestErrorKind::TimedOut => Ok(true),
            Ok(Err(e)) => Err(RegistryError(e.to_string())),
            // A holder too slow to answer is treated as alive: refusing a
            // newcomer is recoverable (it retries), two joined sessions are not.
            Err(_) => Ok(true),
        }
    }

    /// Gives the pair up, unless someone else has taken it over meanwhile.
    pub async fn release(&self, channel: impl Into<Arc<str>>, uid: impl Into<Arc<str>>) {
        let pair = (channel.into(), uid.into());
        let key = member_key(&pair.0, &pair.1);
        let held = self
            .inner
            .held
            .lock()
            .ok()
            .and_then(|mut h| h.remove(&pair));
        let (Some(Held { revision, .. }), Ok(store)) = (held, self.store()) else {
            return;
        };
        if let Err(e) = store.delete_expect_revision(&key, Some(revision)).await {
            // Left for the next claimant's probe (this node answers "gone") or for max_age.
            tracing::debug!(error = %e, "cluster registry: release failed");
        }
    }

    /// Re-writes every entry this node holds, so it does not age out (done
    /// every [`ENTRY_REFRESH`]); an entry someone else took over meanwhile
    /// is let go instead.
    pub async fn refresh(&self) {
        let Ok(store) = self.store() else { return };
        let held = self.held_now();
        for (pair, Held { revision, session }) in held {
            let key = member_key(&pair.0, &pair.1);
            let result = store.update(&key, self.value(session), revision).await;
            match result {
                // Only if still held at that revision (not released meanwhile).
                Ok(new) => {
                    let Ok(mut h) = self.inner.held.lock() else {
                        return;
                    };
                    if let Some(e) = h.get_mut(&pair).filter(|e| e.revision == revision) {
                        e.revision = new;
                    }
                }
                // Aged out, or taken: write it again where nobody holds it.
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    self.reassert(store, pair, session).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cluster registry: refresh failed; next round")
                }
            }
        }
    }

    /// How many pairs this node holds.
    pub fn held(&self) -> usize {
        self.inner.held.lock().map(|h| h.len()).unwrap_or(0)
    }

    /// The node these claims belong to.
    pub fn node(&self) -> &NodeId {
        &self.inner.node
    }
}

/// Answers probes for this node's sessions until the connection closes.
pub(super) async fn serve_probes(registry: Registry, prober: Arc<dyn Prober>) {
    let i = &registry.inner;
    // The client re-subscribes by itself after a reconnect.
    let mut subscription = loop {
        match i.client.subscribe(i.probe_subject.clone()).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(error = %e, "cluster registry: cannot subscribe to probes");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(msg) = subscription.next().await {
        let Some(reply) = msg.reply else { continue };
        let Some(query) = ProbeQuery::decode(&msg.payload) else {
            continue;
        };
        let prober = prober.clone();
        let client = i.client.clone();
        tokio::spawn(async move {
            let alive = prober.probe(query.channel, query.uid, query.session).await;
            let answer = Bytes::from_static(if alive { ALIVE } else { GONE });
            let _ = client.publish(reply, answer).await;
        });
    }
}

/// Re-writes the live entries every [`ENTRY_REFRESH`] so they do not age out.
pub(super) async fn refresh_forever(registry: Registry) {
    let mut tick = tokio::time::interval(ENTRY_REFRESH);
    tick.tick().await;
    loop {
        tick.tick().await;
        registry.refresh().await;
    }
}
