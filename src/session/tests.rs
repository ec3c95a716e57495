//! Unit tests of the session state: queue bounds, direct writes, held links.

use super::*;

#[test]
fn idle_session_state_stays_small() {
    // Every idle connection pays for this (BENCHMARKS.md, "Per-session
    // memory"): in an `Rc`, 16 + 96 bytes fill jemalloc's 112-byte class.
    assert!(
        std::mem::size_of::<Session>() <= 96,
        "{}",
        std::mem::size_of::<Session>()
    );
}

#[test]
fn drained_queues_give_their_memory_back() {
    let s = Session::new(1, 0);
    s.begin_join();
    // A copy of its own, and a piece the channel's history still holds.
    let kept = Bytes::from(b"kept".to_vec());
    let history = vec![Bytes::from(b"hist".to_vec()), kept.clone()];
    assert!(s.joined(7, "u".into(), history, false));
    s.push(Bytes::from_static(b"live"), 1 << 20);
    assert_eq!(
        s.queued_bytes(),
        8,
        "the history copy being replayed and the live frame, not what is shared"
    );
    drop(kept);
    assert_eq!(s.queued_bytes(), 12, "evicted, the shared piece is its own");
    s.inner.borrow_mut().advance(4); // "hist"
    {
        let mut i = s.inner.borrow_mut();
        i.advance(6); // "kept" and "li"
        assert_eq!(i.q.queued_bytes(), 4, "the history written");
        assert_eq!(i.q.written(), 2);
        assert!(!i.q.has_replay() && i.q.has_live());
        i.advance(2);
        assert!(i.q.is_empty(), "no box left once drained");
        assert_eq!(i.q.written(), 0);
    }
    assert_eq!(s.queued_bytes(), 0);
    assert!(!s.has_queued());
}

#[test]
fn a_slow_consumer_keeps_only_a_partly_written_frame() {
    let s = Session::new(1, 0);
    s.begin_join();
    assert!(s.joined(7, "u".into(), vec![Bytes::from_static(b"hist")], false));
    s.push(Bytes::from_static(b"live"), 1 << 20);
    s.inner.borrow_mut().advance(1);
    assert!(
        s.push(Bytes::from(vec![0u8; 64]), 16),
        "over the bound: closed"
    );
    let q = s.take_queued();
    assert_eq!(q.len(), 2, "the partly written frame, then the Close");
    assert_eq!(q[0], Bytes::from_static(b"hist"));
    assert_eq!(q[1][0] & 0x0F, OP_CLOSE);
    assert_eq!(s.queued_bytes(), 0);
    // Nothing written yet: only the Close goes out.
    let s = Session::new(2, 0);
    s.begin_join();
    s.joined(7, "v".into(), Vec::new(), false);
    assert!(s.push(Bytes::from(vec![0u8; 64]), 16));
    let q = s.take_queued();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0][0] & 0x0F, OP_CLOSE);
}

#[test]
fn plain_members_are_flushed_by_the_caller_and_written_directly() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (mut b, _) = l.accept().unwrap();
    let s = Session::new(1, 0);
    s.set_socket(a.as_raw_fd(), true);
    // Not a member yet: the task writes (woken as before).
    assert_eq!(s.offer(Bytes::from_static(b"x"), 1 << 20), Offered::Queued);
    s.take_queued();
    s.begin_join();
    assert!(s.joined(7, "u".into(), Vec::new(), false));
    assert_eq!(s.offer(Bytes::from_static(b"ab"), 1 << 20), Offered::Flush);
    // Already in the caller's list: once per batch.
    assert_eq!(s.offer(Bytes::from_static(b"cd"), 1 << 20), Offered::Queued);
    s.flush();
    assert!(!s.has_queued(), "written without the task");
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"abcd");
    assert_eq!(s.offer(Bytes::from_static(b"ef"), 1 << 20), Offered::Flush);
    s.flush();
    // A peer that reads nothing: once its socket is full, frames only
    // queue (the task, woken once, waits for room) until the task wrote.
    let big = Bytes::from(vec![0u8; 1 << 20]);
    while s.offer(big.clone(), 1 << 30) == Offered::Flush {
        s.flush();
    }
    assert!(s.inner.borrow().blocked && s.has_queued());
    let q = s.queued_bytes();
    assert_eq!(s.offer(big.clone(), 1 << 30), Offered::Queued);
    assert_eq!(s.queued_bytes(), q + big.len(), "queued, no write tried");
    // The task clears `blocked` once it has written.
    s.inner.borrow_mut().blocked = false;
    s.take_queued();
    // Under TLS (or once the socket is forgotten) the task writes.
    assert_eq!(s.offer(Bytes::from_static(b"gh"), 1 << 20), Offered::Flush);
    s.forget_socket();
    s.flush();
    assert!(s.has_queued());
    assert_eq!(s.offer(Bytes::from_static(b"ij"), 1 << 20), Offered::Queued);
    // The bound holds for offered frames as for pushed ones.
    assert_eq!(s.offer(Bytes::from(vec![0u8; 64]), 16), Offered::Closed);
    assert_eq!(s.phase(), Phase::Closing);
}

#[test]
fn a_held_link_writes_control_frames_but_not_live_ones_until_released() {
    let s = Session::new(1, 0);
    s.begin_join();
    assert!(s.joined(7, "l".into(), vec![Bytes::from_static(b"h")], true));
    s.push(Bytes::from_static(b"live"), 1 << 20);
    s.push_control(Bytes::from_static(b"sync"));
    assert_eq!(
        s.take_queued(),
        ["h", "sync"].map(|f| Bytes::from_static(f.as_bytes()))
    );
    assert!(!s.has_queued());
    s.release();
    assert_eq!(s.take_queued(), [Bytes::from_static(b"live")]);
    // Closed before it opened: what waited is dropped, the Close goes out.
    let s = Session::new(2, 0);
    s.begin_join();
    s.joined(7, "l".into(), Vec::new(), true);
    s.push(Bytes::from_static(b"live"), 1 << 20);
    s.close(close::PEER_CYCLE);
    let q = s.take_queued();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0][0] & 0x0F, OP_CLOSE);
}
