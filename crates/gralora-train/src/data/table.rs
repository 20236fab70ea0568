//! A user's data file, row by row: JSON Lines (`.jsonl`, `.ndjson`, `.json` holding one object
//! per line or one array of objects), CSV (`.csv`), TSV (`.tsv`) and Parquet (`.parquet`, the
//! format of Hugging Face Hub datasets), detected by extension; `.gz` on the text formats is
//! decompressed on the fly. Every row becomes a JSON object (CSV fields are strings; Parquet's
//! nested columns — lists of messages — stay nested), read one at a time: a file is never held
//! in memory whole. Errors name the file and the line (or row).

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use serde_json::{Map, Value};

use super::files::{data_err, open};
use crate::error::{Result, TrainError};

/// The formats a data file can be in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line (or a `.json` file holding one array of objects).
    JsonLines,
    /// Comma-separated, with a header row.
    Csv,
    /// Tab-separated, with a header row.
    Tsv,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC (stream or file): what Hugging Face `datasets` keeps in its cache and
    /// `save_to_disk` writes.
    Arrow,
}

/// The extensions [`Format::of`] knows, for error messages.
pub const EXTENSIONS: &str =
    ".jsonl, .ndjson, .json, .csv, .tsv, .parquet, .arrow (text formats also .gz)";

impl Format {
    /// The format of `path` from its extension, and whether it is gzipped.
    pub fn of(path: &Path) -> Result<(Self, bool)> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let (stem, gz) = match name.strip_suffix(".gz") {
            Some(s) => (s, true),
            None => (name.as_str(), false),
        };
        let ext = stem.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
        let format = match ext {
            "jsonl" | "ndjson" | "json" => Self::JsonLines,
            "csv" => Self::Csv,
            "tsv" => Self::Tsv,
            "parquet" => Self::Parquet,
            "arrow" => Self::Arrow,
            _ => {
                return Err(data_err(
                    path,
                    format!("unknown data format `.{ext}`; use one of {EXTENSIONS}"),
                ));
            }
        };
        if gz && matches!(format, Self::Parquet | Self::Arrow) {
            return Err(data_err(
                path,
                "a gzipped Parquet or Arrow file cannot be read; pass the file itself (Parquet compresses its own columns)",
            ));
        }
        Ok((format, gz))
    }
}

/// Where a row is in its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A line of a text file (1-based; CSV: the line the record starts on).
    Line(u64),
    /// A row of a Parquet file (0-based, over the whole file) and its row group.
    Row {
        /// The row group.
        group: usize,
        /// The row.
        row: usize,
    },
    /// An element of a JSON array file or a row of an Arrow file (0-based).
    Element(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line(n) => write!(f, "line {n}"),
            Self::Row { group, row } => write!(f, "row {row} (row group {group})"),
            Self::Element(i) => write!(f, "element {i}"),
        }
    }
}

/// One row of a data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Its fields.
    pub fields: Map<String, Value>,
    /// Where it is.
    pub at: Location,
}

/// An error about `at` in `path`.
pub fn row_err(path: &Path, at: Location, msg: impl fmt::Display) -> TrainError {
    data_err(path, format!("{at}: {msg}"))
}

/// The rows of a data file, read one at a time.
pub fn rows(path: &Path) -> Result<Box<dyn Iterator<Item = Result<Row>>>> {
    let (format, gz) = Format::of(path)?;
    match format {
        Format::Parquet => return parquet_rows(path),
        Format::Arrow => return arrow_rows(path),
        _ => {}
    }
    let file = open(path)?;
    let reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let reader = BufReader::with_capacity(1 << 16, reader);
    Ok(match format {
        Format::JsonLines => json_rows(path, reader)?,
        Format::Csv => Box::new(csv_rows(path.to_path_buf(), reader, b',')),
        Format::Tsv => Box::new(csv_rows(path.to_path_buf(), reader, b'\t')),
        Format::Parquet | Format::Arrow => unreachable!("handled above"),
    })
}

