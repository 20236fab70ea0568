//! The rank sweep: every method at every rank on one model and task; one table (CSV, Markdown)
//! and one plot of the metric against rank. Finished runs are reused, interrupted ones resumed.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::plot::{Chart, Series, write_chart};
use super::ranks::paper_k;
use super::tables::{opt, write_csv, write_text};
use crate::error::{Result, TrainError};
use crate::trainer::{Method, MethodOptions, Report, RunDir, RunMetrics, TrainConfig};

/// A rank sweep: every method at every rank, on one model and task.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    /// Everything but method, rank, k and the method-dependent defaults (GoRA's settings are
    /// used by GoRA runs only).
    pub base: TrainConfig,
    /// Ranks (GoRA: the reference rank of its budget).
    pub ranks: Vec<usize>,
    /// Methods; `full` runs once, as the reference line.
    pub methods: Vec<Method>,
    /// GraLoRA's k for every rank; `None`: [`paper_k`].
    pub k: Option<usize>,
    /// Overrides of the method-dependent defaults.
    pub options: MethodOptions,
}

/// One planned run of a sweep.
#[derive(Debug, Clone)]
pub struct SweepRun {
    /// Directory name inside the sweep's output (`lora-r8`, `full`).
    pub name: String,
    /// The run's configuration.
    pub config: TrainConfig,
}

impl SweepSpec {
    /// The runs, in order (rank by rank, methods in the given order, `full` last).
    pub fn runs(&self) -> Result<Vec<SweepRun>> {
        if self.ranks.is_empty() || self.methods.is_empty() {
            return Err(TrainError::Usage(
                "a sweep needs at least one rank (--ranks) and one method (--methods)".into(),
            ));
        }
        if let Some(&r) = self.ranks.iter().find(|&&r| r == 0) {
            return Err(TrainError::Usage(format!(
                "rank {r} in --ranks: ranks must be at least 1"
            )));
        }
        let mut runs = Vec::new();
        for &rank in &self.ranks {
            for &method in self.methods.iter().filter(|m| **m != Method::Full) {
                let mut config = self.base.clone();
                config.set_method(method, rank, self.options);
                if matches!(method, Method::Gralora | Method::GoraGralora) {
                    config.k = self.k.unwrap_or_else(|| paper_k(rank));
                }
                if !method.is_gora() {
                    config.gora = crate::trainer::GoraSettings::default();
                } else {
                    // The budget must be able to reach the reference rank and above.
                    config.gora.r_max = config.gora.r_max.max(4 * rank);
                    config.gora.r_min = config.gora.r_min.min(rank);
                }
                config.validate()?;
                runs.push(SweepRun {
                    name: format!("{}-r{rank}", method),
                    config,
                });
            }
        }
        if self.methods.contains(&Method::Full) {
            let mut config = self.base.clone();
            config.set_method(Method::Full, self.base.rank, self.options);
            config.gora = crate::trainer::GoraSettings::default();
            config.validate()?;
            runs.push(SweepRun {
                name: "full".into(),
                config,
            });
        }
        Ok(runs)
    }
}

/// Whether a run directory was trained now, resumed, or found finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Trained in this invocation.
    Trained,
    /// An interrupted run continued from its checkpoint.
    Resumed,
    /// Already finished with the same settings: its metrics were read.
    Reused,
}

/// One line of a sweep's table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepRow {
    /// Method.
    pub method: String,
    /// Rank (GoRA: reference rank; full fine-tuning: 0).
    pub rank: usize,
    /// GraLoRA's k (1 for LoRA-shaped adapters, 0 for full fine-tuning).
    pub k: usize,
    /// Trainable parameters (head included).
    pub trainable_params: usize,
    /// Evaluation accuracy.
    pub accuracy: f64,
    /// Evaluation F1 (binary tasks).
    pub f1: Option<f64>,
    /// Evaluation loss.
    pub eval_loss: f64,
    /// Accuracy of the untrained model (decoders).
    pub baseline_accuracy: Option<f64>,
    /// Training tokens per second.
    pub tokens_per_s: f64,
    /// Wall time of the run, s.
    pub wall_s: f64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: Option<f64>,
    /// The run's directory name.
    pub run: String,
    /// What happened to it in this invocation.
    pub status: RunStatus,
}

