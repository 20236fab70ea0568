//! [`TokensPerSecond`]: a live burn-train metric over the loader's token count.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use burn::tensor::TensorReadError;
use burn::train::metric::state::{FormatOptions, NumericMetricState};
use burn::train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry,
};

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
