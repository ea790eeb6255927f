//! What the proxy's benchmarks share: a median-of-samples timer.

use std::time::Duration;

use tokio::time::Instant;

/// Samples per figure; the median is printed.
pub const SAMPLES: usize = 7;
/// Minimum time of one sample.
pub const SAMPLE_TIME: Duration = Duration::from_millis(100);

/// Median nanoseconds per call of `f`.
pub fn measure(mut f: impl FnMut()) -> f64 {
    // Warm up and find a batch size that takes a measurable time.
    let mut batch = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..batch {
            f();
        }
        if start.elapsed() > Duration::from_millis(10) {
            break;
        }
        batch *= 2;
    }
    let mut samples = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let mut calls = 0u64;
        while start.elapsed() < SAMPLE_TIME {
            for _ in 0..batch {
                f();
            }
            calls += batch;
        }
        samples.push(start.elapsed().as_nanos() as f64 / calls as f64);
    }
    samples.sort_by(f64::total_cmp);
    samples[SAMPLES / 2]
}
