//! Adapter configuration: which method, its rank and scale, how it is initialised.
//!
//! Defaults and scale conventions are PEFT's (docs/METHODS.md §1–2): LoRA `r = 8, alpha = 8`,
//! `s = alpha / r` (rsLoRA `alpha / sqrt(r)`); GraLoRA `r = 32, alpha = 64, k = 2, hybrid_r = 0`,
//! `s = alpha / (r + hybrid_r)`.

use serde::{Deserialize, Serialize};

use crate::error::AdapterError;

/// How the adapter factors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// PEFT's default (`init_weights=True`): A Kaiming-uniform (a = √5), B = 0, so ΔW = 0 at start.
    #[default]
    Kaiming,
    /// LoRA only (PEFT `init_lora_weights="gaussian"`): A ~ N(0, 1/r), B = 0.
    Gaussian,
    /// PEFT's `init_weights=False`: A and B both Kaiming-uniform, so ΔW ≠ 0. For tests and fixtures.
    Random,
}

/// Plain LoRA: `ΔW = s · A B` with `A: [in, r]`, `B: [r, out]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the update.
    pub r: usize,
    /// Scale numerator (PEFT `lora_alpha`).
    pub alpha: f64,
    /// Dropout probability on the adapter's input (never on the base path).
    pub dropout: f64,
    /// rsLoRA: scale by `alpha / sqrt(r)` instead of `alpha / r`.
    pub use_rslora: bool,
    /// How A and B start.
    pub init: Init,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 8,
            alpha: 8.0,
            dropout: 0.0,
            use_rslora: false,
            init: Init::Kaiming,
        }
    }
}

/// GraLoRA: the update split into a `k × k` grid of independent rank-`r/k` adapters,
/// optionally beside an ordinary LoRA pair of rank `hybrid_r` (Hybrid GraLoRA).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GraLoraConfig {
    /// Total rank of the block adapters (each sub-adapter has rank `r / k`).
    pub r: usize,
    /// Scale numerator: `s = alpha / (r + hybrid_r)`.
    pub alpha: f64,
    /// Dropout probability on the adapter's input (never on the base path).
    pub dropout: f64,
    /// Number of blocks along each of the input and output dimensions.
    pub k: usize,
    /// Rank of the plain LoRA pair beside the blocks (0 = none).
    pub hybrid_r: usize,
    /// How A and B start.
    pub init: Init,
}

impl Default for GraLoraConfig {
    fn default() -> Self {
        Self {
            r: 32,
            alpha: 64.0,
            dropout: 0.0,
            k: 2,
            hybrid_r: 0,
            init: Init::Kaiming,
        }
    }
}

/// The adapter to attach to a linear layer. Serialised with a `method` tag:
/// `{"method": "gralora", "r": 32, "alpha": 64.0, "k": 2, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "lowercase")]
pub enum AdapterConfig {
    /// Plain LoRA.
    Lora(LoraConfig),
    /// GraLoRA (and Hybrid GraLoRA when `hybrid_r > 0`).
    Gralora(GraLoraConfig),
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self::Gralora(GraLoraConfig::default())
    }
}

impl From<LoraConfig> for AdapterConfig {
    fn from(c: LoraConfig) -> Self {
        Self::Lora(c)
    }
}

impl From<GraLoraConfig> for AdapterConfig {
    fn from(c: GraLoraConfig) -> Self {
        Self::Gralora(c)
    }
}

/// The rank the paper recommends for GraLoRA's `k`: keep `r / k² ≈ 8` — 2 up to r = 32, 4 from 64.
pub fn recommended_k(r: usize) -> usize {
    if r >= 64 { 4 } else { 2 }
}

impl LoraConfig {
    /// LoRA at rank `r` with PEFT's other defaults.
    pub fn new(r: usize) -> Self {
        Self {
            r,
            ..Self::default()
        }
    }
    /// Set `alpha`.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Set the dropout probability.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Use rsLoRA's scale `alpha / sqrt(r)`.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }
    /// Set the initialisation.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// `s = alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }
}

impl GraLoraConfig {
    /// GraLoRA at rank `r` with `k` blocks, PEFT's other defaults.
    pub fn new(r: usize, k: usize) -> Self {
        Self {
            r,
            k,
            ..Self::default()
        }
    }
    /// Set `alpha`.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Set the dropout probability.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }
    /// Set the rank of the hybrid LoRA pair.
    pub fn with_hybrid_r(mut self, hybrid_r: usize) -> Self {
        self.hybrid_r = hybrid_r;
        self
    }
    /// Set the initialisation.
    pub fn with_init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }
    /// `s = alpha / (r + hybrid_r)` (PEFT's convention).
    pub fn scale(&self) -> f64 {
        self.alpha / (self.r + self.hybrid_r) as f64
    }
}