fn json_object(path: &Path, at: Location, value: Value) -> Result<Row> {
    match value {
        Value::Object(fields) => Ok(Row { fields, at }),
        other => Err(row_err(
            path,
            at,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
    }
}

/// The JSON type of a value, for errors.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json_rows(
    path: &Path,
    mut reader: BufReader<Box<dyn Read>>,
) -> Result<Box<dyn Iterator<Item = Result<Row>>>> {
    let path = path.to_path_buf();
    // A `.json` file may be one array of objects (`datasets`' `to_json(lines=False)`).
    let first = loop {
        let buf = reader.fill_buf().map_err(|e| TrainError::io(&path, e))?;
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => break Some(buf[i]),
            None if buf.is_empty() => break None,
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    };
    if first == Some(b'[') {
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .map_err(|e| data_err(&path, format!("not valid UTF-8 text ({e})")))?;
        let items: Vec<Value> = serde_json::from_str(&text).map_err(|e| {
            row_err(
                &path,
                Location::Line(e.line() as u64),
                format!("not valid JSON: {e}"),
            )
        })?;
        return Ok(Box::new(
            items
                .into_iter()
                .enumerate()
                .map(move |(i, v)| json_object(&path, Location::Element(i), v)),
        ));
    }
    let mut line_no = 0u64;
    let mut buf = Vec::new();
    Ok(Box::new(std::iter::from_fn(move || {
        loop {
            buf.clear();
            line_no += 1;
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(TrainError::io(&path, e))),
            }
            let at = Location::Line(line_no);
            let text = match std::str::from_utf8(&buf) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Err(row_err(
                        &path,
                        at,
                        format!("not valid UTF-8 (at byte {} of the line)", e.valid_up_to()),
                    )));
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            return Some(
                serde_json::from_str::<Value>(text)
                    .map_err(|e| row_err(&path, at, format!("not valid JSON: {e}")))
                    .and_then(|v| json_object(&path, at, v)),
            );
        }
    })))
}

fn csv_rows(
    path: PathBuf,
    reader: BufReader<Box<dyn Read>>,
    delimiter: u8,
) -> impl Iterator<Item = Result<Row>> {
    let mut csv = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(true)
        .from_reader(reader);
    let headers = csv.byte_headers().cloned().map_err(|e| csv_err(&path, e));
    let headers: Result<Vec<String>> = headers.and_then(|h| {
        h.iter()
            .map(|f| {
                String::from_utf8(f.to_vec())
                    .map_err(|_| row_err(&path, Location::Line(1), "the header is not valid UTF-8"))
            })
            .collect()
    });
    let mut failed = false;
    let mut header_err = match headers {
        Ok(h) => Ok(h),
        Err(e) => Err(Some(e)),
    };
    let mut record = csv::ByteRecord::new();
    std::iter::from_fn(move || {
        if failed {
            return None;
        }
        let headers = match &mut header_err {
            Ok(h) => h,
            Err(e) => {
                failed = true;
                return e.take().map(Err);
            }
        };
        let result = match csv.read_byte_record(&mut record) {
            Ok(false) => return None,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                let at = Location::Line(line);
                let mut fields = Map::new();
                let mut bad = None;
                for (name, value) in headers.iter().zip(record.iter()) {
                    match std::str::from_utf8(value) {
                        Ok(v) => {
                            fields.insert(name.clone(), Value::String(v.to_string()));
                        }
                        Err(_) => {
                            bad = Some(row_err(
                                &path,
                                at,
                                format!("field `{name}` is not valid UTF-8"),
                            ));
                            break;
                        }
                    }
                }
                match bad {
                    Some(e) => Err(e),
                    None => Ok(Row { fields, at }),
                }
            }
            Err(e) => Err(csv_err(&path, e)),
        };
        failed = result.is_err();
        Some(result)
    })
}

fn csv_err(path: &Path, e: csv::Error) -> TrainError {
    let line = e.position().map(|p| p.line());
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("has {len} fields, the header has {expected_len}"),
        csv::ErrorKind::Utf8 { err, .. } => format!("field {} is not valid UTF-8", err.field() + 1),
        csv::ErrorKind::Io(io) => io.to_string(),
        _ => e.to_string(),
    };
    match line {
        Some(l) => row_err(path, Location::Line(l), msg),
        None => data_err(path, msg),
    }
}

