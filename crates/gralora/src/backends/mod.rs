//! How each backend runs [`block_matmul`](crate::ops::BlockMatmulOps::block_matmul).

mod autodiff;
mod cube;
mod flex;
