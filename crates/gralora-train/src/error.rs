//! Typed errors of the trainer; only the binary prints them.

use std::path::PathBuf;

/// What went wrong preparing or running a training or an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad argument or combination of arguments.
    #[error("{0}")]
    Usage(String),
    /// A setting out of its domain, named as in `train_config.json` (the command line maps it
    /// to its flag).
    #[error("{setting} {msg}")]
    Setting {
        /// The setting (`epochs`, `lr`, ...).
        setting: &'static str,
        /// What is wrong with its value.
        msg: String,
    },
    /// A data file is missing or malformed.
    #[error("{path}: {msg}")]
    Data {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The temporary file a dataset is spilled to (in `$TMPDIR`) could not be written or read.
    #[error(transparent)]
    Spill(#[from] crate::data::SpillError),
    /// The model could not be loaded or saved.
    #[error(transparent)]
    Model(#[from] gralora_models::ModelError),
    /// An adapter could not be attached, loaded or saved.
    #[error(transparent)]
    Adapter(#[from] gralora::AdapterError),
    /// Training diverged.
    #[error(
        "the loss became {value} at step {step}; lower --lr (now {lr}) or check the data, nothing was written to the output"
    )]
    NonFinite {
        /// Optimiser step (1-based) where it happened.
        step: usize,
        /// The loss value.
        value: f32,
        /// The base learning rate.
        lr: f64,
    },
    /// Training stopped with an error inside burn-train.
    #[error("training failed: {0}")]
    Training(String),
}

impl TrainError {
    /// Setting `setting` is wrong: `msg`.
    pub fn setting(setting: &'static str, msg: impl Into<String>) -> Self {
        Self::Setting {
            setting,
            msg: msg.into(),
        }
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with [`TrainError`].
pub type Result<T> = std::result::Result<T, TrainError>;
