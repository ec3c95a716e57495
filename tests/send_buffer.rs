//! Socket send buffers are bounded with `--max-queue` (issue 9, item 5):
//! the server fixes each accepted socket's `SO_SNDBUF` to a quarter of it
//! instead of letting the kernel grow it to `tcp_wmem` (4 MiB) per subscriber.
//!
//! The server runs in this process, so the test finds the server's end of
//! its own connection among the process's descriptors and asks the kernel.

mod common;

use std::net::SocketAddr;
use std::os::fd::RawFd;

use common::*;
use mles::config::send_buffer_for;

/// The address of the far end of socket `fd`, if it is a connected TCP/IP socket.
fn peer_of(fd: RawFd) -> Option<SocketAddr> {
    let sock = std::mem::ManuallyDrop::new(unsafe {
        // SAFETY: borrowed only for the call; ManuallyDrop keeps the fd open.
        <std::net::TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd)
    });
    sock.peer_addr().ok()
}

/// `SO_SNDBUF` of the server's socket connected to `client`.
fn server_send_buffer(client: SocketAddr) -> usize {
    for entry in std::fs::read_dir("/proc/self/fd").unwrap() {
        let Ok(fd) = entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .parse::<RawFd>()
        else {
            continue;
        };
        let is_socket = std::fs::read_link(format!("/proc/self/fd/{fd}"))
            .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"));
        if is_socket && peer_of(fd) == Some(client) {
            let mut v: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: SO_SNDBUF writes one int.
            let rc = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&mut v as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0);
            return v as usize;
        }
    }
    panic!("no server socket connected to {client}");
}

#[tokio::test]
async fn send_buffers_stay_fixed_under_heavy_traffic() {
    let srv = TestServer::start(&["--max-queue", "1MiB", "--max-message", "256KiB"]);
    let asked = send_buffer_for(1 << 20);
    let mut reader = RawClient::connect(srv.addr).await;
    reader.join("reader", "sndbuf").await;
    let client = reader.tcp.local_addr().unwrap();
    let mut publisher = srv.join("publisher", "sndbuf").await;
    // 32 MiB to a fast reader: enough for the kernel's autotuning to grow an
    // unfixed send buffer towards tcp_wmem.
    let chunk = vec![1u8; 200 << 10];
    let mut got = 0usize;
    for _ in 0..160 {
        publisher.send_binary(&chunk).await;
        while got < 1 {
            match reader.frame().await.expect("frames arrive") {
                (0x82, p) => got += p.len(),
                _ => continue,
            }
        }
        got = 0;
    }
    let sndbuf = server_send_buffer(client);
    // Linux doubles what is set, for its own bookkeeping.
    assert_eq!(sndbuf, 2 * asked, "fixed at a quarter of --max-queue");
}

#[tokio::test]
async fn queued_bytes_are_shown_and_bounded_by_max_queue() {
    let srv = TestServer::start(&[
        "--max-queue",
        "4MiB",
        "--max-message",
        "256KiB",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let bound = 4 << 20;
    let mut stalled = RawClient::connect(srv.addr).await;
    stalled.join("stalled", "queued").await;
    let mut publisher = srv.join("publisher", "queued").await;
    let chunk = vec![2u8; 128 << 10];
    // Until the stalled reader is closed, what is queued to it shows, and
    // never passes --max-queue.
    let mut peak = 0;
    while srv.metric("mles_slow_consumers_total").await == 0 {
        publisher.send_binary(&chunk).await;
        let q = srv.metric("mles_queued_bytes").await;
        assert!(q as usize <= bound, "{q} > {bound}");
        peak = peak.max(q);
        // The gauge is refreshed every timer tick: give it one now and then.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(peak > 0, "the queue was visible while it grew");
}
