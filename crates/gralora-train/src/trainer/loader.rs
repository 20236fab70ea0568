//! [`SeededLoader`]: one data loader for every task. Epoch `e`'s batch order depends only on
//! `(seed, e)` and batch `i`'s dropout masks only on `(seed, e, i)` (the device's generator is
//! re-seeded before each batch), so a run resumed at any batch sees what an uninterrupted run
//! would have seen. It counts the real (unpadded) tokens it hands out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::checkpoint::ResumePoint;
use crate::data::{Items, Spillable};

/// How a task's examples become a batch.
pub trait Batching: Clone + Send + Sync + 'static {
    /// One tokenised example.
    type Item: Spillable;
    /// A padded batch.
    type Batch: Send + 'static;
    /// Real tokens of an example (its length, for bucketing and the token count).
    fn tokens(item: &Self::Item) -> usize;
    /// Pad `items` into one batch on `device`.
    fn batch(&self, items: &[&Self::Item], device: &Device) -> Self::Batch;
}

/// Batches of examples, padded per batch. With a seed, epoch `e` (0-based) is shuffled by
/// `StdRng(seed, e)`, sorted by length inside windows of 32 batches (less padding), the full
/// batches shuffled again (a short last batch stays last), and the device's generator is
/// re-seeded from `(seed, e, i)` before batch `i`. Without a seed the order is kept and the
/// generator left alone. The examples may be spilled to disk ([`Items`]): a batch reads its own.
#[derive(Clone)]
pub struct SeededLoader<B: Batching> {
    items: Items<B::Item>,
    batching: B,
    batch_size: usize,
    seed: Option<u64>,
    next_epoch: Arc<AtomicUsize>,
    skip: Arc<AtomicUsize>,
    tokens: Arc<AtomicU64>,
    device: Device,
}

impl<B: Batching> SeededLoader<B> {
    /// A loader over `items` (in memory).
    pub fn new(
        items: Vec<B::Item>,
        batch_size: usize,
        seed: Option<u64>,
        batching: B,
        device: &Device,
    ) -> Self {
        let items = Items::in_memory(items, B::tokens);
        Self::over(items, batch_size, seed, batching, device)
    }

    /// A loader over `items`, in memory or spilled; their token counts must be
    /// [`Batching::tokens`] (as [`Items::in_memory`] and [`Items::collect_like`] give them with
    /// `B::tokens`).
    pub fn over(
        items: Items<B::Item>,
        batch_size: usize,
        seed: Option<u64>,
        batching: B,
        device: &Device,
    ) -> Self {
        Self {
            items,
            batching,
            batch_size: batch_size.max(1),
            seed,
            next_epoch: Arc::new(AtomicUsize::new(0)),
            skip: Arc::new(AtomicUsize::new(0)),
            tokens: Arc::new(AtomicU64::new(0)),
            device: device.clone(),
        }
    }

    /// Continue where a run stopped (`None`: from the start).
    pub fn resume_from(self, point: Option<ResumePoint>) -> Self {
        if let Some(p) = point {
            self.next_epoch.store(p.epochs_done(), Ordering::SeqCst);
            self.skip.store(p.batch_in_epoch(), Ordering::SeqCst);
        }
        self
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        self.items.len().div_ceil(self.batch_size)
    }

    /// The examples.
    pub fn items(&self) -> &Items<B::Item> {
        &self.items
    }

    /// Real tokens handed out so far (all epochs; shared by clones).
    pub fn token_count(&self) -> Arc<AtomicU64> {
        self.tokens.clone()
    }

    /// The same examples (shared, not copied) with another seed and its own counters.
    pub fn reseeded(&self, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            next_epoch: Arc::new(AtomicUsize::new(0)),
            skip: Arc::new(AtomicUsize::new(0)),
            tokens: Arc::new(AtomicU64::new(0)),
            ..self.clone()
        }
    }

    /// The example indices of epoch `epoch` (0-based), batch by batch.
    pub fn batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        let Some(seed) = self.seed else {
            return order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect();
        };
        let mut rng = StdRng::seed_from_u64(mix(seed, epoch as u64));
        order.shuffle(&mut rng);
        for window in order.chunks_mut(self.batch_size * 32) {
            window.sort_by_key(|&i| self.items.tokens(i));
        }
        let mut batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let full = if self.items.len().is_multiple_of(self.batch_size) {
            batches.len()
        } else {
            batches.len() - 1
        };
        batches[..full].shuffle(&mut rng);
        batches
    }
}

/// Seed the device's generator and the CPU dropout masks ([`gralora_models::ops::dropout`]).
pub fn seed_device(device: &Device, seed: u64) {
    device.seed(seed);
    gralora_models::ops::dropout::seed(seed);
}

fn mix(seed: u64, n: u64) -> u64 {
    seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The dropout seed of batch `batch` of epoch `epoch`.
fn batch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    mix(
        mix(seed.rotate_left(17), epoch as u64).rotate_left(29),
        batch as u64,
    )
}

struct EpochIter<B: Batching> {
    loader: SeededLoader<B>,
    epoch: usize,
    batches: Vec<Vec<usize>>,
    next: usize,
    done: usize,
}

impl<B: Batching> Iterator for EpochIter<B> {
    type Item = Result<B::Batch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.batches.get(self.next)?;
        let store = self.loader.items.clone();
        let items = match store.fetch_ref(batch) {
            Ok(items) => items,
            Err(e) => {
                // The spill file failed: this epoch ends with the error, and so does training.
                self.next = self.batches.len();
                return Some(Err(DatasetError::new(e)));
            }
        };
        let items: Vec<&B::Item> = items.iter().map(|i| &**i).collect();
        if let Some(seed) = self.loader.seed {
            seed_device(&self.loader.device, batch_seed(seed, self.epoch, self.next));
        }
        self.next += 1;
        self.done += items.len();
        let tokens: usize = items.iter().map(|i| B::tokens(i)).sum();
        self.loader
            .tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        Some(Ok(self.loader.batching.batch(&items, &self.loader.device)))
    }
}

