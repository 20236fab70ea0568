//! Launching the WGSL kernel of a plan: its specialisation, the info words, split-K's partial
//! outputs and their sum.

use burn::backend::ops::FloatTensorOps;
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::template::SourceKernel;
use burn_cubecl::tensor::CubeTensor;

use super::constants::constant;
use super::plan::Plan;
use super::wgsl::{BK, BlockMatmulKernel, INFO_LEN, Share, Vec4, info, splits, vec_axes, vec_out};
use crate::kernels::{Counter, count, kernel_policy};
use crate::ops::{Axis, BlockMatmul};

/// An uninitialised contiguous tensor of `shape` on `like`'s device, in its element type.
pub(super) fn empty_on(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.dtype,
    )
}

/// Launch `plan` for `spec` (operands contiguous) and return the output.
pub(super) fn run(
    lhs: &CubeTensor,
    rhs: &CubeTensor,
    spec: &BlockMatmul,
    f16: bool,
    plan: Plan,
) -> CubeTensor {
    let Plan {
        tile,
        direct,
        share,
        lanes,
        parts: wanted,
    } = plan;
    let client = lhs.client.clone();
    let empty = |shape: Vec<usize>| empty_on(lhs, shape);
    if direct {
        count(Counter::Direct);
    }
    match share {
        Share::Lhs => count(Counter::SharedLhs),
        Share::Rhs => count(Counter::SharedRhs),
        Share::None => {}
    }
    let vector = direct && kernel_policy().vector_loads;
    let kernel = BlockMatmulKernel {
        f16,
        splits: splits(spec),
        tile,
        lhs_k_fast: spec.lhs.col == Axis::plain(1),
        rhs_k_fast: spec.rhs.row == Axis::plain(1),
        direct,
        vec: if vector {
            vec_axes(spec)
        } else {
            [Vec4::No; 2]
        },
        vec_out: vector && vec_out(spec),
        share,
        subgroup: lanes,
    };
    // Split-K: chunks of whole BK rounds; each part writes its partial output into its own
    // slice of one `[parts, len]` buffer, summed below.
    let chunk = spec.k.max(1).div_ceil(wanted).next_multiple_of(BK as usize);
    let parts = spec.k.div_ceil(chunk).max(1);
    let mut info_host = info(spec);
    let target = if parts > 1 {
        count(Counter::SplitK);
        let len = spec.g * spec.m * spec.n;
        info_host[INFO_LEN - 3..].copy_from_slice(&[parts as u32, chunk as u32, len as u32]);
        empty(vec![parts, len])
    } else {
        empty(spec.out_shape.clone())
    };
    let info = constant(lhs, bytemuck::cast_slice(&info_host));
    let count = CubeCount::Static(
        (spec.n as u32).div_ceil(tile.bn()),
        (spec.m as u32).div_ceil(tile.bm()),
        (spec.g * parts) as u32,
    );
    let args = KernelArguments::new().with_buffers(vec![
        lhs.handle.clone().binding(),
        rhs.handle.clone().binding(),
        target.handle.clone().binding(),
        info.binding(),
    ]);
    let dim = if share == Share::Rhs {
        CubeDim::new_2d(tile.wy, tile.wx)
    } else {
        CubeDim::new_2d(tile.wx, tile.wy)
    };
    client.launch(Box::new(SourceKernel::new(kernel, dim)), count, args);
    if parts == 1 {
        return target;
    }
    let sum = CubeBackend::float_sum_dim(target, 0);
    CubeBackend::float_reshape(sum, Shape::from(spec.out_shape.clone()))
}
