//! The models' elementwise ops, each declared once (a backend-extension trait, its public
//! function and its composite reference) with one file per backend beside it, as the
//! block-matmul op of `gralora::ops`: attention's scaled softmax and the erf GELU; and the CPU
//! dropout masks.

pub mod dropout;
pub mod gelu;
pub mod softmax;
