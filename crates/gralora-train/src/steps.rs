//! The training loop's moving parts that burn-train leaves to the user:
//!
//! - [`SeededLoader`]: one data loader for every task. Epoch `e`'s batch order depends only on
//!   `(seed, e)` and batch `i`'s dropout masks only on `(seed, e, i)` (the device's generator is
//!   re-seeded before each batch), so a run resumed at any batch sees what an uninterrupted run
//!   would have seen. It counts the real (unpadded) tokens it hands out.
//! - [`TokensPerSecond`]: a live burn-train metric over that count.
//! - [`StepStrategy`]: burn-train's single-device loop plus checkpoints every N optimiser steps
//!   (`run/steps/`, the last two kept) and a resume from such a mid-epoch checkpoint.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::optim::GradientsAccumulator;
use burn::tensor::{Device, TensorReadError};
use burn::train::checkpoint::{
    AsyncCheckpointer, CheckpointingAction, CheckpointingStrategy, FileCheckpointer,
};
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::store::EventStoreClient;
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};
use burn::train::{
    EventProcessorTraining, InferenceStep, Learner, LearnerEvent, LearnerModel,
    LearningCheckpointer, LearningResult, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingItem, ValidLoader,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

/// How a task's examples become a batch.
pub trait Batching: Clone + Send + Sync + 'static {
    /// One tokenised example.
    type Item: Clone + Send + Sync + 'static;
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
/// generator left alone.
#[derive(Clone)]
pub struct SeededLoader<B: Batching> {
    items: Arc<Vec<B::Item>>,
    batching: B,
    batch_size: usize,
    seed: Option<u64>,
    next_epoch: Arc<AtomicUsize>,
    skip: Arc<AtomicUsize>,
    tokens: Arc<AtomicU64>,
    device: Device,
}

impl<B: Batching> SeededLoader<B> {
    /// A loader over `items`.
    pub fn new(
        items: Vec<B::Item>,
        batch_size: usize,
        seed: Option<u64>,
        batching: B,
        device: &Device,
    ) -> Self {
        Self {
            items: Arc::new(items),
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
    pub fn items(&self) -> &[B::Item] {
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
            window.sort_by_key(|&i| B::tokens(&self.items[i]));
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

/// Seed the device's generator and the CPU dropout masks ([`gralora_models::dropout`]).
pub fn seed_device(device: &Device, seed: u64) {
    device.seed(seed);
    gralora_models::dropout::seed(seed);
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
        let items: Vec<&B::Item> = batch.iter().map(|&i| &self.loader.items[i]).collect();
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
        this.items = Arc::new(self.items[start..end.min(self.items.len())].to_vec());
        Arc::new(this)
    }
}

/// Training throughput in real (unpadded) tokens per second, live in burn-train's dashboard and
/// progress lines: the tokens the loader handed out since the epoch's first step, over the time
/// since then.
#[derive(Clone)]
pub struct TokensPerSecond {
    name: MetricName,
    state: NumericMetricState,
    tokens: Arc<AtomicU64>,
    start: Option<(Instant, u64)>,
}

impl TokensPerSecond {
    /// A metric over a loader's [`SeededLoader::token_count`].
    pub fn new(tokens: Arc<AtomicU64>) -> Self {
        Self {
            name: Arc::new("Tokens per second".to_string()), // a file name in the run logs
            state: NumericMetricState::default(),
            tokens,
            start: None,
        }
    }

    fn format(&self) -> FormatOptions {
        FormatOptions::new(self.name()).unit("tok/s").precision(0)
    }
}

impl Metric for TokensPerSecond {
    type Input = ();

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn update(&mut self, _: &(), _: &MetricMetadata) -> Result<SerializedEntry, TensorReadError> {
        let now = self.tokens.load(Ordering::Relaxed);
        let rate = match self.start {
            Some((t0, n0)) => (now - n0) as f64 / t0.elapsed().as_secs_f64().max(1e-9),
            None => {
                self.start = Some((Instant::now(), now));
                0.0
            }
        };
        if self.start.is_some_and(|(_, n0)| now > n0) {
            self.state.update(rate, 1);
        }
        Ok(self.state.compute_update(self.format()))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.state.compute_final(self.format()))
    }

    fn clear(&mut self) {
        self.start = None;
        self.state.reset();
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("tok/s".to_string()),
            higher_is_better: true,
        }
        .into()
    }
}

impl Numeric for TokensPerSecond {
    fn value(&self) -> Option<NumericEntry> {
        Some(self.state.current_value())
    }
    fn running_value(&self) -> Option<NumericEntry> {
        Some(self.state.running_value())
    }
    fn final_value(&self) -> NumericEntry {
        self.state.final_value()
    }
}

/// Keeps the two newest checkpoints: the newer may still be written when a run is killed, the
/// older is then complete (burn-train saves model, optimiser and scheduler on three threads).
#[derive(Default)]
struct KeepTwo {
    kept: Vec<usize>,
}

impl KeepTwo {
    fn actions(&mut self, key: usize) -> Vec<CheckpointingAction> {
        self.kept.push(key);
        let mut actions = vec![CheckpointingAction::Save];
        if self.kept.len() > 2 {
            actions.push(CheckpointingAction::Delete(self.kept.remove(0)));
        }
        actions
    }
}

impl CheckpointingStrategy for KeepTwo {
    fn checkpointing(&mut self, key: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        self.actions(key)
    }
}

/// The complete checkpoints (model, optimiser and scheduler files all present) in `dir`, by key.
pub fn complete_checkpoints(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut keys: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse::<usize>()
                .ok()
        })
        .filter(|k| {
            ["optim", "scheduler"]
                .iter()
                .all(|n| dir.join(format!("{n}-{k}.bpk")).is_file())
        })
        .collect();
    keys.sort_unstable();
    keys
}

