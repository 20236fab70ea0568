//! `gralora infer`: a sentence embedding (encoders) or a completion (decoders).

use std::io::{IsTerminal, Write};
use std::time::Instant;

use anyhow::{Result, anyhow};
use gralora_models::assets;
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_models::{Bert, BertInput, Sampler};
use gralora_models::{BertClassifier, Message, Pooling, TextTokenizer};
use gralora_train::tasks::sft::{chat_prompt, run_template};
use gralora_train::tasks::{Labels, class_probabilities, class_scores, load_head};
use gralora_train::trainer::{RunDir, peak_rss_mib};
use serde_json::json;

use crate::args::InferArgs;
use crate::setup::{device_name, select_device, setup_cpu_blas};
use crate::usage;

pub fn run(args: InferArgs) -> Result<()> {
    setup_cpu_blas(&assets::home())?;
    let device = select_device(args.device)?;
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
            model,
            mut tokenizer,
            ..
        } => {
            let text = args.text.ok_or_else(|| {
                usage("this model is an encoder: give --text \"...\" (--prompt is for decoders)")
            })?;
            if let Some(run) = &args.adapter
                && RunDir(run.clone()).head().is_file()
            {
                return classify(
                    run,
                    model,
                    &mut tokenizer,
                    &text,
                    args.text_pair.as_deref(),
                    args.json,
                );
            }
            let encoded = tokenizer.encode(&text, true)?;
            if encoded.ids.len() > model.max_len {
                return Err(usage(format!(
                    "the text is {} tokens long; this encoder takes at most {}",
                    encoded.ids.len(),
                    model.max_len
                )));
            }
            let start = Instant::now();
            let input = BertInput::from_encoded(&[encoded], 0, &device);
            let embedding: Vec<f32> = Bert::embed(&model, &input)
                .into_data()
                .convert::<f32>()
                .try_to_vec()
                .map_err(|e| anyhow!("reading the embedding back: {e:?}"))?;
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
            let (prompt, ids) = match (&args.prompt, &args.chat) {
                (Some(p), _) => (p.clone(), tokenizer.encode(p, true)?.ids),
                (None, Some(message)) => {
                    let template =
                        run_template(args.adapter.as_deref(), &tokenizer)?.ok_or_else(|| {
                            usage(format!(
                                "{} has no chat template; use --prompt for plain text",
                                args.model
                            ))
                        })?;
                    let ids = chat_prompt(&tokenizer, &template, message)?;
                    (
                        template.prompt(&[Message::new("user", message.clone())])?,
                        ids,
                    )
                }
                (None, None) => {
                    return Err(usage(
                        "this model is a decoder: give --prompt \"...\" or --chat \"...\" (--text is for encoders)",
                    ));
                }
            };
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

/// `infer --adapter RUN --text ...` with a classifier run: the predicted class and every class's
/// probability, by the names in the run's `labels.json` (class indices for built-in tasks).
fn classify(
    run: &std::path::Path,
    bert: Bert,
    tokenizer: &mut TextTokenizer,
    text: &str,
    pair: Option<&str>,
    json_out: bool,
) -> Result<()> {
    let dir = RunDir(run.to_path_buf());
    let config = dir.read_config().ok();
    let pooling = match config.as_ref().map(|c| c.pooling.as_str()) {
        Some("cls") => Pooling::Cls,
        _ => Pooling::Mean,
    };
    let max_len = config.as_ref().map_or(128, |c| c.max_len);
    let model: BertClassifier = load_head(bert, &dir.head(), pooling)?;
    let labels = if dir.labels().is_file() {
        Some(Labels::read(&dir.labels())?)
    } else {
        None
    };
    if labels.as_ref().is_some_and(|l| l.regression) {
        let score = class_scores(&model, tokenizer, text, pair, max_len)?[0];
        if json_out {
            println!("{}", json!({ "score": score }));
        } else {
            println!("{score:.4}");
        }
        return Ok(());
    }
    let probs = class_probabilities(&model, tokenizer, text, pair, max_len)?;
    let names: Vec<String> = match labels {
        Some(l) => l.labels,
        None => (0..probs.len()).map(|i| i.to_string()).collect(),
    };
    if names.len() != probs.len() {
        return Err(anyhow!(
            "{}: {} labels for a head of {} classes; the run directory is inconsistent",
            dir.labels().display(),
            names.len(),
            probs.len()
        ));
    }
    let best = (0..probs.len())
        .max_by(|&a, &b| probs[a].total_cmp(&probs[b]))
        .unwrap_or(0);
    if json_out {
        let p: serde_json::Map<String, serde_json::Value> = names
            .iter()
            .zip(&probs)
            .map(|(n, &p)| (n.clone(), json!(p)))
            .collect();
        println!("{}", json!({ "label": names[best], "probabilities": p }));
    } else {
        println!("{}", names[best]);
        for (n, p) in names.iter().zip(&probs) {
            println!("  {p:.4}  {n}");
        }
    }
    Ok(())
}
