//! Median-of-repetitions timing.

use std::time::Instant;

/// A timed figure.
#[derive(Debug, Clone, Copy)]
pub struct Measurement {
    /// Median nanoseconds per operation.
    pub ns_per_op: f64,
    /// Median CPU time of the whole process (all threads) per operation:
    /// the work done, without the time spent waiting for a wake-up.
    pub cpu_ns_per_op: f64,
}

/// CPU time consumed by all threads of this process so far.
fn process_cpu_ns() -> f64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    t.tv_sec as f64 * 1e9 + t.tv_nsec as f64
}

/// Runs one batch of `n` operations: (wall, cpu) ns per operation.
fn batch(n: u32, f: &mut impl FnMut(u32)) -> (f64, f64) {
    let cpu = process_cpu_ns();
    let t = Instant::now();
    f(n);
    let wall = t.elapsed().as_nanos() as f64;
    let cpu = process_cpu_ns() - cpu;
    let n = f64::from(n.max(1));
    (wall / n, cpu / n)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn measurement(samples: &[(f64, f64)]) -> Measurement {
    let mut wall: Vec<f64> = samples.iter().map(|s| s.0).collect();
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
    Measurement {
        ns_per_op: median(&mut wall),
        cpu_ns_per_op: median(&mut cpu),
    }
}

/// Runs `f(iters)` `reps` times (after one warm-up) and returns the median
/// nanoseconds per operation.
pub fn median_ns(reps: usize, iters: u32, mut f: impl FnMut(u32)) -> Measurement {
    f(iters.div_ceil(10).max(1));
    let v: Vec<(f64, f64)> = (0..reps.max(1)).map(|_| batch(iters, &mut f)).collect();
    measurement(&v)
}

/// Like [`median_ns`] for two workloads measured in alternating batches,
/// so that a burst of load on a shared machine hits both alike.
pub fn median_pair(
    reps: usize,
    iters: u32,
    mut a: impl FnMut(u32),
    mut b: impl FnMut(u32),
) -> (Measurement, Measurement) {
    let mut m = median_group(reps, iters, &mut [&mut a, &mut b]);
    let b = m.pop().expect("two measurements");
    let a = m.pop().expect("two measurements");
    (a, b)
}

/// [`median_pair`] for any number of workloads, each rep running one
/// batch of every workload in turn; the measurements in the same order.
pub fn median_group(reps: usize, iters: u32, work: &mut [&mut dyn FnMut(u32)]) -> Vec<Measurement> {
    for f in work.iter_mut() {
        f(iters.div_ceil(10).max(1));
    }
    let mut samples = vec![Vec::with_capacity(reps); work.len()];
    for _ in 0..reps.max(1) {
        for (f, v) in work.iter_mut().zip(samples.iter_mut()) {
            v.push(batch(iters, f));
        }
    }
    samples.iter().map(|v| measurement(v)).collect()
}
