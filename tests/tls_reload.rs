//! Certificate-file reload: new handshakes see the new certificate after the
//! files change, on SIGHUP or on `Tls::reload_now`, while connections that
//! are already open keep working; a broken new file keeps the old one.
//!
//! SIGHUP reaches every `Tls` in this test process; every assertion here
//! holds whether or not another test's signal caused an extra reload.

mod common;
mod tlsutil;

use std::time::Duration;

use mles::tls::Tls;
use tlsutil::{TestCa, client, connect, echo, eventually, files_config, leaf_of, serve};
use tokio::sync::watch;

/// The watcher polls every 2 s; allow a few rounds on a busy machine.
const RELOAD_LIMIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn rewritten_files_are_picked_up_without_dropping_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("reload CA");
    let first = ca.issue(&["localhost"]);
    first.write(&cert, &key);

    let (_stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .unwrap();
    let (addr, _server) = serve(tls.clone()).await;
    let roots = client(ca.roots());

    let mut old_session = connect(addr, "localhost", roots.clone()).await.unwrap();
    assert_eq!(leaf_of(&old_session), first.der);
    echo(&mut old_session, "before").await;

    // Renewal tools write new files and rename them into place.
    let second = ca.issue(&["localhost"]);
    second.write_atomically(&cert, &key);
    eventually(RELOAD_LIMIT, "the renamed files to be served", || async {
        let s = connect(addr, "localhost", roots.clone()).await.ok()?;
        (leaf_of(&s) == second.der).then_some(())
    })
    .await;
    echo(&mut old_session, "after rename").await;

    // Overwriting in place is noticed too.
    let third = ca.issue(&["localhost"]);
    third.write(&cert, &key);
    eventually(
        RELOAD_LIMIT,
        "the overwritten files to be served",
        || async {
            let s = connect(addr, "localhost", roots.clone()).await.ok()?;
            (leaf_of(&s) == third.der).then_some(())
        },
    )
    .await;
    echo(&mut old_session, "after overwrite").await;
    assert!(tls.reload_stats().unwrap().reloaded >= 2);
}

#[tokio::test]
async fn reload_now_swaps_at_once_and_a_broken_file_keeps_the_old_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("reload CA");
    let first = ca.issue(&["localhost"]);
    first.write(&cert, &key);

    let (_stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .unwrap();
    let (addr, _server) = serve(tls.clone()).await;
    let roots = client(ca.roots());
    let mut session = connect(addr, "localhost", roots.clone()).await.unwrap();

    let second = ca.issue(&["localhost"]);
    second.write(&cert, &key);
    tls.reload_now().unwrap();
    let s = connect(addr, "localhost", roots.clone()).await.unwrap();
    assert_eq!(
        leaf_of(&s),
        second.der,
        "reload_now swaps before it returns"
    );
    echo(&mut session, "after reload_now").await;

    // A key that belongs to another certificate: refused, old one kept.
    let stranger = ca.issue(&["localhost"]);
    std::fs::write(&key, &stranger.key_pem).unwrap();
    let err = tls.reload_now().expect_err("mismatched key");
    assert!(err.to_string().contains("does not match"), "{err}");
    let s = connect(addr, "localhost", roots.clone()).await.unwrap();
    assert_eq!(leaf_of(&s), second.der);

    // The watcher sees the change, fails the same way, and keeps serving.
    let failed_before = tls.reload_stats().unwrap().failed;
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    eventually(
        RELOAD_LIMIT,
        "the watcher to try the broken file",
        || async { (tls.reload_stats().unwrap().failed > failed_before).then_some(()) },
    )
    .await;
    let stats = tls.reload_stats().unwrap();
    assert!(stats.last_error.is_some(), "{stats:?}");
    let s = connect(addr, "localhost", roots.clone()).await.unwrap();
    assert_eq!(leaf_of(&s), second.der);
    echo(&mut session, "still alive").await;

    // Fixing the files recovers without a restart.
    let fourth = ca.issue(&["localhost"]);
    fourth.write(&cert, &key);
    eventually(RELOAD_LIMIT, "the repaired files to be served", || async {
        let s = connect(addr, "localhost", roots.clone()).await.ok()?;
        (leaf_of(&s) == fourth.der).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("reload CA");
    ca.issue(&["localhost"]).write(&cert, &key);

    let (_stop, shutdown) = watch::channel(false);
    // Start registers the SIGHUP handler before it returns, so the signal cannot kill us.
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .unwrap();
    let before = tls.reload_stats().unwrap().reloaded;
    // The files did not change: only the signal can cause this reload.
    // SAFETY: kill(2) on our own pid with a handled signal.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    eventually(RELOAD_LIMIT, "a reload on SIGHUP", || async {
        (tls.reload_stats().unwrap().reloaded > before).then_some(())
    })
    .await;
}

#[test]
fn the_watcher_ends_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    TestCa::new("reload CA")
        .issue(&["localhost"])
        .write(&cert, &key);
    let (stop, shutdown) = watch::channel(false);
    let tls = Tls::start(&files_config(&cert, &key), shutdown)
        .unwrap()
        .unwrap();
    stop.send(true).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tls.join();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(tlsutil::STEP)
        .expect("the watcher thread should end on shutdown");
}

/// The whole server: a wss session opened before a reload keeps relaying
/// after it, while new handshakes get the new certificate.
#[tokio::test]
async fn wss_sessions_survive_a_reload_of_the_server() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let ca = TestCa::new("reload CA");
    ca.issue(&["localhost"]).write(&cert, &key);
    let server = common::TestServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let roots = client(ca.roots());
    let mut alice =
        tlsutil::wss_join(server.addr, "localhost", roots.clone(), "alice", "reload").await;
    let mut bob = tlsutil::wss_join(server.addr, "localhost", roots.clone(), "bob", "reload").await;
    assert!(tlsutil::wss_text(&mut bob).await.contains("\"alice\""));
    assert!(tlsutil::wss_text(&mut alice).await.contains("\"bob\""));

    let second = ca.issue(&["localhost"]);
    second.write_atomically(&cert, &key);
    eventually(
        RELOAD_LIMIT,
        "the new certificate from the server",
        || async {
            let s = connect(server.addr, "localhost", roots.clone())
                .await
                .ok()?;
            (leaf_of(&s) == second.der).then_some(())
        },
    )
    .await;
    alice.send(Message::text("after reload")).await.unwrap();
    assert_eq!(tlsutil::wss_text(&mut bob).await, "after reload");
    assert!(server.stop());
}
