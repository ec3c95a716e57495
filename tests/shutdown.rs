//! Graceful shutdown sends Close 1001 to every session.

mod common;

use common::*;

#[tokio::test]
async fn shutdown_sends_1001_to_every_session() {
    let srv = TestServer::start(&[]);
    let mut a = srv.join("a", "bye").await;
    let mut b = srv.join("b", "bye").await;
    let mut fresh = srv.connect().await; // no header yet
    assert_eq!(header_uid(&a.recv_text().await).as_deref(), Some("b"));
    srv.begin_shutdown();
    for c in [&mut a, &mut b, &mut fresh] {
        let (code, why) = c.expect_close().await;
        assert_eq!((code, why.as_str()), (1001, "server shutting down"));
    }
    let addr = srv.addr;
    assert!(
        tokio::task::spawn_blocking(move || srv.stop())
            .await
            .unwrap(),
        "threads end within the grace period"
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
