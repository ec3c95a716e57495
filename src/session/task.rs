//! The task that drives one session's socket: reads into the shard's
//! scratch buffer, validates RFC 6455 framing, hands complete messages to the
//! shard, and writes what is queued in vectored writes.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::rate::SessionRate;
use super::{EMPTY_CLOSE, Host, MAX_IOV, Phase, READ_BUDGET, Session};
use crate::clock;
use crate::protocol::close::{self, Close};
use crate::protocol::frame::{
    self, Head, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};
use crate::protocol::{auth, header};

/// A message being reassembled from fragments.
struct Fragments {
    opcode: u8,
    payload: BytesMut,
}

/// The task that drives one session's socket. Dropping it leaves the channel.
pub struct SessionTask<S, H: Host> {
    io: S,
    session: Rc<Session>,
    shard: Rc<H>,
    /// Bytes of an incomplete frame (or of frames read ahead while joining).
    partial: Vec<u8>,
    /// `partial` holds only an incomplete frame: read more before parsing again.
    stalled: bool,
    frag: Option<Box<Fragments>>,
    needs_flush: bool,
    shut_down: bool,
    /// The peer started the close handshake: once our echo is out, just close.
    peer_closed: bool,
    /// Frames are de-duplicated against history (`--dedup`; never a link's).
    dedup: bool,
    /// The header said `"peer": true`: this is another server's link.
    link: bool,
    /// Bytes of `partial` and `frag` charged to the server's `--max-memory`.
    held: usize,
    /// `--rate-limit*`, when set.
    rate: Option<Box<SessionRate>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Host> SessionTask<S, H> {
    /// `read_ahead` is what the HTTP layer had already read past the upgrade request.
    pub fn new(io: S, session: Rc<Session>, shard: Rc<H>, read_ahead: &[u8]) -> Self {
        let dedup = shard.limits().dedup;
        let rate = SessionRate::new(shard.limits().rate, shard.limits().max_message);
        SessionTask {
            io,
            session,
            shard,
            partial: read_ahead.to_vec(),
            stalled: false,
            frag: None,
            needs_flush: false,
            shut_down: false,
            peer_closed: false,
            dedup,
            link: false,
            held: 0,
            rate,
        }
    }

    /// Writes as much of the queue as the socket takes, in vectored writes
    /// (a plain session's stream, [`crate::reactor::RawSocket`], writes
    /// with `send`/`sendmsg`; a full socket wakes the task when there is room).
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let mut i = self.session.inner.borrow_mut();
            if !i.writable() {
                break;
            }
            let polled = {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let k = i.gather(&mut iov);
                Pin::new(&mut self.io).poll_write_vectored(cx, &iov[..k])
            };
            match polled {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.needs_flush = true;
                    i.blocked = false;
                    i.advance(n);
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    // Woken when there is room; the shard leaves the socket alone until then.
                    i.blocked = true;
                    return Ok(());
                }
            }
        }
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(())
    }

    /// Reads once into the shard's scratch buffer and handles what arrived.
    /// `Ready(false)` means the connection is finished (EOF or error).
    fn poll_read_in(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let shard = self.shard.clone();
        let mut scratch = shard.scratch().borrow_mut();
        let mut rb = ReadBuf::new(&mut scratch[..]);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(false),
            Poll::Ready(Ok(())) => {
                let data = rb.filled();
                self.touch();
                if self.session.phase() == Phase::Closing {
                    return Poll::Ready(true);
                }
                if self.partial.is_empty() {
                    let used = self.process(data);
                    if used < data.len() {
                        append_partial(&mut self.partial, &data[used..]);
                        self.stalled = self.can_parse();
                    }
                } else {
                    append_partial(&mut self.partial, data);
                    self.process_partial();
                }
                self.account();
                Poll::Ready(true)
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(session = self.session.id, error = %e, "read failed");
                Poll::Ready(false)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Records that the peer is alive and answers a pending probe.
    fn touch(&self) {
        let now = clock::now();
        let probe = {
            let mut i = self.session.inner.borrow_mut();
            i.last_rx = now;
            i.probe.take()
        };
        if let Some(p) = probe {
            self.shard
                .probe_answered(p.key, p.id, self.session.id, true);
        }
    }

    /// Charges what this session holds between reads (an incomplete frame,
    /// a message being reassembled) to the server's `--max-memory`, or gives
    /// back what it no longer holds. Refused, the session lets go of both
    /// and closes with 1013: only the session asking for more pays.
    fn account(&mut self) {
        let now = self.partial.capacity() + self.frag.as_ref().map_or(0, |f| f.payload.capacity());
        if now < self.held {
            self.shard.discharge(self.held - now);
        } else if now > self.held && !self.shard.charge(now - self.held) {
            self.partial = Vec::new();
            self.frag = None;
            self.stalled = false;
            self.shard.discharge(self.held);
            self.held = 0;
            self.session.close(close::MEMORY_BUDGET);
            return;
        }
        self.held = now;
    }

    fn can_parse(&self) -> bool {
        matches!(self.session.phase(), Phase::Header | Phase::Member)
    }

    fn process_partial(&mut self) {
        let mut p = std::mem::take(&mut self.partial);
        let used = self.process(&p);
        p.drain(..used);
        self.stalled = self.can_parse() && !p.is_empty();
        if !p.is_empty() {
            if p.capacity() > 4 * p.len().max(4096) {
                p.shrink_to_fit();
            }
            self.partial = p;
        }
    }

    /// Handles the complete frames at the start of `buf`; returns the bytes used.
    fn process(&mut self, buf: &[u8]) -> usize {
        let max = self.shard.limits().max_message as u64;
        let mut pos = 0;
        while self.can_parse() {
            let head = match frame::parse_head(&buf[pos..]) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(c) => {
                    self.session.close(c);
                    break;
                }
            };
            if !head.is_control() {
                let so_far = self.frag.as_ref().map_or(0, |f| f.payload.len() as u64);
                // Before its header a session is unauthenticated: refuse an
                // oversized header as soon as its length is known, rather than
                // hold up to --max-message of it.
                let cap = if self.session.phase() == Phase::Header {
                    header::check_len(so_far + head.len)
                } else if so_far + head.len > max {
                    Err(close::TOO_BIG)
                } else {
                    Ok(())
                };
                if let Err(c) = cap {
                    self.session.close(c);
                    break;
                }
            }
            let end = head.head_len as u64 + head.len;
            if ((buf.len() - pos) as u64) < end {
                break;
            }
            let payload = &buf[pos + head.head_len..pos + end as usize];
            pos += end as usize;
            self.on_frame(head, payload);
        }
        pos
    }

    fn on_frame(&mut self, head: Head, masked: &[u8]) {
        match head.opcode {
            OP_PING => {
                if let Err(c) = self.rate_ok(0) {
                    return self.session.close(c);
                }
                let mut p = masked.to_vec();
                frame::unmask(&mut p, head.mask, 0);
                self.session.push_control(frame::encode(OP_PONG, &p));
                // A peer server's link talks to this server in Pings (PROTOCOL.md §7).
                if self.link
                    && let Some(key) = self.session.key()
                {
                    self.shard.link_control(key, self.session.id, p.into());
                }
            }
            OP_PONG => {}
            OP_CLOSE => self.on_close(head, masked),
            OP_TEXT | OP_BINARY if self.frag.is_some() => {
                self.session.close(close::UNFINISHED_MESSAGE)
            }
            OP_TEXT | OP_BINARY if head.fin => {
                let f = frame::encode_unmasking(head.opcode, masked, head.mask);
                self.on_message(head.opcode, f);
            }
            OP_TEXT | OP_BINARY => {
                let mut payload = BytesMut::from(masked);
                frame::unmask(&mut payload, head.mask, 0);
                self.frag = Some(Box::new(Fragments {
                    opcode: head.opcode,
                    payload,
                }));
            }
            OP_CONTINUATION => {
                let Some(fr) = self.frag.as_mut() else {
                    self.session.close(close::BAD_CONTINUATION);
                    return;
                };
                let start = fr.payload.len();
                fr.payload.extend_from_slice(masked);
                frame::unmask(&mut fr.payload[start..], head.mask, 0);
                if head.fin {
                    let fr = self.frag.take().expect("checked above");
                    self.on_message(fr.opcode, frame::encode(fr.opcode, &fr.payload));
                }
            }
            _ => self.session.close(close::BAD_OPCODE),
        }
    }

    fn on_close(&mut self, head: Head, masked: &[u8]) {
        let mut p = masked.to_vec();
        frame::unmask(&mut p, head.mask, 0);
        self.peer_closed = self.session.phase() != Phase::Closing;
        match p.len() {
            0 => self
                .session
                .close_with(Close::new(1000, ""), Bytes::from_static(EMPTY_CLOSE)),
            1 => self.session.close(close::BAD_CLOSE_PAYLOAD),
            _ => {
                let code = u16::from_be_bytes([p[0], p[1]]);
                if !close::valid_received_code(code) {
                    self.session.close(close::BAD_CLOSE_PAYLOAD);
                } else if std::str::from_utf8(&p[2..]).is_err() {
                    self.session.close(close::INVALID_UTF8);
                } else {
                    let echo = Close::new(code, "");
                    self.session.close_with(echo, frame::encode_close(echo));
                }
            }
        }
    }

    /// Counts a message of `len` bytes against `--rate-limit*`.
    fn rate_ok(&self, len: usize) -> Result<(), Close> {
        self.rate.as_ref().map_or(Ok(()), |r| r.admit(len))
    }

    /// A complete message, `f` already encoded for receivers.
    fn on_message(&mut self, opcode: u8, f: Bytes) {
        let payload = frame::payload_of(&f);
        if let Err(c) = self.rate_ok(payload.len()) {
            return self.session.close(c);
        }
        if opcode == OP_TEXT && std::str::from_utf8(payload).is_err() {
            self.session.close(close::INVALID_UTF8);
            return;
        }
        match self.session.phase() {
            Phase::Header => self.on_header(opcode, payload),
            Phase::Member => {
                if let Some(key) = self.session.key() {
                    self.shard.publish(key, self.session.id, f, self.dedup);
                }
            }
            Phase::Joining | Phase::Closing => {}
        }
    }

    fn on_header(&mut self, opcode: u8, payload: &[u8]) {
        if opcode != OP_TEXT {
            self.session.close(close::NOT_TEXT_HEADER);
            return;
        }
        let h = match header::parse(payload) {
            Ok(h) => h,
            Err(c) => return self.session.close(c),
        };
        if let Err(e) = auth::verify(
            &h.uid,
            &h.channel,
            h.auth.as_deref(),
            self.shard.limits().key.as_deref(),
        ) {
            let c = if e == auth::AuthError::Missing {
                close::AUTH_REQUIRED
            } else {
                close::AUTH_FAILED
            };
            return self.session.close(c);
        }
        if let Some(hook) = &self.shard.limits().hook_channel
            && *h.channel == **hook
            && h.uid == "panic-session"
        {
            panic!("test hook: a session panics (--test-hook-channel)");
        }
        // A peer's frames are never dropped for their content (PROTOCOL.md §7).
        self.link = h.peer;
        self.dedup &= !h.peer;
        self.session.begin_join();
        self.shard.join(self.session.id, h);
    }
}

