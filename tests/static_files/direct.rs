//! `StaticFiles::serve` called directly, without a server.

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use mles::statics::{Body, PERMIT_WAIT, StaticFiles};

use super::{Site, decode, settings, text};

const WAIT: Duration = Duration::from_secs(10);

fn get(path: &str) -> http::request::Builder {
    Request::builder()
        .uri(path)
        .header(header::HOST, "localhost")
}

async fn serve(files: &StaticFiles, req: http::request::Builder) -> Response<Body> {
    let req = req.body(()).unwrap();
    tokio::time::timeout(WAIT, files.serve(&req))
        .await
        .expect("serve answers in time")
}

async fn body(res: Response<Body>) -> Bytes {
    tokio::time::timeout(WAIT, res.into_body().collect())
        .await
        .expect("body in time")
        .expect("body reads")
        .to_bytes()
}

fn hdr(res: &Response<Body>, name: header::HeaderName) -> &str {
    res.headers()
        .get(&name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

#[tokio::test]
async fn content_types_index_and_redirect() {
    let site = Site::new();
    site.write("index.html", "<h1>home</h1>");
    site.write("style.css", "body{}");
    site.write("app.js", "let a = 1;");
    site.write("data.json", "{}");
    site.write("pic.png", [0x89, b'P', b'N', b'G']);
    site.write("blob", "raw");
    site.write("docs/index.html", "<h1>docs</h1>");
    let files = site.files();

    for (path, ty) in [
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/pic.png", "image/png"),
        ("/blob", "application/octet-stream"),
    ] {
        let res = serve(&files, get(path)).await;
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(hdr(&res, header::CONTENT_TYPE), ty, "{path}");
        assert_eq!(hdr(&res, header::X_CONTENT_TYPE_OPTIONS), "nosniff");
    }
    let js = serve(&files, get("/app.js")).await;
    assert!(hdr(&js, header::CONTENT_TYPE).ends_with("javascript; charset=utf-8"));

    let res = serve(&files, get("/")).await;
    assert_eq!(
        hdr(&res, header::CACHE_CONTROL),
        "no-cache",
        "HTML is revalidated"
    );
    assert_eq!(body(res).await, "<h1>home</h1>");
    let res = serve(&files, get("/docs/")).await;
    assert_eq!(body(res).await, "<h1>docs</h1>");
    let res = serve(&files, get("/style.css")).await;
    assert_eq!(hdr(&res, header::CACHE_CONTROL), "public, max-age=3600");

    // A directory without its slash: redirect, keeping the query.
    let res = serve(&files, get("/docs?x=1")).await;
    assert_eq!(res.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(hdr(&res, header::LOCATION), "/docs/?x=1");
    // The redirect is built from the clean path, never `//host`.
    let res = serve(&files, get("//docs")).await;
    assert_eq!(hdr(&res, header::LOCATION), "/docs/");
    // A file with a slash is not a directory.
    assert_eq!(
        serve(&files, get("/style.css/")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        serve(&files, get("/missing.html")).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn head_has_headers_but_no_body() {
    let site = Site::new();
    site.write("a.txt", "hello");
    site.write("big.js", text(10_000));
    let files = site.files();
    let res = serve(&files, get("/a.txt").method("HEAD")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hdr(&res, header::CONTENT_LENGTH), "5");
    assert!(!hdr(&res, header::ETAG).is_empty());
    assert!(body(res).await.is_empty());

    let res = serve(
        &files,
        get("/big.js")
            .method("HEAD")
            .header(header::ACCEPT_ENCODING, "gzip"),
    )
    .await;
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "gzip");
    let head_len: usize = hdr(&res, header::CONTENT_LENGTH).parse().unwrap();
    assert!(body(res).await.is_empty());
    let res = serve(
        &files,
        get("/big.js").header(header::ACCEPT_ENCODING, "gzip"),
    )
    .await;
    assert_eq!(
        body(res).await.len(),
        head_len,
        "HEAD tells the GET's length"
    );
}

#[tokio::test]
async fn other_methods_get_405() {
    let site = Site::new();
    site.write("a.txt", "hello");
    let files = site.files();
    for m in ["POST", "PUT", "DELETE", "OPTIONS"] {
        let res = serve(&files, get("/a.txt").method(m)).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
        assert_eq!(hdr(&res, header::ALLOW), "GET, HEAD");
        assert_eq!(hdr(&res, header::CONTENT_TYPE), "text/plain; charset=utf-8");
    }
}

#[tokio::test]
async fn not_modified_on_either_validator() {
    let site = Site::new();
    site.write("a.txt", "hello");
    let files = site.files();
    let res = serve(&files, get("/a.txt")).await;
    let etag = hdr(&res, header::ETAG).to_string();
    let modified = hdr(&res, header::LAST_MODIFIED).to_string();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert!(httpdate::parse_http_date(&modified).is_ok(), "{modified}");

    let res = serve(&files, get("/a.txt").header(header::IF_NONE_MATCH, &etag)).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(hdr(&res, header::ETAG), etag);
    assert!(body(res).await.is_empty());
    let res = serve(
        &files,
        get("/a.txt").header(header::IF_NONE_MATCH, format!("\"other\", W/{etag}")),
    )
    .await;
    assert_eq!(
        res.status(),
        StatusCode::NOT_MODIFIED,
        "weak comparison, lists"
    );

    let res = serve(
        &files,
        get("/a.txt").header(header::IF_MODIFIED_SINCE, &modified),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let old = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH);
    let res = serve(&files, get("/a.txt").header(header::IF_MODIFIED_SINCE, old)).await;
    assert_eq!(res.status(), StatusCode::OK);

    // If-None-Match wins over If-Modified-Since.
    let res = serve(
        &files,
        get("/a.txt")
            .header(header::IF_NONE_MATCH, "\"stale\"")
            .header(header::IF_MODIFIED_SINCE, &modified),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "hello");
}

#[tokio::test]
async fn compression_is_negotiated() {
    let site = Site::new();
    let content = text(50_000);
    site.write("app.js", &content);
    site.write("tiny.css", "a{}");
    site.write("pic.png", &content);
    let files = site.files();

    let mut etags = Vec::new();
    for (accept, expect) in [
        ("gzip, deflate, br, zstd", "br"),
        ("gzip", "gzip"),
        ("zstd, gzip;q=0.5", "zstd"),
        ("br;q=0, zstd;q=0.1, gzip;q=0.9", "gzip"),
        ("*", "br"),
        ("*;q=0.5, br;q=0", "zstd"),
        ("identity", ""),
        ("gzip;q=0", ""),
        ("deflate", ""),
    ] {
        let res = serve(
            &files,
            get("/app.js").header(header::ACCEPT_ENCODING, accept),
        )
        .await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(hdr(&res, header::CONTENT_ENCODING), expect, "{accept}");
        assert_eq!(hdr(&res, header::VARY), "accept-encoding", "{accept}");
        etags.push((expect, hdr(&res, header::ETAG).to_string()));
        let len: usize = hdr(&res, header::CONTENT_LENGTH).parse().unwrap();
        let data = body(res).await;
        assert_eq!(data.len(), len);
        if !expect.is_empty() {
            assert!(
                data.len() < content.len() / 5,
                "{accept}: {} bytes",
                data.len()
            );
        }
        assert_eq!(decode(expect, &data), content, "{accept}");
    }
    // No header at all: uncoded.
    let res = serve(&files, get("/app.js")).await;
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "");

    // Each coding has its own ETag, and a 304 needs the tag of the coding chosen.
    let tag = |e: &str| etags.iter().find(|(x, _)| *x == e).unwrap().1.clone();
    assert_ne!(tag("br"), tag("gzip"));
    assert_ne!(tag("br"), tag(""));
    let res = serve(
        &files,
        get("/app.js")
            .header(header::ACCEPT_ENCODING, "br")
            .header(header::IF_NONE_MATCH, tag("br")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(hdr(&res, header::VARY), "accept-encoding");
    let res = serve(
        &files,
        get("/app.js")
            .header(header::ACCEPT_ENCODING, "gzip")
            .header(header::IF_NONE_MATCH, tag("br")),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);

    // Not worth it (tiny) or not compressible (png): uncoded.
    let res = serve(
        &files,
        get("/tiny.css").header(header::ACCEPT_ENCODING, "br"),
    )
    .await;
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "");
    let res = serve(
        &files,
        get("/pic.png").header(header::ACCEPT_ENCODING, "br"),
    )
    .await;
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "");
    assert_eq!(hdr(&res, header::VARY), "");
}

#[tokio::test]
async fn compressed_cache_follows_file_changes() {
    let site = Site::new();
    let path = site.write("app.js", text(4000));
    let files = site.files();
    let fetch = || async {
        let res = serve(&files, get("/app.js").header(header::ACCEPT_ENCODING, "br")).await;
        assert_eq!(hdr(&res, header::CONTENT_ENCODING), "br");
        decode("br", &body(res).await)
    };
    assert_eq!(fetch().await, text(4000));
    assert_eq!(fetch().await, text(4000), "served again (from the cache)");

    // Rewritten in place, same size, only the modification time moves.
    let mut same_size = text(4000);
    same_size[0] = b'F';
    fs::write(&path, &same_size).unwrap();
    let f = fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    assert_eq!(fetch().await, same_size);

    // Rewritten in place with another size.
    fs::write(&path, text(5000)).unwrap();
    assert_eq!(fetch().await, text(5000));

    // Replaced by rename (a new inode), as deploy tools do.
    let tmp = site.write("app.js.new", text(3000));
    fs::rename(&tmp, &path).unwrap();
    assert_eq!(fetch().await, text(3000));
}

#[tokio::test]
async fn large_files_stream_with_ranges() {
    let site = Site::new();
    // Over the compression limit and over the read-whole limit: streamed.
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    site.write("big.txt", &content);
    let files = site.files();
    let len = content.len();

    // Coded while it streams, without a length.
    let res = serve(
        &files,
        get("/big.txt").header(header::ACCEPT_ENCODING, "br, gzip"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "br");
    assert_eq!(hdr(&res, header::CONTENT_LENGTH), "");
    assert_eq!(decode("br", &body(res).await), content);

    let res = serve(&files, get("/big.txt")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "");
    assert_eq!(hdr(&res, header::ACCEPT_RANGES), "bytes");
    assert_eq!(hdr(&res, header::CONTENT_LENGTH), len.to_string());
    assert_eq!(body(res).await, content);

    for (range, start, end) in [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-", 1000, len - 1),
        ("bytes=-100", len - 100, len - 1),
        ("bytes=2999000-9999999", 2_999_000, len - 1),
        ("bytes=100000-1200000", 100_000, 1_200_000),
    ] {
        let res = serve(
            &files,
            get("/big.txt")
                .header(header::RANGE, range)
                .header(header::ACCEPT_ENCODING, "br"),
        )
        .await;
        assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            hdr(&res, header::CONTENT_RANGE),
            format!("bytes {start}-{end}/{len}"),
            "{range}"
        );
        assert_eq!(
            hdr(&res, header::CONTENT_LENGTH),
            (end - start + 1).to_string()
        );
        assert_eq!(body(res).await, content[start..=end], "{range}");
    }

    let res = serve(
        &files,
        get("/big.txt").header(header::RANGE, "bytes=5000000-"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(hdr(&res, header::CONTENT_RANGE), format!("bytes */{len}"));

    // Several ranges, or a stale If-Range: the whole file.
    let res = serve(
        &files,
        get("/big.txt").header(header::RANGE, "bytes=0-1,5-6"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let etag = hdr(&res, header::ETAG).to_string();
    let stale = get("/big.txt")
        .header(header::RANGE, "bytes=0-1")
        .header(header::IF_RANGE, "\"stale\"");
    assert_eq!(serve(&files, stale).await.status(), StatusCode::OK);
    let fresh = get("/big.txt")
        .header(header::RANGE, "bytes=0-1")
        .header(header::IF_RANGE, &etag);
    assert_eq!(
        serve(&files, fresh).await.status(),
        StatusCode::PARTIAL_CONTENT
    );
}

#[tokio::test]
async fn range_on_a_compressible_file_is_uncoded() {
    let site = Site::new();
    let content = text(20_000);
    site.write("app.js", &content);
    let files = site.files();
    let res = serve(
        &files,
        get("/app.js")
            .header(header::RANGE, "bytes=10-19")
            .header(header::ACCEPT_ENCODING, "gzip"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "");
    assert_eq!(body(res).await, content[10..20]);
}

#[tokio::test]
async fn no_way_out_of_the_root() {
    let site = Site::new();
    site.write("index.html", "home");
    site.write("sub/page.txt", "page");
    symlink(
        site.outside.join("secret.txt"),
        site.www.join("link-out.txt"),
    )
    .unwrap();
    symlink(&site.outside, site.www.join("dir-out")).unwrap();
    symlink(
        "../outside/secret.txt",
        site.www.join("sub/relative-out.txt"),
    )
    .unwrap();
    symlink(site.www.join("sub/page.txt"), site.www.join("link-in.txt")).unwrap();
    let files = site.files();

    let attempts = [
        ("/../outside/secret.txt", StatusCode::BAD_REQUEST),
        ("/sub/../../outside/secret.txt", StatusCode::BAD_REQUEST),
        ("/%2e%2e/outside/secret.txt", StatusCode::BAD_REQUEST),
        ("/%2E%2E/outside/secret.txt", StatusCode::BAD_REQUEST),
        (
            "/sub/%2e%2e/%2e%2e/outside/secret.txt",
            StatusCode::BAD_REQUEST,
        ),
        ("/..%2foutside%2fsecret.txt", StatusCode::BAD_REQUEST),
        (
            "/sub%2f..%2f..%2foutside%2fsecret.txt",
            StatusCode::BAD_REQUEST,
        ),
        ("/%2f..%2foutside/secret.txt", StatusCode::BAD_REQUEST),
        ("/..%5coutside%5csecret.txt", StatusCode::BAD_REQUEST),
        ("/sub/page.txt%00.html", StatusCode::BAD_REQUEST),
        ("/./index.html", StatusCode::BAD_REQUEST),
        ("//outside/secret.txt", StatusCode::NOT_FOUND),
        ("/link-out.txt", StatusCode::NOT_FOUND),
        ("/dir-out/secret.txt", StatusCode::NOT_FOUND),
        ("/sub/relative-out.txt", StatusCode::NOT_FOUND),
    ];
    for (path, status) in attempts {
        let res = serve(&files, get(path)).await;
        assert_eq!(res.status(), status, "{path}");
        assert_eq!(
            hdr(&res, header::CONTENT_TYPE),
            "text/plain; charset=utf-8",
            "{path}"
        );
        let data = body(res).await;
        assert!(data.len() < 40, "{path}: short body");
        assert!(!String::from_utf8_lossy(&data).contains("secret"), "{path}");
    }
    // An absolute-form request target is only a path, too.
    let abs = Request::builder().uri("http://localhost/../outside/secret.txt");
    assert_eq!(serve(&files, abs).await.status(), StatusCode::BAD_REQUEST);
    let abs = Request::builder().uri(format!(
        "http://localhost{}",
        site.outside.join("secret.txt").display()
    ));
    assert_eq!(serve(&files, abs).await.status(), StatusCode::NOT_FOUND);

    // A symlink that stays inside the root is fine.
    let res = serve(&files, get("/link-in.txt")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await, "page");
}

#[tokio::test]
async fn hidden_files_are_not_served() {
    let site = Site::new();
    site.write(".env", "KEY=1");
    site.write(".git/config", "[core]");
    site.write("sub/.htpasswd", "x");
    site.write("ok.txt", "ok");
    symlink(site.www.join(".git/config"), site.www.join("config-link")).unwrap();
    let files = site.files();
    for path in [
        "/.env",
        "/.git/config",
        "/.git/",
        "/sub/.htpasswd",
        "/%2eenv",
        "/config-link",
    ] {
        let res = serve(&files, get(path)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(serve(&files, get("/ok.txt")).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn domains_choose_the_site() {
    let site = Site::new();
    site.write("example.org/index.html", "example");
    site.write("other.net/index.html", "other");
    site.write("index.html", "root");
    let files =
        StaticFiles::new(&settings(Some(&site.www), &["example.org", "other.net"])).unwrap();
    let host = |h: &'static str| Request::builder().uri("/").header(header::HOST, h);
    assert_eq!(
        body(serve(&files, host("example.org")).await).await,
        "example"
    );
    assert_eq!(
        body(serve(&files, host("EXAMPLE.org:8443")).await).await,
        "example"
    );
    assert_eq!(body(serve(&files, host("other.net.")).await).await, "other");
    for h in [
        "unknown.com",
        "example.org.evil.com",
        "127.0.0.1",
        "[::1]:8080",
    ] {
        let res = serve(&files, host(h)).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{h}");
    }
    assert_eq!(
        serve(&files, Request::builder().uri("/")).await.status(),
        StatusCode::NOT_FOUND,
        "no Host"
    );
    // The authority of an absolute-form target counts when there is no Host.
    let abs = Request::builder().uri("http://other.net/");
    assert_eq!(body(serve(&files, abs).await).await, "other");
    // ... and wins over Host when both are there (RFC 9112 §3.2.2).
    let abs = Request::builder()
        .uri("http://other.net/")
        .header(header::HOST, "example.org");
    assert_eq!(body(serve(&files, abs).await).await, "other");
    // A site is its own root: no reaching a sibling or the wwwroot.
    let res = serve(
        &files,
        Request::builder()
            .uri("/../other.net/index.html")
            .header(header::HOST, "example.org"),
    )
    .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn open_files_are_limited() {
    let site = Site::new();
    site.write("big.bin", vec![7u8; 2 << 20]);
    site.write("small.txt", "small");
    let mut s = settings(Some(&site.www), &[]);
    s.file_limit = 1;
    let files = StaticFiles::new(&s).unwrap();

    // A streaming response holds its file (and the only permit) until its
    // body is read or dropped.
    let held = serve(&files, get("/big.bin")).await;
    assert_eq!(held.status(), StatusCode::OK);
    let started = Instant::now();
    let res = serve(&files, get("/small.txt")).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() >= PERMIT_WAIT,
        "waited for a permit first"
    );
    assert_eq!(hdr(&res, header::RETRY_AFTER), "1");
    assert_eq!(hdr(&res, header::CONTENT_TYPE), "text/plain; charset=utf-8");

    // Reading the body to its end gives the permit back.
    assert_eq!(body(held).await.len(), 2 << 20);
    assert_eq!(body(serve(&files, get("/small.txt")).await).await, "small");

    // So does dropping it half-way (a client that went away).
    let held = serve(&files, get("/big.bin")).await;
    assert_eq!(
        serve(&files, get("/small.txt")).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    drop(held);
    assert_eq!(
        serve(&files, get("/small.txt")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn missing_wwwroot_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let err = StaticFiles::new(&settings(Some(&missing), &[]))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("nope"), "{err}");
    let file = dir.path().join("file");
    fs::write(&file, "x").unwrap();
    assert!(StaticFiles::new(&settings(Some(&file), &[])).is_err());
}

#[tokio::test]
async fn web_client_without_wwwroot() {
    let files = StaticFiles::new(&settings(None, &[])).unwrap();
    let res = serve(&files, get("/")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hdr(&res, header::CONTENT_TYPE), "text/html; charset=utf-8");
    assert!(hdr(&res, header::CONTENT_SECURITY_POLICY).contains("script-src 'self'"));
    let etag = hdr(&res, header::ETAG).to_string();
    let html = String::from_utf8(body(res).await.to_vec()).unwrap();
    assert!(html.contains("<label for=\"uid\""), "labelled inputs");
    assert!(html.contains("aria-live=\"polite\""), "live log");
    assert!(html.contains("name=\"viewport\""), "phone-sized screens");

    let res = serve(
        &files,
        get("/client.js").header(header::ACCEPT_ENCODING, "gzip, br"),
    )
    .await;
    assert_eq!(
        hdr(&res, header::CONTENT_TYPE),
        "text/javascript; charset=utf-8"
    );
    assert_eq!(hdr(&res, header::CONTENT_ENCODING), "br");
    let js = decode("br", &body(res).await);
    let js = String::from_utf8(js).unwrap();
    assert!(js.contains("new WebSocket(serverUrl(), SUBPROTOCOL)"));
    assert!(js.contains("\"mles-websocket\""));
    let res = serve(&files, get("/client.css")).await;
    assert_eq!(hdr(&res, header::CONTENT_TYPE), "text/css; charset=utf-8");

    let res = serve(&files, get("/").header(header::IF_NONE_MATCH, &etag)).await;
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    let res = serve(&files, get("/").method("HEAD")).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(hdr(&res, header::CONTENT_LENGTH), html.len().to_string());
    assert!(body(res).await.is_empty());

    for path in [
        "/index.html",
        "/favicon.ico",
        "/../etc/passwd",
        "/client.js/x",
    ] {
        assert_eq!(
            serve(&files, get(path)).await.status(),
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    assert_eq!(
        serve(&files, get("/").method("POST")).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