impl AdapterConfig {
    /// The rank `r` (without the hybrid part).
    pub fn rank(&self) -> usize {
        match self {
            Self::Lora(c) => c.r,
            Self::Gralora(c) => c.r,
        }
    }

    /// The same configuration at another rank (for per-layer rank maps).
    pub fn with_rank(&self, r: usize) -> Self {
        let mut c = self.clone();
        match &mut c {
            Self::Lora(l) => l.r = r,
            Self::Gralora(g) => g.r = r,
        }
        c
    }

    /// The same configuration with another `alpha` (for per-layer alpha maps).
    pub fn with_alpha(&self, alpha: f64) -> Self {
        let mut c = self.clone();
        match &mut c {
            Self::Lora(l) => l.alpha = alpha,
            Self::Gralora(g) => g.alpha = alpha,
        }
        c
    }

    /// Dropout probability on the adapter input.
    pub fn dropout(&self) -> f64 {
        match self {
            Self::Lora(c) => c.dropout,
            Self::Gralora(c) => c.dropout,
        }
    }

    /// The scale `s` the update is multiplied by.
    pub fn scale(&self) -> f64 {
        match self {
            Self::Lora(c) => c.scale(),
            Self::Gralora(c) => c.scale(),
        }
    }

    /// Trainable parameters this adapter adds to a `[in, out]` layer: `(in + out) · (r + hybrid_r)`.
    pub fn num_params(&self, d_in: usize, d_out: usize) -> usize {
        match self {
            Self::Lora(c) => (d_in + d_out) * c.r,
            Self::Gralora(c) => (d_in + d_out) * (c.r + c.hybrid_r),
        }
    }

    /// Check the configuration on its own (no layer shape).
    pub fn validate(&self) -> Result<(), AdapterError> {
        self.check("<config>", None)
    }

    /// Check the configuration against a layer of shape `[d_in, d_out]` named `layer`.
    pub fn validate_for(&self, layer: &str, d_in: usize, d_out: usize) -> Result<(), AdapterError> {
        self.check(layer, Some((d_in, d_out)))
    }

    fn check(&self, layer: &str, dims: Option<(usize, usize)>) -> Result<(), AdapterError> {
        let (r, alpha, dropout) = match self {
            Self::Lora(c) => (c.r, c.alpha, c.dropout),
            Self::Gralora(c) => (c.r, c.alpha, c.dropout),
        };
        if r == 0 {
            return Err(AdapterError::invalid(
                layer,
                "r = 0; the rank must be at least 1",
            ));
        }
        if !alpha.is_finite() {
            return Err(AdapterError::invalid(
                layer,
                format!("alpha = {alpha}; alpha must be a finite number"),
            ));
        }
        if !dropout.is_finite() || !(0.0..1.0).contains(&dropout) {
            return Err(AdapterError::invalid(
                layer,
                format!("dropout = {dropout}; dropout must lie in [0, 1)"),
            ));
        }
        match self {
            Self::Lora(_) => {}
            Self::Gralora(c) => {
                if c.k == 0 {
                    return Err(AdapterError::invalid(
                        layer,
                        "k = 0; GraLoRA needs k >= 1 blocks",
                    ));
                }
                if c.init == Init::Gaussian {
                    return Err(AdapterError::invalid(
                        layer,
                        "init `gaussian` is defined for LoRA only; use `kaiming` or `random` for GraLoRA",
                    ));
                }
                let divisible = |dim: &'static str, value: usize| {
                    if !value.is_multiple_of(c.k) {
                        Err(AdapterError::NotDivisible {
                            layer: layer.to_string(),
                            dim,
                            value,
                            k: c.k,
                        })
                    } else {
                        Ok(())
                    }
                };
                divisible("r", c.r)?;
                if let Some((d_in, d_out)) = dims {
                    divisible("in_features", d_in)?;
                    divisible("out_features", d_out)?;
                }
            }
        }
        if let Some((d_in, d_out)) = dims
            && (d_in == 0 || d_out == 0)
        {
            return Err(AdapterError::invalid(
                layer,
                format!("the layer has shape [{d_in}, {d_out}]; an adapter needs non-empty layers"),
            ));
        }
        Ok(())
    }

    /// Parse from JSON, with a typed error.
    pub fn from_json(text: &str) -> Result<Self, AdapterError> {
        let c: Self = serde_json::from_str(text).map_err(|e| AdapterError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// Serialise to pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("adapter configuration always serialises")
    }
}
