//! How the custom ops run on cubecl devices: one [`KernelPolicy`] value chooses the kernel forms
//! (set in code; the `gralora` binary reads it from the environment), and [`KernelStats`] counts
//! what ran.

mod policy;
mod stats;

pub use policy::{KernelForm, KernelPolicy, kernel_policy, set_kernel_policy, with_kernel_policy};
pub(crate) use stats::{Counter, count};
pub use stats::{KernelStats, kernel_stats};
