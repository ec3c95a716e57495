//! Cluster mode on a NATS that wants TLS or credentials (issue 11: the usual
//! NATS auth and TLS): `--nats tls://…` with `--nats-ca`, and `--nats-creds`
//! against a nats-server in operator mode. Real nats-server processes, real
//! mles nodes, real WebSocket clients; the certificates, keys and JWTs are
//! made here for each test.

mod common;
mod tlsutil;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::nats::NatsServer;
use common::*;
use nkeys::KeyPair;
use serde_json::json;
use tempfile::TempDir;
use tlsutil::TestCa;

/// An mles node with `args` (its `--nats…` flags), ready to take joins.
async fn node(args: &[&str]) -> TestServer {
    let mut v = vec!["--shards", "2"];
    v.extend_from_slice(args);
    let s = TestServer::start(&v);
    s.cluster_up().await;
    s
}

/// Two members on two nodes hear each other: each node reached NATS, the
/// stream and the registry. Returns them, still joined.
async fn members_meet(a: &TestServer, b: &TestServer, channel: &str) -> (Client, Client) {
    let mut alice = a.join("alice", channel).await;
    let mut bob = b.join("bob", channel).await;
    // Alice gets Bob's join header, live or (had his come first) as history.
    let uids = recv_header_uids(&mut alice, 1).await;
    assert_eq!(uids, ["bob"]);
    bob.send_text("across the cluster").await;
    assert_eq!(alice.recv_text().await, "across the cluster");
    alice.send_text("and back").await;
    // Bob may have Alice's header first (history or live): skip headers.
    loop {
        let t = bob.recv_text().await;
        if header_uid(&t).is_none() {
            assert_eq!(t, "and back");
            break;
        }
    }
    (alice, bob)
}

/// A join refused while the node cannot use NATS: 1013, and a reason that
/// names the cluster.
async fn join_is_refused(s: &TestServer) -> String {
    let mut c = s.join("carol", "refused").await;
    let (code, reason) = c.expect_close().await;
    assert_eq!(code, 1013, "{reason}");
    assert!(reason.contains("cluster"), "the reason says why: {reason}");
    reason
}

/// A NATS server that wants TLS, its certificate from a test CA; the CA's
/// PEM file is returned with it.
fn tls_nats(dir: &Path) -> (NatsServer, PathBuf) {
    let ca = TestCa::new("mles test NATS CA");
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    let (cert, key, ca_pem) = (
        dir.join("nats.pem"),
        dir.join("nats.key"),
        dir.join("ca.pem"),
    );
    leaf.write(&cert, &key);
    std::fs::write(&ca_pem, &ca.pem).unwrap();
    let nats = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{}\", key_file: \"{}\", timeout: 5 }}",
        cert.display(),
        key.display()
    ));
    assert!(nats.url.starts_with("tls://"), "{}", nats.url);
    nats.await_healthy();
    (nats, ca_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_a_tls_nats_with_the_given_ca() {
    let dir = TempDir::new().unwrap();
    let (nats, ca) = tls_nats(dir.path());
    let ca = ca.to_str().unwrap();
    let args = ["--nats", nats.url.as_str(), "--nats-ca", ca];
    let (a, b) = (node(&args).await, node(&args).await);
    members_meet(&a, &b, "over-tls").await;
}

/// A node that does not trust NATS's certificate never uses the link: its
/// joins are refused (1013), and so they stay; its log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_certificate_from_another_ca_is_not_trusted() {
    let dir = TempDir::new().unwrap();
    let (nats, _) = tls_nats(dir.path());
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCa::new("someone else").pem).unwrap();
    let args = [
        "--nats",
        nats.url.as_str(),
        "--nats-ca",
        other.to_str().unwrap(),
    ];
    let s = node_not_up(&args);
    join_is_refused(&s).await;
    let why = why_nats_is_unreachable(&args);
    assert!(why.contains("invalid peer certificate"), "{why}");
    join_is_refused(&s).await;
}

/// An in-process node with `args` (its `--nats…` flags) whose link is not
/// expected to come up.
fn node_not_up(args: &[&str]) -> TestServer {
    let mut v = vec!["--shards", "2"];
    v.extend_from_slice(args);
    TestServer::start(&v)
}

/// Runs the binary with `args` until it logs why it cannot connect to NATS,
/// and returns that line (the binary's own logging, default filter).
fn why_nats_is_unreachable(args: &[&str]) -> String {
    log_until(args, "cannot connect to NATS").pop().unwrap()
}

