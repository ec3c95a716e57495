//! Session tasks without a tokio task each (issue 12: memory per session).
//!
//! A tokio task is a 256-byte cell for a session whose future is about 110
//! bytes (a header, scheduler hooks and a trailer, aligned to 128). A
//! shard's plain sessions instead sit in [`Tasks`]: their futures stored
//! side by side in fixed chunks ([`super::slab`]), polled by one tokio task ([`Tasks::run`]).
//! A session's waker is its slot number, so it allocates nothing: waking
//! it puts the number on this thread's run queue (once, however often it is
//! woken before it runs) and wakes the runner. The runner polls at most
//! [`BUDGET`] sessions per turn before it yields to the shard's other tasks.
//!
//! As under tokio, a session that panics ends alone: the panic is caught
//! and its future dropped (its `Drop` tells the shard). Wakers belong to
//! the thread: the run queue is thread-local, and a shard's sessions and
//! everything that wakes them stay on its thread. One `Tasks` per thread.

use std::cell::{RefCell, RefMut};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use super::slab::Slab;

/// Sessions polled per turn of the runner before it lets other tasks run.
pub const BUDGET: usize = 256;

/// This thread's run queue.
struct RunQueue {
    ids: VecDeque<u32>,
    /// One bit per slot: already in `ids`.
    queued: Vec<u64>,
    /// The runner's waker, woken when `ids` stops being empty.
    runner: Option<Waker>,
    /// A [`Tasks`] exists on this thread.
    owned: bool,
}

thread_local! {
    static QUEUE: RefCell<RunQueue> = const {
        RefCell::new(RunQueue {
            ids: VecDeque::new(),
            queued: Vec::new(),
            runner: None,
            owned: false,
        })
    };
}

/// Puts `id` on this thread's run queue unless it is there already.
fn schedule(id: u32) {
    let wake = QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let (word, bit) = (id as usize / 64, 1u64 << (id % 64));
        if q.queued.len() <= word {
            q.queued.resize(word + 1, 0);
        }
        if q.queued[word] & bit != 0 {
            return None;
        }
        q.queued[word] |= bit;
        q.ids.push_back(id);
        if q.ids.len() == 1 {
            q.runner.clone()
        } else {
            None
        }
    });
    if let Some(w) = wake {
        w.wake();
    }
}

/// The next slot to poll, no longer marked queued (so a wake-up during its
/// poll queues it again).
fn next() -> Option<u32> {
    QUEUE.with(|q| {
        let mut q = q.borrow_mut();
        let id = q.ids.pop_front()?;
        q.queued[id as usize / 64] &= !(1u64 << (id % 64));
        Some(id)
    })
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop_waker);

fn raw(id: u32) -> RawWaker {
    RawWaker::new(id as usize as *const (), &VTABLE)
}

unsafe fn clone(data: *const ()) -> RawWaker {
    raw(data as usize as u32)
}

unsafe fn wake(data: *const ()) {
    schedule(data as usize as u32);
}

unsafe fn drop_waker(_: *const ()) {}

/// The waker of slot `id`.
fn waker(id: u32) -> Waker {
    // SAFETY: the vtable's functions only read the number in the data
    // pointer (never dereferenced), so any value is valid for them.
    unsafe { Waker::from_raw(raw(id)) }
}

/// A shard's plain session futures.
pub struct Tasks<F> {
    slots: RefCell<Slab<Option<F>>>,
}

impl<F: Future<Output = ()> + Unpin> Tasks<F> {
    /// The store of this thread (panics if it already has one).
    pub fn new() -> Tasks<F> {
        QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            assert!(!q.owned, "one Tasks per thread");
            q.owned = true;
        });
        Tasks {
            slots: RefCell::new(Slab::new()),
        }
    }

    /// Futures not yet finished (a slot stays in use while its future runs).
    pub fn len(&self) -> usize {
        self.slots.borrow().in_use()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `f`, to be polled first on the runner's next turn.
    pub fn spawn(&self, f: F) {
        let id = self.slots.borrow_mut().take(|| None);
        *self.slot(id).expect("a free slot exists") = Some(f);
        schedule(id);
    }

    /// Slot `id`, borrowed for one statement.
    fn slot(&self, id: u32) -> Option<RefMut<'_, Option<F>>> {
        RefMut::filter_map(self.slots.borrow_mut(), |s| s.get_mut(id)).ok()
    }

    /// Polls the queued sessions for ever (as one tokio task).
    pub async fn run(&self) {
        std::future::poll_fn(|cx| self.turn(cx)).await
    }

    fn turn(&self, cx: &mut Context<'_>) -> Poll<()> {
        QUEUE.with(|q| {
            let mut q = q.borrow_mut();
            if !q.runner.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                q.runner = Some(cx.waker().clone());
            }
        });
        for _ in 0..BUDGET {
            let Some(id) = next() else {
                return Poll::Pending;
            };
            self.poll_one(id);
        }
        // More are queued: let the shard's other tasks run first.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn poll_one(&self, id: u32) {
        // Taken out while it runs: its poll may spawn or end other sessions.
        let Some(mut f) = self.slot(id).and_then(|mut s| s.take()) else {
            return; // a stale wake-up of a slot that is empty now
        };
        let waker = waker(id);
        let mut cx = Context::from_waker(&waker);
        let polled = catch_unwind(AssertUnwindSafe(|| Pin::new(&mut f).poll(&mut cx)));
        if let Ok(Poll::Pending) = polled {
            *self.slot(id).expect("slots are never removed") = Some(f);
            return;
        }
        // Finished, or panicked (the hook has reported it): dropping it ends
        // the session. A panic in its `Drop` must not stop the others.
        let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
        self.slots.borrow_mut().give_back(id);
    }

    /// Drops every future (the shard is stopping): they hold the shard, so
    /// the store must be emptied for the shard to be freed.
    pub fn clear(&self) {
        let n = self.slots.borrow().capacity();
        for id in 0..n as u32 {
            let f = self.slot(id).and_then(|mut s| s.take());
            if let Some(f) = f {
                let _ = catch_unwind(AssertUnwindSafe(move || drop(f)));
                self.slots.borrow_mut().give_back(id);
            }
        }
    }
}