impl<B: Batching> DataLoaderIterator<B::Batch> for EpochIter<B> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.loader.items.len(), Some("examples".into()))
    }
}

impl<B: Batching> DataLoader<B::Batch> for SeededLoader<B> {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<B::Batch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        let batches = self.batches(epoch);
        let skip = self.skip.swap(0, Ordering::SeqCst).min(batches.len());
        let done = batches[..skip].iter().map(Vec::len).sum();
        Box::new(EpochIter {
            loader: self.clone(),
            epoch,
            batches,
            next: skip,
            done,
        })
    }

    fn num_items(&self) -> usize {
        self.items.len()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<B::Batch>> {
        let mut this = self.clone();
        this.device = device.clone();
        Arc::new(this)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<B::Batch>> {
        let mut this = self.clone();
        let picked: Vec<usize> = (start..end.min(self.items.len())).collect();
        this.items = self.items.select(&picked);
        Arc::new(this)
    }
}

/// The length multiple batches on `device` are padded to: 1 on the CPU, [`GPU_LEN_MULTIPLE`]
/// elsewhere.
pub fn len_multiple(device: &Device) -> usize {
    if gralora::device::is_flex(device) {
        1
    } else {
        GPU_LEN_MULTIPLE
    }
}

/// The length multiple of GPU batches.
pub const GPU_LEN_MULTIPLE: usize = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Lengths;
    impl Batching for Lengths {
        type Item = usize;
        type Batch = Vec<usize>;
        fn tokens(item: &usize) -> usize {
            *item
        }
        fn batch(&self, items: &[&usize], _: &Device) -> Vec<usize> {
            items.iter().map(|&&i| i).collect()
        }
    }

    #[test]
    fn a_resumed_loader_continues_the_same_batches() {
        let device = Device::flex();
        let items: Vec<usize> = (0..50).map(|i| 1 + i % 7).collect();
        let a = SeededLoader::new(items.clone(), 8, Some(3), Lengths, &device);
        // 7 batches per epoch; two epochs and three batches done.
        let at = ResumePoint::Step {
            batches: 17,
            epoch: 3,
            batch: 3,
        };
        let b =
            SeededLoader::new(items.clone(), 8, Some(3), Lengths, &device).resume_from(Some(at));
        let _ = a.iter().count();
        let _ = a.iter().count();
        let third: Vec<Vec<usize>> = a.iter().map(|x| x.unwrap()).collect();
        let resumed: Vec<Vec<usize>> = b.iter().map(|x| x.unwrap()).collect();
        assert_eq!(
            resumed,
            third[3..],
            "skips the three batches already trained"
        );
        assert_eq!(
            b.iter().count(),
            7,
            "the next epoch is whole again (50 examples, batches of 8)"
        );
        assert_ne!(
            a.batches(0),
            a.batches(1),
            "epochs are shuffled differently"
        );
        let b4 = a.batches(4);
        assert_eq!(b4.last().unwrap().len(), 2, "the short batch stays last");
        assert!(b4[..6].iter().all(|b| b.len() == 8));
        let mut all: Vec<usize> = b4.concat();
        all.sort();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
        // Tokens handed out: three whole epochs for `a`.
        let total: usize = items.iter().sum();
        assert_eq!(a.token_count().load(Ordering::Relaxed) as usize, 3 * total);
        // Unseeded: in order.
        let c = SeededLoader::new(items, 8, None, Lengths, &device);
        assert_eq!(c.batches(3).concat(), (0..50).collect::<Vec<_>>());
        assert_eq!(c.iter().count(), 7);
    }

    #[test]
    fn a_spilled_loader_hands_out_what_one_in_memory_does() {
        let device = Device::flex();
        let items: Vec<usize> = (0..50).map(|i| 1 + i % 7).collect();
        let spilled = Items::spilled(
            items.iter().copied().map(Ok::<_, crate::data::SpillError>),
            Lengths::tokens,
        )
        .unwrap();
        let mem = SeededLoader::new(items.clone(), 8, Some(3), Lengths, &device);
        let disk = SeededLoader::over(spilled, 8, Some(3), Lengths, &device);
        assert!(disk.items().is_spilled() && !mem.items().is_spilled());
        for epoch in 0..3 {
            let a: Vec<Vec<usize>> = mem.iter().map(|x| x.unwrap()).collect();
            let b: Vec<Vec<usize>> = disk.iter().map(|x| x.unwrap()).collect();
            assert_eq!(a, b, "epoch {epoch}");
        }
        let tokens = |l: &SeededLoader<Lengths>| l.token_count().load(Ordering::Relaxed);
        assert_eq!(tokens(&mem), tokens(&disk));
        let (a, b) = (mem.slice(10, 30), disk.slice(10, 30));
        let a: Vec<Vec<usize>> = a.iter().map(|x| x.unwrap()).collect();
        let b: Vec<Vec<usize>> = b.iter().map(|x| x.unwrap()).collect();
        assert_eq!(a, b, "a worker's slice");
        assert_eq!(a.concat().len(), 20);
    }

    #[test]
    fn dropout_seeds_differ_by_batch_and_epoch() {
        let s = |e, b| batch_seed(42, e, b);
        assert_ne!(s(0, 0), s(0, 1));
        assert_ne!(s(0, 1), s(1, 0));
        assert_ne!(s(1, 0), s(0, 0));
        assert_eq!(s(3, 5), batch_seed(42, 3, 5));
        assert_ne!(s(3, 5), batch_seed(43, 3, 5));
    }
}
