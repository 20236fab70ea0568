//! [`Items`]: a list of examples (raw rows or tokenised items) held in memory or *spilled* to an
//! unnamed temporary file, so that a data file far larger than memory can be read, split,
//! subset, tokenised and trained on with memory bounded by a small index: 8 bytes an item (its
//! offset in the spill file), 12 once tokenised (its token count too), whatever the size of the
//! item itself.
//!
//! A spilled list writes each item once as a length-prefixed MessagePack record (`rmp-serde`)
//! to a file created by [`tempfile::tempfile`] (in `$TMPDIR`, else `/tmp`; unnamed, so nothing is
//! left behind even when the process is killed) and reads the items it is asked for with
//! positioned reads. Selections ([`Items::select`]) share the file and keep their own index, so
//! a held-out split, a subset or a worker's slice costs only its index.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A spill file could not be created, written or read back.
#[derive(Debug, thiserror::Error)]
#[error("the data spill file: {0}")]
pub struct SpillError(#[from] io::Error);

/// Result with [`SpillError`].
pub type SpillResult<T> = Result<T, SpillError>;

/// An item of a spilled list: anything serde can write and read back.
pub trait Spillable: Clone + Send + Sync + Serialize + DeserializeOwned + 'static {}
impl<T: Clone + Send + Sync + Serialize + DeserializeOwned + 'static> Spillable for T {}

/// A transform applied to each item as it is read (a label remapping).
type OnRead<T> = Arc<dyn Fn(T) -> T + Send + Sync>;

enum Store<T> {
    Memory(Vec<T>),
    Disk(Spill<T>),
}

/// Items in memory or in a spill file, with their token counts.
pub struct Items<T> {
    store: Arc<Store<T>>,
    /// Per item: its index in the memory store, or its byte offset in the spill file.
    index: Arc<Vec<u64>>,
    /// Per item: its token count; empty for rows not tokenised (every count 0).
    lens: Arc<Vec<u32>>,
    on_read: Option<OnRead<T>>,
}

impl<T> Clone for Items<T> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            index: self.index.clone(),
            lens: self.lens.clone(),
            on_read: self.on_read.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Items<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Items({} {})",
            self.len(),
            if self.is_spilled() {
                "spilled"
            } else {
                "in memory"
            }
        )
    }
}

impl<T> Items<T> {
    /// How many items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the items live in a spill file.
    pub fn is_spilled(&self) -> bool {
        matches!(*self.store, Store::Disk(_))
    }

    /// The token count of item `i`.
    pub fn tokens(&self, i: usize) -> usize {
        self.lens.get(i).map_or(0, |&n| n as usize)
    }
}

impl<T: Spillable> Items<T> {
    /// `items`, kept in memory; `len` gives an item's token count.
    pub fn in_memory(items: Vec<T>, len: impl Fn(&T) -> usize) -> Self {
        let lens = items.iter().map(|t| count(len(t))).collect();
        Self::memory(items, lens)
    }

    fn memory(items: Vec<T>, lens: Vec<u32>) -> Self {
        Self {
            index: Arc::new((0..items.len() as u64).collect()),
            store: Arc::new(Store::Memory(items)),
            lens: Arc::new(lens),
            on_read: None,
        }
    }

    /// Rows not yet tokenised (their token counts are 0), in memory.
    pub fn untokenized(rows: Vec<T>) -> Self {
        Self::memory(rows, Vec::new())
    }

    /// No items.
    pub fn empty() -> Self {
        Self::untokenized(Vec::new())
    }

    /// The items of `iter` written to a new spill file as they come; `len` gives an item's
    /// token count. The first error of `iter` is returned as it is.
    pub fn spilled<E: From<SpillError>>(
        iter: impl IntoIterator<Item = Result<T, E>>,
        len: impl Fn(&T) -> usize,
    ) -> Result<Self, E> {
        Self::spill(iter, Some(len))
    }

    /// Rows not yet tokenised (their token counts are 0), written to a new spill file as they
    /// come (8 bytes of memory a row).
    pub fn spilled_rows<E: From<SpillError>>(
        iter: impl IntoIterator<Item = Result<T, E>>,
    ) -> Result<Self, E> {
        Self::spill(iter, None::<fn(&T) -> usize>)
    }

