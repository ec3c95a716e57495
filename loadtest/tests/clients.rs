//! `--client ordinary` (the default) against `--client batch`: the write
//! counting is checked against a raw TCP sink that parses what arrived,
//! ordinary publishers are shown to write one frame per call, and both
//! modes deliver exactly the same against the real server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use common::cli;
use common::mles::Mles;
use mles_loadtest::Report;
use mles_loadtest::frame::OP_BINARY;

/// A raw TCP sink: accepts one WebSocket upgrade, then reads until the
/// client closes the stream; returns the payloads of the frames it got.
fn sink(listener: TcpListener) -> Vec<Vec<u8>> {
    let (stream, _) = listener.accept().unwrap();
    stream.set_nodelay(true).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut key = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("sec-websocket-key:") {
            key = line[line.len() - v.len()..].trim().to_string();
        }
        if line == "\r\n" {
            break;
        }
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        &stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mles-websocket\r\n\r\n"
    )
    .unwrap();
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        // Client frames: FIN + opcode, MASK + 7-bit length (tests send < 126), key.
        let len = usize::from(bytes[at + 1] & 0x7f);
        assert!(
            bytes[at + 1] & 0x80 != 0 && len < 126,
            "a masked short frame"
        );
        let mask = &bytes[at + 2..at + 6];
        let payload = bytes[at + 6..at + 6 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        frames.push(payload);
        at += 6 + len;
    }
    frames
}

#[test]
fn write_counts_match_what_reaches_the_wire() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let server = std::thread::spawn(move || sink(listener));
    let args = cli(&["fanout", "--url", &url]);
    let targets = mles_loadtest::target::Targets::new(args.command.common()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stats = rt.block_on(async {
        let mut conn = targets.pick(0).connect(0, 4096).await.unwrap();
        // Three frames queued, one flush: one write call carries all three.
        for i in 0..3u8 {
            conn.queue(OP_BINARY, &[i; 20]);
        }
        conn.flush().await.unwrap();
        let batched = conn.io_stats();
        // Three frames, each flushed on its own: one frame per call.
        for i in 3..6u8 {
            conn.send(OP_BINARY, &[i; 20]).await.unwrap();
        }
        let after = conn.io_stats();
        drop(conn);
        (batched, after)
    });
    let (batched, after) = stats;
    assert_eq!(
        (
            batched.writes,
            batched.frames_written,
            batched.max_frames_per_write
        ),
        (1, 3, 3)
    );
    assert_eq!((after.writes, after.frames_written), (4, 6));
    let frames = server.join().unwrap();
    let want: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 20]).collect();
    assert_eq!(frames, want, "every counted frame reached the sink intact");
}

fn fanout(url: &str, extra: &[&str]) -> Report {
    let mut args = vec![
        "fanout",
        "--url",
        url,
        "--channels",
        "2",
        "--subs",
        "3",
        "--pubs",
        "2",
        "--warmup",
        "0.1",
        "--duration",
        "1",
        "--drain",
        "5",
        "--deadline",
        "20",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    mles_loadtest::run(&cli(&args).command).unwrap()
}

#[test]
fn ordinary_publishers_write_one_frame_per_call() {
    let server = Mles::start(&[]);
    // No --rate: publishers send as fast as the window allows, so a batch
    // publisher's first write carries a whole batch.
    let r = fanout(&server.url, &["--messages", "300"]);
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.get("client").unwrap(), "ordinary");
    assert_eq!(r.params["read_buf"], 4096, "ordinary clients read 4 KiB");
    assert_eq!(r.count("max_frames_per_write"), 1, "{}", r.table());
    // Header and 300 messages per publisher, one call each.
    assert_eq!(r.count("publisher_writes"), r.count("publisher_frames"));
    assert!(r.count("publisher_frames") >= 4 * 301, "{}", r.table());

    let r = fanout(&server.url, &["--messages", "300", "--client", "batch"]);
    assert!(r.passed, "{}", r.table());
    assert_eq!(r.params["batch"], 64);
    assert_eq!(r.params["read_buf"], 65536);
    assert_eq!(r.count("max_frames_per_write"), 64, "{}", r.table());
    assert!(r.count("publisher_writes") < r.count("publisher_frames"));
}

#[test]
fn both_modes_deliver_the_same_against_mles() {
    let server = Mles::start(&[]);
    let modes = ["ordinary", "batch"].map(|client| {
        let r = fanout(
            &server.url,
            &["--client", client, "--messages", "200", "--rate", "1000"],
        );
        assert!(r.passed, "{client}: {}", r.table());
        for check in [
            "lost",
            "late",
            "duplicates",
            "foreign",
            "echoed",
            "order_divergent",
        ] {
            assert_eq!(r.count(check), 0, "{client} {check}: {}", r.table());
        }
        (
            r.count("sent"),
            r.count("delivered"),
            r.count("expected_deliveries"),
        )
    });
    // 2 channels x 2 publishers x 200 messages, each to 3 subscribers.
    assert_eq!(modes[0], (800, 2400, 2400));
    assert_eq!(modes[1], modes[0]);
}

#[test]
fn batch_size_needs_batch_mode() {
    let err = mles_loadtest::run(
        &cli(&[
            "fanout",
            "--url",
            "ws://127.0.0.1:9/",
            "--batch",
            "8",
            "--quiet",
        ])
        .command,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--client batch"), "{err:#}");
}
