//! Liveness and readiness, as served on the `--metrics` listener
//! (`/healthz`, `/readyz`).
//!
//! Live means the process answers at all. Ready is the conjunction of named
//! conditions that parts of the server register at start-up: the listeners
//! are up, a certificate is loaded (TLS modes), and later whatever a backend
//! needs (a cluster backend adds "nats connected" the same way). A condition
//! is either a flag its owner sets or a check evaluated on each probe.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

type Check = Box<dyn Fn() -> bool + Send + Sync>;

/// The named conditions readiness is made of.
#[derive(Default)]
pub struct Readiness {
    conditions: Mutex<Vec<(&'static str, Check)>>,
}

/// A readiness condition set by its owner; it starts unmet.
#[derive(Clone, Debug, Default)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    pub fn set(&self, met: bool) {
        self.0.store(met, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Readiness {
    pub fn new() -> Readiness {
        Readiness::default()
    }

    /// Registers a condition named `name` that its owner sets through the returned flag.
    pub fn flag(&self, name: &'static str) -> Flag {
        let flag = Flag::default();
        let f = flag.clone();
        self.check(name, move || f.get());
        flag
    }

    /// Registers a condition evaluated on every probe.
    pub fn check(&self, name: &'static str, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.lock().push((name, Box::new(check)));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, Check)>> {
        // Registration cannot leave the list half-updated; a poisoned lock is still usable.
        self.conditions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether every condition holds, and one line per condition
    /// (`ok <name>` or `waiting <name>`) for the probe's body.
    pub fn report(&self) -> (bool, String) {
        let mut ready = true;
        let mut text = String::new();
        for (name, check) in self.lock().iter() {
            let met = check();
            ready &= met;
            let _ = writeln!(text, "{} {name}", if met { "ok" } else { "waiting" });
        }
        (ready, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_when_every_condition_holds() {
        let r = Readiness::new();
        assert_eq!(r.report(), (true, String::new()));
        let listeners = r.flag("listeners");
        let cert = Arc::new(AtomicBool::new(true));
        let c = cert.clone();
        r.check("certificate", move || c.load(Ordering::Relaxed));
        assert_eq!(
            r.report(),
            (false, "waiting listeners\nok certificate\n".into())
        );
        listeners.set(true);
        assert!(r.report().0);
        cert.store(false, Ordering::Relaxed);
        assert_eq!(
            r.report(),
            (false, "ok listeners\nwaiting certificate\n".into())
        );
    }
}