/// Runs the binary with `args` (default log filter) until it logs a line
/// with `needle`; its log up to that line.
fn log_until(args: &[&str], needle: &str) -> Vec<String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mles"))
        .args(["--listen", "127.0.0.1:0", "--shards", "1"])
        .args(args)
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .expect("mles starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + WAIT * 2;
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(needle);
                seen.push(line);
                if done {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no {needle:?} logged; the log:\n{}", seen.join("\n"));
    seen
}

/// User and password in the `--nats` URL (NATS's plain authorization):
/// the nodes get in, and the password shows in no log line, whether it is
/// taken or refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_url_works_and_is_never_logged() {
    let nats = NatsServer::start_with("authorization { user: mles, password: \"pw-7e3b91\" }");
    nats.await_healthy();
    let addr = nats.client_addr;
    let good = format!("nats://mles:pw-7e3b91@{addr}");
    let (a, b) = (
        node(&["--nats", &good]).await,
        node(&["--nats", &good]).await,
    );
    members_meet(&a, &b, "with-password").await;
    let log = log_until(&["--nats", &good], "cluster link up");
    assert!(log.iter().any(|l| l.contains("nats://***@")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("pw-7e3b91")), "{log:?}");

    let bad = format!("nats://mles:wrong-5c2d@{addr}");
    let log = log_until(&["--nats", &bad], "cannot connect to NATS");
    assert!(
        log.last().unwrap().contains("authorization violation"),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l.contains("wrong-5c2d")), "{log:?}");
}

/// A signed NATS JWT: `claims` with the standard fields added, signed by
/// `issuer`, for `subject`.
fn jwt(issuer: &KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    let iat = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "jti": KeyPair::new_user().public_key(),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let header = json!({"typ": "JWT", "alg": "ed25519-nkey"});
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = issuer.sign(signed.as_bytes()).unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// An account, its key and JWT, signed by `operator`; with JetStream or not
/// (the system account must not have it).
fn account(operator: &KeyPair, name: &str, jetstream: bool) -> (KeyPair, String) {
    let key = KeyPair::new_account();
    let mut limits = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
    });
    if jetstream {
        for l in ["mem_storage", "disk_storage", "streams", "consumer"] {
            limits[l] = json!(-1);
        }
    }
    let claims = json!({"limits": limits, "type": "account", "version": 2});
    let token = jwt(operator, &key.public_key(), name, claims);
    (key, token)
}

