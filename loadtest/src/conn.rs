//! One client connection after the TCP (and TLS) connect: the opening
//! handshake, then framing owned by the harness.
//!
//! Reads go into one [`FrameBuf`] and every complete frame of a read is
//! handed to a callback before the next read, with no allocation per frame
//! (fragmented messages, rare, are reassembled into a reused vector). Pings
//! are answered, a Close is echoed. Writes are masked frames queued into one
//! vector and written with as few calls as the stream takes; [`IoStats`]
//! counts the calls and how many frames each one carried, so a report can
//! show that a client wrote one frame per write when it claims to.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::frame::{self, FrameBuf, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use crate::handshake;
use crate::rng::Rng;

/// Plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Stream {
    /// ws://
    Plain(TcpStream),
    /// wss://
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One complete data message.
#[derive(Debug, Clone, Copy)]
pub struct Msg<'a> {
    /// [`OP_TEXT`] or [`OP_BINARY`].
    pub opcode: u8,
    /// The whole message.
    pub payload: &'a [u8],
}

/// An owned message, for the slow paths ([`Conn::recv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedMsg {
    /// [`OP_TEXT`] or [`OP_BINARY`].
    pub opcode: u8,
    /// The whole message.
    pub payload: Vec<u8>,
}

/// Whether the connection can still deliver messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Open.
    Open,
    /// The server sent Close or the stream ended; see [`Conn::close_info`].
    Closed,
}

/// How the server ended the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// Close code, when a Close frame carried one.
    pub code: Option<u16>,
    /// Close reason, or a description when there was no Close frame.
    pub reason: String,
}

impl std::fmt::Display for CloseInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(c) => write!(f, "closed by server ({c} {:?})", self.reason),
            None => write!(f, "closed by server ({})", self.reason),
        }
    }
}

/// What a connection's reads and writes carried (data and control frames
/// the harness queued; the opening handshake is not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Reads that returned data.
    pub reads: u64,
    /// Write calls that took data.
    pub writes: u64,
    /// Frames written.
    pub frames_written: u64,
    /// The most frames whose bytes one write call carried (a frame split
    /// over two writes counts in both).
    pub max_frames_per_write: u64,
}

impl IoStats {
    /// Adds `other`'s counts (and takes the larger maximum).
    pub fn add(&mut self, other: &IoStats) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.frames_written += other.frames_written;
        self.max_frames_per_write = self.max_frames_per_write.max(other.max_frames_per_write);
    }
}

/// A WebSocket client connection with harness-owned framing.
#[derive(Debug)]
pub struct Conn {
    stream: Stream,
    rbuf: FrameBuf,
    wbuf: Vec<u8>,
    /// Where each frame queued in `wbuf` ends, ascending.
    wends: Vec<usize>,
    stats: IoStats,
    rng: Rng,
    frag: Vec<u8>,
    frag_opcode: Option<u8>,
    pong: Option<(usize, [u8; 125])>,
    close_reply: Option<u16>,
    sent_close: bool,
    closed: Option<CloseInfo>,
    eof: bool,
    /// The last read filled all the space it was given.
    read_full: bool,
    inbox: VecDeque<OwnedMsg>,
}

impl Conn {
    /// Performs the opening handshake on `stream` and returns the connection.
    pub async fn handshake(
        mut stream: Stream,
        host: &str,
        path: &str,
        read_buf: usize,
        seed: u64,
    ) -> Result<Conn> {
        let key = handshake::new_key();
        stream
            .write_all(&handshake::request(host, path, &key))
            .await
            .context("sending upgrade request")?;
        stream.flush().await.context("sending upgrade request")?;
        let mut conn = Conn {
            stream,
            rbuf: FrameBuf::with_capacity(read_buf),
            wbuf: Vec::with_capacity(256),
            wends: Vec::new(),
            stats: IoStats::default(),
            rng: Rng::new(seed),
            frag: Vec::new(),
            frag_opcode: None,
            pong: None,
            close_reply: None,
            sent_close: false,
            closed: None,
            eof: false,
            read_full: false,
            inbox: VecDeque::new(),
        };
        loop {
            if let Some(n) = handshake::parse_response(conn.rbuf.data(), &key)? {
                conn.rbuf.consume(n);
                return Ok(conn);
            }
            if conn.read_more().await.context("reading upgrade response")? == 0 {
                bail!("server closed the connection during the handshake");
            }
        }
    }

