//! The fuzz harness of `fuzz/fuzz_targets/session.rs` (a whole connection
//! in process, see `uvfio_user::fuzzing`) on a few thousand inputs: the
//! built-in seeds, the committed corpus (`fuzz/corpus/session`), random
//! bytes and mutations of all of them. One test function on purpose: the
//! harness counts the process's fds, which parallel tests would disturb.
//!
//! `UVFIO_WRITE_SEEDS=DIR cargo test -p uvfio-user --test session_fuzz --
//! --ignored` writes the built-in seeds to DIR (to start a corpus).

use std::path::PathBuf;

use uvfio_user::fuzzing::{self, Options};
use uvfio_user::proto;

const RANDOM: usize = 1000;
const MUTATED: usize = 2500;

#[test]
fn session_harness_survives_random_and_mutated_inputs() {
    let opts = Options { check_fds: true };
    let seeds = fuzzing::seeds();
    // The seeds reach what they were written for.
    let mut all_ok: Vec<u16> = Vec::new();
    for s in &seeds {
        let st = fuzzing::run_with(s, opts);
        all_ok.extend(&st.succeeded);
    }
    for command in [1u16, 2, 3, 4, 5, 7, 8, 9, 10, 13, 16, 17, 18] {
        assert!(
            all_ok.contains(&command),
            "no seed gets command {command} through"
        );
    }
    // Past findings stay fixed: a non-eventfd for SET_IRQS is refused.
    for (name, input) in fuzzing::regressions() {
        let st = fuzzing::run_with(&input, opts);
        let set_irqs = proto::VFIO_USER_DEVICE_SET_IRQS;
        assert!(
            st.failed.contains(&(set_irqs, 22)),
            "{name}: SET_IRQS with a non-eventfd must be EINVAL: {st:?}"
        );
    }
    let mut pool = seeds.clone();
    let corpus = uvfio_testkit::fuzz_corpus("session");
    assert!(!corpus.is_empty(), "fuzz/corpus/session is found");
    pool.extend(corpus);
    for input in &pool {
        fuzzing::run_with(input, opts);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..RANDOM {
        let len = (next() % 512) as usize;
        let input: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        fuzzing::run_with(&input, opts);
    }
    let mut seed = 0x0123_4567_89ab_cdefu64;
    for i in 0..MUTATED {
        let mut input = pool[i % pool.len()].clone();
        fuzzing::mutate(&mut input, &mut seed, &pool);
        fuzzing::run_with(&input, opts);
    }
}

#[test]
#[ignore = "writes files; run by hand to regenerate seeds"]
fn write_seeds() {
    let Some(dir) = std::env::var_os("UVFIO_WRITE_SEEDS") else {
        return;
    };
    let dir = PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in fuzzing::seeds().iter().enumerate() {
        std::fs::write(dir.join(format!("seed-{i:02}")), s).unwrap();
    }
    for (name, s) in fuzzing::regressions() {
        std::fs::write(dir.join(format!("regress-{name}")), s).unwrap();
    }
}
