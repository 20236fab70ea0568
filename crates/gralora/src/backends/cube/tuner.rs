//! The tiled kernel's plan picked per shape class by cubecl's autotuner, which times every
//! candidate plan and the two-pass form on the first call of a class.

use burn_cubecl::tensor::CubeTensor;

use super::launch::run;
use super::plan::{TILED_CANDIDATES, candidate_plans};
use super::two_pass::two_pass;
use super::wgsl::splits;
use crate::kernels::{Counter, count};
use crate::ops::{Axis, BlockMatmul};

/// What the tuner's choice for the tiled kernel depends on: element type, which axes are split,
/// which operands are contiguous along K, the batch count and M, N, K (anchored to powers of a
/// base, as burn's matmul keys are, so a new batch length reuses the choice for a similar one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub(super) struct TiledKey {
    pub(super) f16: bool,
    pub(super) split: [bool; 6],
    pub(super) k_fast: [bool; 2],
    pub(super) g: usize,
    pub(super) m: usize,
    pub(super) n: usize,
    pub(super) k: usize,
}

impl std::fmt::Display for TiledKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl burn_cubecl::cubecl::tune::AutotuneKey for TiledKey {}

pub(super) type TunedArgs = (CubeTensor, CubeTensor, BlockMatmul, bool);

pub(super) fn tiled_key((_, _, spec, f16): &TunedArgs) -> TiledKey {
    use burn_cubecl::cubecl::tune::anchor;
    TiledKey {
        f16: *f16,
        split: splits(spec).map(|s| s != 0),
        k_fast: [
            spec.lhs.col == Axis::plain(1),
            spec.rhs.row == Axis::plain(1),
        ],
        g: anchor(spec.g, None, None, None),
        m: anchor(spec.m, None, None, None),
        n: anchor(spec.n, None, None, None),
        k: anchor(spec.k, None, None, None),
    }
}

/// The tiled kernel with the plan that cubecl's autotuner measured fastest for this key on this
/// device (the first call for a key times every distinct candidate; burn's matmul is chosen the
/// same way), or the two-pass form where that measured faster. GPUs differ too much for one tile
/// to suit them all, and a vendor's matmul kernel may beat the tiled one by more than the copies
/// cost.
pub(super) fn tuned(lhs: CubeTensor, rhs: CubeTensor, spec: BlockMatmul, f16: bool) -> CubeTensor {
    use burn_cubecl::CubeTuneId;
    use burn_cubecl::cubecl::tune::{
        LocalTuner, OrderedSettings, Tunable, TunableSet, TuneGroup, local_tuner,
    };
    static TUNER: LocalTuner<TiledKey, CubeTuneId> = local_tuner!("gralora-block-matmul");
    count(Counter::Tuned);
    let client = lhs.client.clone();
    let id = CubeTuneId::new(&client, &lhs.device);
    let set = TUNER.init(&id, || {
        let order = TuneGroup::<TiledKey>::ordered(
            "gralora-block-matmul-plans",
            |_| 0,
            OrderedSettings::default().with_patience(patience()),
        );
        (0..TILED_CANDIDATES)
            .fold(
                TunableSet::<TiledKey, TunedArgs, CubeTensor>::new_cloning_inputs(tiled_key),
                |set, i| {
                    set.with(
                        Tunable::new(
                            &format!("plan-{i}"),
                            move |(lhs, rhs, spec, f16): TunedArgs| {
                                let properties = lhs.client.properties();
                                let software = properties.identity.physical.is_none();
                                let limit = properties.hardware.max_shared_memory_size;
                                let plans = candidate_plans(&spec, limit, software, f16);
                                if plans[..i].contains(&plans[i]) {
                                    return Err(format!(
                                        "plan-{i} is an earlier candidate's plan here"
                                    ));
                                }
                                Ok(run(&lhs, &rhs, &spec, f16, plans[i]))
                            },
                        )
                        .group(&order, move |_| priority(i)),
                    )
                },
            )
            .with(
                Tunable::new("two-pass", |(lhs, rhs, spec, _): TunedArgs| {
                    two_pass(&lhs, &rhs, &spec)
                })
                .group(&order, |_| priority(TILED_CANDIDATES)),
            )
    });
    TUNER.execute(&id, &client, set, (lhs, rhs, spec, f16))
}

/// The order the tuner measures its candidates in, best first: the default plan (the tile fitted
/// to the shape, split-K as a GPU would choose it), the two-pass form (what beat the tiled
/// kernel's plans in 19 of 24 shape classes on lavapipe), then the other plans in turn.
fn priority(candidate: usize) -> i8 {
    match candidate {
        0 => 100,
        c if c == TILED_CANDIDATES => 99,
        c => 98 - c as i8,
    }
}

/// When the tuner stops measuring candidates for a key: after `min_measured` of them and
/// `max_misses` in a row that did not beat the best by more than 2 %, fewer the lower cubecl's
/// autotune level (`CUBECL_AUTOTUNE_LEVEL`); at `full` every candidate is measured.
fn patience() -> burn_cubecl::cubecl::tune::Patience {
    use burn_cubecl::cubecl::config::autotune::AutotuneLevel;
    use burn_cubecl::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    use burn_cubecl::cubecl::tune::Patience;
    let (min_measured, max_misses) = match CubeClRuntimeConfig::get().autotune.level {
        AutotuneLevel::Minimal => (2, 1),
        AutotuneLevel::Balanced => (4, 3),
        AutotuneLevel::Extensive => (8, 4),
        AutotuneLevel::Full => (TILED_CANDIDATES + 1, TILED_CANDIDATES + 1),
    };
    Patience {
        min_measured,
        max_misses,
    }
}

#[cfg(test)]
mod order_tests {
    use super::*;

    #[test]
    fn the_default_plan_and_the_two_pass_form_are_measured_first_then_the_plans_in_turn() {
        let mut order: Vec<usize> = (0..=TILED_CANDIDATES).collect();
        order.sort_by_key(|&c| std::cmp::Reverse(priority(c)));
        let mut want = vec![0, TILED_CANDIDATES];
        want.extend(1..TILED_CANDIDATES);
        assert_eq!(order, want);
        assert!(
            (0..=TILED_CANDIDATES).all(|c| priority(c) >= 0),
            "a negative priority skips"
        );
    }
}
