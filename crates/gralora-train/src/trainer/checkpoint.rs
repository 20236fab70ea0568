//! [`StepStrategy`]: burn-train's single-device loop plus checkpoints every N optimiser steps
//! (`run/steps/`, the last two kept) and a resume from such a mid-epoch checkpoint.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use burn::data::dataloader::DataLoaderIterator;
use burn::optim::GradientsAccumulator;
use burn::tensor::Device;
use burn::train::checkpoint::{
    AsyncCheckpointer, CheckpointingAction, CheckpointingStrategy, FileCheckpointer,
};
use burn::train::metric::store::EventStoreClient;
use burn::train::{
    EventProcessorTraining, InferenceStep, Learner, LearnerEvent, LearnerModel,
    LearningCheckpointer, LearningResult, SupervisedLearningStrategy,
    SupervisedTrainingEventProcessor, TrainLoader, TrainingComponents, TrainingItem, ValidLoader,
};

use super::guard::LossGuard;

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
    guard: Option<LossGuard>,
    epoch_peaks: Option<EpochPeaks>,
    _model: PhantomData<fn() -> M>,
}

/// The process's peak resident memory (MiB) at the end of each epoch, filled in by the strategy.
pub type EpochPeaks = std::sync::Arc<std::sync::Mutex<Vec<f64>>>;

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
            guard: None,
            epoch_peaks: None,
            _model: PhantomData,
        }
    }

    /// Read `guard`'s pending losses before every checkpoint and at the end of every training
    /// epoch, so that no checkpoint holds weights a non-finite loss has reached.
    pub fn with_guard(mut self, guard: LossGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Record the process's peak resident memory into `peaks` at the end of every epoch.
    pub fn with_epoch_peaks(mut self, peaks: EpochPeaks) -> Self {
        self.epoch_peaks = Some(peaks);
        self
    }

    /// Read the guard's pending losses; whether training must stop.
    fn guard_stops(&self, interrupter: &burn::train::Interrupter) -> bool {
        if let Some(g) = &self.guard {
            g.flush();
        }
        interrupter.should_stop()
    }

    /// A failed save or delete fails the run through `interrupter` (as burn-train's epoch
    /// checkpointers do), instead of panicking on the checkpointer's thread.
    fn checkpointer<N: LearnerModel>(
        &self,
        interrupter: &burn::train::Interrupter,
    ) -> LearningCheckpointer<N> {
        LearningCheckpointer::new(
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "model"))
                .with_interrupter(interrupter.clone()),
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "optim"))
                .with_interrupter(interrupter.clone()),
            AsyncCheckpointer::new(FileCheckpointer::new(&self.dir, "scheduler"))
                .with_interrupter(interrupter.clone()),
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
        let mut steps =
            (self.every > 0 || self.resume.is_some()).then(|| self.checkpointer::<M>(&interrupter));
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
                    if self.guard_stops(&interrupter) {
                        break;
                    }
                    let key = (epoch - 1) * self.batches_per_epoch + iteration;
                    steps.checkpoint(&learner, key, &store);
                }
            }
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
            if self.guard_stops(&interrupter) {
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
            // The epoch's peak, its validation and checkpoint included.
            if let (Some(peaks), Some(mib)) = (&self.epoch_peaks, super::peak_rss_mib())
                && let Ok(mut v) = peaks.lock()
            {
                v.push(mib);
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
