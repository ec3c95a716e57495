//! What the kernel knows about a session's TCP connection, for the
//! half-open probe (PROTOCOL.md §4, issue 9 item 4): how many bytes the
//! peer has acknowledged, and how many sent bytes it has not yet.
//!
//! A ping queued behind data cannot be answered before the peer has read
//! that data, so the probe asks the kernel instead: a peer whose TCP stack
//! keeps acknowledging data is alive, however slowly it reads; a gone one
//! acknowledges nothing. Read-only `getsockopt`/`ioctl` calls, made only
//! while a probe runs.

use std::os::fd::RawFd;

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
}
