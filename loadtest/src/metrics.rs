//! Latency histograms (hdrhistogram, nanoseconds) and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A histogram for 1 ns .. 60 s at 3 significant digits (about 220 KB, so one
/// per worker thread, not one per connection).
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant bounds are valid")
}

/// Percentiles of a histogram, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Minimum.
    pub min_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Maximum.
    pub max_us: f64,
}

/// Summarizes `h` (all zeros when empty).
pub fn summarize(h: &Histogram<u64>) -> Summary {
    if h.is_empty() {
        return Summary::default();
    }
    let us = |ns: u64| ns as f64 / 1000.0;
    Summary {
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        min_us: us(h.min()),
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// Adds `src` into `dst` (same bounds, so it cannot fail).
pub fn merge(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    dst.add(src).expect("histograms share bounds");
}
