//! One file per command.

pub mod bench;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod fetch;
pub mod infer;
pub mod merge;
pub mod train;
