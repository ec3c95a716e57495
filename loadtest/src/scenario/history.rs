//! `history`: replay correctness on a fresh channel.
//!
//! 1. Witness `w` joins, then publisher `p`; `w` sees `p`'s header, so the
//!    channel's log starts with the two headers. Nothing orders two joins
//!    sent in quick succession (they may reach different shards or nodes),
//!    so either order is correct; the late joiner's history tells which.
//! 2. `p` publishes K messages; `w` must see 0..K-1 in order, which also
//!    proves the server has them all.
//! 3. Late joiner `l1` joins and must receive exactly the last `--limit`
//!    entries of that log, oldest first (headers compared by uid, messages
//!    by sequence number).
//! 4. `p` publishes M live messages at `--rate`; half-way, `l2` joins.
//!    `l1` and `w` must see K..K+M-1 exactly (headers of later joiners
//!    allowed in between); `l2`'s messages, history and live together, must
//!    run without gap or duplicate up to the last one.
//!
//! With several `--url`s, `w`, `p`, `l1` and `l2` connect to servers 0, 1,
//! 2 and 3 (mod n): with two servers or more, the first late joiner reads
//! history from another server than the one the publisher wrote to.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use serde::Serialize;
use tokio::sync::Notify;

use super::{closed_reason, header_uid};
use crate::cli::HistoryArgs;
use crate::clock::{self, now_ns};
use crate::conn::{Conn, OwnedMsg};
use crate::frame::{OP_BINARY, OP_TEXT};
use crate::payload::{self, Stamp};
use crate::report::Report;
use crate::target::Targets;
use crate::workers;

/// Read buffer per connection.
const READ_BUF: usize = 65536;

/// What a received message is, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Header(String),
    Msg(u64),
    Other(String),
}

impl Entry {
    fn of(m: &OwnedMsg) -> Entry {
        match m.opcode {
            OP_TEXT => match header_uid(&m.payload) {
                Some(uid) => Entry::Header(uid),
                None => Entry::Other(format!(
                    "text {:?}",
                    String::from_utf8_lossy(&m.payload[..m.payload.len().min(60)])
                )),
            },
            _ => match payload::read(&m.payload) {
                Some(s) if s.publisher == 0 => Entry::Msg(s.seq),
                Some(s) => Entry::Other(format!("message of publisher {}", s.publisher)),
                None => Entry::Other(format!("binary frame of {} bytes", m.payload.len())),
            },
        }
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Header(uid) => write!(f, "header of {uid:?}"),
            Entry::Msg(seq) => write!(f, "message {seq}"),
            Entry::Other(s) => f.write_str(s),
        }
    }
}

/// The figures of a history run.
#[derive(Debug, Default, Serialize)]
pub struct HistoryResults {
    /// Resolved server address.
    pub target: String,
    /// Entries the late joiner should get as history.
    pub history_expected: usize,
    /// Entries it got before the first mismatch (all of them when correct).
    pub history_matched: usize,
    /// The first difference, if any.
    pub history_mismatch: Option<String>,
    /// Late joiner: header sent until the whole history arrived, microseconds.
    pub history_replay_us: f64,
    /// Live messages the late joiner saw correctly in order.
    pub live_matched_l1: u64,
    /// Live messages the witness saw correctly in order.
    pub live_matched_w: u64,
    /// First message number the mid-stream joiner saw.
    pub l2_first_seq: Option<u64>,
    /// Messages the mid-stream joiner saw.
    pub l2_messages: u64,
}

/// Runs the scenario (blocking).
pub fn run(args: &HistoryArgs) -> Result<Report> {
    if args.size < payload::STAMP_LEN {
        bail!("--size must be at least {} bytes", payload::STAMP_LEN);
    }
    let common = &args.common;
    let deadline = crate::cli::Command::History(args.clone()).deadline_secs();
    let targets = Targets::new(common)?;
    let run_id = super::run_id(common);
    let channel = super::channel_name(common, &run_id, "h", 0);
    let mut res = HistoryResults {
        target: targets.describe(),
        ..HistoryResults::default()
    };
    let mut failures = Vec::new();
    let rt = workers::runtime()?;
    // Not reaching the server at all is an error, not a failed check.
    let step_limit = Duration::from_secs_f64(args.timeout);
    let w = rt.block_on(async {
        match tokio::time::timeout(step_limit, targets.pick(0).connect(0, READ_BUF)).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("connect timed out")),
        }
    })?;
    let outcome = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs_f64(deadline),
            check(args, &targets, &channel, w, &mut res, &mut failures),
        )
        .await
    });
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failures.push(format!("{e:#}")),
        Err(_) => failures.push(String::from("deadline passed")),
    }
    Ok(Report::new(
        "history",
        run_id,
        args,
        &res,
        failures,
        Vec::new(),
    ))
}

