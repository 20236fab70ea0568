//! Writing experiment tables: CSV and Markdown files, atomically.

use std::path::Path;

use serde::Serialize;

use crate::error::{Result, TrainError};

/// Rows as a CSV file (a header from the fields).
pub fn write_csv<T: Serialize>(path: &Path, rows: &[T]) -> Result<()> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| TrainError::Data {
            path: path.to_path_buf(),
            msg: format!("writing CSV: {e}"),
        })?;
    }
    let bytes = w.into_inner().map_err(|e| TrainError::Data {
        path: path.to_path_buf(),
        msg: format!("writing CSV: {e}"),
    })?;
    gralora::io::write_atomic(path, &bytes).map_err(|e| TrainError::io(path, e))
}

/// A text file.
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    gralora::io::write_atomic(path, text.as_bytes()).map_err(|e| TrainError::io(path, e))
}

/// A value with `digits` decimals, or `–`.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}
