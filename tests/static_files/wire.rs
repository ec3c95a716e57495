//! Static files through the real server over a socket. Requests are raw
//! HTTP/1.1, so request targets reach the server exactly as written here
//! (a real client would normalize `..` away).

use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{TestServer, WAIT};
use super::{Site, decode, text};

/// A parsed response.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map_or("", |(_, v)| v.as_str())
    }
}

fn split_head(raw: &[u8]) -> Option<(Reply, usize)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    Some((
        Reply {
            status,
            headers,
            body: Vec::new(),
        },
        end,
    ))
}

/// Sends one request (`Connection: close`) and reads the whole response.
async fn fetch(addr: SocketAddr, method: &str, target: &str, extra: &[(&str, &str)]) -> Reply {
    fetch_host(addr, method, target, "localhost", extra).await
}

async fn fetch_host(
    addr: SocketAddr,
    method: &str,
    target: &str,
    host: &str,
    extra: &[(&str, &str)],
) -> Reply {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (n, v) in extra {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("response reads");
    let (mut reply, end) = split_head(&raw).unwrap_or_else(|| {
        panic!(
            "{method} {target}: no response head in {:?}",
            String::from_utf8_lossy(&raw)
        )
    });
    reply.body = raw[end..].to_vec();
    if reply.header("transfer-encoding") == "chunked" {
        assert_eq!(reply.header("content-length"), "", "chunked has no length");
        reply.body = dechunk(&reply.body);
    } else if method != "HEAD" && reply.status != 304 {
        let len = reply.header("content-length");
        assert_eq!(
            len,
            reply.body.len().to_string(),
            "{method} {target}: Content-Length"
        );
    }
    reply
}

/// The payload of a chunked body (no trailers expected).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = std::str::from_utf8(&raw[..line_end]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line_end + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "chunk ends with CRLF");
        raw = &raw[size + 2..];
    }
}

/// Sends raw bytes and returns the status of the response.
async fn raw_status(addr: SocketAddr, request: &str) -> u16 {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("response reads");
    split_head(&raw).expect("a response head").0.status
}

fn www_args(site: &Site) -> Vec<String> {
    vec![
        "--wwwroot".to_string(),
        site.www.to_str().unwrap().to_string(),
    ]
}

fn start(args: &[String]) -> TestServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    TestServer::start(&args)
}

#[tokio::test]
async fn files_over_http() {
    let site = Site::new();
    site.write("index.html", "<h1>home</h1>");
    let js = text(50_000);
    site.write("app.js", &js);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    site.write("big.bin", &big);
    let srv = start(&www_args(&site));
    let addr = srv.addr;

    let r = fetch(addr, "GET", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    assert_eq!(r.body, b"<h1>home</h1>");

    for coding in ["br", "zstd", "gzip"] {
        let r = fetch(addr, "GET", "/app.js", &[("Accept-Encoding", coding)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), coding);
        assert_eq!(r.header("vary"), "accept-encoding");
        assert_eq!(decode(coding, &r.body), js, "{coding}");
    }
    let r = fetch(addr, "HEAD", "/app.js", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), "50000", "HEAD keeps the length");
    assert!(r.body.is_empty());
    let etag = r.header("etag").to_string();
    let r = fetch(addr, "GET", "/app.js", &[("If-None-Match", &etag)]).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let modified = fetch(addr, "GET", "/app.js", &[]).await;
    let since = modified.header("last-modified");
    let r = fetch(addr, "GET", "/app.js", &[("If-Modified-Since", since)]).await;
    assert_eq!(r.status, 304);

    let r = fetch(addr, "GET", "/big.bin", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, big, "streamed whole");
    let r = fetch(
        addr,
        "GET",
        "/big.bin",
        &[("Range", "bytes=1000000-1999999")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), "bytes 1000000-1999999/3000000");
    assert_eq!(r.body, big[1_000_000..2_000_000]);
    let r = fetch(addr, "GET", "/big.bin", &[("Range", "bytes=3000000-")]).await;
    assert_eq!(r.status, 416);

    let r = fetch(addr, "POST", "/", &[("Content-Length", "0")]).await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), "GET, HEAD");
    let r = fetch(addr, "GET", "/missing", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
}

