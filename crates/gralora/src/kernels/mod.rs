//! How the custom ops run on cubecl devices: one [`KernelPolicy`] value chooses the kernel forms
//! (set in code; the `gralora` binary reads it from the environment), [`KernelStats`] counts
//! which form ran, and [`Counting`] counts every launch, Fusion block and host transfer of a
//! workload.

mod counts;
mod policy;
mod stats;

pub use counts::{Counting, Counts, DryRun, host_read, host_write};
pub use policy::{KernelForm, KernelPolicy, kernel_policy, set_kernel_policy, with_kernel_policy};
pub(crate) use stats::{Counter, count};
pub use stats::{KernelStats, kernel_stats};
