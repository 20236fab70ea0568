//! Running a task: the one entry point that checks a run's settings and directory, loads the
//! model and hands the right workload to the trainer's session; k-fold cross-validation over it;
//! and scoring a finished run.

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use gralora_models::{BertClassifier, LoadedModel, ModelSource, Pooling};

use super::builtin::{TASKS, Task};
use super::classification::{
    ClassifierWorkload, Labels, evaluate, load_head, pad_id, tokenize_counted,
};
use super::multiple_choice::{self, MC_TASKS, MultipleChoiceWorkload, evaluate_mc, mc_tasks};
use super::regression::{RegressionWorkload, evaluate_scores, tokenize_scored};
use super::sft::{SftEncoder, SftWorkload, evaluate_lm, run_template};
use crate::data::seeded_subset;
use crate::data::{
    Items, has_scores, items_with_labels, scored_items, sft_file_items, subset_items,
};
use crate::error::{Result, TrainError};
use crate::trainer::{
    EvalMetrics, Report, RunDir, RunMetrics, Session, TrainConfig, peak_rss_mib, write_json,
};

/// A finished run: its metrics and, for encoders, the trained classifier.
pub struct Finished {
    /// What was written to `metrics.json`.
    pub metrics: RunMetrics,
    /// The trained classifier (inference mode); `None` for decoders and cross-validated runs.
    pub model: Option<BertClassifier>,
}

/// Check `config` before anything is loaded or written: its settings and its task's name.
pub fn validate(config: &TrainConfig) -> Result<()> {
    if config.data.is_some() {
        return config.validate();
    }
    let name = config.task.to_ascii_lowercase();
    if name == "gsm8k" {
        return Err(TrainError::Usage(
            "gsm8k has no training split offline; score a model with `gralora eval --model smollm2 --task gsm8k`".into(),
        ));
    }
    if name.parse::<Task>().is_err() && mc_tasks(&name).is_err() {
        return Err(TrainError::Usage(format!(
            "unknown task `{}`; encoder tasks: {}; decoder tasks: {}",
            config.task,
            TASKS.join(", "),
            MC_TASKS.join(", ")
        )));
    }
    config.validate()
}

/// Train as `config` says, writing into `out`. `resume`: continue from the last checkpoint in
/// `out` (the configuration saved there is used). `device`: the (non-autodiff) device.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    home: &Path,
    report: Report<'_>,
) -> Result<Finished> {
    let started = Instant::now();
    let dir = RunDir(out.to_path_buf());
    validate(config)?;
    if config.fold.is_none()
        && config.data.is_none()
        && let Ok(task) = config.task.parse::<Task>()
        && task.cross_validated()
    {
        return train_folds(task, config, out, resume, device, home, report);
    }
    dir.check_for(config, resume)?;
    // A resumed directory exists: lock it before anything is loaded.
    let _lock = if resume { Some(dir.lock()?) } else { None };
    let source = ModelSource::resolve(&config.model, home)?;
    let loaded = LoadedModel::load(&source, device)?;
    let session = Session {
        config,
        out,
        dir,
        resume,
        started,
        device,
        home,
        locked: resume,
    };
    match loaded.model {
        LoadedModel::Encoder {
            model, tokenizer, ..
        } => {
            if let Some(data) = &config.data {
                if data.regression || has_scores(&data.train, &data.columns())? {
                    let scored = scored_items(
                        &data.train,
                        data.eval.as_deref(),
                        data.eval_split,
                        config.seed,
                        &data.columns(),
                    )?;
                    let name = data.task_name();
                    let eval_name = data.eval_name();
                    let workload = RegressionWorkload::new(
                        config,
                        scored,
                        (name.clone(), name, eval_name),
                        model,
                        tokenizer,
                        source,
                        report,
                    )?;
                    let (metrics, model) = session.run(workload, report)?;
                    return Ok(Finished {
                        metrics,
                        model: Some(model),
                    });
                }
                let workload =
                    ClassifierWorkload::from_files(config, data, model, tokenizer, source, report)?;
                let (metrics, model) = session.run(workload, report)?;
                return Ok(Finished {
                    metrics,
                    model: Some(model),
                });
            }
            let task = config.task.parse::<Task>().map_err(|_| {
                TrainError::Usage(format!(
                    "{} is an encoder; the task `{}` is for decoders (e.g. --model smollm2); encoder tasks: {}",
                    config.model,
                    config.task,
                    TASKS.join(", ")
                ))
            })?;
            let workload =
                ClassifierWorkload::new(config, task, model, tokenizer, source, home, report)?;
            let (metrics, model) = session.run(workload, report)?;
            Ok(Finished {
                metrics,
                model: Some(model),
            })
        }
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            if let Some(data) = &config.data {
                let workload = SftWorkload::new(config, data, model, tokenizer, source, report)?;
                let (metrics, _) = session.run(workload, report)?;
                return Ok(Finished {
                    metrics,
                    model: None,
                });
            }
            let tasks = mc_tasks(&config.task).map_err(|_| {
                TrainError::Usage(format!(
                    "{} is a decoder; the task `{}` is for encoders (e.g. --model minilm); decoder tasks: {}",
                    config.model,
                    config.task,
                    MC_TASKS.join(", ")
                ))
            })?;
            let workload = MultipleChoiceWorkload::new(
                config, &tasks, model, tokenizer, source, home, report,
            )?;
            let (metrics, _) = session.run(workload, report)?;
            Ok(Finished {
                metrics,
                model: None,
            })
        }
    }
}