    /// Reads once into the buffer; 0 means end of stream. Cancel-safe.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        let space = self.rbuf.space();
        let room = space.len();
        let n = self.stream.read(space).await?;
        self.read_full = n == room;
        self.rbuf.filled(n);
        if n == 0 {
            self.eof = true;
        } else {
            self.stats.reads += 1;
        }
        Ok(n)
    }

    /// What this connection's reads and writes carried so far.
    pub fn io_stats(&self) -> IoStats {
        self.stats
    }

    /// Whether the last read filled its buffer, so more data is probably
    /// waiting (a short read means the socket was drained).
    pub fn read_was_full(&self) -> bool {
        self.read_full
    }

    /// Hands every complete data message in the buffer to `on_msg`; records
    /// pings and a Close for [`Conn::flush_control`]. Never blocks.
    #[inline]
    pub fn process(&mut self, mut on_msg: impl FnMut(Msg<'_>)) -> Result<Status> {
        if self.closed.is_some() {
            return Ok(Status::Closed);
        }
        while let Some(f) = self.rbuf.next_frame()? {
            if f.mask.is_some() {
                bail!("server sent a masked frame");
            }
            match f.opcode {
                OP_TEXT | OP_BINARY => {
                    if self.frag_opcode.is_some() {
                        bail!("new data frame inside a fragmented message");
                    }
                    if f.fin {
                        on_msg(Msg {
                            opcode: f.opcode,
                            payload: self.rbuf.payload(&f),
                        });
                    } else {
                        self.frag_opcode = Some(f.opcode);
                        self.frag.clear();
                        self.frag.extend_from_slice(self.rbuf.payload(&f));
                    }
                }
                OP_CONT => {
                    let Some(opcode) = self.frag_opcode else {
                        bail!("continuation frame without a message");
                    };
                    self.frag.extend_from_slice(self.rbuf.payload(&f));
                    if f.fin {
                        self.frag_opcode = None;
                        on_msg(Msg {
                            opcode,
                            payload: &self.frag,
                        });
                    }
                }
                OP_PING => {
                    let p = self.rbuf.payload(&f);
                    let mut data = [0u8; 125];
                    data[..p.len()].copy_from_slice(p);
                    self.pong = Some((p.len(), data));
                }
                OP_PONG => {}
                OP_CLOSE => {
                    let p = self.rbuf.payload(&f);
                    let (code, reason) = match p {
                        [a, b, rest @ ..] => (
                            Some(u16::from_be_bytes([*a, *b])),
                            String::from_utf8_lossy(rest).into_owned(),
                        ),
                        _ => (None, String::from("close frame without a code")),
                    };
                    self.close_reply = Some(code.unwrap_or(1000));
                    self.closed = Some(CloseInfo { code, reason });
                    return Ok(Status::Closed);
                }
                _ => unreachable!("parse_header rejects other opcodes"),
            }
        }
        if self.eof {
            self.closed.get_or_insert_with(|| CloseInfo {
                code: None,
                reason: String::from("end of stream without a close frame"),
            });
            return Ok(Status::Closed);
        }
        Ok(Status::Open)
    }

    /// Writes a pending Pong or Close echo. Not cancel-safe.
    pub async fn flush_control(&mut self) -> io::Result<()> {
        if let Some((len, data)) = self.pong.take() {
            self.queue(OP_PONG, &data[..len]);
        }
        if let Some(code) = self.close_reply.take()
            && !self.sent_close
        {
            self.sent_close = true;
            self.queue(OP_CLOSE, &code.to_be_bytes());
        }
        self.flush().await
    }

    /// `read_more` + `process` + `flush_control`, for code outside `select!`.
    pub async fn pump(&mut self, on_msg: impl FnMut(Msg<'_>)) -> Result<Status> {
        if self.closed.is_none() {
            self.read_more().await.context("reading")?;
        }
        let status = self.process(on_msg)?;
        self.flush_control().await.context("writing")?;
        Ok(status)
    }

    /// The next message, owned (allocates: not for hot paths). `None`: closed.
    pub async fn recv(&mut self) -> Result<Option<OwnedMsg>> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                return Ok(Some(m));
            }
            if self.closed.is_some() {
                return Ok(None);
            }
            let mut inbox = std::mem::take(&mut self.inbox);
            let status = self.pump(|m| {
                inbox.push_back(OwnedMsg {
                    opcode: m.opcode,
                    payload: m.payload.to_vec(),
                })
            });
            let status = status.await;
            self.inbox = inbox;
            status?;
        }
    }

    /// Appends a masked frame to the write queue.
    #[inline]
    pub fn queue(&mut self, opcode: u8, payload: &[u8]) {
        let mask = self.rng.mask();
        frame::encode(&mut self.wbuf, opcode, payload, mask);
        self.wends.push(self.wbuf.len());
    }

    /// Writes everything queued, counting the write calls and the frames
    /// each one carried. Not cancel-safe.
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let mut off = 0;
        // The first frame not yet written completely.
        let mut first = 0;
        while off < self.wbuf.len() {
            let n = self.stream.write(&self.wbuf[off..]).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            off += n;
            let (touched, next) = frames_in_write(&self.wends, first, off);
            first = next;
            self.stats.writes += 1;
            self.stats.max_frames_per_write = self.stats.max_frames_per_write.max(touched);
        }
        if let Stream::Tls(_) = self.stream {
            self.stream.flush().await?;
        }
        self.stats.frames_written += self.wends.len() as u64;
        self.wbuf.clear();
        self.wends.clear();
        Ok(())
    }

    /// Queues and writes one frame.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        self.queue(opcode, payload);
        self.flush().await
    }

    /// Sends the Mles header frame (PROTOCOL.md §2), with `auth` when a key is set.
    pub async fn join(&mut self, uid: &str, channel: &str) -> io::Result<()> {
        let key = AUTH_KEY.get().and_then(|k| k.as_deref());
        self.send(OP_TEXT, header_json(uid, channel, key).as_bytes())
            .await
    }

    /// How the server closed the session, once it did.
    pub fn close_info(&self) -> Option<&CloseInfo> {
        self.closed.as_ref()
    }

    /// Leaves: sends Close 1000, waits up to `wait` for the server's Close or
    /// end of stream, then shuts the stream down.
    pub async fn close(&mut self, wait: Duration) -> Result<()> {
        if self.closed.is_none() {
            self.sent_close = true;
            self.send(OP_CLOSE, &1000u16.to_be_bytes())
                .await
                .context("sending close")?;
            let drain = async {
                while self.pump(|_| {}).await? == Status::Open {}
                anyhow::Ok(())
            };
            tokio::time::timeout(wait, drain)
                .await
                .context("no close answer")??;
        } else {
            // Our echo of the server's Close, if still pending.
            let _ = self.flush_control().await;
        }
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

/// For a write that ended at byte `end` and began inside frame `first`
/// (`ends`: where each queued frame ends): how many frames it carried bytes
/// of, and the first frame it did not finish.
fn frames_in_write(ends: &[usize], first: usize, end: usize) -> (u64, usize) {
    let mut last = first;
    while last < ends.len() && ends[last] < end {
        last += 1;
    }
    // `last` is the frame the write ended in (or at the end of).
    let touched = (last - first + 1) as u64;
    let next = if ends.get(last) == Some(&end) {
        last + 1
    } else {
        last
    };
    (touched, next)
}

/// The server's `MLES_KEY`, set once per run ([`set_auth_key`]).
static AUTH_KEY: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();

/// Sets the key every header's `auth` is computed with (first call wins).
pub fn set_auth_key(key: Option<&str>) {
    let _ = AUTH_KEY.set(key.map(|k| k.as_bytes().to_vec()));
}

/// The header frame's JSON: `auth` = SipHash-2-4 (zero key) over uid,
/// channel and the key, in hex, when a key is given (PROTOCOL.md §3).
pub fn header_json(uid: &str, channel: &str, key: Option<&[u8]>) -> String {
    match key {
        None => serde_json::json!({ "uid": uid, "channel": channel }).to_string(),
        Some(k) => {
            use std::hash::Hasher;
            let mut h = siphasher::sip::SipHasher24::new_with_keys(0, 0);
            h.write(uid.as_bytes());
            h.write(channel.as_bytes());
            h.write(k);
            let auth = format!("{:016x}", h.finish());
            serde_json::json!({ "uid": uid, "channel": channel, "auth": auth }).to_string()
        }
    }
}

#[cfg(test)]
mod write_count_tests {
    use super::frames_in_write;

    #[test]
    fn frames_per_write_follow_the_boundaries() {
        // Frames [0,10) [10,20) [20,30).
        let ends = [10, 20, 30];
        assert_eq!(
            frames_in_write(&ends, 0, 30),
            (3, 3),
            "one write, all three"
        );
        assert_eq!(frames_in_write(&ends, 0, 10), (1, 1), "exactly the first");
        assert_eq!(
            frames_in_write(&ends, 0, 15),
            (2, 1),
            "first and part of the second"
        );
        assert_eq!(frames_in_write(&ends, 1, 18), (1, 1), "inside the second");
        assert_eq!(
            frames_in_write(&ends, 1, 30),
            (2, 3),
            "rest of the second, the third"
        );
        assert_eq!(frames_in_write(&[64], 0, 64), (1, 1));
    }
}

#[cfg(test)]
mod auth_tests {
    use super::header_json;

    #[test]
    fn auth_follows_the_protocol_test_vectors() {
        assert!(
            header_json("alice", "example", Some(b"secret"))
                .contains(r#""auth":"afa46b8689dae7a5""#)
        );
        assert!(
            header_json("bob", "general", Some(b"k3y")).contains(r#""auth":"82dab779bb281d62""#)
        );
        assert!(!header_json("alice", "example", None).contains("auth"));
    }
}