/// The names of the fields in which two configurations differ.
fn differing_fields(a: &TrainConfig, b: &TrainConfig) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return vec!["(unreadable)".into()];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or("-".into(), |v| v.to_string());
            format!("{k}: {} there, {} now", show(a.get(k)), show(b.get(k)))
        })
        .collect()
}

fn read_metrics(dir: &RunDir) -> Result<RunMetrics> {
    let path = dir.metrics();
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| TrainError::Data {
        path,
        msg: format!("not a gralora metrics.json: {e}"),
    })
}

/// Run (or reuse, or resume) every run of `spec` under `out`, then write `results.csv`,
/// `results.md`, `rank-sweep.svg` and `rank-sweep.png`. `train` is the training entry point
/// ([`crate::tasks::train`]; tests pass a stand-in).
pub fn rank_sweep(
    spec: &SweepSpec,
    out: &Path,
    report: Report<'_>,
    train: &mut dyn FnMut(&TrainConfig, &Path, bool, Report<'_>) -> Result<()>,
) -> Result<Vec<SweepRow>> {
    let runs = spec.runs()?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut rows = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let path = out.join(&run.name);
        let dir = RunDir(path.clone());
        let saved = dir
            .config()
            .is_file()
            .then(|| dir.read_config())
            .transpose()?;
        if let Some(saved) = &saved {
            let diff = differing_fields(saved, &run.config);
            if !diff.is_empty() {
                return Err(TrainError::Usage(format!(
                    "{} holds a run with other settings ({}); use another --out or remove that directory",
                    path.display(),
                    diff.join("; ")
                )));
            }
        }
        let status = match (&saved, dir.metrics().is_file()) {
            (Some(_), true) => RunStatus::Reused,
            (Some(_), false) => RunStatus::Resumed,
            (None, _) => RunStatus::Trained,
        };
        report(&format!(
            "[{}/{}] {}: {}",
            i + 1,
            runs.len(),
            run.name,
            match status {
                RunStatus::Reused => "finished before, reusing its metrics",
                RunStatus::Resumed => "interrupted before, resuming",
                RunStatus::Trained => "training",
            }
        ));
        if status != RunStatus::Reused {
            train(
                &run.config,
                &path,
                status == RunStatus::Resumed,
                &mut *report,
            )?;
        }
        let m = read_metrics(&dir)?;
        let c = &run.config;
        let row = SweepRow {
            method: c.method.to_string(),
            rank: if c.method == Method::Full { 0 } else { c.rank },
            k: match c.method {
                Method::Full => 0,
                Method::Gralora | Method::GoraGralora => c.k,
                _ => 1,
            },
            trainable_params: m.trainable_params,
            accuracy: m.eval.accuracy,
            f1: m.eval.f1,
            eval_loss: m.eval.loss,
            baseline_accuracy: m.baseline_accuracy,
            tokens_per_s: m.tokens_per_s,
            wall_s: m.wall_s,
            peak_rss_mb: m.peak_rss_mb,
            run: run.name.clone(),
            status,
        };
        report(&format!(
            "{}: accuracy {:.4}, {:.0} tokens/s, {:.0} s",
            run.name, row.accuracy, row.tokens_per_s, row.wall_s
        ));
        rows.push(row);
    }
    write_sweep_outputs(&spec.base, &rows, out)?;
    Ok(rows)
}

