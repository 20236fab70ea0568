//! Typed errors. Every variant names the file (and tensor, where there is one) it is about.

use std::path::PathBuf;

/// What went wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A weights file is malformed or truncated.
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the model needs is not in the file.
    #[error(
        "{path}: tensor `{tensor}` is missing (the file holds {count} tensors; is this the right model?)"
    )]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// How many tensors the file holds.
        count: usize,
    },
    /// A tensor has a different shape than the configuration implies.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, the config implies {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a type this loader cannot decode.
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype} (supported: {supported})")]
    UnsupportedType {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The type found.
        dtype: String,
        /// The types that are supported.
        supported: &'static str,
    },
    /// A configuration is missing a field or holds a bad value.
    #[error("{path}: {msg}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tokenizer could not be loaded or run.
    #[error("{path}: tokenizer: {msg}")]
    Tokenizer {
        /// The file the tokenizer came from.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A model argument names neither an alias nor a usable path.
    #[error("{0}")]
    Source(String),
    /// Fetching an asset failed.
    #[error("asset `{asset}`: {msg}")]
    Fetch {
        /// The asset's name.
        asset: String,
        /// What is wrong and what to do.
        msg: String,
    },
    /// Bad input to a model (empty text, too long a sequence, ...).
    #[error("{0}")]
    Input(String),
    /// An adapter could not be attached.
    #[error(transparent)]
    Adapter(#[from] gralora::AdapterError),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub(crate) fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Result alias.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