#[tokio::test]
async fn no_way_out_over_http() {
    let site = Site::new();
    site.write("sub/page.txt", "page");
    site.write(".hidden", "hidden");
    std::os::unix::fs::symlink(
        site.outside.join("secret.txt"),
        site.www.join("link-out.txt"),
    )
    .unwrap();
    let srv = start(&www_args(&site));
    let absolute = format!(
        "http://localhost{}",
        site.outside.join("secret.txt").display()
    );
    for target in [
        "/../outside/secret.txt",
        "/sub/../../outside/secret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/%2E%2E/outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/%2f..%2foutside%2fsecret.txt",
        "/..%5c..%5coutside%5csecret.txt",
        "/..\\outside\\secret.txt",
        "/sub/page.txt%00.html",
        "//outside/secret.txt",
        "/link-out.txt",
        "/.hidden",
        "/%2ehidden",
        "http://localhost/../outside/secret.txt",
        absolute.as_str(),
    ] {
        let r = fetch(srv.addr, "GET", target, &[]).await;
        assert!(r.status == 400 || r.status == 404, "{target}: {}", r.status);
        assert!(r.body.len() < 40, "{target}: a short body");
        let body = String::from_utf8_lossy(&r.body);
        assert!(
            !body.contains("secret") && !body.contains("hidden"),
            "{target}: {body}"
        );
    }
    let r = fetch(srv.addr, "GET", "/sub/page.txt", &[]).await;
    assert_eq!(r.body, b"page");
}

#[tokio::test]
async fn domains_over_http() {
    let site = Site::new();
    site.write("example.org/index.html", "example");
    site.write("other.net/index.html", "other");
    let mut args = www_args(&site);
    for a in ["--plain", "-d", "example.org", "-d", "Other.NET"] {
        args.push(a.to_string());
    }
    let srv = start(&args);
    for (host, expect) in [
        ("example.org", "example"),
        ("EXAMPLE.ORG:443", "example"),
        ("other.net", "other"),
    ] {
        let r = fetch_host(srv.addr, "GET", "/", host, &[]).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(String::from_utf8_lossy(&r.body), expect, "{host}");
    }
    for host in ["localhost", "example.com", "other.net.example.org"] {
        let r = fetch_host(srv.addr, "GET", "/", host, &[]).await;
        assert_eq!(r.status, 404, "{host}");
    }
}

#[tokio::test]
async fn open_files_are_limited_over_http() {
    let site = site_with_big_file();
    let mut args = www_args(&site);
    args.extend(["-f".to_string(), "1".to_string()]);
    let srv = start(&args);

    let stalled = start_big_download(srv.addr).await;

    let started = Instant::now();
    let r = fetch(srv.addr, "GET", "/small.txt", &[]).await;
    assert_eq!(r.status, 503);
    assert!(started.elapsed() >= mles::statics::PERMIT_WAIT);
    assert_eq!(r.header("retry-after"), "1");
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");

    // The reader goes away: its response ends, and the file is closed.
    drop(stalled);
    let deadline = Instant::now() + WAIT;
    loop {
        let r = fetch(srv.addr, "GET", "/small.txt", &[]).await;
        if r.status == 200 {
            assert_eq!(r.body, b"small");
            break;
        }
        assert_eq!(r.status, 503);
        assert!(Instant::now() < deadline, "the permit came back in time");
    }
}

#[tokio::test]
async fn a_stalled_download_gives_its_file_slot_back() {
    let site = site_with_big_file();
    let mut args = www_args(&site);
    args.extend(
        [
            "-f",
            "1",
            "--write-timeout",
            "1s",
            "--metrics",
            "127.0.0.1:0",
        ]
        .map(String::from),
    );
    let srv = start(&args);

    // A client that asks for the big file and then never reads: once the
    // socket buffers are full, the server's writes make no progress.
    let stalled = start_big_download(srv.addr).await;
    assert_eq!(fetch(srv.addr, "GET", "/small.txt", &[]).await.status, 503);

    // Still connected, still not reading: the write timeout ends the
    // response and the only slot serves others again.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = fetch(srv.addr, "GET", "/small.txt", &[]).await;
        if r.status == 200 {
            assert_eq!(r.body, b"small");
            break;
        }
        assert_eq!(r.status, 503);
        assert!(
            Instant::now() < deadline,
            "the stalled download kept the file slot"
        );
    }
    let metrics = super::common::http_raw(
        srv.metrics_addr().unwrap(),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let busy: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("mles_static_busy_total "))
        .expect("the 503 counter is exported")
        .parse()
        .unwrap();
    assert!(busy >= 1, "{metrics}");
    drop(stalled);
}

