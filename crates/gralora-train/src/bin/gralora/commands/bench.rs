//! `gralora bench step`: whole training steps of several methods, timed round-robin.

use anyhow::Result;
use gralora_models::assets;
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_train::trainer::{Method, TrainConfig};
use serde_json::json;

use crate::args::BenchStepArgs;
use crate::commands::fetch::fetch_missing;
use crate::commands::train::adapter_config;
use crate::setup::{device_name, select_device};
use crate::usage;

pub fn step(args: BenchStepArgs) -> Result<()> {
    let methods: Vec<Method> = args.method.clone();
    if methods.iter().any(|m| m.is_gora()) {
        return Err(usage(
            "bench step times lora, gralora or full (GoRA trains the same adapters as lora/gralora)",
        ));
    }
    fetch_missing(&args.model, None)?;
    let device = select_device(args.device)?;
    let source = ModelSource::resolve(&args.model, &assets::home())?;
    let LoadedModel::Encoder { model: bert, .. } = LoadedModel::load(&source, &device)?.model
    else {
        return Err(usage(
            "bench step takes an encoder (BERT family), e.g. --model minilm",
        ));
    };
    let configs: Vec<TrainConfig> = methods
        .iter()
        .map(|&method| {
            let mut config = TrainConfig::new(&args.model, "sst2", method);
            adapter_config(&mut config, &args.adapter);
            config
        })
        .collect();
    let results = gralora_train::bench::bench_steps(
        bert,
        &configs,
        gralora_train::bench::BenchPlan {
            batch: args.batch_size,
            seq_len: args.seq_len,
            warmup: args.warmup,
            iters: args.iters.max(1),
            kernel_names: args.kernels,
        },
        &device,
        &mut |line| eprintln!("{line}"),
    )?;
    let mut first_ms = None;
    let slope = results.first().and_then(|r| r.rss_slope_mb_per_100_rounds);
    for ((method, config), r) in methods.into_iter().zip(&configs).zip(results) {
        let ratio = r.ms_per_step / *first_ms.get_or_insert(r.ms_per_step);
        let name = method.name();
        let c = &r.per_step;
        if args.json {
            let mut line = json!({
                "method": name, "rank": config.rank, "k": config.k,
                "batch_size": args.batch_size, "seq_len": args.seq_len, "device": device_name(&device),
                "ms_per_step": r.ms_per_step, "warm_ms_per_step": r.ms_per_step,
                "first_step_ms": r.first_step_ms, "tokens_per_s": r.tokens_per_s,
                "peak_rss_mb": r.peak_rss_mb, "trainable_params": r.trainable_params,
                "time_ratio_to_first": ratio,
                "launches_per_step": c.launches, "host_reads_per_step": c.host_reads,
                "host_writes_per_step": c.host_writes, "kernels_compiled": r.kernels_compiled,
                "fusion_ops_per_step": c.fusion_ops, "fusion_blocks_per_step": c.fusion_blocks,
                "fused_blocks_per_step": c.fused_blocks, "opaque_ops_per_step": c.opaque_ops,
                "rss_slope_mb_per_100_rounds": r.rss_slope_mb_per_100_rounds,
            });
            if args.kernels {
                line["launches_by_kernel"] = json!(c.by_kernel);
            }
            println!("{line}");
        } else {
            println!(
                "{name:<8} r={} k={} batch {}×{} on {}: {:.1} ms/step ({ratio:.3}× the first), first step {:.0} ms, {:.0} tokens/s, peak memory so far {:.0} MiB, {} trainable parameters",
                config.rank,
                config.k,
                args.batch_size,
                args.seq_len,
                device_name(&device),
                r.ms_per_step,
                r.first_step_ms,
                r.tokens_per_s,
                r.peak_rss_mb.unwrap_or(f64::NAN),
                r.trainable_params
            );
            println!(
                "         per step: {c}; {} kernels compiled",
                r.kernels_compiled
            );
            if args.kernels {
                for (kernel, n) in &c.by_kernel {
                    println!("         {n:>6} × {kernel}");
                }
            }
        }
    }
    if !args.json {
        match slope {
            Some(s) => println!(
                "memory: the resident set grew {s:+.2} MiB per 100 rounds over the second half of the {} rounds",
                args.iters.max(1)
            ),
            None => {
                println!("memory: no resident-set slope (it needs --iters 20 or more, on Linux)")
            }
        }
    }
    Ok(())
}
