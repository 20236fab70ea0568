//! # gralora
//!
//! GraLoRA, Hybrid GraLoRA and LoRA adapters as burn modules, on any burn device (wgpu on
//! Vulkan/Metal/DX12, or the Flex CPU backend). The math is docs/METHODS.md in the repository.
//!
//! ```no_run
//! use burn::nn::LinearConfig;
//! use burn::tensor::{Device, Tensor};
//! use gralora::{AdaptedLinear, GraLoraConfig};
//!
//! let device = Device::flex(); // or Device::wgpu(Default::default())
//! let base = LinearConfig::new(768, 768).init(&device);
//! let layer = AdaptedLinear::with_adapter(base, &GraLoraConfig::new(32, 2).into(), "proj")?;
//! let y = layer.forward(Tensor::<3>::zeros([4, 16, 768], &device));
//! # Ok::<(), gralora::AdapterError>(())
//! ```

mod adapt;
mod adapted_linear;
mod adapter;
mod backends;
pub mod blas;
mod config;
pub mod device;
mod error;
mod init;
pub mod io;
pub mod kernels;
mod methods;
pub mod ops;
pub mod peft;
mod targets;

pub use adapt::{
    AdaptReport, AdaptedLayer, DenseAdapter, adapt, attach_adapters, convert_to_lora, linear_layers,
};
pub use adapted_linear::{AdaptedLinear, AdapterHost, InputProbe, InputStats};
pub use adapter::Adapter;
pub use config::{AdapterConfig, GraLoraConfig, Init, LoraConfig, recommended_k};
pub use error::AdapterError;
pub use methods::gora;
pub use methods::gralora::GraLoraAdapter;
pub use methods::lora::LoraAdapter;
pub use peft::{is_peft_dir, load_peft, save_peft};
pub use targets::{AdaptOptions, LinearInfo, Targets, layer_index};
