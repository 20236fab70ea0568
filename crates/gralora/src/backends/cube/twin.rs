//! Launching the `#[cube]` twin of the WGSL kernel, for runtimes that do not compile WGSL.

use burn_cubecl::cubecl::prelude::CubeDim;
use burn_cubecl::tensor::CubeTensor;

use super::constants::constant;
use super::wgsl::{INFO_LEN, splits};
use crate::kernels::{Counter, count};
use crate::ops::BlockMatmul;

pub(super) fn launch_twin(
    lhs: &CubeTensor,
    rhs: &CubeTensor,
    out: &CubeTensor,
    info: burn_cubecl::cubecl::server::Handle,
    spec: &BlockMatmul,
    f16: bool,
) {
    use burn_cubecl::cubecl::calculate_cube_count_elemwise;
    use burn_cubecl::cubecl::prelude::BufferArg;
    count(Counter::Twin);
    let client = &lhs.client;
    let total = spec.g * spec.m * spec.n;
    let split_list: Vec<u32> = splits(spec).iter().map(|s| *s as u32).collect();
    let splits_handle = constant(lhs, bytemuck::cast_slice(&split_list));
    let cube_dim = CubeDim::new_1d(256);
    let count = calculate_cube_count_elemwise(client, total, cube_dim);
    let numel = |t: &CubeTensor| t.meta.shape().num_elements();
    macro_rules! launch {
        ($f:ty, $alpha:expr) => {{
            let alpha = constant(lhs, bytemuck::cast_slice(&[$alpha]));
            // SAFETY: every buffer is as long as the element count passed with it, and the maps
            // keep every offset inside its buffer (`BlockMatmul::check`).
            unsafe {
                crate::backends::cube_twin::block_matmul_twin::launch_unchecked::<$f>(
                    client,
                    count,
                    cube_dim,
                    BufferArg::from_raw_parts(lhs.handle.clone(), numel(lhs)),
                    BufferArg::from_raw_parts(rhs.handle.clone(), numel(rhs)),
                    BufferArg::from_raw_parts(out.handle.clone(), total),
                    BufferArg::from_raw_parts(info, INFO_LEN),
                    BufferArg::from_raw_parts(splits_handle, 6),
                    BufferArg::from_raw_parts(alpha, 1),
                    total as u32,
                )
            }
        }};
    }
    if f16 {
        launch!(half::f16, half::f16::from_f32(spec.alpha))
    } else {
        launch!(f32, spec.alpha)
    }
}