    fn spill<E: From<SpillError>>(
        iter: impl IntoIterator<Item = Result<T, E>>,
        len: Option<impl Fn(&T) -> usize>,
    ) -> Result<Self, E> {
        let mut writer = SpillWriter::new().map_err(SpillError::from)?;
        let mut index = Vec::new();
        let mut lens = Vec::new();
        for item in iter {
            let item = item?;
            if let Some(len) = &len {
                lens.push(count(len(&item)));
            }
            index.push(writer.push(&item).map_err(SpillError::from)?);
        }
        index.shrink_to_fit();
        lens.shrink_to_fit();
        Ok(Self {
            store: Arc::new(Store::Disk(writer.finish().map_err(SpillError::from)?)),
            index: Arc::new(index),
            lens: Arc::new(lens),
            on_read: None,
        })
    }

    /// The items of `iter`, spilled when `self` is (a tokenised copy of a spilled list stays
    /// out of memory), else in memory.
    pub fn collect_like<U: Spillable, E: From<SpillError>>(
        &self,
        iter: impl IntoIterator<Item = Result<U, E>>,
        len: impl Fn(&U) -> usize,
    ) -> Result<Items<U>, E> {
        if self.is_spilled() {
            Items::spilled(iter, len)
        } else {
            let v = iter.into_iter().collect::<Result<Vec<U>, E>>()?;
            Ok(Items::in_memory(v, len))
        }
    }

    /// Item `i`.
    pub fn get(&self, i: usize) -> SpillResult<T> {
        let item = match &*self.store {
            Store::Memory(v) => v[self.index[i] as usize].clone(),
            Store::Disk(s) => s.read(self.index[i])?,
        };
        Ok(match &self.on_read {
            Some(f) => f(item),
            None => item,
        })
    }

    /// Items `idx`, in that order.
    pub fn fetch(&self, idx: &[usize]) -> SpillResult<Vec<T>> {
        idx.iter().map(|&i| self.get(i)).collect()
    }

    /// Items `idx`, in that order: borrowed where they are in memory as stored, else read.
    pub fn fetch_ref(&self, idx: &[usize]) -> SpillResult<Vec<Cow<'_, T>>> {
        match (&*self.store, &self.on_read) {
            (Store::Memory(v), None) => Ok(idx
                .iter()
                .map(|&i| Cow::Borrowed(&v[self.index[i] as usize]))
                .collect()),
            _ => idx.iter().map(|&i| self.get(i).map(Cow::Owned)).collect(),
        }
    }

    /// Every item, in order.
    pub fn iter(&self) -> impl Iterator<Item = SpillResult<T>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Every item, in order, read into memory.
    pub fn to_vec(&self) -> SpillResult<Vec<T>> {
        self.iter().collect()
    }

    /// Items `idx` (in that order) as a list of their own, sharing the storage.
    pub fn select(&self, idx: &[usize]) -> Self {
        let lens = if self.lens.is_empty() {
            Vec::new()
        } else {
            idx.iter().map(|&i| self.lens[i]).collect()
        };
        Self {
            store: self.store.clone(),
            index: Arc::new(idx.iter().map(|&i| self.index[i]).collect()),
            lens: Arc::new(lens),
            on_read: self.on_read.clone(),
        }
    }

    /// The same items, shortest first (a stable sort by token count).
    pub fn by_tokens(&self) -> Self {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| self.tokens(i));
        self.select(&order)
    }

    /// The same items, each passed through `f` as it is read (after any earlier transform).
    pub fn map_on_read(self, f: impl Fn(T) -> T + Send + Sync + 'static) -> Self {
        let on_read: OnRead<T> = match self.on_read {
            Some(g) => Arc::new(move |t| f(g(t))),
            None => Arc::new(f),
        };
        Self {
            on_read: Some(on_read),
            ..self
        }
    }

    /// Bytes this list keeps in memory for its index (not the items: for a spilled list,
    /// that is all it keeps): 8 a row, 12 with token counts.
    pub fn index_bytes(&self) -> usize {
        self.index.len() * size_of::<u64>() + self.lens.len() * size_of::<u32>()
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// An unnamed temporary file of length-prefixed MessagePack records.
struct Spill<T> {
    file: File,
    _item: PhantomData<fn() -> T>,
}

impl<T: Spillable> Spill<T> {
    fn read(&self, offset: u64) -> io::Result<T> {
        let mut len = [0u8; 4];
        read_exact_at(&self.file, &mut len, offset)?;
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        read_exact_at(&self.file, &mut buf, offset + 4)?;
        rmp_serde::from_slice(&buf).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("spill file record at byte {offset}: {e}"),
            )
        })
    }
}

