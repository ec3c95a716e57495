//! Joining, history and relaying on the wire (PROTOCOL.md §4, §5).

mod common;

use common::*;

#[tokio::test]
async fn header_history_and_relay_between_two_members() {
    let srv = TestServer::start(&[]);
    let mut alice = srv.join("alice", "example").await;
    let mut carol = srv.join("carol", "example").await;
    assert_eq!(
        header_uid(&carol.recv_text().await).as_deref(),
        Some("alice"),
        "history: alice's header"
    );
    assert_eq!(
        header_uid(&alice.recv_text().await).as_deref(),
        Some("carol"),
        "live: carol's header"
    );
    alice.send_text("hello").await;
    alice.send_binary(&[1, 2, 3]).await;
    assert_eq!(carol.recv_text().await, "hello");
    assert_eq!(carol.recv_binary().await, vec![1, 2, 3]);

    let mut bob = srv.join("bob", "example").await;
    assert_eq!(header_uid(&bob.recv_text().await).as_deref(), Some("alice"));
    assert_eq!(header_uid(&bob.recv_text().await).as_deref(), Some("carol"));
    assert_eq!(bob.recv_text().await, "hello");
    assert_eq!(bob.recv_binary().await, vec![1, 2, 3]);
    assert_eq!(header_uid(&alice.recv_text().await).as_deref(), Some("bob"));
    assert_eq!(header_uid(&carol.recv_text().await).as_deref(), Some("bob"));

    bob.send_text("hi all").await;
    assert_eq!(alice.recv_text().await, "hi all");
    assert_eq!(carol.recv_text().await, "hi all");
    // Never back to the sender: the next thing Bob sees is Alice's reply.
    alice.send_binary(b"reply").await;
    assert_eq!(bob.recv_binary().await, b"reply".to_vec());
}
