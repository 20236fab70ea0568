//! Typed errors of the adapter library. Every message names the layer and the numbers involved,
//! and says what to change.

/// Everything that can go wrong when configuring or attaching adapters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdapterError {
    /// A configuration value is out of its domain (`r = 0`, `k = 0`, negative dropout ...).
    #[error("layer `{layer}`: {what}")]
    InvalidConfig {
        /// Module path of the layer the configuration was applied to (`<config>` when none).
        layer: String,
        /// What is wrong and what to do.
        what: String,
    },
    /// A GraLoRA dimension is not divisible by `k`.
    #[error(
        "layer `{layer}`: GraLoRA needs {dim} divisible by k, but {dim} = {value} and k = {k}; choose a k that divides {value}"
    )]
    NotDivisible {
        /// Module path of the layer.
        layer: String,
        /// Which dimension: `in_features`, `out_features` or `r`.
        dim: &'static str,
        /// Its value.
        value: usize,
        /// The block count.
        k: usize,
    },
    /// A target selection that matched no linear layer of the model.
    #[error(
        "no linear layer matched the targets {targets}; the model's linear layers are: {available}"
    )]
    NoTargetMatched {
        /// The targets as given.
        targets: String,
        /// The linear layers the model has (comma separated, possibly shortened).
        available: String,
    },
    /// A target regular expression that does not compile.
    #[error("invalid target pattern `{pattern}`: {reason}")]
    InvalidPattern {
        /// The pattern as given.
        pattern: String,
        /// The regex crate's message.
        reason: String,
    },
    /// An operation called in a state where it cannot run (merge without an adapter, merge twice ...).
    #[error("{0}")]
    State(String),
    /// A PEFT adapter directory that cannot be read, does not fit the model, or cannot be written.
    #[error("{0}")]
    Peft(String),
    /// A tensor could not be read back from its device.
    #[error("reading a tensor back from the device failed: {0}")]
    DeviceRead(String),
    /// A configuration file could not be parsed.
    #[error("adapter configuration is not valid JSON for gralora: {0}")]
    Parse(String),
}

impl AdapterError {
    pub(crate) fn invalid(layer: &str, what: impl Into<String>) -> Self {
        Self::InvalidConfig {
            layer: layer.to_string(),
            what: what.into(),
        }
    }
}
