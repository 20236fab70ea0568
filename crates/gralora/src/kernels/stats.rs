//! Launch counters of the block-matmul op's cubecl forms, for diagnostics, tests and benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};

/// What a launch counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// The `#[cube]` twin kernel.
    Twin,
    /// The direct (software-device) WGSL kernel.
    Direct,
    /// A direct launch that shared the lhs loads over a subgroup.
    SharedLhs,
    /// A direct launch that shared the rhs loads over a subgroup.
    SharedRhs,
    /// A tiled launch that cut its reduction into parts.
    SplitK,
    /// A tiled-kernel call that went through the tuner.
    Tuned,
    /// A call in the two-pass form (copies and burn's matmul).
    TwoPass,
}

static COUNTS: [AtomicUsize; 7] = [const { AtomicUsize::new(0) }; 7];

/// Count one launch of `what`.
pub(crate) fn count(what: Counter) {
    COUNTS[what as usize].fetch_add(1, Ordering::Relaxed);
}

/// How often each form of the block-matmul op has run in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KernelStats {
    /// The `#[cube]` twin kernel (runtimes that do not compile WGSL, or [`super::KernelForm::CubeTwin`]).
    pub twin: usize,
    /// The direct WGSL kernel (`shaders/block_matmul_direct.wgsl`: software devices such as
    /// lavapipe, unless [`super::KernelForm::Tiled`]).
    pub direct: usize,
    /// Direct launches that shared one operand's loads over a subgroup's lanes (lavapipe, unless
    /// [`super::KernelPolicy::shared_loads`] is off): `[lhs shared, rhs shared]`.
    pub shared: [usize; 2],
    /// Tiled launches that cut their reduction into parts summed afterwards (split-K: on a real
    /// GPU for small outputs with long reductions, or as [`super::KernelPolicy::split_k`] forces).
    pub split_k: usize,
    /// Tiled-kernel calls that went through cubecl's autotuner (which times every candidate on
    /// the first call of a shape class, then runs the fastest).
    pub tuned: usize,
    /// Calls in the two-pass form (the tuner's last candidate: where it measured fastest, or forced).
    pub two_pass: usize,
}

/// The counts so far.
pub fn kernel_stats() -> KernelStats {
    let get = |c: Counter| COUNTS[c as usize].load(Ordering::Relaxed);
    KernelStats {
        twin: get(Counter::Twin),
        direct: get(Counter::Direct),
        shared: [get(Counter::SharedLhs), get(Counter::SharedRhs)],
        split_k: get(Counter::SplitK),
        tuned: get(Counter::Tuned),
        two_pass: get(Counter::TwoPass),
    }
}
