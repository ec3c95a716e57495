//! Micro-benchmarks of the owner's history ring (`channel::History`) at the
//! default limits: append to a full ring, snapshot it for a joiner, and the
//! `--dedup` lookup.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mles::channel::History;
use mles::protocol::frame::{self, OP_BINARY};

/// The default limits (`--limit 200`, `--history-bytes 16MiB`).
const MAX_FRAMES: usize = 200;
const MAX_BYTES: usize = 16 << 20;
/// Payload sizes of the stored frames: a chat line and a typical binary message.
const SIZES: [usize; 2] = [64, 1024];

fn label(size: usize) -> String {
    if size >= 1024 {
        format!("{}KiB", size / 1024)
    } else {
        format!("{size}B")
    }
}

/// An encoded frame of `size` payload bytes whose payload ends in `tag`:
/// distinct frames of one length differ only in their last bytes, the worst
/// case for the dedup comparison.
fn tagged_frame(size: usize, tag: u32) -> Bytes {
    let mut p = vec![0x5a_u8; size];
    p[size - 4..].copy_from_slice(&tag.to_be_bytes());
    frame::encode(OP_BINARY, &p)
}

/// A ring holding `MAX_FRAMES` distinct frames of `size` payload bytes.
fn full_ring(size: usize) -> History {
    let mut h = History::default();
    for i in 0..MAX_FRAMES as u32 {
        h.push(tagged_frame(size, i), MAX_FRAMES, MAX_BYTES);
    }
    assert_eq!(h.len(), MAX_FRAMES);
    h
}

/// Appending to a full ring: one push and one eviction, as every published frame costs.
fn history_push(c: &mut Criterion) {
    let mut g = c.benchmark_group("History::push");
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let mut h = full_ring(size);
        let f = tagged_frame(size, u32::MAX);
        g.bench_function(BenchmarkId::new("full", label(size)), |b| {
            b.iter(|| h.push(black_box(f.clone()), MAX_FRAMES, MAX_BYTES))
        });
    }
    g.finish();
}

/// What a link joiner gets: one `Bytes` per frame, all 200.
fn history_snapshot(c: &mut Criterion) {
    let mut g = c.benchmark_group("History::snapshot");
    g.throughput(Throughput::Elements(MAX_FRAMES as u64));
    let h = full_ring(64);
    g.bench_function("full_200", |b| b.iter(|| black_box(&h).snapshot()));
    g.finish();
}

/// What a client joiner gets: the whole history as few buffers.
fn history_replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("History::replay");
    g.throughput(Throughput::Elements(MAX_FRAMES as u64));
    let h = full_ring(64);
    g.bench_function("full_200", |b| b.iter(|| black_box(&h).replay()));
    // A long history (`--limit 2000`, 2 MB of 1,000-byte frames): several
    // pieces of inline frames.
    let mut long = History::default();
    for i in 0..2000 {
        long.push(tagged_frame(1000, i), 2000, usize::MAX);
    }
    g.throughput(Throughput::Elements(2000));
    g.bench_function("long_2000x1000", |b| b.iter(|| black_box(&long).replay()));
    g.finish();
}

/// The `--dedup` check on a miss: every stored frame is compared, and each
/// has the probe's length, so each comparison reads to the last bytes.
fn history_contains(c: &mut Criterion) {
    let mut g = c.benchmark_group("History::contains");
    g.throughput(Throughput::Elements(MAX_FRAMES as u64));
    for size in SIZES {
        let h = full_ring(size);
        let probe = tagged_frame(size, u32::MAX);
        assert!(!h.contains(&probe));
        g.bench_function(BenchmarkId::new("miss", label(size)), |b| {
            b.iter(|| black_box(&h).contains(black_box(&probe)))
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

/// What every node does for every frame it reads from the stream, before
/// the owner sees it: the republish headers (stream sequence and its
/// predecessor's) and the frame's kind and origin.
fn cluster_delivery(c: &mut Criterion) {
    use async_nats::header::{NATS_LAST_SEQUENCE, NATS_SEQUENCE};
    use mles::cluster::envelope::{Delivery, Kind, KnownNodes, NodeId, Origin, Outgoing, Unit};
    let frame = Outgoing {
        origin: Origin {
            node: NodeId::generate(),
            session: 42,
        },
        kind: Kind::Binary,
        serial: 7,
        payload: Bytes::from(vec![7u8; 64]),
    };
    let mut headers = frame.headers();
    headers.insert(NATS_SEQUENCE, "1001");
    headers.insert(NATS_LAST_SEQUENCE, "1000");
    let mut nodes = KnownNodes::default();
    let mut g = c.benchmark_group("cluster");
    g.throughput(Throughput::Elements(1));
    g.bench_function("Delivery::from_parts", |b| {
        b.iter(|| {
            let h = black_box(&headers);
            let seq: u64 = h.get(NATS_SEQUENCE).unwrap().as_str().parse().unwrap();
            let prev: u64 = h.get(NATS_LAST_SEQUENCE).unwrap().as_str().parse().unwrap();
            let d = Delivery::from_parts(seq, 0, Some(h), frame.payload.clone(), &mut nodes);
            assert_eq!(prev + 1, d.seq);
            d
        })
    });
    // A batch of 32 such frames (what queues during one round trip to NATS
    // under a flood), per frame.
    let frames: Vec<Outgoing> = (0..32)
        .map(|serial| Outgoing {
            serial,
            ..frame.clone()
        })
        .collect();
    let batch = Unit::new(&frames);
    let mut headers = batch.headers.clone();
    headers.insert(NATS_SEQUENCE, "1001");
    headers.insert(NATS_LAST_SEQUENCE, "1000");
    g.throughput(Throughput::Elements(32));
    g.bench_function("Delivery::from_parts batch of 32", |b| {
        b.iter(|| {
            let h = black_box(&headers);
            let seq: u64 = h.get(NATS_SEQUENCE).unwrap().as_str().parse().unwrap();
            let d = Delivery::from_parts(seq, 0, Some(h), batch.payload.clone(), &mut nodes);
            assert_eq!(d.frames.len(), 32);
            d
        })
    });
    g.finish();
}

criterion_group! {
    name = channel;
    config = config();
    targets = history_push, history_snapshot, history_replay, history_contains, cluster_delivery
}
criterion_main!(channel);