struct SpillWriter<T> {
    out: BufWriter<File>,
    at: u64,
    buf: Vec<u8>,
    _item: PhantomData<fn() -> T>,
}

impl<T: Spillable> SpillWriter<T> {
    fn new() -> io::Result<Self> {
        let file = tempfile::tempfile().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot create a spill file in {} ({e}); set TMPDIR to a writable directory",
                    std::env::temp_dir().display()
                ),
            )
        })?;
        Ok(Self {
            out: BufWriter::with_capacity(1 << 20, file),
            at: 0,
            buf: Vec::new(),
            _item: PhantomData,
        })
    }

    /// Write `item`; its offset.
    fn push(&mut self, item: &T) -> io::Result<u64> {
        self.buf.clear();
        rmp_serde::encode::write(&mut self.buf, item)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let len = u32::try_from(self.buf.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "an item of over 4 GiB"))?;
        let at = self.at;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&self.buf)?;
        self.at += 4 + u64::from(len);
        Ok(at)
    }

    fn finish(self) -> io::Result<Spill<T>> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        Ok(Spill {
            file,
            _item: PhantomData,
        })
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Row {
        text: String,
        ids: Vec<u32>,
        label: usize,
    }

    fn rows(n: usize) -> Vec<Row> {
        (0..n)
            .map(|i| Row {
                text: format!("row {i} ").repeat(i % 5),
                ids: (0..(i % 7) as u32).collect(),
                label: i % 3,
            })
            .collect()
    }

    #[test]
    fn spilled_items_read_back_as_written_in_any_order_and_selection() {
        let v = rows(100);
        let disk =
            Items::spilled(v.iter().cloned().map(Ok::<_, SpillError>), |r| r.ids.len()).unwrap();
        let mem = Items::in_memory(v.clone(), |r| r.ids.len());
        assert!(disk.is_spilled() && !mem.is_spilled());
        assert_eq!(disk.len(), 100);
        assert_eq!(disk.to_vec().unwrap(), v);
        for i in [0, 6, 99] {
            assert_eq!(disk.tokens(i), v[i].ids.len());
            assert_eq!(mem.tokens(i), v[i].ids.len());
        }
        let pick = [97, 3, 3, 50];
        let want: Vec<Row> = pick.iter().map(|&i| v[i].clone()).collect();
        assert_eq!(disk.fetch(&pick).unwrap(), want);
        assert_eq!(mem.fetch(&pick).unwrap(), want);
        // A selection of a selection still reads the right rows.
        let s = disk.select(&[10, 20, 30]).select(&[2, 0]);
        assert_eq!(s.to_vec().unwrap(), vec![v[30].clone(), v[10].clone()]);
        assert_eq!(s.tokens(0), v[30].ids.len());
        assert_eq!(disk.index_bytes(), 100 * 12);
    }

    #[test]
    fn a_read_transform_applies_to_every_read_and_composes() {
        let v = rows(10);
        let disk = Items::spilled(v.iter().cloned().map(Ok::<_, SpillError>), |_| 0)
            .unwrap()
            .map_on_read(|mut r| {
                r.label += 10;
                r
            })
            .map_on_read(|mut r| {
                r.label *= 2;
                r
            });
        let labels: Vec<usize> = disk.iter().map(|r| r.unwrap().label).collect();
        let want: Vec<usize> = v.iter().map(|r| (r.label + 10) * 2).collect();
        assert_eq!(labels, want);
        assert_eq!(disk.select(&[4]).get(0).unwrap().label, want[4]);
    }

    #[test]
    fn collect_like_keeps_a_spilled_list_out_of_memory_and_passes_errors_through() {
        let disk = Items::spilled(rows(5).into_iter().map(Ok::<_, SpillError>), |_| 0).unwrap();
        let lens = disk
            .collect_like(disk.iter().map(|r| r.map(|r| r.ids)), Vec::len)
            .unwrap();
        assert!(lens.is_spilled());
        assert_eq!(lens.tokens(4), 4);
        let err = disk
            .collect_like::<u32, SpillError>(
                [Ok(1), Err(io::Error::other("row 2 is bad").into()), Ok(3)],
                |_| 0,
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "the data spill file: row 2 is bad");
    }
}
