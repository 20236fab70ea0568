//! Initialisers shared by every adapter (PEFT's, docs/METHODS.md §1–2).

use burn::module::Param;
use burn::tensor::{Device, Distribution, Tensor};

/// PyTorch's `kaiming_uniform_(w, a = sqrt(5))`: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
pub fn kaiming_uniform<const D: usize>(
    shape: [usize; D],
    fan_in: usize,
    device: &Device,
) -> Tensor<D> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    Tensor::random(shape, Distribution::Uniform(-bound, bound), device)
}

/// A trainable parameter created under the device's persistent-allocation window
/// (parameters live as long as their module).
pub fn param<const D: usize>(
    device: &Device,
    make: impl Fn() -> Tensor<D> + Send + Sync,
) -> Param<Tensor<D>> {
    device.memory_persistent_allocations((), |_| Param::from_tensor(make()))
}
