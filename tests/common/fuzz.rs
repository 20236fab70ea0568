//! Fuzzing the readers of untrusted bytes: valid seed files mutated by proptest strategies (bit
//! flips, bytes and little-endian length words overwritten with edge values, truncation,
//! insertion, removal), each input fed to a target that must return — an error is fine — without
//! a panic, within a time bound, and without any single allocation larger than the input
//! warrants ([`Bounded`], the test binary's allocator, enforces it on the fuzzing thread).
//!
//! Seeded and bounded: `GRALORA_FUZZ_CASES` inputs per target (default 2,000; the campaign in
//! `scripts/fuzz_campaign.sh` runs many more), the seed derived from the target's name.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// Bytes allocated minus bytes freed on this thread, and the highest value since
    /// [`heap_peak`] started watching.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

#[allow(dead_code)] // used by the train binary only
/// Heap bytes this thread has allocated and not freed (frees of its blocks on other threads are
/// not seen).
pub fn heap_live() -> isize {
    LIVE.with(Cell::get)
}

#[allow(dead_code)] // used by the train binary only
/// Run `f` on this thread; its result and the most heap it held at once beyond what this
/// thread held when it started (allocations on other threads are not seen).
pub fn heap_peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, (peak - start).max(0) as usize)
}

/// Above this, an allocation on a fuzzing thread is refused outright (the process aborts naming
/// the size) rather than attempted.
const HARD_LIMIT: usize = 1 << 30;

/// The system allocator, recording on a fuzzing thread the largest request above its limit.
pub struct Bounded;

fn allowed(size: usize) -> bool {
    LIMIT
        .try_with(|limit| {
            if size > limit.get() {
                let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
                size <= HARD_LIMIT
            } else {
                true
            }
        })
        .unwrap_or(true)
}

unsafe impl GlobalAlloc for Bounded {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if allowed(layout.size()) {
            track(layout.size() as isize);
            unsafe { System.alloc(layout) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if allowed(layout.size()) {
            track(layout.size() as isize);
            unsafe { System.alloc_zeroed(layout) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if allowed(new_size) {
            track(new_size as isize - layout.size() as isize);
            unsafe { System.realloc(ptr, layout, new_size) }
        } else {
            std::ptr::null_mut()
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        track(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Sets the allocation limit for the current thread while alive.
struct Limit;

impl Limit {
    fn set(bytes: usize) -> Self {
        LIMIT.with(|l| l.set(bytes));
        LARGEST.with(|l| l.set(0));
        Self
    }
}

impl Drop for Limit {
    fn drop(&mut self) {
        LIMIT.with(|l| l.set(usize::MAX));
    }
}

/// One change to a seed file; positions are taken modulo its length.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Byte(usize, u8),
    Word32(usize, u32),
    Word64(usize, u64),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let edge32 = prop_oneof![
        Just(0u32),
        Just(1),
        Just(0x7fff_ffff),
        Just(u32::MAX),
        Just(1 << 20),
        any::<u32>()
    ];
    let edge64 = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(1 << 32),
        Just(1 << 40),
        Just(1 << 62),
        any::<u64>()
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Byte(p, b)),
        (any::<usize>(), edge32).prop_map(|(p, w)| Mutation::Word32(p, w)),
        (any::<usize>(), edge64).prop_map(|(p, w)| Mutation::Word64(p, w)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), vec(any::<u8>(), 1..24)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (any::<usize>(), 1usize..64).prop_map(|(p, n)| Mutation::Remove(p, n)),
    ]
}

/// `seed` with `mutations` applied in order.
pub fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        if b.is_empty() {
            break;
        }
        let at = |p: usize, b: &Vec<u8>| p % b.len();
        match m {
            Mutation::Flip(p, bit) => {
                let i = at(*p, &b);
                b[i] ^= 1 << bit;
            }
            Mutation::Byte(p, v) => {
                let i = at(*p, &b);
                b[i] = *v;
            }
            Mutation::Word32(p, w) => {
                let i = at(*p, &b);
                for (k, v) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = v;
                    }
                }
            }
            Mutation::Word64(p, w) => {
                let i = at(*p, &b);
                for (k, v) in w.to_le_bytes().into_iter().enumerate() {
                    if let Some(x) = b.get_mut(i + k) {
                        *x = v;
                    }
                }
            }
            Mutation::Truncate(p) => {
                let i = at(*p, &b);
                b.truncate(i);
            }
            Mutation::Insert(p, bytes) => {
                let i = at(*p, &b);
                b.splice(i..i, bytes.iter().copied());
            }
            Mutation::Remove(p, n) => {
                let i = at(*p, &b);
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
        }
    }
    b
}

/// Inputs per target: `GRALORA_FUZZ_CASES`, else 2,000.
pub fn cases() -> u32 {
    std::env::var("GRALORA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// What one target's run did.
#[derive(Debug)]
pub struct Campaign {
    pub inputs: u32,
    pub accepted: u32,
}

/// Run `target` on `cases()` mutations of `seeds` (seeded by `name`). A panic, an allocation
/// above `16 MiB + 64 × input length`, or an input that takes over 10 s fails the test with the
/// smallest failing input proptest finds. The seeds themselves must be accepted (`Ok`), so a
/// target that refuses everything cannot pass for robust.
pub fn fuzz<E: std::fmt::Display>(
    name: &str,
    seeds: &[Vec<u8>],
    target: impl Fn(&[u8]) -> Result<(), E>,
) -> Campaign {
    for (i, s) in seeds.iter().enumerate() {
        if let Err(e) = target(s) {
            panic!("fuzz {name}: seed {i} is refused: {e}");
        }
    }
    let mut key = [0u8; 32];
    for (i, b) in name.bytes().enumerate() {
        key[i % 32] ^= b;
    }
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let inputs = std::cell::Cell::new(0u32);
    let accepted = std::cell::Cell::new(0u32);
    let strategy = (0..seeds.len(), vec(mutation(), 1..6));
    let result = runner.run(&strategy, |(seed, mutations)| {
        let input = apply(&seeds[seed], &mutations);
        let bound = (16 << 20) + 64 * input.len();
        let start = Instant::now();
        let ok = {
            let _limit = Limit::set(bound);
            target(&input).is_ok()
        };
        let largest = LARGEST.with(Cell::get);
        inputs.set(inputs.get() + 1);
        accepted.set(accepted.get() + u32::from(ok));
        prop_assert!(
            largest == 0,
            "an allocation of {largest} bytes for an input of {} bytes",
            input.len()
        );
        prop_assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
        Ok(())
    });
    let campaign = Campaign {
        inputs: inputs.get(),
        accepted: accepted.get(),
    };
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
    eprintln!(
        "fuzz {name}: {} inputs, {} accepted, 0 failures",
        campaign.inputs, campaign.accepted
    );
    campaign
}

/// Write `bytes` to `path` for a reader that takes a path.
pub fn to_file(path: &std::path::Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write a fuzz input");
}
