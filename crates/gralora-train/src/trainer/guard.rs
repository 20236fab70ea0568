//! The loss guard: a non-finite training loss stops the run, naming the step; and the training
//! step body every task shares (check the loss, scale it for accumulation, backward).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::tensor::Tensor;
use burn::train::{Interrupter, TrainOutput};

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

    /// Record one training step's loss: the first non-finite one is kept and stops training.
    pub fn check(&self, loss: f32) {
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

/// One training step's output: `loss` checked by `guard`, multiplied by `scale` (1 / gradient
/// accumulation: burn-train sums accumulated gradients) and differentiated; `item` goes to the
/// metrics.
pub fn guarded_step<M: Module, O>(
    module: &M,
    guard: &LossGuard,
    loss: Tensor<1>,
    scale: f64,
    item: O,
) -> TrainOutput<O> {
    guard.check(loss.clone().into_scalar());
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
}