/// A `.creds` file for a new user of `account`, as `nsc` writes them.
fn creds(account: &KeyPair, path: &Path) {
    let user = KeyPair::new_user();
    let claims = json!({"subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2});
    let token = jwt(account, &user.public_key(), "mles", claims);
    let file = format!(
        "-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\n\
         -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
        user.seed().unwrap()
    );
    std::fs::write(path, file).unwrap();
}

/// A NATS server in operator mode that knows one account (with JetStream):
/// the server, that account's key, and a creds file for a user of it.
fn operator_nats(dir: &Path) -> (NatsServer, KeyPair, PathBuf) {
    let operator = KeyPair::new_operator();
    let op_jwt = jwt(
        &operator,
        &operator.public_key(),
        "mles-test",
        json!({"type": "operator", "version": 2}),
    );
    let (sys, sys_jwt) = account(&operator, "SYS", false);
    let (acc, acc_jwt) = account(&operator, "MLES", true);
    let op_path = dir.join("operator.jwt");
    std::fs::write(&op_path, &op_jwt).unwrap();
    let nats = NatsServer::start_with(&format!(
        "operator: \"{}\"\nsystem_account: {sys}\nresolver: MEMORY\n\
         resolver_preload: {{ {sys}: \"{sys_jwt}\", {acc}: \"{acc_jwt}\" }}",
        op_path.display(),
        sys = sys.public_key(),
        acc = acc.public_key(),
    ));
    nats.await_healthy();
    let user = dir.join("mles.creds");
    creds(&acc, &user);
    (nats, acc, user)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_nats_with_creds() {
    let dir = TempDir::new().unwrap();
    let (nats, _, user) = operator_nats(dir.path());
    let args = [
        "--nats",
        nats.url.as_str(),
        "--nats-creds",
        user.to_str().unwrap(),
    ];
    let (a, b) = (node(&args).await, node(&args).await);
    members_meet(&a, &b, "with-creds").await;
}

/// Credentials NATS does not accept (a user of an account it does not
/// know) and none at all: joins are refused with 1013, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_nats_refuses_leave_joins_refused() {
    let dir = TempDir::new().unwrap();
    let (nats, _, _) = operator_nats(dir.path());
    let stranger = dir.path().join("stranger.creds");
    creds(&KeyPair::new_account(), &stranger);
    let with_stranger = [
        "--nats",
        nats.url.as_str(),
        "--nats-creds",
        stranger.to_str().unwrap(),
    ];
    let without = ["--nats", nats.url.as_str()];
    for args in [&with_stranger[..], &without[..]] {
        let s = node_not_up(args);
        join_is_refused(&s).await;
        let why = why_nats_is_unreachable(args);
        assert!(why.contains("authorization violation"), "{why}");
        join_is_refused(&s).await;
    }
}

/// The binary's exit status and what it printed, for flags that must fail at start.
fn mles_fails(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mles"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("mles runs");
    assert!(!out.status.success(), "{args:?} must not start");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Unreadable or malformed `--nats-creds` / `--nats-ca` stop the start with
/// a message that names the flag and the file.
#[test]
fn bad_nats_credentials_and_ca_files_are_named_at_start() {
    let dir = TempDir::new().unwrap();
    let junk = dir.path().join("junk.creds");
    std::fs::write(&junk, "not a creds file\n").unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "no certificate here\n").unwrap();
    let cases = [
        (
            "nats://127.0.0.1:4222",
            "--nats-creds",
            dir.path().join("missing.creds"),
        ),
        ("nats://127.0.0.1:4222", "--nats-creds", junk),
        ("tls://127.0.0.1:4222", "--nats-ca", ca),
    ];
    for (url, flag, file) in cases {
        let err = mles_fails(&["--nats", url, flag, file.to_str().unwrap()]);
        let name = file.file_name().unwrap().to_str().unwrap();
        assert!(err.contains(flag) && err.contains(name), "{err}");
    }
}

/// A token in the `--nats` URL (`nats://TOKEN@host`), percent-encoded as in
/// any URL, reaches NATS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_works() {
    let nats = NatsServer::start_with("authorization { token: \"tok/9f4e\" }");
    nats.await_healthy();
    let url = format!("nats://tok%2F9f4e@{}", nats.client_addr);
    let (a, b) = (node(&["--nats", &url]).await, node(&["--nats", &url]).await);
    members_meet(&a, &b, "with-token").await;
}

/// A NATS user allowed only what README's "NATS permissions" lists is
/// enough: live frames, history, and a probe of a half-open incumbent on
/// another node (PROTOCOL.md §4; its 2 s of silence are waited on purpose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_permissions_are_enough() {
    let nats = NatsServer::start_with(
        r#"authorization { users = [ { user: mles, password: pw, permissions: {
            publish: { allow: ["$JS.API.>", "mles.ch.>", "$KV.mles-members.>", "mles.node.>"] }
            subscribe: { allow: ["_INBOX.>", "mles.live.>", "mles.node.>",
                                 "$JS.EVENT.ADVISORY.STREAM.*.mles-channels"] }
            allow_responses: true
        } } ] }"#,
    );
    nats.await_healthy();
    let url = format!("nats://mles:pw@{}", nats.client_addr);
    let (a, b) = (node(&["--nats", &url]).await, node(&["--nats", &url]).await);
    let (mut alice, _bob) = members_meet(&a, &b, "allowed").await;

    // Erin on node a stops answering; Alice sees her join.
    let mut dead = RawClient::connect(a.addr).await;
    dead.join("erin", "allowed").await;
    until(&mut alice, |t| header_uid(t).as_deref() == Some("erin")).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    // Erin again on node b: b finds the uid held by a, a pings the silent
    // incumbent and answers "gone": the newcomer is in, with the history.
    let mut erin = b.join("erin", "allowed").await;
    let mut history = Vec::new();
    for _ in 0..5 {
        let t = erin.recv_text().await;
        history.push(header_uid(&t).unwrap_or(t));
    }
    history.sort();
    assert_eq!(
        history,
        ["across the cluster", "alice", "and back", "bob", "erin"]
    );
    alice.send_text("welcome back").await;
    until(&mut erin, |t| t == "welcome back").await;
    let code = loop {
        let (b0, p) = dead.frame().await.expect("ping then close");
        if b0 == 0x88 {
            break u16::from_be_bytes([p[0], p[1]]);
        }
    };
    assert_eq!(code, 1008);
    assert!(!nats.log().contains("Violation"), "{}", nats.log());
}

/// Reads text frames until one satisfies `done`.
async fn until(c: &mut Client, done: impl Fn(&str) -> bool) {
    while !done(&c.recv_text().await) {}
}
