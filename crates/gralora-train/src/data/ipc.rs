//! Arrow IPC files (the stream format `datasets` writes, and the file format) read so that a
//! damaged file is an error, not a crash. arrow-ipc 60 still panics on some malformed inputs
//! (out-of-range buffer offsets: apache/arrow-rs#7124) and sizes a file-format block's buffer
//! from the footer before reading it (apache/arrow-rs#10921), so: every footer block must lie
//! inside the file before a `FileReader` sees it, and a panic inside the decoder becomes an
//! error naming the file.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use arrow_array::RecordBatch;
use arrow_ipc::reader::{FileReader, StreamReader};
use arrow_schema::ArrowError;

use super::files::{data_err, open};
use crate::error::Result;

/// Record batches of an Arrow IPC stream or file, decoded lazily.
pub(crate) type Batches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>>>;

/// The record batches of the Arrow IPC stream or file at `path`.
pub(crate) fn batches(path: &Path) -> Result<Batches> {
    let mut file = open(path)?;
    if has_file_magic(&mut file) {
        check_footer(&mut file)
            .map_err(|e| data_err(path, format!("damaged Arrow IPC file: {e}")))?;
        let reader =
            guarded(|| FileReader::try_new(BufReader::new(file), None).map_err(Into::into))
                .map_err(|e| data_err(path, format!("damaged Arrow IPC file: {e}")))?;
        return Ok(Box::new(Guarded(Some(reader))));
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|e| data_err(path, e))?;
    check_stream(&mut file)
        .map_err(|e| data_err(path, format!("not an Arrow IPC stream or file: {e}")))?;
    let reader = guarded(|| StreamReader::try_new(BufReader::new(file), None).map_err(Into::into))
        .map_err(|e| data_err(path, format!("not an Arrow IPC stream or file: {e}")))?;
    Ok(Box::new(Guarded(Some(reader))))
}

/// Run `f`, turning a panic into an error.
fn guarded<T>(f: impl FnOnce() -> std::result::Result<T, Error>) -> std::result::Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| Err(Error::Arrow(panicked(p))))
}

fn panicked(p: Box<dyn std::any::Any + Send>) -> ArrowError {
    let msg = p
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| p.downcast_ref::<&str>().copied())
        .unwrap_or("unknown");
    ArrowError::IpcError(format!("malformed data (the decoder failed: {msg})"))
}

#[derive(Debug)]
enum Error {
    Arrow(ArrowError),
    Train(crate::error::TrainError),
}

impl From<ArrowError> for Error {
    fn from(e: ArrowError) -> Self {
        Self::Arrow(e)
    }
}

impl From<crate::error::TrainError> for Error {
    fn from(e: crate::error::TrainError) -> Self {
        Self::Train(e)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Arrow(e) => e.fmt(f),
            Self::Train(e) => e.fmt(f),
        }
    }
}

/// A batch iterator whose panics are errors; it ends after the first error (a reader that
/// panicked is not asked again).
pub(super) struct Guarded<I>(pub(super) Option<I>);

impl<I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>> Iterator for Guarded<I> {
    type Item = std::result::Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let reader = self.0.as_mut()?;
        let next = catch_unwind(AssertUnwindSafe(|| reader.next()))
            .unwrap_or_else(|p| Some(Err(panicked(p))));
        if !matches!(next, Some(Ok(_))) {
            self.0 = None;
        }
        next
    }
}

/// Every message of a stream declares metadata and a body that fit in the rest of the file, so
/// that the reader never sizes a buffer from a damaged length (it reads only metadata here and
/// skips the bodies).
fn check_stream(file: &mut File) -> std::result::Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut reader = BufReader::new(file);
    let mut pos = 0u64;
    let word = |reader: &mut BufReader<&mut File>, pos: &mut u64| -> Option<i32> {
        let mut w = [0u8; 4];
        if *pos + 4 > len || reader.read_exact(&mut w).is_err() {
            return None;
        }
        *pos += 4;
        Some(i32::from_le_bytes(w))
    };
    let mut first = true;
    loop {
        let at = pos;
        let Some(mut meta_len) = word(&mut reader, &mut pos) else {
            break; // the end of the stream (the end-of-stream marker is optional)
        };
        if meta_len == -1 {
            // The continuation marker, then the length.
            let Some(l) = word(&mut reader, &mut pos) else {
                break;
            };
            meta_len = l;
        }
        if meta_len == 0 {
            break;
        }
        if meta_len < 0 || pos + meta_len as u64 > len {
            return Err(format!(
                "the message at byte {at} claims {meta_len} bytes of metadata, past the end of the {len}-byte file"
            ));
        }
        let mut meta = vec![0u8; meta_len as usize];
        reader.read_exact(&mut meta).map_err(|e| e.to_string())?;
        pos += meta_len as u64;
        let message = arrow_ipc::root_as_message(&meta)
            .map_err(|e| format!("the message at byte {at} is not readable: {e}"))?;
        if first && message.header_type() != arrow_ipc::MessageHeader::Schema {
            return Err("it does not start with a schema".into());
        }
        first = false;
        let body = message.bodyLength();
        if body < 0 || pos + body as u64 > len {
            return Err(format!(
                "the message at byte {at} claims a {body}-byte body, past the end of the {len}-byte file"
            ));
        }
        check_buffers(&message, body).map_err(|e| format!("the message at byte {at}: {e}"))?;
        reader.seek_relative(body).map_err(|e| e.to_string())?;
        pos += body as u64;
    }
    if first {
        return Err("it holds no message".into());
    }
    file_rewind(reader.into_inner())
}

