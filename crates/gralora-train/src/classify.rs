//! Sequence classification with an encoder: the burn-train model, its batches, and a data loader
//! whose order depends only on (seed, epoch), so a resumed run sees the batches an uninterrupted
//! run would have seen.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, Interrupter, TrainOutput, TrainStep};
use gralora_models::{BertClassifier, BertInput, Encoded};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// One tokenised example.
#[derive(Debug, Clone)]
pub struct Item {
    /// Token ids and segment ids.
    pub encoded: Encoded,
    /// Class index.
    pub label: usize,
}

/// A padded batch.
#[derive(Debug, Clone)]
pub struct ClassBatch {
    /// Encoder input (ids, segments, mask), padded to the batch's longest example.
    pub input: BertInput,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
    /// Real (unpadded) tokens in the batch.
    pub tokens: usize,
}

impl ClassBatch {
    /// Pad `items` into one batch on `device`.
    pub fn new(items: &[&Item], pad: u32, device: &Device) -> Self {
        let encoded: Vec<Encoded> = items.iter().map(|i| i.encoded.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        Self {
            input: BertInput::from_encoded(&encoded, pad, device),
            labels: Tensor::from_data(TensorData::new(labels, [items.len()]), device),
            tokens: encoded.iter().map(|e| e.ids.len()).sum(),
        }
    }
}

/// Watches the loss: the first non-finite value is recorded and training is stopped.
#[derive(Clone, Default)]
pub struct LossGuard {
    interrupter: Option<Interrupter>,
    steps: Arc<AtomicUsize>,
    bad: Arc<Mutex<Option<(usize, f32)>>>,
}

impl std::fmt::Debug for LossGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LossGuard")
    }
}

impl LossGuard {
    /// A guard that stops `interrupter` on a non-finite loss.
    pub fn new(interrupter: Interrupter) -> Self {
        Self {
            interrupter: Some(interrupter),
            ..Self::default()
        }
    }

    /// The first non-finite loss seen: `(training step, value)`.
    pub fn non_finite(&self) -> Option<(usize, f32)> {
        *self.bad.lock().expect("loss guard lock")
    }

    pub(crate) fn check(&self, loss: f32) {
        let step = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        if !loss.is_finite() {
            let mut bad = self.bad.lock().expect("loss guard lock");
            if bad.is_none() {
                *bad = Some((step, loss));
                if let Some(i) = &self.interrupter {
                    i.stop(Some("non-finite loss"));
                }
            }
        }
    }
}

/// Number of parameters of `module` that receive gradients.
pub fn trainable_params<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    module.visit(&mut c);
    c.0
}

/// An encoder classifier as burn-train trains it.
#[derive(Module, Debug)]
pub struct TextClassifier {
    /// Encoder (frozen apart from its adapters, or fully trainable) and head.
    pub model: BertClassifier,
    /// The loss is multiplied by this before backward (1 / gradient-accumulation steps: burn-train
    /// sums accumulated gradients).
    pub loss_scale: f64,
    #[module(skip)]
    guard: LossGuard,
}

impl TextClassifier {
    /// Wrap a classifier; `guard` watches the training loss.
    pub fn new(model: BertClassifier, loss_scale: f64, guard: LossGuard) -> Self {
        Self {
            model,
            loss_scale,
            guard,
        }
    }

    /// Parameters that receive gradients.
    pub fn num_params_trainable(&self) -> usize {
        trainable_params(self)
    }

    /// Logits, loss and targets of one batch.
    pub fn forward_classification(&self, batch: ClassBatch) -> ClassificationOutput {
        let logits = self.model.forward(&batch.input);
        let loss = CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits.clone(), batch.labels.clone());
        ClassificationOutput::new(loss, logits, batch.labels)
    }
}

impl TrainStep for TextClassifier {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.forward_classification(batch);
        self.guard.check(item.loss.clone().into_scalar());
        let loss = if self.loss_scale == 1.0 {
            item.loss.clone()
        } else {
            item.loss.clone() * self.loss_scale
        };
        TrainOutput::new(self, loss.backward(), item)
    }
}

impl InferenceStep for TextClassifier {
    type Input = ClassBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ClassBatch) -> ClassificationOutput {
        self.forward_classification(batch)
    }
}

/// Batches of tokenised examples, padded per batch. With a seed, epoch `e` is shuffled by
/// `StdRng(seed, e)` and the device's generator (dropout) is re-seeded from `(seed, e)`.
#[derive(Clone)]
pub struct EpochLoader {
    items: Arc<Vec<Item>>,
    batch_size: usize,
    seed: Option<u64>,
    epoch: Arc<AtomicUsize>,
    device: Device,
    pad: u32,
}

impl EpochLoader {
    /// A loader over `items`; `seed: None` keeps the order and leaves the device's generator alone.
    pub fn new(
        items: Vec<Item>,
        batch_size: usize,
        seed: Option<u64>,
        pad: u32,
        device: &Device,
    ) -> Self {
        Self {
            items: Arc::new(items),
            batch_size: batch_size.max(1),
            seed,
            epoch: Arc::new(AtomicUsize::new(0)),
            device: device.clone(),
            pad,
        }
    }