fn parquet_rows(path: &Path) -> Result<Box<dyn Iterator<Item = Result<Row>>>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = open(path)?;
    let len = file.metadata().map_err(|e| data_err(path, e))?.len();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| data_err(path, format!("not a readable Parquet file: {e}")))?;
    check_column_chunks(builder.metadata(), len)
        .map_err(|e| data_err(path, format!("damaged Parquet file: {e}")))?;
    let groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .map(|g| g.num_rows() as usize)
        .collect();
    let reader = builder
        .with_batch_size(1024)
        .build()
        .map_err(|e| data_err(path, format!("not a readable Parquet file: {e}")))?;
    Ok(batch_rows(path, super::ipc::Guarded(Some(reader)), groups))
}

/// Every column chunk the footer declares lies inside the file: the parquet crate asserts
/// (panics) on a negative offset or size and would size reads from the declared ones.
fn check_column_chunks(
    meta: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
) -> std::result::Result<(), String> {
    for (g, group) in meta.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(format!("row group {g} declares {} rows", group.num_rows()));
        }
        for col in group.columns() {
            let start = col
                .dictionary_page_offset()
                .unwrap_or(col.data_page_offset());
            let size = col.compressed_size();
            let inside = u64::try_from(start)
                .ok()
                .zip(u64::try_from(size).ok())
                .and_then(|(s, n)| s.checked_add(n))
                .is_some_and(|end| end <= file_len);
            if !inside {
                return Err(format!(
                    "column `{}` of row group {g} declares bytes {start}..{start}+{size}, \
                     outside the file's {file_len} bytes",
                    col.column_path()
                ));
            }
        }
    }
    Ok(())
}

/// The rows of an Arrow IPC file (a stream, as `datasets` writes, or the file format).
fn arrow_rows(path: &Path) -> Result<Box<dyn Iterator<Item = Result<Row>>>> {
    let batches = super::ipc::batches(path)?;
    Ok(batch_rows(path, batches, Vec::new()))
}

/// Rows of record batches, converted by arrow-json (nested lists and structs stay nested; null
/// fields are left out). `groups`: rows per Parquet row group, for locations.
fn batch_rows(
    path: &Path,
    batches: impl Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + 'static,
    groups: Vec<usize>,
) -> Box<dyn Iterator<Item = Result<Row>>> {
    let path = path.to_path_buf();
    let parquet = !groups.is_empty();
    let mut next_row = 0usize;
    let group_of = move |row: usize| {
        let mut end = 0;
        for (g, n) in groups.iter().enumerate() {
            end += n;
            if row < end {
                return g;
            }
        }
        groups.len().saturating_sub(1)
    };
    let at = move |row: usize| {
        if parquet {
            Location::Row {
                group: group_of(row),
                row,
            }
        } else {
            Location::Element(row)
        }
    };
    let batches = batches.map(move |batch| {
        let first = next_row;
        let batch =
            batch.map_err(|e| row_err(&path, at(first), format!("cannot be decoded: {e}")))?;
        next_row += batch.num_rows();
        let mut out = Vec::with_capacity(batch.num_rows());
        let mut writer = arrow_json::LineDelimitedWriter::new(&mut out);
        writer
            .write(&batch)
            .and_then(|_| writer.finish())
            .map_err(|e| row_err(&path, at(first), format!("cannot be converted: {e}")))?;
        drop(writer);
        let rows: Vec<Result<Row>> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
            .map(|(i, line)| {
                let value: Value = serde_json::from_slice(line).map_err(|e| {
                    row_err(&path, at(first + i), format!("cannot be converted: {e}"))
                })?;
                json_object(&path, at(first + i), value)
            })
            .collect();
        Ok(rows)
    });
    Box::new(batches.flat_map(|b: Result<Vec<Result<Row>>>| match b {
        Ok(rows) => rows,
        Err(e) => vec![Err(e)],
    }))
}
