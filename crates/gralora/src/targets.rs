//! Choosing which linear layers get adapters, by module path (PEFT's `target_modules` rules).

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::config::AdapterConfig;
use crate::error::AdapterError;

/// Which linear layers to adapt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "TargetsRepr", into = "TargetsRepr")]
pub enum Targets {
    /// Layers whose path equals a name or ends with `.name` (`query` matches
    /// `encoder.layer.0.attention.self.query`).
    Names(Vec<String>),
    /// Layers whose whole path matches the regular expression.
    Pattern(String),
    /// Every linear layer (PEFT's `"all-linear"`).
    AllLinear,
}

/// PEFT writes `target_modules` as a list of names or as one string (a regex, or `all-linear`).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TargetsRepr {
    List(Vec<String>),
    One(String),
}

impl From<TargetsRepr> for Targets {
    fn from(r: TargetsRepr) -> Self {
        match r {
            TargetsRepr::List(v) => Self::Names(v),
            TargetsRepr::One(s) if s == "all-linear" => Self::AllLinear,
            TargetsRepr::One(s) => Self::Pattern(s),
        }
    }
}

impl From<Targets> for TargetsRepr {
    fn from(t: Targets) -> Self {
        match t {
            Targets::Names(v) => Self::List(v),
            Targets::Pattern(s) => Self::One(s),
            Targets::AllLinear => Self::One("all-linear".into()),
        }
    }
}

impl Targets {
    /// Targets by exact name or path suffix.
    pub fn names<S: Into<String>>(names: impl IntoIterator<Item = S>) -> Self {
        Self::Names(names.into_iter().map(Into::into).collect())
    }

    /// Targets by a regular expression over the whole module path.
    pub fn pattern(pattern: impl Into<String>) -> Self {
        Self::Pattern(pattern.into())
    }

    pub(crate) fn matcher(&self) -> Result<TargetMatcher, AdapterError> {
        Ok(match self {
            Self::Names(v) => TargetMatcher::Names(v.clone()),
            Self::Pattern(p) => TargetMatcher::Pattern(full_match(p)?),
            Self::AllLinear => TargetMatcher::All,
        })
    }
}

impl std::fmt::Display for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Names(v) => write!(f, "[{}]", v.join(", ")),
            Self::Pattern(p) => write!(f, "/{p}/"),
            Self::AllLinear => write!(f, "all-linear"),
        }
    }
}

fn full_match(pattern: &str) -> Result<Regex, AdapterError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| AdapterError::InvalidPattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

pub(crate) enum TargetMatcher {
    Names(Vec<String>),
    Pattern(Regex),
    All,
}

impl TargetMatcher {
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            Self::Names(names) => names.iter().any(|n| {
                path == n
                    || (path.ends_with(n.as_str()) && path[..path.len() - n.len()].ends_with('.'))
            }),
            Self::Pattern(re) => re.is_match(path),
            Self::All => true,
        }
    }
}

/// What to attach where: one configuration, the targets, and PEFT-style per-layer overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdaptOptions {
    /// The adapter every target gets (unless a pattern below overrides its rank or alpha).
    pub config: AdapterConfig,
    /// Which linear layers to adapt.
    pub targets: Targets,
    /// Per-layer ranks (PEFT `rank_pattern`): a key matches a path that ends with it as a regex
    /// (`(.*\.)?key$`). The first matching key in sorted order wins.
    #[serde(default)]
    pub rank_pattern: BTreeMap<String, usize>,
    /// Per-layer alphas (PEFT `alpha_pattern`), same matching rule.
    #[serde(default)]
    pub alpha_pattern: BTreeMap<String, f64>,
    /// Only these transformer layers (PEFT `layers_to_transform`): the index is the number after
    /// `layers.`, `layer.`, `h.`, `block.` or `blocks.` in the path. `None` takes every layer.
    #[serde(default)]
    pub layers_to_transform: Option<Vec<usize>>,
}