/// Reads messages into `out` until `done(out)`; the server closing is an error.
async fn read_until(
    conn: &mut Conn,
    out: &mut Vec<Entry>,
    mut done: impl FnMut(&[Entry]) -> bool,
) -> Result<()> {
    while !done(out) {
        match conn.recv().await? {
            Some(m) => out.push(Entry::of(&m)),
            None => bail!("{}", closed_reason(conn)),
        }
    }
    Ok(())
}

/// `read_until` bounded by `limit`; a timeout is an error naming `what`.
async fn step(
    limit: Duration,
    what: &str,
    conn: &mut Conn,
    out: &mut Vec<Entry>,
    done: impl FnMut(&[Entry]) -> bool,
) -> Result<()> {
    match tokio::time::timeout(limit, read_until(conn, out, done)).await {
        Ok(r) => r.map_err(|e| e.context(format!("{what}: after {} messages", out.len()))),
        Err(_) => bail!("{what}: timed out after {} messages", out.len()),
    }
}

/// Checks that `entries` holds live messages `first..first + count` in order,
/// with only headers of `allowed` uids in between. Returns how many matched
/// and the first problem.
fn check_live(
    entries: &[Entry],
    first: u64,
    count: u64,
    allowed: &[&str],
) -> (u64, Option<String>) {
    let mut next = first;
    for e in entries {
        match e {
            Entry::Msg(s) if *s == next => next += 1,
            Entry::Header(uid) if allowed.contains(&uid.as_str()) => {}
            other => {
                return (
                    next - first,
                    Some(format!("expected message {next}, got {other}")),
                );
            }
        }
    }
    if next < first + count {
        return (next - first, Some(format!("missing messages from {next}")));
    }
    (next - first, None)
}

async fn publish(conn: &mut Conn, buf: &mut [u8], seqs: std::ops::Range<u64>) -> Result<()> {
    for seq in seqs {
        payload::write(
            buf,
            Stamp {
                publisher: 0,
                seq,
                sent_ns: now_ns(),
            },
        );
        conn.queue(OP_BINARY, buf);
        if seq % 64 == 63 {
            conn.flush().await?;
        }
    }
    conn.flush().await?;
    Ok(())
}