    /// Start counting epochs at `done` (the number of epochs a resumed run has completed).
    pub fn starting_after(self, done: usize) -> Self {
        self.epoch.store(done, Ordering::SeqCst);
        self
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        self.items.len().div_ceil(self.batch_size)
    }

    /// The examples.
    pub fn items(&self) -> &[Item] {
        &self.items
    }

    /// The same examples (shared, not copied) with another seed and its own epoch count.
    pub fn reseeded(&self, seed: u64) -> Self {
        Self {
            seed: Some(seed),
            epoch: Arc::new(AtomicUsize::new(0)),
            ..self.clone()
        }
    }

    /// The example order of epoch `epoch` (0-based), batch by batch. With a seed: shuffled,
    /// then sorted by length inside windows of 32 batches (less padding), then the full batches
    /// shuffled again (a short last batch stays last).
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
            window.sort_by_key(|&i| self.items[i].encoded.ids.len());
        }
        let mut batches: Vec<Vec<usize>> = order
            .chunks(self.batch_size)
            .map(<[usize]>::to_vec)
            .collect();
        let full = if self.items.len() % self.batch_size == 0 {
            batches.len()
        } else {
            batches.len() - 1
        };
        batches[..full].shuffle(&mut rng);
        batches
    }
}

fn mix(seed: u64, epoch: u64) -> u64 {
    seed ^ epoch.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

struct EpochIter {
    loader: EpochLoader,
    batches: std::vec::IntoIter<Vec<usize>>,
    done: usize,
}

impl Iterator for EpochIter {
    type Item = Result<ClassBatch, DatasetError>;
    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.batches.next()?;
        let items: Vec<&Item> = batch.iter().map(|&i| &self.loader.items[i]).collect();
        self.done += items.len();
        Some(Ok(ClassBatch::new(
            &items,
            self.loader.pad,
            &self.loader.device,
        )))
    }
}

impl DataLoaderIterator<ClassBatch> for EpochIter {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.loader.items.len(), Some("examples".into()))
    }
}

impl DataLoader<ClassBatch> for EpochLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<ClassBatch> + 'a> {
        let epoch = self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(seed) = self.seed {
            self.device.seed(mix(seed.rotate_left(17), epoch as u64));
        }
        Box::new(EpochIter {
            batches: self.batches(epoch).into_iter(),
            loader: self.clone(),
            done: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.items.len()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<ClassBatch>> {
        let mut this = self.clone();
        this.device = device.clone();
        Arc::new(this)
    }

    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<ClassBatch>> {
        let mut this = self.clone();
        this.items = Arc::new(self.items[start..end.min(self.items.len())].to_vec());
        Arc::new(this)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_finite_loss_is_recorded_once_and_stops_training() {
        let interrupter = Interrupter::new();
        let guard = LossGuard::new(interrupter.clone());
        guard.check(0.69);
        assert!(!interrupter.should_stop());
        assert_eq!(guard.non_finite(), None);
        guard.check(f32::NAN);
        guard.check(f32::INFINITY);
        let (step, value) = guard.non_finite().unwrap();
        assert_eq!(step, 2);
        assert!(value.is_nan());
        assert!(interrupter.should_stop());
    }

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| Item {
                encoded: Encoded {
                    ids: vec![101; 1 + i % 5],
                    type_ids: vec![0; 1 + i % 5],
                },
                label: i % 2,
            })
            .collect()
    }

    #[test]
    fn epoch_order_depends_only_on_seed_and_epoch() {
        let device = Device::flex();
        let a = EpochLoader::new(items(50), 8, Some(3), 0, &device);
        let b = EpochLoader::new(items(50), 8, Some(3), 0, &device).starting_after(2);
        // A loader resumed after two epochs yields what the original yields in its third.
        let _ = a.iter();
        let _ = a.iter();
        let third: Vec<Vec<i64>> = a.iter().map(|x| labels(x.unwrap())).collect();
        let resumed: Vec<Vec<i64>> = b.iter().map(|x| labels(x.unwrap())).collect();
        assert_eq!(third, resumed);
        assert_ne!(
            a.batches(0),
            a.batches(1),
            "epochs are shuffled differently"
        );
        let b4 = a.batches(4);
        assert_eq!(b4.last().unwrap().len(), 2, "the short batch stays last");
        assert!(b4[..6].iter().all(|b| b.len() == 8));
        let mut sorted: Vec<usize> = b4.concat();
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        // Unseeded: in order, and 7 batches of at most 8, padded to each batch's longest.
        let c = EpochLoader::new(items(50), 8, None, 0, &device);
        assert_eq!(c.batches(3).concat(), (0..50).collect::<Vec<_>>());
        let batches: Vec<ClassBatch> = c.iter().map(|x| x.unwrap()).collect();
        assert_eq!(batches.len(), 7);
        assert_eq!(batches[6].labels.dims(), [2]);
        assert_eq!(batches[0].input.ids.dims(), [8, 5]);
        assert_eq!(batches[0].tokens, 1 + 2 + 3 + 4 + 5 + 1 + 2 + 3);
    }

    fn labels(b: ClassBatch) -> Vec<i64> {
        b.labels.into_data().convert::<i64>().try_to_vec().unwrap()
    }
}
