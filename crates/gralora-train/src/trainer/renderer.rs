//! Plain progress lines (stderr) for training without a terminal, where burn-train's own
//! non-terminal renderer prints debug structs. On a terminal burn-train's TUI is used.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};

/// Progress lines for the caller to print (the library prints nothing).
pub type Report<'a> = &'a mut dyn FnMut(&str);

/// One line per split end, and one every `every` while a split runs.
pub struct LineRenderer {
    names: HashMap<MetricId, String>,
    train: Vec<(String, String)>,
    valid: Vec<(String, String)>,
    epoch: usize,
    epochs: usize,
    split: String,
    total: usize,
    started: Instant,
    last: Instant,
    every: Duration,
}

impl LineRenderer {
    /// A renderer printing at most every `every` during a split.
    pub fn new(every: Duration) -> Self {
        Self {
            names: HashMap::new(),
            train: Vec::new(),
            valid: Vec::new(),
            epoch: 1,
            epochs: 0,
            split: String::new(),
            total: 0,
            started: Instant::now(),
            last: Instant::now(),
            every,
        }
    }

    fn store(&mut self, valid: bool, state: MetricState) {
        let entry = match state {
            MetricState::Generic(e) => e,
            MetricState::Numeric(e, _) => e,
        };
        let name = self
            .names
            .get(&entry.metric_id)
            .cloned()
            .unwrap_or_else(|| "metric".into());
        let list = if valid {
            &mut self.valid
        } else {
            &mut self.train
        };
        let value = entry.serialized_entry.formatted;
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => list.push((name, value)),
        }
    }

    fn line(&self, done: usize) {
        let list = if self.split == "valid" {
            &self.valid
        } else {
            &self.train
        };
        let metrics: Vec<String> = list.iter().map(|(n, v)| format!("{n} {v}")).collect();
        let secs = self.started.elapsed().as_secs_f64();
        eprintln!(
            "epoch {}/{} {:<5} {:>6}/{:<6} {:>6.1} ex/s | {}",
            self.epoch,
            self.epochs,
            self.split,
            done,
            self.total,
            done as f64 / secs.max(1e-9),
            metrics.join(" | ")
        );
    }
}

impl MetricsRendererTraining for LineRenderer {
    fn update_train(&mut self, state: MetricState) {
        self.store(false, state);
    }
    fn update_valid(&mut self, state: MetricState) {
        self.store(true, state);
    }
}

impl MetricsRendererEvaluation for LineRenderer {
    fn update_test(&mut self, _name: EvaluationName, state: MetricState) {
        self.store(true, state);
    }
}

impl TrainingProgressLogger for LineRenderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _: Option<usize>,
        _: Option<&str>,
    ) {
        self.epochs = total_epochs;
        self.epoch = starting_epoch.max(1);
    }
    fn update_epoch(&mut self, epoch: usize) {
        self.epoch = epoch + 1;
    }
    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split = split.to_string();
        self.total = total_items;
        self.started = Instant::now();
        self.last = Instant::now();
        if split == "valid" {
            self.valid.clear();
        } else {
            self.train.clear();
        }
    }
    fn update_split(&mut self, items_processed: usize) {
        if items_processed < self.total && self.last.elapsed() >= self.every {
            self.last = Instant::now();
            self.line(items_processed);
        }
    }
    fn end_split(&mut self) {
        self.line(self.total);
    }
    fn end(&mut self) {}
    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for LineRenderer {
    fn start_global_progress(&mut self, _: usize) {}
    fn start_test(&mut self, name: &str, total_items: usize) {
        self.start_split(name, total_items);
    }
    fn update_test_progress(&mut self, items_processed: usize) {
        self.update_split(items_processed);
    }
    fn end_test(&mut self) {
        self.end_split();
    }
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRenderer for LineRenderer {
    fn manual_close(&mut self) {}
    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id.clone(), definition.name.to_string());
    }
}
