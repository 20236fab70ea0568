//! One file per method: its adapter's parameters, initialisation, forward, ΔW and LoRA+ group
//! (`lora.rs`, `gralora.rs`), and GoRA's rank allocation and gradient-informed start (`gora.rs`).
//! Configurations are in `config.rs`, PEFT files in `peft.rs`.

pub mod gora;
pub mod gralora;
pub mod lora;
