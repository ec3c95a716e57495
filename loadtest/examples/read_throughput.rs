//! How fast the harness reads: a blaster thread plays a server that batches
//! its writes (64 KiB of small messages per write); the reading side is the
//! harness's own path (`Conn` + `ChannelView` + latency histogram) on one
//! current-thread runtime. Prints messages per second and messages per CPU
//! second of the reading thread (the "one core" figure).
//!
//! `cargo run --release -p mles-loadtest --example read_throughput -- [SECONDS] [SIZE]`

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mles_loadtest::clock::now_ns;
use mles_loadtest::conn::Status;
use mles_loadtest::payload::{self, Stamp};
use mles_loadtest::target::Targets;
use mles_loadtest::tracker::ChannelView;
use mles_loadtest::{Cli, metrics, workers};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().map_or(Ok(3.0), |s| s.parse())?;
    let size: usize = args.next().map_or(Ok(64), |s| s.parse())?;
    let size = size.clamp(payload::STAMP_LEN, 125);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("ws://{}/", listener.local_addr()?);
    let blaster = std::thread::spawn(move || blast(listener, secs, size));

    let cli = Cli::try_parse_from(["x", "fanout", "--url", &url])?;
    let targets = Targets::new(cli.command.common())?;
    let target = targets.pick(0);
    let rt = workers::runtime()?;
    let (received, lost, wall_ns, cpu_ns, hist) = rt.block_on(async {
        let mut conn = target.connect(0, 65536).await?;
        conn.join("reader", "bench").await?;
        let mut view = ChannelView::new(0, 1);
        let mut hist = metrics::new_hist();
        let (t0, c0) = (now_ns(), thread_cpu_ns());
        loop {
            if conn.read_more().await? == 0 {
                break;
            }
            let now = now_ns();
            let status = conn.process(|m| {
                if let Some(sent) = view.on_msg(m.opcode, m.payload) {
                    hist.saturating_record(now.saturating_sub(sent).max(1));
                }
            })?;
            if status == Status::Closed {
                break;
            }
        }
        let t = &view.trackers[0];
        anyhow::Ok((
            view.received,
            t.lost(t.next()) + t.late + t.dups,
            now_ns() - t0,
            thread_cpu_ns() - c0,
            hist,
        ))
    })?;
    let sent = blaster.join().expect("blaster thread")?;
    let lat = metrics::summarize(&hist);
    println!(
        "size {size} B: sent {sent}, received {received}, errors {lost}; {:.2} M msg/s wall, \
         {:.2} M msg per CPU-second of the reading thread ({:.0} ns/msg); \
         queueing latency p50 {:.0} us",
        received as f64 / wall_ns as f64 * 1e3,
        received as f64 / cpu_ns.max(1) as f64 * 1e3,
        cpu_ns as f64 / received.max(1) as f64,
        lat.p50_us,
    );
    anyhow::ensure!(received == sent && lost == 0, "the reader missed messages");
    Ok(())
}

/// CPU time of the calling thread, nanoseconds.
fn thread_cpu_ns() -> u64 {
    // SAFETY: getrusage fills the zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Accepts one client, answers its upgrade, then writes stamped messages
/// 64 KiB at a time for `secs`, then a Close. Returns how many it sent.
fn blast(listener: TcpListener, secs: f64, size: usize) -> Result<u64> {
    let (mut s, _) = listener.accept()?;
    let mut req = Vec::new();
    let mut b = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b)?;
        anyhow::ensure!(n > 0, "client went away");
        req.extend_from_slice(&b[..n]);
    }
    let text = String::from_utf8_lossy(&req);
    let key = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| v.trim().to_string())
        })
        .context("no key")?;
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    write!(
        s,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: mles-websocket\r\n\r\n"
    )?;
    // One history header first, as a real server would replay.
    let header = br#"{"uid":"seed","channel":"bench"}"#;
    s.write_all(&[0x81, header.len() as u8])?;
    s.write_all(header)?;
    let frame_len = 2 + size;
    let per_write = 65536 / frame_len;
    let mut buf = Vec::with_capacity(per_write * frame_len);
    for _ in 0..per_write {
        buf.extend_from_slice(&[0x82, size as u8]);
        buf.extend_from_slice(&payload::new_buffer(size));
    }
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut seq = 0u64;
    while Instant::now() < end {
        let sent_ns = now_ns();
        for i in 0..per_write {
            let off = i * frame_len + 2;
            payload::write(
                &mut buf[off..off + size],
                Stamp {
                    publisher: 0,
                    seq,
                    sent_ns,
                },
            );
            seq += 1;
        }
        s.write_all(&buf)?;
    }
    s.write_all(&[0x88, 2, 0x03, 0xe8])?;
    // Read what the client sent (header, close echo) so closing sends no RST.
    s.shutdown(std::net::Shutdown::Write)?;
    let _ = std::io::copy(&mut s, &mut std::io::sink());
    Ok(seq)
}
