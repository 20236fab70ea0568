//! CubeCL runtimes: the hand-written WGSL kernels where the runtime compiles WGSL (wgpu on
//! Vulkan, Metal, DX12), burn's matmul through strided views elsewhere.
//!
//! - [`wgsl`]: `shaders/block_matmul.wgsl` (tiled through workgroup memory) and
//!   `shaders/block_matmul_direct.wgsl` (operands straight from storage; on lavapipe one
//!   operand's loads shared over a subgroup's lanes), specialised per shape class;
//! - [`plan`]: which kernel, tile, sharing and split-K a call runs, and the tuner's candidates;
//! - [`tuner`]: cubecl's autotuner picking a plan (or the two-pass form) per shape class on a GPU;
//! - [`two_pass`]: the composite's way, product by product, through burn's matmul;
//! - [`launch`] and [`twin`]: launching a plan, or the `#[cube]` twin;
//! - [`constants`]: the small constant buffers the kernels read, uploaded once.
//!
//! Runtimes that compile no WGSL (SPIR-V, Metal, CUDA) run the two-pass form, and the twin only
//! where a map has a partial last block.
//!
//! [`KernelPolicy`](crate::kernels::KernelPolicy) forces any of these forms.

mod constants;
mod launch;
mod plan;
mod tuner;
mod twin;
mod two_pass;
mod wgsl;

use burn::tensor::DType;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;

use crate::kernels::{KernelForm, kernel_policy};
use crate::ops::{BlockMatmul, BlockMatmulOps};
use constants::constant;
use launch::{empty_on, run};
pub(crate) use plan::TUNED_CANDIDATES;
use plan::{Plan, TILED_CANDIDATES, candidate_plans};
use tuner::tuned;
use twin::launch_twin;
use two_pass::two_pass;
use wgsl::info;

impl BlockMatmulOps for CubeBackend {
    fn block_matmul(lhs: CubeTensor, rhs: CubeTensor, spec: BlockMatmul) -> CubeTensor {
        let dtype = lhs.dtype;
        let f16 = match dtype {
            DType::F32 => false,
            DType::F16 => true,
            other => panic!(
                "gralora block_matmul supports f32 and f16 tensors, got {other:?}; cast the adapter"
            ),
        };
        // The offsets are 32-bit in the kernel.
        let limit = u32::MAX as usize;
        assert!(
            [&spec.out_shape, &spec.lhs_shape, &spec.rhs_shape]
                .iter()
                .all(|s| s.iter().product::<usize>() < limit),
            "gralora block_matmul: tensors over 2^32 elements are not supported"
        );
        let lhs = into_contiguous(lhs);
        let rhs = into_contiguous(rhs);
        let client = lhs.client.clone();
        let empty = |shape: Vec<usize>| empty_on(&lhs, shape);
        if spec.m == 0 || spec.n == 0 || spec.g == 0 {
            return empty(spec.out_shape.clone());
        }
        let policy = kernel_policy();
        let twin = || {
            let out = empty(spec.out_shape.clone());
            let info = constant(&lhs, bytemuck::cast_slice(&info(&spec)));
            launch_twin(&lhs, &rhs, &out, info, &spec, f16);
            out
        };
        if policy.form == KernelForm::CubeTwin {
            return twin();
        }
        if !compiles_wgsl(&lhs) || policy.form == KernelForm::Portable {
            // No WGSL here: burn's matmul (tuned, with the runtime's own tensor-core kernels)
            // through strided views; the naive twin only where no view has the map's shape.
            return two_pass(&lhs, &rhs, &spec).unwrap_or_else(|_| twin());
        }
        // A device that is no card (cubecl's identity has no physical device): a CPU rasteriser.
        let properties = client.properties();
        let software = properties.identity.physical.is_none();
        let plan = Plan::default_for(&spec, properties, software, f16);
        if !plan.direct {
            if let Some(i) = policy.candidate {
                if i == TILED_CANDIDATES {
                    // The two-pass form, where the maps allow it (else the default plan).
                    return two_pass(&lhs, &rhs, &spec)
                        .unwrap_or_else(|_| run(&lhs, &rhs, &spec, f16, plan));
                }
                let limit = properties.hardware.max_shared_memory_size;
                let plan = candidate_plans(&spec, limit, software, f16)[i];
                return run(&lhs, &rhs, &spec, f16, plan);
            }
            if policy.tune.unwrap_or(!software) {
                return tuned(lhs, rhs, spec, f16);
            }
        }
        run(&lhs, &rhs, &spec, f16, plan)
    }
}

/// Whether this tensor's runtime takes hand-written WGSL.
pub(crate) fn compiles_wgsl(t: &CubeTensor) -> bool {
    t.client.name() == "wgpu<wgsl>"
}

#[cfg(test)]
mod tests;
