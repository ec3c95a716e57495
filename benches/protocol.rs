//! Micro-benchmarks of the sans-IO protocol hot functions: header parsing,
//! auth, the frame codec, and the channel router.
//!
//! Pure functions only: no shard, no runtime, no sockets. Each bench is kept
//! short (see `config`) so that `cargo bench` as a whole stays quick.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mles::protocol::frame::{self, OP_BINARY};
use mles::protocol::{auth, header};
use mles::shard::router;

/// Payload sizes: a chat line, a typical binary message, a large one.
const SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// A client mask; any value works, a non-trivial one avoids special cases.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A header as a browser client sends it, without and with `auth`
/// (the auth value is the PROTOCOL.md §3 vector for alice/example, no key).
const PLAIN: &[u8] = br#"{"uid":"alice","channel":"example"}"#;
const WITH_AUTH: &[u8] = br#"{"uid":"alice","channel":"example","auth":"9b3b95527f7c2d80"}"#;

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// A masked client frame of `len` payload bytes, as it arrives on the wire.
fn client_frame(len: usize) -> Vec<u8> {
    let mut v = vec![0x80 | OP_BINARY];
    match len {
        0..=125 => v.push(0x80 | len as u8),
        126..=65535 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&MASK);
    v.extend((0..len).map(|i| (i as u8) ^ MASK[i % 4]));
    v
}

fn header_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("header::parse");
    for (name, raw) in [("plain", PLAIN), ("auth", WITH_AUTH)] {
        assert!(header::parse(raw).is_ok());
        g.throughput(Throughput::Bytes(raw.len() as u64));
        g.bench_function(name, |b| b.iter(|| header::parse(black_box(raw))));
    }
    g.finish();
}

fn auth_verify(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth::verify");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, &str, Option<&[u8]>); 2] = [
        ("no_key", "9b3b95527f7c2d80", None),
        ("key", "afa46b8689dae7a5", Some(b"secret")),
    ];
    for (name, given, key) in cases {
        assert_eq!(auth::verify("alice", "example", Some(given), key), Ok(()));
        g.bench_function(name, |b| {
            b.iter(|| {
                auth::verify(
                    black_box("alice"),
                    black_box("example"),
                    black_box(Some(given)),
                    black_box(key),
                )
            })
        });
    }
    g.finish();
}

fn frame_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame::encode");
    for size in SIZES {
        let payload = vec![0x5a_u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(
            BenchmarkId::from_parameter(label(size)),
            &payload,
            |b, p| b.iter(|| frame::encode(OP_BINARY, black_box(p))),
        );
    }
    g.finish();
}

/// The relay hot path: a client's masked payload becomes the shared server frame.
fn frame_encode_unmasking(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame::encode_unmasking");
    for size in SIZES {
        let wire = client_frame(size);
        let head = frame::parse_head(&wire)
            .expect("a valid client frame")
            .expect("a complete head");
        let masked = &wire[head.head_len..];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(label(size)), masked, |b, m| {
            b.iter(|| frame::encode_unmasking(OP_BINARY, black_box(m), black_box(head.mask)))
        });
    }
    g.finish();
}

/// One head of each length form: 7-bit, 16-bit and 64-bit payload lengths.
fn frame_parse_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame::parse_head");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let wire = client_frame(size);
        g.bench_with_input(
            BenchmarkId::from_parameter(label(size)),
            &wire[..],
            |b, w| b.iter(|| frame::parse_head(black_box(w))),
        );
    }
    g.finish();
}

fn frame_unmask(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame::unmask");
    for size in SIZES {
        let mut data = vec![0xa5_u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::from_parameter(label(size)), |b| {
            // XOR in place: every iteration toggles the same buffer, no allocation.
            b.iter(|| frame::unmask(black_box(&mut data), black_box(MASK), 0))
        });
    }
    g.finish();
}

fn router_owner(c: &mut Criterion) {
    let mut g = c.benchmark_group("router::owner");
    g.throughput(Throughput::Elements(1));
    let names = [
        ("short", "example"),
        ("medium", "team-general-chat"),
        ("uuid", "room-3f1c9a7e-52b4-4d8e-9c1a-7b6e0f2d4a18"),
    ];
    for (name, channel) in names {
        g.bench_with_input(BenchmarkId::new(name, 4), channel, |b, ch| {
            b.iter(|| router::owner(black_box(ch), black_box(4)))
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(50)
}

criterion_group! {
    name = protocol;
    config = config();
    targets = header_parse, auth_verify, frame_encode, frame_encode_unmasking,
        frame_parse_head, frame_unmask, router_owner
}
criterion_main!(protocol);