/// The transformer-layer index in a module path, by PEFT's rule
/// (`encoder.layer.3.attention.self.query` -> 3, `model.layers.11.mlp.up_proj` -> 11).
pub fn layer_index(path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "layer" | "h" | "block" | "blocks")
            .then(|| w[1].parse().ok())
            .flatten()
    })
}

impl AdaptOptions {
    /// One configuration on the given targets, no overrides.
    pub fn new(config: impl Into<AdapterConfig>, targets: Targets) -> Self {
        Self {
            config: config.into(),
            targets,
            rank_pattern: BTreeMap::new(),
            alpha_pattern: BTreeMap::new(),
            layers_to_transform: None,
        }
    }

    /// Adapt only the transformer layers with these indices (PEFT `layers_to_transform`).
    pub fn with_layers(mut self, layers: impl IntoIterator<Item = usize>) -> Self {
        self.layers_to_transform = Some(layers.into_iter().collect());
        self
    }

    /// Override the rank of the layers matching `key`.
    pub fn with_rank_for(mut self, key: impl Into<String>, r: usize) -> Self {
        self.rank_pattern.insert(key.into(), r);
        self
    }

    /// Override alpha of the layers matching `key`.
    pub fn with_alpha_for(mut self, key: impl Into<String>, alpha: f64) -> Self {
        self.alpha_pattern.insert(key.into(), alpha);
        self
    }

    /// Decide, for each linear layer `(path, in, out)`, the configuration it gets. Every chosen
    /// layer is validated before anything is returned, so callers apply all or nothing.
    pub fn plan(
        &self,
        linears: &[LinearInfo],
    ) -> Result<Vec<(LinearInfo, AdapterConfig)>, AdapterError> {
        let matcher = self.targets.matcher()?;
        let rank_keys = compile_pattern_keys(self.rank_pattern.keys())?;
        let alpha_keys = compile_pattern_keys(self.alpha_pattern.keys())?;
        let mut plan = Vec::new();
        let in_layers = |path: &str| match &self.layers_to_transform {
            None => true,
            Some(layers) => layer_index(path).is_some_and(|i| layers.contains(&i)),
        };
        for info in linears
            .iter()
            .filter(|l| matcher.matches(&l.path) && in_layers(&l.path))
        {
            let mut config = self.config.clone();
            if let Some(key) = first_match(&rank_keys, &info.path) {
                config = config.with_rank(self.rank_pattern[key]);
            }
            if let Some(key) = first_match(&alpha_keys, &info.path) {
                config = config.with_alpha(self.alpha_pattern[key]);
            }
            config.validate_for(&info.path, info.d_in, info.d_out)?;
            plan.push((info.clone(), config));
        }
        if plan.is_empty() {
            let mut available: Vec<&str> =
                linears.iter().map(|l| l.path.as_str()).take(12).collect();
            if linears.len() > 12 {
                available.push("...");
            }
            return Err(AdapterError::NoTargetMatched {
                targets: self.targets.to_string(),
                available: if available.is_empty() {
                    "(none)".into()
                } else {
                    available.join(", ")
                },
            });
        }
        Ok(plan)
    }
}

fn compile_pattern_keys<'a>(
    keys: impl Iterator<Item = &'a String>,
) -> Result<Vec<(&'a String, Regex)>, AdapterError> {
    keys.map(|k| {
        Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
            .map(|re| (k, re))
            .map_err(|e| AdapterError::InvalidPattern {
                pattern: k.clone(),
                reason: e.to_string(),
            })
    })
    .collect()
}

fn first_match<'a>(keys: &[(&'a String, Regex)], path: &str) -> Option<&'a String> {
    keys.iter()
        .find(|(_, re)| re.is_match(path))
        .map(|(k, _)| *k)
}

/// A linear layer of a model: its module path and `[in, out]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearInfo {
    /// Module path, e.g. `encoder.layer.0.attention.self.query`.
    pub path: String,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}
