//! The loss guard: a non-finite training loss stops the run, naming the step; and the training
//! step body every task shares (check the loss, scale it for accumulation, backward).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::{Interrupter, TrainOutput};

/// How many steps' losses the trainer reads at once on a GPU (on the CPU: every step's).
pub const GPU_LOSS_CHECK_EVERY: usize = 32;

/// Watches the loss: the first non-finite value is recorded and training is stopped.
///
/// Reading a loss to the host is a device round trip, which on a GPU stalls the queue of the
/// step it ends. So the guard keeps each step's loss on the device and reads them
/// [`every`](LossGuard::every) steps, all in one read ([`flush`](LossGuard::flush)); the trainer
/// flushes before every checkpoint and at the end of every epoch, so a non-finite loss never
/// reaches a checkpoint, and the step it names is still the first one whose loss was non-finite.
#[derive(Clone)]
pub struct LossGuard {
    interrupter: Option<Interrupter>,
    steps: Arc<AtomicUsize>,
    every: usize,
    pending: Arc<Mutex<Vec<(usize, Tensor<1>)>>>,
    bad: Arc<Mutex<Option<(usize, f32)>>>,
}

impl Default for LossGuard {
    fn default() -> Self {
        Self {
            interrupter: None,
            steps: Arc::default(),
            every: 1,
            pending: Arc::default(),
            bad: Arc::default(),
        }
    }
}

impl std::fmt::Debug for LossGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LossGuard(every {})", self.every)
    }
}

impl LossGuard {
    /// A guard that stops `interrupter` on a non-finite loss, reading every step's loss.
    pub fn new(interrupter: Interrupter) -> Self {
        Self {
            interrupter: Some(interrupter),
            ..Self::default()
        }
    }

    /// Read the losses as suits `device`: every step's on Flex, where a read costs nothing;
    /// [`GPU_LOSS_CHECK_EVERY`] steps' at once elsewhere, where a read per step would stall the
    /// device's queue.
    pub fn reading_for(self, device: &burn::tensor::Device) -> Self {
        let every = if gralora::device::is_flex(device) {
            1
        } else {
            GPU_LOSS_CHECK_EVERY
        };
        self.every(every)
    }

    /// Read the losses once per `steps` steps (at least 1) instead of once per step.
    pub fn every(mut self, steps: usize) -> Self {
        self.every = steps.max(1);
        self
    }

    /// Count training steps from `done` (a resumed run's steps so far).
    pub fn starting_at(self, done: usize) -> Self {
        self.steps.store(done, Ordering::Relaxed);
        self
    }

    /// The first non-finite loss seen: `(training step, value)`. Reads the losses not yet read.
    pub fn non_finite(&self) -> Option<(usize, f32)> {
        self.flush();
        *self.bad.lock().expect("loss guard lock")
    }

    /// Record one training step's loss (a one-element tensor); it is read now, or with the next
    /// [`every`](Self::every) − 1 steps' losses.
    pub fn watch(&self, loss: Tensor<1>) {
        let step = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        let full = {
            let mut pending = self.pending.lock().expect("loss guard lock");
            pending.push((step, loss.detach()));
            pending.len() >= self.every
        };
        if full {
            self.flush();
        }
    }

    /// Read every loss not yet read, in one device read, and stop training on the first
    /// non-finite one. A loss that cannot be read counts as non-finite (NaN).
    pub fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().expect("loss guard lock"));
        if pending.is_empty() {
            return;
        }
        let (steps, losses): (Vec<usize>, Vec<Tensor<1>>) = pending.into_iter().unzip();
        let values = gralora::io::read_f32(Tensor::cat(losses, 0))
            .unwrap_or_else(|_| vec![f32::NAN; steps.len()]);
        for (step, value) in steps.into_iter().zip(values) {
            self.check_at(step, value);
        }
    }

    /// Record one training step's loss value: the first non-finite one is kept and stops training.
    pub fn check(&self, loss: f32) {
        let step = self.steps.fetch_add(1, Ordering::Relaxed) + 1;
        self.check_at(step, loss);
    }

    fn check_at(&self, step: usize, loss: f32) {
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

/// One training step's output: `loss` watched by `guard`, multiplied by `scale` (1 / gradient
/// accumulation: burn-train sums accumulated gradients) and differentiated; `item` goes to the
/// metrics.
pub fn guarded_step<M: Module, O>(
    module: &M,
    guard: &LossGuard,
    loss: Tensor<1>,
    scale: f64,
    item: O,
) -> TrainOutput<O> {
    guard.watch(loss.clone());
    let scaled = if scale == 1.0 { loss } else { loss * scale };
    TrainOutput::new(module, scaled.backward(), item)
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

    #[test]
    fn deferred_losses_are_read_together_and_name_the_first_bad_step() {
        let device = burn::tensor::Device::flex();
        let loss = |v: f32| Tensor::<1>::from_floats([v], &device);
        let interrupter = Interrupter::new();
        let guard = LossGuard::new(interrupter.clone()).every(4).starting_at(10);
        guard.watch(loss(0.7));
        guard.watch(loss(f32::INFINITY));
        guard.watch(loss(f32::NAN));
        // Three steps pending, none read yet: training goes on.
        assert!(!interrupter.should_stop());
        assert_eq!(guard.pending.lock().unwrap().len(), 3);
        guard.watch(loss(0.6));
        // The fourth fills the batch: all four were read, the first bad one is step 12.
        assert!(guard.pending.lock().unwrap().is_empty());
        assert!(interrupter.should_stop());
        assert_eq!(guard.non_finite(), Some((12, f32::INFINITY)));
    }

    #[test]
    fn a_flush_reads_a_partial_batch() {
        let device = burn::tensor::Device::flex();
        let guard = LossGuard::default().every(100);
        guard.watch(Tensor::<1>::from_floats([1.0], &device));
        guard.watch(Tensor::<1>::from_floats([f32::NAN], &device));
        assert!(guard.bad.lock().unwrap().is_none());
        let (step, value) = guard.non_finite().unwrap();
        assert_eq!(step, 2);
        assert!(value.is_nan());
    }
}
