//! The http->https redirect listener: status, Location (path and query
//! kept, port only when not 443), 404 for hosts that are not ours, and a
//! clean stop on shutdown.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

const STEP: Duration = Duration::from_secs(10);

/// Sends one raw request and returns (status, Location) of the response.
async fn request(addr: SocketAddr, raw: &str) -> (u16, Option<String>) {
    let mut tcp = tokio::time::timeout(STEP, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    tcp.write_all(raw.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // The listener closes after each response (no keep-alive).
    tokio::time::timeout(STEP, tcp.read_to_end(&mut buf))
        .await
        .expect("response timed out")
        .unwrap();
    let text = String::from_utf8(buf).unwrap();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let location = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("location: ")
                .or_else(|| l.strip_prefix("Location: "))
        })
        .map(str::to_owned);
    (status, location)
}

fn get(host: &str, target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: test\r\n\r\n")
}

/// Starts the redirect on one address; returns the address it got.
fn start(
    addr: &str,
    domains: Vec<String>,
    tls_port: u16,
    shutdown: watch::Receiver<bool>,
) -> (SocketAddr, std::thread::JoinHandle<()>) {
    let (bound, thread) =
        mles::redirect::start(&[addr.parse().unwrap()], domains, tls_port, shutdown).unwrap();
    assert_eq!(bound.len(), 1);
    (bound[0], thread)
}

fn domains() -> Vec<String> {
    vec!["example.org".into(), "www.example.org".into()]
}

#[tokio::test]
async fn redirects_configured_domains_to_https() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("127.0.0.1:0", domains(), 443, shutdown);
    assert_ne!(addr.port(), 0);

    assert_eq!(
        request(addr, &get("example.org", "/chat/index.html?room=a&x=%20y")).await,
        (
            301,
            Some("https://example.org/chat/index.html?room=a&x=%20y".into())
        )
    );
    // Host with a port, upper case, second domain.
    assert_eq!(
        request(addr, &get("WWW.Example.org:80", "/")).await,
        (301, Some("https://www.example.org/".into()))
    );
    // HEAD is a plain page load too.
    let head = "HEAD /a HTTP/1.1\r\nHost: example.org\r\n\r\n";
    assert_eq!(
        request(addr, head).await,
        (301, Some("https://example.org/a".into()))
    );
    // Other methods keep method and body: 308.
    let post = "POST /form?x=1 HTTP/1.1\r\nHost: example.org\r\nContent-Length: 3\r\n\r\nabc";
    assert_eq!(
        request(addr, post).await,
        (308, Some("https://example.org/form?x=1".into()))
    );
    // Absolute-form request target.
    assert_eq!(
        request(
            addr,
            "GET http://example.org/p?q HTTP/1.1\r\nHost: example.org\r\n\r\n"
        )
        .await,
        (301, Some("https://example.org/p?q".into()))
    );
}

#[tokio::test]
async fn other_hosts_get_404() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("127.0.0.1:0", domains(), 443, shutdown);
    assert_eq!(request(addr, &get("evil.example", "/")).await, (404, None));
    assert_eq!(request(addr, &get("127.0.0.1", "/")).await, (404, None));
    assert_eq!(
        request(addr, &get("example.org.evil.example", "/")).await,
        (404, None)
    );
    // HTTP/1.0 without Host.
    assert_eq!(request(addr, "GET / HTTP/1.0\r\n\r\n").await, (404, None));
}

#[tokio::test]
async fn host_rules_of_rfc_9112() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("127.0.0.1:0", domains(), 443, shutdown);
    // HTTP/1.1 without Host, or with two, is a bad request.
    assert_eq!(request(addr, "GET / HTTP/1.1\r\n\r\n").await, (400, None));
    let two = "GET / HTTP/1.1\r\nHost: example.org\r\nHost: example.org\r\n\r\n";
    assert_eq!(request(addr, two).await, (400, None));
    // In absolute form the target's authority wins over Host.
    assert_eq!(
        request(
            addr,
            "GET http://example.org/p HTTP/1.1\r\nHost: evil.example\r\n\r\n"
        )
        .await,
        (301, Some("https://example.org/p".into()))
    );
    assert_eq!(
        request(
            addr,
            "GET http://evil.example/p HTTP/1.1\r\nHost: example.org\r\n\r\n"
        )
        .await,
        (404, None)
    );
}

#[tokio::test]
async fn listens_on_every_given_address_with_one_port() {
    let (_stop, shutdown) = watch::channel(false);
    let addrs = [
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.2:0".parse().unwrap(),
    ];
    let (bound, _thread) = mles::redirect::start(&addrs, domains(), 443, shutdown).unwrap();
    assert_eq!(bound.len(), 2);
    assert_eq!(bound[0].ip(), addrs[0].ip());
    assert_eq!(bound[1].ip(), addrs[1].ip());
    assert_eq!(bound[0].port(), bound[1].port());
    for a in bound {
        assert_eq!(
            request(a, &get("example.org", "/")).await,
            (301, Some("https://example.org/".into()))
        );
    }
}

#[tokio::test]
async fn non_443_tls_port_is_in_the_location() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("127.0.0.1:0", domains(), 8443, shutdown);
    assert_eq!(
        request(addr, &get("example.org:8080", "/x/y?z=1")).await,
        (301, Some("https://example.org:8443/x/y?z=1".into()))
    );
}

#[tokio::test]
async fn without_domains_any_host_is_redirected_to_itself() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("127.0.0.1:0", Vec::new(), 443, shutdown);
    assert_eq!(
        request(addr, &get("host.example:80", "/a")).await,
        (301, Some("https://host.example/a".into()))
    );
}

#[tokio::test]
async fn dual_stack_listener_answers_ipv4() {
    let (_stop, shutdown) = watch::channel(false);
    let (addr, _thread) = start("[::]:0", domains(), 443, shutdown);
    let v4: SocketAddr = ([127, 0, 0, 1], addr.port()).into();
    assert_eq!(
        request(v4, &get("example.org", "/")).await,
        (301, Some("https://example.org/".into()))
    );
}

#[test]
fn stops_on_shutdown() {
    let (stop, shutdown) = watch::channel(false);
    let (addr, thread) = start("127.0.0.1:0", domains(), 443, shutdown);
    stop.send(true).unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        thread.join().unwrap();
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(STEP)
        .expect("the redirect thread should end on shutdown");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed"
    );
}