/// Where a run continues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePoint {
    /// After epoch `n` (1-based), from its end-of-epoch checkpoint.
    Epoch(usize),
    /// After `batches` training batches in all (`epoch` = the 1-based epoch they end in,
    /// `batch` = how many of its batches are done), from a mid-epoch checkpoint.
    Step {
        /// Training batches done in all (the checkpoint's key).
        batches: usize,
        /// The epoch in progress (1-based).
        epoch: usize,
        /// Its batches done.
        batch: usize,
    },
}

impl ResumePoint {
    /// The newest point among the end-of-epoch checkpoints in `epochs_dir` and the step
    /// checkpoints in `steps_dir`, with `batches_per_epoch` batches per epoch.
    pub fn newest(epochs_dir: &Path, steps_dir: &Path, batches_per_epoch: usize) -> Option<Self> {
        let epoch = complete_checkpoints(epochs_dir).last().copied();
        let step = complete_checkpoints(steps_dir).last().copied();
        let bpe = batches_per_epoch.max(1);
        match (epoch, step) {
            (e, Some(g)) if g > e.unwrap_or(0) * bpe && g % bpe != 0 => Some(Self::Step {
                batches: g,
                epoch: g / bpe + 1,
                batch: g % bpe,
            }),
            (Some(e), _) => Some(Self::Epoch(e)),
            (None, _) => None,
        }
    }

    /// Epochs completed.
    pub fn epochs_done(self) -> usize {
        match self {
            Self::Epoch(e) => e,
            Self::Step { epoch, .. } => epoch - 1,
        }
    }

    /// Batches done of the epoch in progress (0 after an epoch's end).
    pub fn batch_in_epoch(self) -> usize {
        match self {
            Self::Epoch(_) => 0,
            Self::Step { batch, .. } => batch,
        }
    }

    /// Training batches done in all.
    pub fn batches_done(self, batches_per_epoch: usize) -> usize {
        match self {
            Self::Epoch(e) => e * batches_per_epoch,
            Self::Step { batches, .. } => batches,
        }
    }
}

/// The next batch; a loader error fails the run (as in burn-train's loops) and ends the epoch.
fn next_batch<T>(
    iterator: &mut dyn DataLoaderIterator<T>,
    interrupter: &burn::train::Interrupter,
) -> Option<T> {
    match iterator.next()? {
        Ok(item) => Some(item),
        Err(err) => {
            interrupter.fail(err);
            None
        }
    }
}

/// burn-train's single-device training loop with mid-epoch checkpoints: every `every` optimiser
/// steps (not at an epoch's end, where burn-train's own checkpoint is written) the model,
/// optimiser and scheduler go to `dir` under the number of training batches done, the newest
/// two kept. `resume`: start from such a checkpoint.
pub struct StepStrategy<M> {
    device: Device,
    every: usize,
    grad_accum: usize,
    batches_per_epoch: usize,
    dir: PathBuf,
    resume: Option<usize>,
    _model: PhantomData<fn() -> M>,
}