/// Evaluate a model (with a `gralora train` output directory: adapter + head) on a task.
#[allow(clippy::too_many_arguments)]
pub fn eval(
    model_arg: &str,
    run: Option<&Path>,
    task_name: &str,
    max_len: Option<usize>,
    max_eval: Option<usize>,
    batch_size: usize,
    device: &Device,
    home: &Path,
) -> Result<EvalMetrics> {
    let saved = run.and_then(|r| RunDir(r.to_path_buf()).read_config().ok());
    let source = ModelSource::resolve(model_arg, home)?;
    let mut loaded = LoadedModel::load(&source, device)?;
    if let Some(run) = run
        && gralora::is_peft_dir(run)
    {
        loaded.model.load_adapter(run)?;
    }
    let max_len = max_len.or(saved.as_ref().map(|c| c.max_len));
    let (bert, mut tokenizer) = match loaded.model {
        LoadedModel::Encoder {
            model, tokenizer, ..
        } => (model, tokenizer),
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            let tasks = mc_tasks(task_name)?;
            let (_, val) = multiple_choice::load(&tasks, home)?;
            let seed = saved.as_ref().map_or(42, |c| c.seed);
            let val = seeded_subset(val, max_eval, seed, tasks.len() > 1);
            return evaluate_mc(&model, &tokenizer, &val, max_len.unwrap_or(256), device);
        }
    };
    let task: Task = task_name.parse()?;
    let Some(run) = run else {
        return Err(TrainError::Usage(format!(
            "the {} task scores a trained classification head: pass --adapter DIR (a `gralora train` output)",
            task.name()
        )));
    };
    let dir = RunDir(run.to_path_buf());
    let pooling = match saved.as_ref().map(|c| c.pooling.as_str()) {
        Some("cls") => Pooling::Cls,
        _ => Pooling::Mean,
    };
    if !dir.head().is_file() {
        return Err(TrainError::Data {
            path: dir.head(),
            msg: "no classification head here; pass the --out directory of a finished `gralora train`".into(),
        });
    }
    let model = load_head(bert, &dir.head(), pooling)?;
    let eval = seeded_subset(task.load(home)?.eval, max_eval, 0, false);
    let (items, _) = tokenize_counted(
        &mut tokenizer,
        &Items::untokenized(eval),
        max_len.unwrap_or(128),
    )?;
    evaluate(&model, &items, pad_id(&tokenizer), batch_size)
}

/// Evaluate a model (with a `gralora train` output directory trained on the user's files) on
/// the data file `file`: a classifier's accuracy (the run's `labels.json` and columns), or a
/// decoder's held-out loss and perplexity (the run's template and masking).
pub fn eval_file(
    model_arg: &str,
    run: &Path,
    file: &Path,
    max_eval: Option<usize>,
    batch_size: usize,
    device: &Device,
    home: &Path,
) -> Result<EvalMetrics> {
    let dir = RunDir(run.to_path_buf());
    let saved = dir.read_config()?;
    let Some(data) = saved.data.clone() else {
        return Err(TrainError::Usage(format!(
            "{} was trained on the built-in task `{}`; evaluate it with --task {}",
            run.display(),
            saved.task,
            saved.task
        )));
    };
    crate::data::table::Format::of(file)?;
    let source = ModelSource::resolve(model_arg, home)?;
    let mut loaded = LoadedModel::load(&source, device)?;
    if gralora::is_peft_dir(run) {
        loaded.model.load_adapter(run)?;
    }
    match loaded.model {
        LoadedModel::Encoder {
            model,
            mut tokenizer,
            ..
        } => {
            let labels = Labels::read(&dir.labels())?;
            let model = load_head(model, &dir.head(), saved.pooling()?)?;
            if labels.regression {
                let d = scored_items(file, Some(file), 0.0, 0, &data.columns())?;
                let eval = subset_items(&d.eval, max_eval, 0, false);
                let items = tokenize_scored(&mut tokenizer, &eval, saved.max_len)?;
                return evaluate_scores(&model, &items, pad_id(&tokenizer), batch_size);
            }
            // The file is read as an evaluation file of a training set with these labels.
            let d = items_with_labels(file, &data.columns(), &labels.labels)?;
            let eval = subset_items(&d, max_eval, 0, false);
            let (items, _) = tokenize_counted(&mut tokenizer, &eval, saved.max_len)?;
            evaluate(&model, &items, pad_id(&tokenizer), batch_size)
        }
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            let template = run_template(Some(run), &tokenizer)?;
            let examples = sft_file_items(file, &data.sft_columns())?;
            let examples = subset_items(&examples, max_eval, 0, false);
            let encoder = SftEncoder {
                tokenizer: &tokenizer,
                template: template.as_ref(),
                train_on_prompt: data.train_on_prompt,
                max_len: saved.max_len.min(model.max_len),
            };
            let (items, _) = encoder.encode_items(&examples)?;
            evaluate_lm(&model, &items, batch_size, device)
        }
    }
}

