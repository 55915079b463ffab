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

/// Like [`median_ns`] for two workloads measured in alternating batches,
/// so that a burst of load on a shared machine hits both alike.
pub fn median_pair(
    reps: usize,
    iters: u32,
    mut a: impl FnMut(u32),
    mut b: impl FnMut(u32),
) -> (Measurement, Measurement) {
    a(iters.div_ceil(10).max(1));
    b(iters.div_ceil(10).max(1));
    let mut va = Vec::with_capacity(reps);
    let mut vb = Vec::with_capacity(reps);
    let per = iters.max(1);
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        a(per);
        va.push(t.elapsed().as_nanos() as f64 / f64::from(per));
        let t = Instant::now();
        b(per);
        vb.push(t.elapsed().as_nanos() as f64 / f64::from(per));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        Measurement {
            ns_per_op: v[v.len() / 2],
        }
    };
    (med(&mut va), med(&mut vb))
}
