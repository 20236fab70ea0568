//! Sequence classification with an encoder: the burn-train model, its batches and their
//! [`Batching`] for the shared [`SeededLoader`], and the loss guard.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{ClassificationOutput, InferenceStep, Interrupter, TrainOutput, TrainStep};
use gralora_models::{BertClassifier, BertInput, Encoded};

use crate::steps::{Batching, SeededLoader};

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
        Self::padded(items, pad, 1, device)
    }

    /// Pad `items` into one batch on `device`, to a length that is a multiple of `multiple`.
    pub fn padded(items: &[&Item], pad: u32, multiple: usize, device: &Device) -> Self {
        let encoded: Vec<Encoded> = items.iter().map(|i| i.encoded.clone()).collect();
        let labels: Vec<i64> = items.iter().map(|i| i.label as i64).collect();
        Self {
            input: BertInput::from_encoded_to(&encoded, pad, multiple, device),
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

    /// Count training steps from `done` (a resumed run's steps so far).
    pub fn starting_at(self, done: usize) -> Self {
        self.steps.store(done, Ordering::Relaxed);
        self
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

/// Batches of encoder examples: padded with `pad`, for [`SeededLoader`].
#[derive(Debug, Clone, Copy)]
pub struct ClassBatching {
    /// The tokenizer's padding id.
    pub pad: u32,
    /// Batches are padded to a multiple of this length (1: to their longest example).
    pub multiple: usize,
    /// The model's longest input: no batch is padded past it.
    pub max_len: usize,
}

impl ClassBatching {
    /// Padding to the longest example on the CPU (padding there is only extra work); on a GPU to
    /// a multiple of [`GPU_LEN_MULTIPLE`], so that a run meets a few lengths instead of dozens,
    /// each of which compiles and tunes its own kernels (measured on an H200 through Vulkan: the
    /// first steps of SST-2 ran at under 100 tokens/s while new lengths kept arriving).
    pub fn for_device(pad: u32, max_len: usize, device: &Device) -> Self {
        Self {
            pad,
            multiple: len_multiple(device),
            max_len,
        }
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

impl Batching for ClassBatching {
    type Item = Item;
    type Batch = ClassBatch;
    fn tokens(item: &Item) -> usize {
        item.encoded.ids.len()
    }
    fn batch(&self, items: &[&Item], device: &Device) -> ClassBatch {
        let longest = items.iter().map(|i| i.encoded.ids.len()).max().unwrap_or(1);
        let multiple = if longest.next_multiple_of(self.multiple.max(1)) <= self.max_len {
            self.multiple
        } else {
            1
        };
        ClassBatch::padded(items, self.pad, multiple, device)
    }
}

/// The encoder tasks' loader.
pub type EpochLoader = SeededLoader<ClassBatching>;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::data::dataloader::DataLoader;

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
    fn batches_are_padded_to_their_longest_example() {
        let device = Device::flex();
        let batching = ClassBatching::for_device(0, 512, &device);
        assert_eq!(batching.multiple, 1, "the CPU pads to the longest example");
        let c = EpochLoader::new(items(50), 8, None, batching, &device);
        let batches: Vec<ClassBatch> = c.iter().map(|x| x.unwrap()).collect();
        assert_eq!(batches.len(), 7);
        assert_eq!(batches[6].labels.dims(), [2]);
        assert_eq!(batches[0].input.ids.dims(), [8, 5]);
        assert_eq!(batches[0].tokens, 1 + 2 + 3 + 4 + 5 + 1 + 2 + 3);
        assert_eq!(labels(batches[0].clone()), [0, 1, 0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn gpu_batches_are_padded_to_a_length_multiple_below_the_models_limit() {
        let device = Device::flex();
        let batching = |max_len| ClassBatching {
            pad: 7,
            multiple: GPU_LEN_MULTIPLE,
            max_len,
        };
        let data = items(5); // lengths 1..=5
        let refs: Vec<&Item> = data.iter().collect();
        let b = batching(512).batch(&refs, &device);
        assert_eq!(b.input.ids.dims(), [5, 16]);
        assert_eq!(b.tokens, 1 + 2 + 3 + 4 + 5, "padding is not counted");
        let mask: Vec<f32> = values(b.input.mask.into_data());
        assert_eq!(mask.iter().sum::<f32>(), 15.0, "padding is masked");
        let ids: Vec<i64> = values(b.input.ids.into_data());
        assert_eq!(
            &ids[..16],
            &[101, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7]
        );
        // A model that takes at most 10 tokens gets the batch's own length.
        assert_eq!(batching(10).batch(&refs, &device).input.ids.dims(), [5, 5]);
    }

    fn labels(b: ClassBatch) -> Vec<i64> {
        values(b.labels.into_data())
    }

    fn values<T: burn::tensor::Element>(data: TensorData) -> Vec<T> {
        data.convert::<T>().try_to_vec().unwrap()
    }
}
