//! How each backend runs [`block_matmul`](crate::ops::BlockMatmulOps::block_matmul).

mod autodiff;
pub(crate) mod cube;
mod cube_twin;
mod flex;
