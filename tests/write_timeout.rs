//! `--write-timeout` is for HTTP responses only: a WebSocket session whose
//! reader stalls is governed by its queue bound (close 1013), not by the
//! timer, so a member that pauses reading for longer than the timeout
//! still gets everything once it reads again. (The static-file side is in
//! `static_files.rs`: a stalled download gives its file slot back.)

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_session_that_pauses_reading_is_not_cut_by_the_write_timeout() {
    let srv = TestServer::start(&["--write-timeout", "200ms"]);
    let mut slow = RawClient::connect(srv.addr).await;
    slow.join("slow", "paused").await;
    let mut fast = srv.join("fast", "paused").await;
    // History for the second member: the first one's header.
    assert_eq!(header_uid(&fast.recv_text().await).as_deref(), Some("slow"));

    // About 6 MiB: more than the socket buffers of a client that does not
    // read hold (its receive window does not grow while it reads nothing),
    // less than --max-queue (8 MiB).
    const FRAMES: usize = 7;
    const SIZE: usize = 900 << 10;
    for i in 0..FRAMES {
        fast.send_binary(&vec![i as u8; SIZE]).await;
    }
    // The server's writes to `slow` are now stuck. Let several write
    // timeouts pass: there is no condition to await, only time.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (b0, payload) = slow.frame().await.expect("the join of fast");
    assert_eq!(b0 & 0x0F, 0x1);
    assert_eq!(
        header_uid(&String::from_utf8(payload).unwrap()).as_deref(),
        Some("fast")
    );
    for i in 0..FRAMES {
        let (b0, payload) = slow.frame().await.expect("every frame, no close");
        assert_eq!(b0 & 0x0F, 0x2, "frame {i} is binary");
        assert_eq!(payload.len(), SIZE);
        assert!(payload.iter().all(|&b| b == i as u8), "frame {i} intact");
    }
}
