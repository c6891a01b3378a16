//! Garbage in, error out: random bytes and bit-flipped valid inputs fed to
//! every fuzz target's entry point (`fuzz_harness`), with deterministic
//! seeds so a failure reproduces; the committed seed corpus kept current;
//! and every input a fuzzer found crashing kept as a regression case.

use crate::fuzz_harness::{seeds, TARGETS};

/// xorshift64*: enough randomness for input generation, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_never_panic_any_decoder() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 300) as usize;
        let garbage = rng.bytes(len);
        for (_, target) in TARGETS {
            target(&garbage);
        }
    }
}

#[test]
fn bit_flipped_valid_input_never_panics() {
    let mut rng = Rng(42);
    let seeds = seeds();
    for _ in 0..2_000 {
        for (_, seed) in &seeds {
            let mut mutated = seed.clone();
            for _ in 0..=(rng.next() % 4) {
                let at = (rng.next() as usize) % mutated.len();
                mutated[at] ^= 1 << (rng.next() % 8);
            }
            for (_, target) in TARGETS {
                target(&mutated);
            }
        }
    }
}

/// `fuzz/seeds/TARGET/seed-N` holds exactly `fuzz_harness::seeds()`, and
/// every target has a seed and a `fuzz/fuzz_targets/TARGET.rs`. Run with
/// `TETHER_WRITE_FUZZ_SEEDS=1` to rewrite the seed files.
#[test]
fn the_committed_seed_corpus_is_current() {
    let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let write = std::env::var_os("TETHER_WRITE_FUZZ_SEEDS").is_some();
    let mut numbered = std::collections::BTreeMap::<&str, usize>::new();
    for (target, seed) in seeds() {
        let n = numbered.entry(target).or_default();
        let path = fuzz.join("seeds").join(target).join(format!("seed-{n}"));
        *n += 1;
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &seed).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|err| {
            panic!(
                "{}: {err} (TETHER_WRITE_FUZZ_SEEDS=1 writes it)",
                path.display()
            )
        });
        assert_eq!(
            committed,
            seed,
            "{} is stale (TETHER_WRITE_FUZZ_SEEDS=1 rewrites it)",
            path.display()
        );
    }
    for (target, _) in TARGETS {
        assert!(numbered.contains_key(target), "{target} has no seed");
        let source = fuzz.join("fuzz_targets").join(format!("{target}.rs"));
        assert!(source.exists(), "{} is missing", source.display());
    }
}

/// Every input a fuzzer found crashing a target, kept in
/// `fuzz/regressions/TARGET/` once fixed, replayed against its target.
#[test]
fn inputs_that_once_crashed_a_target_are_handled() {
    let regressions = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let Ok(dirs) = std::fs::read_dir(&regressions) else {
        return;
    };
    for dir in dirs {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let (_, entry_point) = TARGETS
            .iter()
            .find(|(target, _)| *target == name)
            .unwrap_or_else(|| panic!("{} names no fuzz target", dir.display()));
        for input in std::fs::read_dir(&dir).unwrap() {
            entry_point(&std::fs::read(input.unwrap().path()).unwrap());
        }
    }
}
