//! GLUE dev sets as Hugging Face datasets Arrow IPC stream files (SST-2, MRPC, RTE).

use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Int8Type, Int16Type, Int32Type, Int64Type};
use arrow_array::{Array, RecordBatch};

use super::files::{Example, data_err, non_empty};
use crate::error::Result;

/// A Hugging Face datasets Arrow IPC stream file.
pub fn read_arrow(path: &Path) -> Result<Vec<RecordBatch>> {
    super::ipc::batches(path)?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| data_err(path, format!("corrupt Arrow data: {e}")))
}

fn strings(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<String>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| data_err(path, format!("no column `{name}`")))?;
    if let Some(a) = col.as_string_opt::<i32>() {
        Ok(a.iter().map(|s| s.unwrap_or("").to_string()).collect())
    } else if let Some(a) = col.as_string_opt::<i64>() {
        Ok(a.iter().map(|s| s.unwrap_or("").to_string()).collect())
    } else {
        Err(data_err(
            path,
            format!("column `{name}` is {}, not text", col.data_type()),
        ))
    }
}

fn ints(path: &Path, batch: &RecordBatch, name: &str) -> Result<Vec<i64>> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| data_err(path, format!("no column `{name}`")))?;
    let values: Option<Vec<i64>> = if let Some(a) = col.as_primitive_opt::<Int64Type>() {
        Some(a.iter().map(|v| v.unwrap_or(-1)).collect())
    } else if let Some(a) = col.as_primitive_opt::<Int32Type>() {
        Some(a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    } else if let Some(a) = col.as_primitive_opt::<Int16Type>() {
        Some(a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    } else {
        col.as_primitive_opt::<Int8Type>()
            .map(|a| a.iter().map(|v| v.map_or(-1, i64::from)).collect())
    };
    values.ok_or_else(|| {
        data_err(
            path,
            format!("column `{name}` is {}, not integers", col.data_type()),
        )
    })
}

/// GLUE SST-2 (columns `sentence`, `label`); rows with label -1 (hidden) are skipped.
pub fn read_sst2_arrow(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in read_arrow(path)? {
        let texts = strings(path, &batch, "sentence")?;
        let labels = ints(path, &batch, "label")?;
        for (text, label) in texts.into_iter().zip(labels) {
            if label == 0 || label == 1 {
                out.push(Example {
                    a: text.trim().to_string(),
                    b: None,
                    label: label as usize,
                });
            }
        }
    }
    non_empty(path, out)
}

/// GLUE sentence pairs (MRPC, RTE: columns `sentence1`, `sentence2`, `label`).
pub fn read_glue_pairs(path: &Path) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for batch in read_arrow(path)? {
        let a = strings(path, &batch, "sentence1")?;
        let b = strings(path, &batch, "sentence2")?;
        let labels = ints(path, &batch, "label")?;
        for ((a, b), label) in a.into_iter().zip(b).zip(labels) {
            if label == 0 || label == 1 {
                out.push(Example {
                    a,
                    b: Some(b),
                    label: label as usize,
                });
            }
        }
    }
    non_empty(path, out)
}