impl<F: Future<Output = ()> + Unpin> Default for Tasks<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F> Drop for Tasks<F> {
    fn drop(&mut self) {
        let _ = QUEUE.try_with(|q| {
            let mut q = q.borrow_mut();
            q.owned = false;
            q.ids.clear();
            q.queued.clear();
            q.runner = None;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::slab::CHUNK;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A future that counts its polls, keeps its last waker, finishes on
    /// its `until`-th poll (or panics there), and records being dropped.
    struct Probe {
        polls: Rc<Cell<u32>>,
        waker: Rc<RefCell<Option<Waker>>>,
        until: u32,
        panics: bool,
        dropped: Rc<Cell<bool>>,
    }

    #[derive(Clone, Default)]
    struct Handle {
        polls: Rc<Cell<u32>>,
        waker: Rc<RefCell<Option<Waker>>>,
        dropped: Rc<Cell<bool>>,
    }

    impl Handle {
        fn probe(&self, until: u32, panics: bool) -> Probe {
            Probe {
                polls: self.polls.clone(),
                waker: self.waker.clone(),
                until,
                panics,
                dropped: self.dropped.clone(),
            }
        }

        fn wake(&self) {
            self.waker.borrow().as_ref().unwrap().wake_by_ref();
        }
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.set(self.polls.get() + 1);
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            if self.polls.get() < self.until {
                return Poll::Pending;
            }
            assert!(!self.panics, "test: a task panics");
            Poll::Ready(())
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.set(true);
        }
    }

    /// Runs `f` with a store whose runner runs beside it on this thread.
    fn with_tasks<Fut: Future<Output = ()>>(f: impl FnOnce(Rc<Tasks<Probe>>) -> Fut) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, async {
            let tasks = Rc::new(Tasks::new());
            let t = tasks.clone();
            let runner = tokio::task::spawn_local(async move { t.run().await });
            f(tasks.clone()).await;
            runner.abort();
            let _ = runner.await;
            tasks.clear();
        });
    }

    /// Lets the runner take its turn (and finish its queue).
    async fn settle() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn tasks_run_when_woken_and_give_their_slot_back_when_done() {
        with_tasks(|tasks| async move {
            let h = Handle::default();
            tasks.spawn(h.probe(3, false));
            settle().await;
            assert_eq!(h.polls.get(), 1, "polled once on spawn");
            assert_eq!(tasks.len(), 1);
            // Woken three times before it runs: polled once.
            h.wake();
            h.wake();
            h.wake();
            settle().await;
            assert_eq!(h.polls.get(), 2);
            h.wake();
            settle().await;
            assert_eq!(h.polls.get(), 3);
            assert!(h.dropped.get() && tasks.is_empty());
            // Its slot is taken by the next task; the old waker only causes
            // a spurious poll, which futures allow.
            let next = Handle::default();
            tasks.spawn(next.probe(10, false));
            settle().await;
            h.wake();
            settle().await;
            assert_eq!(next.polls.get(), 2);
            assert_eq!(h.polls.get(), 3);
        });
    }

    #[test]
    fn a_task_that_panics_ends_alone() {
        with_tasks(|tasks| async move {
            let (bad, good) = (Handle::default(), Handle::default());
            tasks.spawn(bad.probe(2, true));
            tasks.spawn(good.probe(10, false));
            settle().await;
            bad.wake();
            settle().await;
            assert!(bad.dropped.get(), "dropped after its panic");
            assert_eq!(tasks.len(), 1);
            good.wake();
            settle().await;
            assert_eq!(good.polls.get(), 2, "the other one still runs");
        });
    }

    #[test]
    fn clear_drops_every_task_and_chunks_grow_past_their_size() {
        with_tasks(|tasks| async move {
            let handles: Vec<Handle> = (0..CHUNK + 5).map(|_| Handle::default()).collect();
            for h in &handles {
                tasks.spawn(h.probe(u32::MAX, false));
            }
            settle().await;
            assert!(handles.iter().all(|h| h.polls.get() == 1));
            assert_eq!(tasks.len(), CHUNK + 5);
            tasks.clear();
            assert!(tasks.is_empty());
            assert!(handles.iter().all(|h| h.dropped.get()));
        });
    }

    #[test]
    fn a_second_store_on_one_thread_is_refused() {
        with_tasks(|_tasks| async move {
            let second = catch_unwind(Tasks::<Probe>::new);
            assert!(second.is_err());
        });
    }
}