impl<M> StepStrategy<M> {
    /// A strategy on the autodiff `device`; `every = 0` writes no step checkpoints.
    pub fn new(
        device: Device,
        every: usize,
        grad_accum: usize,
        batches_per_epoch: usize,
        dir: PathBuf,
        resume: Option<usize>,
    ) -> Self {
        Self {
            device,
            every,
            grad_accum: grad_accum.max(1),
            batches_per_epoch: batches_per_epoch.max(1),
            dir,
            resume,
            _model: PhantomData,
        }
    }

    fn checkpointer<N: LearnerModel>(&self) -> LearningCheckpointer<N> {
        LearningCheckpointer::new(
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "model")),
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "optim")),
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "scheduler")),
            Box::new(KeepTwo {
                kept: self.resume.into_iter().collect(),
            }),
        )
    }

    fn starting_epoch(&self) -> Option<usize> {
        self.resume.map(|g| g / self.batches_per_epoch + 1)
    }
}

impl<M: LearnerModel> SupervisedLearningStrategy<M> for StepStrategy<M> {
    fn train(
        &self,
        learner: Learner<M>,
        dataloader_train: TrainLoader<M>,
        dataloader_valid: ValidLoader<M>,
        mut components: TrainingComponents<M>,
    ) -> LearningResult<M> {
        let starting_epoch = self
            .starting_epoch()
            .unwrap_or(components.checkpoint.unwrap_or(0) + 1);
        let interrupter = components.interrupter.clone();
        interrupter.fail_on_error(
            components
                .event_processor
                .process_train(LearnerEvent::Start {
                    total_epochs: components.num_epochs,
                    starting_epoch,
                    label: components.label.clone(),
                }),
        );
        let (model, mut processor) = self.fit(
            components,
            learner,
            dataloader_train,
            dataloader_valid,
            starting_epoch,
        );
        interrupter.fail_on_error(processor.process_train(LearnerEvent::End(None)));
        let model = model.valid();
        interrupter.fail_on_error(processor.flush());
        LearningResult {
            model,
            renderer: processor.renderer(),
            interrupted: interrupter.interruption(),
            error: interrupter.error(),
        }
    }

