//! Per-shard counters served for Prometheus (`--metrics`).

mod common;

use std::time::Duration;

use common::*;

/// Sum of a metric's samples over all shards (and codes, if `code` is given).
fn total(text: &str, name: &str, code: Option<&str>) -> i64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| code.is_none_or(|c| l.contains(&format!("code=\"{c}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<i64>().unwrap())
        .sum()
}

async fn scrape(srv: &TestServer) -> String {
    let addr = srv.metrics_addr().expect("--metrics was given");
    let resp = http_raw(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("text/plain; version=0.0.4"), "{resp}");
    resp
}

#[tokio::test]
async fn counters_follow_sessions_joins_deliveries_and_closes() {
    let srv = TestServer::start(&["--metrics", "127.0.0.1:0"]);
    let mut a = srv.join("a", "metered").await;
    let mut b = srv.join("b", "metered").await;
    assert_eq!(header_uid(&a.recv_text().await).as_deref(), Some("b"));
    assert_eq!(
        header_uid(&b.recv_text().await).as_deref(),
        Some("a"),
        "history"
    );
    a.send_text("x").await;
    assert_eq!(b.recv_text().await, "x");
    let mut dup = srv.join("a", "metered").await;
    assert_eq!(dup.expect_close().await.0, 1008);
    drop(dup); // lets the server see EOF at once instead of waiting out its close linger

    // The refused session's task ends just after its close: wait for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = scrape(&srv).await;
        if total(&text, "mles_sessions_closed_total", Some("1008")) >= 1
            && total(&text, "mles_sessions", None) == 2
        {
            break text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters never settled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(total(&text, "mles_joins_total", None), 2);
    assert_eq!(total(&text, "mles_frames_published_total", None), 1);
    // b's header to a, history (a's header) is not counted, "x" to b.
    assert_eq!(total(&text, "mles_frames_delivered_total", None), 2);
    assert!(total(&text, "mles_connections_accepted_total", None) >= 3);
    let other = http_raw(
        srv.metrics_addr().unwrap(),
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}

#[tokio::test]
async fn health_and_readiness_on_the_metrics_listener() {
    let srv = TestServer::start(&["--metrics", "127.0.0.1:0"]);
    let addr = srv.metrics_addr().unwrap();
    let ask = |req: &'static str| http_raw(addr, req);
    let live = ask("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(live.starts_with("HTTP/1.1 200"), "{live}");
    let ready = ask("GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("ok listeners"), "{ready}");
    // Plain mode has no certificate to wait for.
    assert!(!ready.contains("certificate"), "{ready}");
    let head = ask("HEAD /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Only reads are allowed on the admin paths.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let resp = http_raw(addr, &req).await;
        assert!(resp.starts_with("HTTP/1.1 405"), "{path}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("allow: get, head"),
            "{resp}"
        );
    }
    // Static-file alerts are exported even while they are zero.
    let text = scrape(&srv).await;
    assert!(text.contains("mles_static_busy_total 0"), "{text}");
}
