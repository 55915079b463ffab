//! The fuzz harness of `fuzz/fuzz_targets/mig_stream.rs` (a migration
//! stream loaded into a real device, see `uvfio_drivers::fuzzing`) on a few
//! thousand inputs: the seeds, the committed corpus
//! (`fuzz/corpus/mig_stream`), and mutations of them.
//!
//! `UVFIO_WRITE_SEEDS=DIR cargo test -p uvfio-drivers --test
//! mig_stream_fuzz -- --ignored` writes the seeds to DIR.

use std::path::PathBuf;

use uvfio_drivers::fuzzing;

const MUTATED: usize = 3000;

/// xorshift64: repeatable mutations without a dependency.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// One mutation of `input`: flip bits, overwrite a little-endian integer
/// with an edge value (lengths and counts are where decoders break),
/// truncate, duplicate or drop a range.
fn mutate(input: &mut Vec<u8>, s: &mut u64) {
    if input.len() < 3 {
        input.push(next(s) as u8);
        return;
    }
    let at = 2 + (next(s) as usize) % (input.len() - 2);
    match next(s) % 6 {
        0 => input[at] ^= 1 << (next(s) % 8),
        1 => {
            let edges = [0u32, 1, 7, 8, 0xff, 0x1000, 0xffff_ffff, 0x8000_0000];
            let v = edges[(next(s) % edges.len() as u64) as usize].to_le_bytes();
            let end = (at + 4).min(input.len());
            input[at..end].copy_from_slice(&v[..end - at]);
        }
        2 => input.truncate(at),
        3 => {
            let end = (at + 1 + (next(s) as usize) % 64).min(input.len());
            let dup = input[at..end].to_vec();
            input.splice(at..at, dup);
        }
        4 => {
            let end = (at + 1 + (next(s) as usize) % 64).min(input.len());
            input.drain(at..end);
        }
        _ => input[0] = next(s) as u8,
    }
}

#[test]
fn mig_stream_harness_survives_mutated_streams() {
    let seeds = fuzzing::seeds();
    assert!(seeds.len() > usize::from(fuzzing::DEVICES));
    for (i, s) in seeds.iter().enumerate() {
        assert!(fuzzing::run(s), "seed {i} is accepted");
    }
    let mut pool = seeds.clone();
    let corpus = uvfio_testkit::fuzz_corpus("mig_stream");
    assert!(!corpus.is_empty(), "fuzz/corpus/mig_stream is found");
    pool.extend(corpus);
    for input in &pool {
        fuzzing::run(input);
    }
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut accepted = 0;
    for i in 0..MUTATED {
        let mut input = pool[i % pool.len()].clone();
        for _ in 0..1 + next(&mut s) % 3 {
            mutate(&mut input, &mut s);
        }
        accepted += usize::from(fuzzing::run(&input));
    }
    // Most mutations break the stream; some (in RAM, register values) do
    // not, and those exercise the accept path.
    assert!(accepted > 0 && accepted < MUTATED, "{accepted} accepted");
}

#[test]
#[ignore = "writes files; run by hand to regenerate seeds"]
fn write_seeds() {
    let dir = std::env::var("UVFIO_WRITE_SEEDS").expect("UVFIO_WRITE_SEEDS=DIR");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, s) in fuzzing::seeds().iter().enumerate() {
        std::fs::write(PathBuf::from(&dir).join(format!("seed-{i}")), s).unwrap();
    }
}
