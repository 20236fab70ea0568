//! How one call runs: the kernel, its tile, the operand whose loads a subgroup shares, and
//! split-K; the default plan from the shape, and the tuner's candidate plans.

use super::wgsl::{BK, Share, Tile};
use crate::kernels::{KernelForm, kernel_policy};
use crate::ops::BlockMatmul;

/// Workgroups a GPU launch should have at least: a few per compute unit of a large GPU (an H200
/// has 132).
pub(super) const TARGET_WORKGROUPS: usize = 256;

/// The shortest reduction a split-K part gets (16 workgroup-memory rounds).
pub(super) const MIN_K_CHUNK: usize = 256;

/// How many parts the reduction of `spec` is cut into on a real GPU with `tile`: more than one
/// only when the output alone gives too few workgroups and the reduction is long (GraLoRA's and
/// LoRA's weight gradients: outputs of `in/k × r`, reductions over all T tokens). A software
/// device (a few CPU threads) and f16 (whose partial sums would round) take one.
/// [`KernelPolicy::split_k`](crate::kernels::KernelPolicy::split_k) forces its count of parts on
/// the tiled kernel (tests run split-K on lavapipe that way, with [`KernelForm::Tiled`]).
pub(super) fn split_k_parts(spec: &BlockMatmul, tile: Tile, software: bool, f16: bool) -> usize {
    // At least one BK round a part, workgroup z (= g · parts) within WebGPU's 65535, and the
    // partial outputs' offsets 32-bit.
    let most = spec
        .k
        .div_ceil(BK as usize)
        .min(65535 / spec.g.max(1))
        .min((u32::MAX as usize - 1) / (spec.g * spec.m * spec.n).max(1))
        .max(1);
    if let Some(n) = kernel_policy().split_k {
        return n.clamp(1, most);
    }
    if software || f16 {
        return 1;
    }
    let workgroups =
        spec.g * spec.m.div_ceil(tile.bm() as usize) * spec.n.div_ceil(tile.bn() as usize);
    if workgroups >= TARGET_WORKGROUPS || spec.k < 2 * MIN_K_CHUNK {
        return 1;
    }
    TARGET_WORKGROUPS
        .div_ceil(workgroups)
        .min(spec.k / MIN_K_CHUNK)
        .min(64)
        .min(most)
        .max(1)
}

/// The lanes of one subgroup on a device where the direct kernel shares loads across them:
/// lavapipe (llvmpipe), whose compute shaders run a workgroup row's invocations along x in
/// groups of its SIMD width (Mesa's `lp_state_cs.c`), that width being the one subgroup size its
/// adapter reports, with subgroup operations on. Other software devices (whose lane order is not
/// known here) and GPUs: none.
pub(super) fn shared_lanes(properties: &burn_cubecl::cubecl::ir::DeviceProperties) -> Option<u32> {
    let (lo, hi) = (
        properties.hardware.plane_size_min,
        properties.hardware.plane_size_max,
    );
    let name = &properties.identity.name;
    (kernel_policy().shared_loads
        && lo == hi
        && (4..=16).contains(&lo)
        && lo.is_power_of_two()
        && name.starts_with("llvmpipe")
        && crate::device::vulkan_adapter_has_subgroups(name))
    .then_some(lo)
}

/// How one call runs: which kernel, its tile, the operand its subgroups share (direct kernel) and
/// into how many parts its reduction is cut (tiled kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) tile: Tile,
    /// `block_matmul_direct.wgsl` instead of the tiled kernel.
    pub(super) direct: bool,
    pub(super) share: Share,
    /// The subgroup size (where `share` is not `None`).
    pub(super) lanes: u32,
    /// The reduction's parts wanted (split-K; fewer where K has fewer BK rounds).
    pub(super) parts: usize,
}

impl Plan {
    /// The plan chosen from the shape alone: on a software device the direct kernel (sharing
    /// loads where the lanes allow), on a GPU the tiled kernel with the SGEMM-style tile of
    /// [`Tile::for_shape`] and split-K where the output gives too few workgroups.
    pub(super) fn default_for(
        spec: &BlockMatmul,
        properties: &burn_cubecl::cubecl::ir::DeviceProperties,
        software: bool,
        f16: bool,
    ) -> Self {
        if software && kernel_policy().form != KernelForm::Tiled {
            let lanes = shared_lanes(properties);
            let (tile, share) = match lanes {
                Some(lanes) => Tile::shared(spec.m, spec.n, lanes),
                None => (Tile::for_shape(spec.m, spec.n, true), Share::None),
            };
            // The direct kernel runs one part (its workgroups already keep every CPU thread busy).
            return Self {
                tile,
                direct: true,
                share,
                lanes: lanes.unwrap_or(0),
                parts: 1,
            };
        }
        let tile = Tile::for_shape(spec.m, spec.n, software)
            .within(properties.hardware.max_shared_memory_size);
        Self::tiled(tile, split_k_parts(spec, tile, software, f16))
    }

    pub(super) fn tiled(tile: Tile, parts: usize) -> Self {
        Self {
            tile,
            direct: false,
            share: Share::None,
            lanes: 0,
            parts,
        }
    }
}

/// The tiles the tuner tries on the tiled kernel besides the default one, as (threads along N,
/// threads along M, outputs per thread along M, along N), each cut to the output as the default
/// is: square 64 and 128 tiles, a small 32 one for outputs that give few workgroups, and tall,
/// wide and thin ones for the adapters' rank-sized sides.
pub(super) const TUNED_TILES: [(u32, u32, u32, u32); 7] = [
    (16, 16, 4, 4),
    (16, 16, 8, 8),
    (8, 8, 4, 4),
    (8, 32, 4, 4),
    (32, 8, 4, 4),
    (4, 64, 4, 4),
    (64, 4, 4, 4),
];

/// The tiled kernel's candidate plans: candidate `2i` takes tile i (0: [`Tile::for_shape`]'s,
/// then [`TUNED_TILES`]) with split-K as a GPU would choose it for that tile, candidate `2i + 1`
/// the same tile in one part.
/// `limit`: the device's bytes of workgroup memory.
pub(super) fn candidate_plans(
    spec: &BlockMatmul,
    limit: usize,
    software: bool,
    f16: bool,
) -> Vec<Plan> {
    candidate_tiles(spec.m, spec.n, software)
        .flat_map(|tile| {
            let tile = tile.within(limit);
            [
                Plan::tiled(tile, split_k_parts(spec, tile, false, f16)),
                Plan::tiled(tile, 1),
            ]
        })
        .collect()
}

/// The tiled kernel's candidate tiles for an `m × n` output: [`Tile::for_shape`]'s, then
/// [`TUNED_TILES`], each cut to the output.
pub(super) fn candidate_tiles(m: usize, n: usize, software: bool) -> impl Iterator<Item = Tile> {
    std::iter::once(Tile::for_shape(m, n, software)).chain(
        TUNED_TILES
            .iter()
            .map(move |&(wx, wy, tm, tn)| Tile { wx, wy, tm, tn }.cut_to(m, n)),
    )
}

/// How many plans the tuner tries on the tiled kernel.
pub(crate) const TILED_CANDIDATES: usize = 2 * (1 + TUNED_TILES.len());

/// The tuner's candidates: the tiled kernel's plans, then the two-pass form ([`two_pass`]).
pub(crate) const TUNED_CANDIDATES: usize = TILED_CANDIDATES + 1;
