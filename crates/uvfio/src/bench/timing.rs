//! Median-of-repetitions timing.

use std::time::Instant;

/// A timed figure.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Median nanoseconds per operation.
    pub ns_per_op: f64,
}

/// Runs `f(iters)` `reps` times (after one warm-up) and returns the median
/// nanoseconds per operation.
pub fn median_ns(reps: usize, iters: u32, mut f: impl FnMut(u32)) -> Measurement {
    f(iters.div_ceil(10).max(1));
    let mut v: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f(iters);
            t.elapsed().as_nanos() as f64 / f64::from(iters.max(1))
        })
        .collect();
    v.sort_by(f64::total_cmp);
    Measurement {
        ns_per_op: v[v.len() / 2],
    }
}