/// The sweep's Markdown table.
pub fn sweep_markdown(base: &TrainConfig, rows: &[SweepRow]) -> String {
    let mut s = format!(
        "{} on {}: {} epoch(s), seed {}, {} training examples{}, batch {}, lr {} (adapters; full fine-tuning: its own).\n\n",
        base.model,
        base.task,
        base.epochs,
        base.seed,
        base.max_train.map_or("all".into(), |n| n.to_string()),
        base.max_eval
            .map(|n| format!(", first {n} evaluation examples"))
            .unwrap_or_default(),
        base.batch_size,
        base.lr
    );
    s.push_str("| method | r | k | trainable params | accuracy | F1 | eval loss | untrained | tokens/s | wall s | run |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {:.4} | {} | {:.4} | {} | {:.0} | {:.0} | {} |\n",
            r.method,
            if r.rank == 0 {
                "–".into()
            } else {
                r.rank.to_string()
            },
            if r.k == 0 {
                "–".into()
            } else {
                r.k.to_string()
            },
            r.trainable_params,
            r.accuracy,
            opt(r.f1, 4),
            r.eval_loss,
            opt(r.baseline_accuracy, 4),
            r.tokens_per_s,
            r.wall_s,
            r.run
        ));
    }
    s
}

fn write_sweep_outputs(base: &TrainConfig, rows: &[SweepRow], out: &Path) -> Result<()> {
    write_csv(&out.join("results.csv"), rows)?;
    write_text(&out.join("results.md"), &sweep_markdown(base, rows))?;
    let ranks: Vec<f64> = rows
        .iter()
        .filter(|r| r.rank > 0)
        .map(|r| r.rank as f64)
        .collect();
    let (lo, hi) = ranks
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
    let mut by_method: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut series = Vec::new();
    for r in rows {
        if r.rank == 0 {
            if lo <= hi {
                series.push(Series {
                    name: format!("{} (reference)", r.method),
                    points: vec![(lo, r.accuracy), (hi, r.accuracy)],
                    reference: true,
                });
            }
        } else {
            by_method
                .entry(r.method.clone())
                .or_default()
                .push((r.rank as f64, r.accuracy));
        }
    }
    // Methods in the order they were asked for.
    let mut order: Vec<&String> = Vec::new();
    for r in rows.iter().filter(|r| r.rank > 0) {
        if !order.contains(&&r.method) {
            order.push(&r.method);
        }
    }
    let mut lines: Vec<Series> = order
        .into_iter()
        .map(|m| {
            let mut points = by_method[m].clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                name: m.clone(),
                points,
                reference: false,
            }
        })
        .collect();
    lines.extend(series);
    write_chart(
        &Chart {
            title: format!("{} on {}: accuracy vs rank", base.model, base.task),
            x_label: "rank r".into(),
            y_label: "accuracy".into(),
            log_x: true,
            series: lines,
        },
        &out.join("rank-sweep"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::write_json;
    use std::path::PathBuf;

    /// A scratch directory (removed when dropped) and the not-yet-existing path inside it.
    fn tmp(name: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::Builder::new()
            .prefix(&format!("gralora-exp-{name}-"))
            .tempdir()
            .unwrap();
        let out = d.path().join("out");
        (d, out)
    }

    /// A stand-in for training: writes the files a finished run has; accuracy from the rank.
    fn fake_train(
        calls: &mut Vec<(String, bool)>,
    ) -> impl FnMut(&TrainConfig, &Path, bool, Report<'_>) -> Result<()> + '_ {
        move |config, out, resume, _| {
            calls.push((out.file_name().unwrap().to_string_lossy().into(), resume));
            std::fs::create_dir_all(out).unwrap();
            write_json(&RunDir(out.into()).config(), config)?;
            let acc = 0.5
                + config.rank as f64 / 1000.0
                + if config.method == Method::Gralora {
                    0.1
                } else {
                    0.0
                };
            let m = serde_json::json!({
                "task": config.task, "method": config.method, "model": config.model, "device": "test",
                "train_split": "t", "train_examples": 10, "eval_split": "e",
                "eval": {"examples": 5, "accuracy": acc, "f1": null, "loss": 0.5},
                "epochs": 1, "trainable_params": config.rank * 100, "wall_s": 1.0, "train_s": 1.0,
                "tokens_per_s": 10.0, "peak_rss_mb": null, "seed": config.seed
            });
            write_json(&RunDir(out.into()).metrics(), &m)
        }
    }

    fn spec() -> SweepSpec {
        SweepSpec {
            base: TrainConfig::new("minilm", "sst2", Method::Gora),
            ranks: vec![8, 64],
            methods: vec![Method::Lora, Method::Gralora],
            k: None,
            options: MethodOptions::default(),
        }
    }

    #[test]
    fn sweep_trains_once_reuses_resumes_and_refuses_other_settings() {
        let (_scratch, out) = tmp("sweep");
        let spec = spec();
        let mut calls = Vec::new();
        let rows = rank_sweep(&spec, &out, &mut |_| {}, &mut fake_train(&mut calls)).unwrap();
        let names: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(names, ["lora-r8", "gralora-r8", "lora-r64", "gralora-r64"]);
        assert!(calls.iter().all(|c| !c.1));
        // The paper's k, alpha = 2r, LoRA+ off, GoRA's settings dropped.
        assert_eq!(rows.iter().map(|r| r.k).collect::<Vec<_>>(), [1, 2, 1, 4]);
        let saved = RunDir(out.join("gralora-r64")).read_config().unwrap();
        assert_eq!((saved.k, saved.alpha, saved.b_lr_ratio), (4, 128.0, 1.0));
        assert_eq!(saved.gora, crate::trainer::GoraSettings::default());
        assert!((rows[1].accuracy - 0.608).abs() < 1e-12);
        let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
        assert_eq!(csv.lines().count(), 5, "{csv}");
        assert!(
            csv.lines()
                .nth(2)
                .unwrap()
                .starts_with("gralora,8,2,800,0.608"),
            "{csv}"
        );
        let md = std::fs::read_to_string(out.join("results.md")).unwrap();
        assert!(md.contains("| gralora | 64 | 4 | 6400 | 0.6640 |"), "{md}");
        assert!(out.join("rank-sweep.svg").is_file() && out.join("rank-sweep.png").is_file());

        // Again: everything reused, nothing trained.
        let mut again = Vec::new();
        let rows = rank_sweep(&spec, &out, &mut |_| {}, &mut fake_train(&mut again)).unwrap();
        assert!(again.is_empty());
        assert!(rows.iter().all(|r| r.status == RunStatus::Reused));

        // An interrupted run (config, no metrics) is resumed.
        std::fs::remove_file(RunDir(out.join("lora-r64")).metrics()).unwrap();
        let mut resumed = Vec::new();
        rank_sweep(&spec, &out, &mut |_| {}, &mut fake_train(&mut resumed)).unwrap();
        assert_eq!(resumed, [("lora-r64".to_string(), true)]);

        // Other settings in the same directory: refused, naming the field.
        let mut other = spec.clone();
        other.base.seed = 7;
        let mut none = Vec::new();
        let err = rank_sweep(&other, &out, &mut |_| {}, &mut fake_train(&mut none))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lora-r8") && err.contains("seed: 42 there, 7 now"),
            "{err}"
        );
        assert!(none.is_empty());
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn sweep_refuses_bad_plans() {
        let mut s = spec();
        s.ranks.clear();
        assert!(s.runs().unwrap_err().to_string().contains("--ranks"));
        let mut s = spec();
        s.ranks = vec![6];
        s.k = Some(4);
        // k must divide r.
        assert!(s.runs().is_err());
        let mut s = spec();
        s.methods.push(Method::Full);
        let runs = s.runs().unwrap();
        assert_eq!(runs.last().unwrap().name, "full");
        assert_eq!(runs.last().unwrap().config.lr, 5e-5);
    }

    #[test]
    fn method_names_match_the_parser_and_the_saved_configs() {
        for m in [
            Method::Lora,
            Method::Gralora,
            Method::Full,
            Method::Gora,
            Method::GoraGralora,
        ] {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }

    #[test]
    fn paper_rule_for_k() {
        assert_eq!(
            [8, 16, 32, 64, 128, 6, 1].map(paper_k),
            [2, 2, 2, 4, 4, 2, 1]
        );
    }
}
