use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn pin(c: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(c);
    rustix::thread::sched_setaffinity(None, &set).unwrap();
}
fn recv_exact(s: &UnixStream, buf: &mut [u8], spins: u32) -> bool {
    let yield_ = spins >= 1_000_000;
    let spins = spins % 1_000_000;
    let mut got = 0;
    let mut left = spins;
    while got < buf.len() {
        let fl = if left > 0 {
            RecvFlags::DONTWAIT
        } else {
            RecvFlags::empty()
        };
        match rustix::net::recv(s, &mut buf[got..], fl) {
            Ok((0, _)) => return false,
            Ok((n, _)) => got += n,
            Err(Errno::AGAIN) => {
                left -= 1;
                if yield_ {
                    rustix::thread::sched_yield();
                } else {
                    std::hint::spin_loop();
                }
            }
            Err(_) => return false,
        }
    }
    true
}
fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let k = 3000;
    for (cpu, spins) in [
        (1usize, 0u32),
        (1, 100),
        (1, 1_000_100),
        (0, 0),
        (0, 100),
        (0, 1_000_100),
        (0, 1_000_010),
    ] {
        let (a, b) = UnixStream::pair().unwrap();
        std::thread::spawn(move || {
            pin(cpu);
            let mut inb = [0u8; 32];
            let out = [0u8; 36];
            while recv_exact(&b, &mut inb, spins) {
                rustix::net::send(&b, &out, SendFlags::NOSIGNAL).unwrap();
            }
        });
        pin(0);
        let out = [0u8; 32];
        let mut inb = [0u8; 36];
        let mut v = Vec::new();
        let mut cpus = Vec::new();
        for _ in 0..7 {
            let t = Instant::now();
            let c0 = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
            for _ in 0..k {
                rustix::net::send(&a, &out, SendFlags::NOSIGNAL).unwrap();
                assert!(recv_exact(&a, &mut inb, spins));
            }
            let c1 = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
            v.push(t.elapsed().as_nanos() as f64 / k as f64);
            cpus.push(
                ((c1.tv_sec - c0.tv_sec) as f64 * 1e9 + (c1.tv_nsec - c0.tv_nsec) as f64)
                    / k as f64,
            );
        }
        println!(
            "server cpu {cpu}, spins {spins:8}: {:.0} ns/rt, CPU {:.0} ns/rt",
            med(v),
            med(cpus)
        );
    }
}
