//! A session's TCP socket below tokio: what the kernel knows about the
//! connection, for the half-open probe (PROTOCOL.md §4, issue 9 item 4):
//! how many bytes the peer has acknowledged, and how many sent bytes it has
//! not yet; and [`send`], the non-blocking write of plain sessions.
//!
//! A ping queued behind data cannot be answered before the peer has read
//! that data, so the probe asks the kernel instead: a peer whose TCP stack
//! keeps acknowledging data is alive, however slowly it reads; a gone one
//! acknowledges nothing. Read-only `getsockopt`/`ioctl` calls, made only
//! while a probe runs.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

/// Writes `bufs` to the socket without blocking: `send` for one buffer,
/// `sendmsg` for more, both with `MSG_DONTWAIT`, which skip what `writev`
/// pays on a socket (the file position lock, `vfs_writev`; issue 12's
/// profile); `send` also skips importing a message header and an iovec
/// array. `WouldBlock` when the send buffer is full. Only for plain TCP
/// sessions: under TLS the socket carries records, not frames.
pub fn send(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    // SAFETY: the kernel only reads `len` bytes at `buf`, or through the
    // iovecs (IoSlice is ABI-compatible with iovec: std guarantees it on
    // Unix); msghdr is plain data.
    let n = unsafe {
        if let [one] = bufs {
            libc::send(fd, one.as_ptr().cast(), one.len(), flags)
        } else {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
            msg.msg_iovlen = bufs.len() as _;
            libc::sendmsg(fd, &msg, flags)
        }
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes of this connection the peer has acknowledged (`TCP_INFO`).
pub fn bytes_acked(fd: RawFd) -> Option<u64> {
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then_some(info.tcpi_bytes_acked)
    }
}

/// Bytes written to the socket that the peer has not acknowledged yet
/// (`SIOCOUTQ`).
pub fn unacked(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (rc == 0 && n >= 0).then_some(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn acknowledged_bytes_follow_what_the_peer_takes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        let before = bytes_acked(a.as_raw_fd()).unwrap();
        a.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        // The acknowledgement may trail the read by a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while bytes_acked(a.as_raw_fd()).unwrap() < before + 5 {
            assert!(std::time::Instant::now() < deadline, "no ACK seen");
            std::thread::yield_now();
        }
        assert_eq!(unacked(a.as_raw_fd()), Some(0));
        assert_eq!(bytes_acked(-1), None);
    }

    #[test]
    fn send_writes_every_slice_and_never_blocks() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut b, _) = l.accept().unwrap();
        let n = send(a.as_raw_fd(), &[IoSlice::new(b"hel"), IoSlice::new(b"lo")]).unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // Nobody reads: the buffers fill and send says so instead of blocking.
        let big = vec![0u8; 1 << 20];
        let err = loop {
            match send(a.as_raw_fd(), &[IoSlice::new(&big)]) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        assert!(send(-1, &[IoSlice::new(b"x")]).is_err());
    }
}
