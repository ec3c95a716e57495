//! Shutdown of one shard: Close 1001 to every session, a wait for the last
//! one to end, and the kill at the deadline. The server drives the phases
//! (`server.rs`); this file must not decide when they happen.

use std::cell::Cell;
use std::rc::Rc;

use tokio::sync::Notify;

use super::Shard;
use crate::protocol::close;
use crate::session::Session;

#[derive(Default)]
pub(super) struct Shutdown {
    pub(super) started: Cell<bool>,
    /// Signalled when the last session ends during shutdown.
    pub(super) drained: Notify,
}

impl Shard {
    /// Starts shutdown: every session gets Close 1001.
    pub fn begin_shutdown(&self) {
        self.shutdown.started.set(true);
        let sessions: Vec<Rc<Session>> = self.registry.borrow().sessions().cloned().collect();
        for s in &sessions {
            s.close(close::SHUTDOWN);
        }
        if sessions.is_empty() {
            self.shutdown.drained.notify_one();
        }
    }

    /// Waits until every session has ended.
    pub async fn drained(&self) {
        while self.session_count() > 0 {
            self.shutdown.drained.notified().await;
        }
    }

    /// Ends every remaining session now (shutdown deadline passed).
    pub fn kill_all(&self) {
        let sessions: Vec<Rc<Session>> = self.registry.borrow().sessions().cloned().collect();
        for s in sessions {
            s.kill();
        }
    }
}
