//! A write timeout for HTTP responses: a client that stops reading must not
//! hold its connection, and with it a static file's `--filelimit` slot,
//! for ever.
//!
//! [`WriteStall`] wraps a connection's stream. While armed, a write or
//! flush that makes no progress for the limit fails with `TimedOut`; hyper
//! then drops the connection and the response body with it (which gives
//! back the open-file permit). Any progress starts the clock afresh, so a
//! slow but moving download is never cut. A connection that becomes a
//! WebSocket session is disarmed: a session's slow reader is handled by its
//! queue bound (close 1013), not by a timer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Disarms a [`WriteStall`] from outside the stream (the stream itself is
/// hyper's while the connection serves HTTP).
#[derive(Clone, Debug)]
pub struct Arming(Arc<AtomicBool>);

impl Arming {
    /// Stops timing writes for good (the connection is becoming a session).
    pub fn disarm(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A stream whose writes fail after `limit` without progress while armed.
pub struct WriteStall<S> {
    inner: S,
    armed: Arc<AtomicBool>,
    /// The limit in milliseconds: a session keeps this wrapper for its
    /// life (the upgrade hands hyper's stream on), so it is kept small.
    limit_ms: u32,
    /// Running while a write is pending; `None` after any progress.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> WriteStall<S> {
    pub fn new(inner: S, limit: Duration) -> (WriteStall<S>, Arming) {
        let armed = Arc::new(AtomicBool::new(true));
        let stall = WriteStall {
            inner,
            limit_ms: u32::try_from(limit.as_millis()).unwrap_or(u32::MAX),
            armed: armed.clone(),
            deadline: None,
        };
        (stall, Arming(armed))
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Turns a pending write into a timer check; ready output resets it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() || !self.armed.load(Ordering::Relaxed) {
            self.deadline = None;
            return polled;
        }
        let limit = Duration::from_millis(u64::from(self.limit_ms));
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(deadline.as_mut().poll(cx));
        self.deadline = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client read nothing for the write timeout",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteStall<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteStall<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_times_out_only_while_armed() {
        // A pipe with a 64-byte buffer that nobody reads.
        let (client, _server) = tokio::io::duplex(64);
        let (mut s, arming) = WriteStall::new(client, Duration::from_secs(5));
        let err = s.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        let (client, _server) = tokio::io::duplex(64);
        let (mut s, arming2) = WriteStall::new(client, Duration::from_secs(5));
        arming2.disarm();
        let stuck = tokio::time::timeout(Duration::from_secs(60), s.write_all(&[0u8; 1024])).await;
        assert!(
            stuck.is_err(),
            "a disarmed stream waits as long as it takes"
        );
        drop(arming);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        let (client, mut server) = tokio::io::duplex(64);
        let (mut s, _arming) = WriteStall::new(client, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            let mut total = 0;
            // Reads 64 bytes every 3 s: slower than the writer, never stalled for 5 s.
            while total < 512 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                total += server.read(&mut buf).await.unwrap();
            }
            total
        });
        s.write_all(&[0u8; 512]).await.unwrap();
        assert_eq!(reader.await.unwrap(), 512);
    }
}