/// Every buffer a record (or dictionary) batch message lists lies inside its body, so the
/// decoder never slices past it (arrow-ipc would panic).
fn check_buffers(message: &arrow_ipc::Message, body: i64) -> std::result::Result<(), String> {
    let batch = match message.header_type() {
        arrow_ipc::MessageHeader::RecordBatch => message.header_as_record_batch(),
        arrow_ipc::MessageHeader::DictionaryBatch => {
            message.header_as_dictionary_batch().and_then(|d| d.data())
        }
        _ => None,
    };
    let Some(batch) = batch else {
        return Ok(());
    };
    for b in batch.buffers().into_iter().flatten() {
        let end = i128::from(b.offset()) + i128::from(b.length());
        if b.offset() < 0 || b.length() < 0 || end > i128::from(body) {
            return Err(format!(
                "a buffer at {} ({} bytes) lies outside its {body}-byte body",
                b.offset(),
                b.length()
            ));
        }
    }
    Ok(())
}

fn file_rewind(file: &mut File) -> std::result::Result<(), String> {
    file.seek(SeekFrom::Start(0))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn has_file_magic(file: &mut File) -> bool {
    let mut magic = [0u8; 6];
    file.read_exact(&mut magic).is_ok() && &magic == b"ARROW1"
}

/// Every block the footer lists lies inside the file (non-negative offset and lengths).
fn check_footer(file: &mut File) -> std::result::Result<(), String> {
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len < 16 {
        return Err("shorter than an Arrow file's magic and footer".into());
    }
    let mut tail = [0u8; 10];
    file.seek(SeekFrom::End(-10))
        .and_then(|_| file.read_exact(&mut tail))
        .map_err(|e| e.to_string())?;
    let footer_len = arrow_ipc::reader::read_footer_length(tail).map_err(|e| e.to_string())?;
    if footer_len as u64 + 16 > len {
        return Err(format!(
            "the footer claims {footer_len} bytes of a {len}-byte file"
        ));
    }
    let mut footer = vec![0u8; footer_len];
    file.seek(SeekFrom::End(-10 - footer_len as i64))
        .and_then(|_| file.read_exact(&mut footer))
        .map_err(|e| e.to_string())?;
    let footer = arrow_ipc::root_as_footer(&footer).map_err(|e| e.to_string())?;
    let blocks = footer.recordBatches().into_iter().flatten();
    for block in blocks.chain(footer.dictionaries().into_iter().flatten()) {
        let end = i128::from(block.offset())
            + i128::from(block.metaDataLength())
            + i128::from(block.bodyLength());
        if block.offset() < 0
            || block.metaDataLength() < 0
            || block.bodyLength() < 0
            || end > i128::from(len)
        {
            return Err(format!(
                "a block at offset {} ({} + {} bytes) lies outside the {len}-byte file",
                block.offset(),
                block.metaDataLength(),
                block.bodyLength()
            ));
        }
        // The block's message: [continuation marker] length, flatbuffer; then its body.
        let mut meta = vec![0u8; block.metaDataLength() as usize];
        file.seek(SeekFrom::Start(block.offset() as u64))
            .and_then(|_| file.read_exact(&mut meta))
            .map_err(|e| e.to_string())?;
        let skip = if meta.starts_with(&[0xff; 4]) { 8 } else { 4 };
        let message = arrow_ipc::root_as_message(meta.get(skip..).unwrap_or_default())
            .map_err(|e| format!("the block at offset {}: {e}", block.offset()))?;
        check_buffers(&message, block.bodyLength())
            .map_err(|e| format!("the block at offset {}: {e}", block.offset()))?;
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}