async fn check(
    args: &HistoryArgs,
    targets: &Targets,
    channel: &str,
    mut w: Conn,
    res: &mut HistoryResults,
    failures: &mut Vec<String>,
) -> Result<()> {
    let t = Duration::from_secs_f64(args.timeout);
    let (k, m, limit) = (args.messages, args.live, args.limit);
    let rb = READ_BUF;
    w.join("w", channel).await?;
    let mut p = targets.pick(1).connect(1, rb).await?;
    p.join("p", channel).await?;

    // 1. The witness sees the publisher's header: the log starts [w, p].
    let mut seen = Vec::new();
    step(
        t,
        "witness waiting for the publisher's header",
        &mut w,
        &mut seen,
        |e| !e.is_empty(),
    )
    .await?;
    if seen[0] != Entry::Header(String::from("p")) {
        bail!("witness: expected the header of \"p\", got {}", seen[0]);
    }

    // 2. K messages, confirmed by the witness.
    let mut buf = payload::new_buffer(args.size);
    let mut wseen = Vec::new();
    let (sent, read) = tokio::join!(
        publish(&mut p, &mut buf, 0..k),
        step(
            t,
            "witness reading the first messages",
            &mut w,
            &mut wseen,
            |e| { e.len() as u64 >= k }
        )
    );
    sent?;
    read?;
    if let (_, Some(problem)) = check_live(&wseen, 0, k, &[]) {
        failures.push(format!("witness before the late join: {problem}"));
    }

    // 3. The late joiner gets the last `limit` entries of the log, which
    //    starts with the two headers in either order.
    let logs = [["w", "p"], ["p", "w"]].map(|first| {
        let mut log: Vec<Entry> = first.iter().map(|u| Entry::Header(u.to_string())).collect();
        log.extend((0..k).map(Entry::Msg));
        log.split_off(log.len().saturating_sub(limit as usize))
    });
    let n = logs[0].len();
    res.history_expected = n;
    let mut l1 = targets.pick(2).connect(2, rb).await?;
    let t_join = now_ns();
    l1.join("l1", channel).await?;
    let mut hist = Vec::new();
    // Stop at the first entry neither order allows rather than wait for
    // entries that will not come.
    let got = step(t, "late joiner reading history", &mut l1, &mut hist, |e| {
        e.len() >= n || !logs.iter().any(|log| log.starts_with(e))
    })
    .await;
    res.history_replay_us = (now_ns() - t_join) as f64 / 1e3;
    let matched = |log: &[Entry]| hist.iter().zip(log).take_while(|(a, b)| a == b).count();
    let expected = logs.iter().max_by_key(|log| matched(log)).unwrap();
    res.history_matched = matched(expected);
    if let Some(i) = (0..n).find(|&i| hist.get(i) != Some(&expected[i])) {
        let got = hist
            .get(i)
            .map_or_else(|| String::from("nothing"), Entry::to_string);
        let msg = format!(
            "history entry {i} of {n}: expected {}, got {got}",
            expected[i]
        );
        res.history_mismatch = Some(msg.clone());
        failures.push(msg);
        return Ok(());
    }
    got?;

    // 4. Live messages, with a second joiner half-way.
    let half = Arc::new(Notify::new());
    let period = 1e9 / args.rate;
    let live_pub = async {
        let start = now_ns();
        for i in 0..m {
            tokio::time::sleep_until(clock::instant(start + (i as f64 * period) as u64)).await;
            publish(&mut p, &mut buf, k + i..k + i + 1).await?;
            if i + 1 == m / 2 {
                half.notify_one();
            }
        }
        if m < 2 {
            half.notify_one();
        }
        anyhow::Ok(())
    };
    let last = k + m;
    let l2_side = async {
        half.notified().await;
        let mut l2 = targets.pick(3).connect(3, rb).await?;
        l2.join("l2", channel).await?;
        let mut seen = Vec::new();
        let r = step(t, "mid-stream joiner", &mut l2, &mut seen, |e| {
            m == 0 || e.last() == Some(&Entry::Msg(last - 1))
        })
        .await;
        let _ = l2.close(Duration::from_secs(1)).await;
        r.map(|()| seen)
    };
    let done_live =
        |e: &[Entry]| e.iter().filter(|e| matches!(e, Entry::Msg(_))).count() as u64 >= m;
    let mut l1_live = Vec::new();
    let mut w_live = Vec::new();
    let (pub_r, l2_r, l1_r, w_r) = tokio::join!(
        live_pub,
        l2_side,
        step(
            t,
            "late joiner reading live messages",
            &mut l1,
            &mut l1_live,
            done_live
        ),
        step(
            t,
            "witness reading live messages",
            &mut w,
            &mut w_live,
            |e| {
                // The witness also gets the headers of l1 and l2.
                done_live(e)
            }
        ),
    );
    pub_r?;
    let (ok, problem) = check_live(&l1_live, k, m, &["l2"]);
    res.live_matched_l1 = ok;
    if let Some(p) = problem {
        failures.push(format!("late joiner live: {p}"));
    }
    let (ok, problem) = check_live(&w_live, k, m, &["l1", "l2"]);
    res.live_matched_w = ok;
    if let Some(p) = problem {
        failures.push(format!("witness live: {p}"));
    }
    match l2_r {
        Ok(seen) => {
            let msgs: Vec<u64> = seen
                .iter()
                .filter_map(|e| match e {
                    Entry::Msg(s) => Some(*s),
                    _ => None,
                })
                .collect();
            res.l2_first_seq = msgs.first().copied();
            res.l2_messages = msgs.len() as u64;
            if let Some(w) = msgs.windows(2).find(|w| w[1] != w[0] + 1) {
                failures.push(format!(
                    "mid-stream joiner: message {} followed by {}",
                    w[0], w[1]
                ));
            }
            if let Some(e) = seen.iter().find(|e| match e {
                Entry::Header(uid) => !["w", "p", "l1"].contains(&uid.as_str()),
                Entry::Msg(_) => false,
                Entry::Other(_) => true,
            }) {
                failures.push(format!("mid-stream joiner: unexpected {e}"));
            }
        }
        Err(e) => failures.push(format!("{e:#}")),
    }
    if let Err(e) = l1_r {
        failures.push(format!("{e:#}"));
    }
    if let Err(e) = w_r {
        failures.push(format!("{e:#}"));
    }
    let wait = Duration::from_secs(1);
    let _ = tokio::join!(w.close(wait), p.close(wait), l1.close(wait));
    Ok(())
}