    fn fit(
        &self,
        components: TrainingComponents<M>,
        mut learner: Learner<M>,
        dataloader_train: TrainLoader<M>,
        dataloader_valid: ValidLoader<M>,
        starting_epoch: usize,
    ) -> (M, SupervisedTrainingEventProcessor<M>) {
        let train = dataloader_train.to_device(&self.device);
        let train_items = train.num_items();
        let valid = dataloader_valid.to_device(&self.device.clone().inner());
        let valid_items = valid.num_items();
        let interrupter = components.interrupter;
        let mut processor = components.event_processor;
        let mut checkpointer = components.checkpointer;
        let mut early_stopping = components.early_stopping;
        let store = components.event_store;
        let mut steps = (self.every > 0 || self.resume.is_some()).then(|| self.checkpointer::<M>());
        if let (Some(g), Some(steps)) = (self.resume, &steps) {
            learner = steps.load_checkpoint(learner, g);
        }
        learner.fork(&self.device);
        let mut skipped = self.resume.map_or(0, |g| g % self.batches_per_epoch);

        for epoch in starting_epoch..=components.num_epochs {
            interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: train_items,
            }));
            // One training epoch (as burn-train's, plus the step checkpoints).
            let mut iterator = train.iter();
            let mut iteration = std::mem::take(&mut skipped);
            let mut accumulator = GradientsAccumulator::new();
            let mut accumulated = 0;
            while let Some(item) = next_batch(iterator.as_mut(), &interrupter) {
                iteration += 1;
                let item_progress = iterator.progress();
                let out = learner.train_step(item);
                let mut stepped = false;
                if self.grad_accum > 1 {
                    accumulator.accumulate(&learner.model(), out.grads);
                    accumulated += 1;
                    if accumulated >= self.grad_accum || item_progress.is_completed() {
                        learner.lr_step();
                        learner.optimizer_step(accumulator.grads());
                        accumulated = 0;
                        stepped = true;
                    }
                } else {
                    learner.lr_step();
                    learner.optimizer_step(out.grads);
                    stepped = true;
                }
                let event = TrainingItem::new(
                    out.item,
                    item_progress.clone(),
                    Some(iteration),
                    Some(learner.lr_current()),
                );
                interrupter
                    .fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(event)));
                if interrupter.should_stop() {
                    break;
                }
                if stepped
                    && self.every > 0
                    && iteration.is_multiple_of(self.every * self.grad_accum)
                    && !item_progress.is_completed()
                    && let Some(steps) = &mut steps
                {
                    let key = (epoch - 1) * self.batches_per_epoch + iteration;
                    steps.checkpoint(&learner, key, &store);
                }
            }
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            if interrupter.should_stop() {
                break;
            }

            // Validation, as burn-train's.
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
                epoch_number: epoch,
                total_items: valid_items,
            }));
            let model = learner.model().valid();
            let mut iterator = valid.iter();
            let mut iteration = 0;
            while let Some(item) = next_batch(iterator.as_mut(), &interrupter) {
                iteration += 1;
                let item_progress = iterator.progress();
                let out = InferenceStep::step(&model, item);
                let event = TrainingItem::new(out, item_progress, Some(iteration), None);
                interrupter
                    .fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(event)));
                if interrupter.should_stop() {
                    break;
                }
            }
            interrupter.fail_on_error(processor.process_valid(LearnerEvent::EndSplit(epoch)));
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            if checkpointer.is_some() || early_stopping.is_some() {
                interrupter.fail_on_error(processor.flush());
            }
            if interrupter.should_stop() {
                break;
            }
            if let Some(checkpointer) = &mut checkpointer {
                checkpointer.checkpoint(&learner, epoch, &store);
            }
            if let Some(early_stopping) = &mut early_stopping
                && early_stopping.should_stop(epoch, &store)
            {
                break;
            }
        }
        (learner.model(), processor)
    }
}

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
    fn dropout_seeds_differ_by_batch_and_epoch() {
        let s = |e, b| batch_seed(42, e, b);
        assert_ne!(s(0, 0), s(0, 1));
        assert_ne!(s(0, 1), s(1, 0));
        assert_ne!(s(1, 0), s(0, 0));
        assert_eq!(s(3, 5), batch_seed(42, 3, 5));
        assert_ne!(s(3, 5), batch_seed(43, 3, 5));
    }

    fn touch(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for n in names {
            std::fs::write(dir.join(n), b"x").unwrap();
        }
    }

    #[test]
    fn the_newest_complete_checkpoint_is_the_resume_point() {
        let root = std::env::temp_dir().join(format!("gralora-resume-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (epochs, steps) = (root.join("checkpoint"), root.join("steps"));
        assert_eq!(ResumePoint::newest(&epochs, &steps, 20), None);
        // Step 25 (epoch 2, 5 batches in) complete; step 30 lacks its scheduler file.
        touch(
            &steps,
            &[
                "model-25.bpk",
                "optim-25.bpk",
                "scheduler-25.bpk",
                "model-30.bpk",
                "optim-30.bpk",
            ],
        );
        let p = ResumePoint::newest(&epochs, &steps, 20).unwrap();
        assert_eq!(
            p,
            ResumePoint::Step {
                batches: 25,
                epoch: 2,
                batch: 5
            }
        );
        assert_eq!((p.epochs_done(), p.batches_done(20)), (1, 25));
        assert_eq!(p.batch_in_epoch(), 5);
        // Epoch 1's checkpoint is older than step 25; epoch 2's is newer.
        touch(&epochs, &["model-1.bpk", "optim-1.bpk", "scheduler-1.bpk"]);
        assert_eq!(ResumePoint::newest(&epochs, &steps, 20), Some(p));
        touch(&epochs, &["model-2.bpk", "optim-2.bpk", "scheduler-2.bpk"]);
        let e = ResumePoint::newest(&epochs, &steps, 20).unwrap();
        assert_eq!(e, ResumePoint::Epoch(2));
        assert_eq!((e.epochs_done(), e.batches_done(20)), (2, 40));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn two_checkpoints_are_kept() {
        let mut k = KeepTwo::default();
        let deleted = |a: Vec<CheckpointingAction>| -> Vec<usize> {
            a.into_iter()
                .filter_map(|a| match a {
                    CheckpointingAction::Delete(k) => Some(k),
                    CheckpointingAction::Save => None,
                })
                .collect()
        };
        assert!(deleted(k.actions(5)).is_empty());
        assert!(deleted(k.actions(10)).is_empty());
        assert_eq!(deleted(k.actions(15)), [5]);
        assert_eq!(deleted(k.actions(20)), [10]);
    }
}