/// Appends `data` to `partial`, growing it geometrically but never past the
/// end of the frame it starts with: a frame's memory follows the bytes that
/// arrived (not the length it declares), and a whole 1 MiB frame costs
/// 1 MiB rather than the 2 MiB plain doubling would reserve.
fn append_partial(partial: &mut Vec<u8>, data: &[u8]) {
    let need = partial.len() + data.len();
    if need > partial.capacity() {
        let mut head = [0u8; 14];
        let k = partial.len().min(14);
        head[..k].copy_from_slice(&partial[..k]);
        let m = (14 - k).min(data.len());
        head[k..k + m].copy_from_slice(&data[..m]);
        let frame_end = match frame::parse_head(&head[..k + m]) {
            Ok(Some(h)) => usize::try_from(h.head_len as u64 + h.len).unwrap_or(usize::MAX),
            _ => need,
        };
        let target = need.max(frame_end.min(2 * partial.capacity()));
        partial.reserve_exact(target - partial.len());
    }
    partial.extend_from_slice(data);
}

impl<S: AsyncRead + AsyncWrite + Unpin, H: Host> Future for SessionTask<S, H> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        {
            let mut i = this.session.inner.borrow_mut();
            if i.kill {
                return Poll::Ready(());
            }
            if !i.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                i.waker = Some(cx.waker().clone());
            }
        }
        let mut budget = READ_BUDGET;
        loop {
            if let Err(e) = this.poll_write_out(cx) {
                tracing::debug!(session = this.session.id, error = %e, "write failed");
                return Poll::Ready(());
            }
            let (phase, pending_out) = {
                let i = this.session.inner.borrow();
                (i.phase, i.writable())
            };
            match phase {
                Phase::Closing => {
                    if pending_out || this.needs_flush {
                        return Poll::Pending;
                    }
                    if this.peer_closed {
                        // Close handshake complete: nothing more can come; closing
                        // the socket now saves a shutdown and a wait for EOF.
                        return Poll::Ready(());
                    }
                    if !this.shut_down {
                        match Pin::new(&mut this.io).poll_shutdown(cx) {
                            Poll::Ready(_) => this.shut_down = true,
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                    // Discard until the peer's EOF, so our Close is not lost to a reset.
                    loop {
                        match this.poll_read_in(cx) {
                            Poll::Ready(true) if budget > 0 => budget -= 1,
                            Poll::Ready(true) => {
                                cx.waker().wake_by_ref();
                                return Poll::Pending;
                            }
                            Poll::Ready(false) => return Poll::Ready(()),
                            Poll::Pending => return Poll::Pending,
                        }
                    }
                }
                Phase::Joining => return Poll::Pending,
                Phase::Header | Phase::Member => {}
            }
            if !this.partial.is_empty() && !this.stalled {
                this.process_partial();
                this.account();
                continue;
            }
            if this.session.phase() == Phase::Member && this.shard.must_pause(cx.waker()) {
                return Poll::Pending;
            }
            if budget == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            budget -= 1;
            match this.poll_read_in(cx) {
                Poll::Ready(true) => continue,
                Poll::Ready(false) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S, H: Host> Drop for SessionTask<S, H> {
    fn drop(&mut self) {
        // The socket closes with `io` below: the shard must not write to it
        // (nor to another connection given its number) from now on.
        self.session.forget_socket();
        self.shard.discharge(self.held);
        self.shard.ended(&self.session);
    }
}