/// k-fold cross-validation on a task's dev set: fold `i` trains on the others into `out/fold-i`;
/// `out/metrics.json` holds the means and every fold. Finished folds are kept on `--resume`.
fn train_folds(
    task: Task,
    config: &TrainConfig,
    out: &Path,
    resume: bool,
    device: &Device,
    home: &Path,
    report: Report<'_>,
) -> Result<Finished> {
    let started = Instant::now();
    let dir = RunDir(out.to_path_buf());
    dir.check_for(config, resume)?;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let _lock = dir.lock()?;
    if !resume {
        write_json(&dir.config(), config)?;
    }
    let mut runs = Vec::new();
    for fold in 0..config.folds {
        let sub_out = out.join(format!("fold-{fold}"));
        let sub_dir = RunDir(sub_out.clone());
        let sub = TrainConfig {
            fold: Some(fold),
            ..config.clone()
        };
        report(&format!("fold {}/{}", fold + 1, config.folds));
        let metrics = if sub_dir.metrics().is_file() {
            let text = std::fs::read_to_string(sub_dir.metrics())
                .map_err(|e| TrainError::io(sub_dir.metrics(), e))?;
            serde_json::from_str(&text).map_err(|e| TrainError::Data {
                path: sub_dir.metrics(),
                msg: e.to_string(),
            })?
        } else {
            let again = sub_dir.config().is_file();
            train(&sub, &sub_out, again, device, home, report)?.metrics
        };
        runs.push(metrics);
    }
    let k = runs.len() as f64;
    let mean = |f: &dyn Fn(&RunMetrics) -> f64| runs.iter().map(f).sum::<f64>() / k;
    let acc = mean(&|m| m.eval.accuracy);
    let std = (runs
        .iter()
        .map(|m| (m.eval.accuracy - acc).powi(2))
        .sum::<f64>()
        / k)
        .sqrt();
    let first = &runs[0];
    let metrics = RunMetrics {
        task: task.name().into(),
        method: config.method,
        model: config.model.clone(),
        device: first.device.clone(),
        train_split: format!(
            "{} validation, {}-fold cross-validation",
            task.name(),
            config.folds
        ),
        train_examples: runs.iter().map(|m| m.train_examples).sum::<usize>() / runs.len(),
        eval_split: format!("{} validation, held-out folds", task.name()),
        eval: EvalMetrics {
            examples: runs.iter().map(|m| m.eval.examples).sum(),
            accuracy: acc,
            f1: runs
                .iter()
                .map(|m| m.eval.f1)
                .sum::<Option<f64>>()
                .map(|s| s / k),
            loss: mean(&|m| m.eval.loss),
            perplexity: None,
            pearson: None,
            spearman: None,
        },
        epochs: first.epochs,
        trainable_params: first.trainable_params,
        wall_s: started.elapsed().as_secs_f64(),
        train_s: runs.iter().map(|m| m.train_s).sum(),
        tokens_per_s: mean(&|m| m.tokens_per_s),
        peak_rss_mb: peak_rss_mib(),
        peak_rss_mb_by_epoch: Vec::new(),
        gora: None,
        folds: Some(runs.iter().map(|m| m.eval).collect()),
        accuracy_std: Some(std),
        baseline_accuracy: None,
        baseline_loss: None,
        resumed_from_epoch: None,
        resumed_from_batch: None,
        seed: config.seed,
    };
    write_json(&dir.metrics(), &metrics)?;
    Ok(Finished {
        metrics,
        model: None,
    })
}