#[tokio::test]
async fn large_text_files_are_compressed_while_streaming() {
    let site = Site::new();
    let js = text(3 << 20);
    site.write("large.js", &js);
    let srv = start(&www_args(&site));
    let mut tags = Vec::new();
    for coding in ["br", "zstd", "gzip"] {
        let r = fetch(srv.addr, "GET", "/large.js", &[("Accept-Encoding", coding)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), coding);
        assert_eq!(r.header("vary"), "accept-encoding");
        assert!(
            r.body.len() < js.len() / 10,
            "{coding}: {} bytes",
            r.body.len()
        );
        assert_eq!(decode(coding, &r.body), js, "{coding}");
        tags.push(r.header("etag").to_string());
        // The coded representation's tag validates it.
        let again = fetch(
            srv.addr,
            "GET",
            "/large.js",
            &[
                ("Accept-Encoding", coding),
                ("If-None-Match", &tags[tags.len() - 1]),
            ],
        )
        .await;
        assert_eq!(again.status, 304, "{coding}");
    }
    let r = fetch(srv.addr, "GET", "/large.js", &[]).await;
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.header("content-length"), js.len().to_string());
    tags.push(r.header("etag").to_string());
    tags.sort();
    tags.dedup();
    assert_eq!(tags.len(), 4, "one tag per coding: {tags:?}");
    // Ranges are served from the uncoded bytes.
    let r = fetch(
        srv.addr,
        "GET",
        "/large.js",
        &[("Accept-Encoding", "br"), ("Range", "bytes=100-199")],
    )
    .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-encoding"), "");
    assert_eq!(r.body, js[100..200]);
    let r = fetch(
        srv.addr,
        "HEAD",
        "/large.js",
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), "gzip");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn host_rules_over_http() {
    let site = Site::new();
    site.write("example.org/index.html", "example");
    site.write("other.net/index.html", "other");
    let mut args = www_args(&site);
    args.extend(["-d", "example.org", "-d", "other.net", "--plain"].map(String::from));
    let srv = start(&args);
    assert_eq!(
        raw_status(srv.addr, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await,
        400
    );
    assert_eq!(
        raw_status(
            srv.addr,
            "GET / HTTP/1.1\r\nHost: example.org\r\nHost: other.net\r\nConnection: close\r\n\r\n"
        )
        .await,
        400
    );
    // The absolute-form target's authority wins over Host.
    let r = fetch_host(srv.addr, "GET", "http://other.net/", "example.org", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"other");
}

#[tokio::test]
async fn web_client_over_http() {
    let srv = TestServer::start(&[]);
    let r = fetch(srv.addr, "GET", "/", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    assert!(String::from_utf8_lossy(&r.body).contains("src=\"/client.js\""));
    let r = fetch(
        srv.addr,
        "GET",
        "/client.js",
        &[("Accept-Encoding", "gzip")],
    )
    .await;
    assert_eq!(r.header("content-encoding"), "gzip");
    let js = String::from_utf8(decode("gzip", &r.body)).unwrap();
    assert!(js.contains("mles-websocket"));
    let r = fetch(srv.addr, "GET", "/other", &[]).await;
    assert_eq!(r.status, 404);
}

/// A site with `small.txt` and a sparse 1 GiB `big.bin`: far larger than
/// what the socket buffers of both ends hold, so a reader that stops
/// reading keeps the server's file open.
fn site_with_big_file() -> Site {
    let site = Site::new();
    site.write("small.txt", "small");
    let big = std::fs::File::create(site.www.join("big.bin")).unwrap();
    big.set_len(1 << 30).unwrap();
    site
}

/// Asks for `big.bin` and reads only the start of the 200 response.
async fn start_big_download(addr: std::net::SocketAddr) -> TcpStream {
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 16];
    tokio::time::timeout(WAIT, stalled.read_exact(&mut first))
        .await
        .expect("the big response starts")
        .unwrap();
    assert!(first.starts_with(b"HTTP/1.1 200"));
    stalled
}
