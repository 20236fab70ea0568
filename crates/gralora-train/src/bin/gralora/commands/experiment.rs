//! `gralora experiment`: the rank sweep and the gradient deviation.

use anyhow::Result;
use gralora_models::assets;
use gralora_train::trainer::{Method, MethodOptions};

use crate::args::{AdapterArgs, DeviationArgs, SweepArgs};
use crate::commands::fetch::fetch_missing;
use crate::commands::train::build_config;
use crate::setup::{device_name, select_device};

/// The methods in the order given, each once.
fn distinct(list: &[Method]) -> Vec<Method> {
    let mut methods = Vec::new();
    for &m in list {
        if !methods.contains(&m) {
            methods.push(m);
        }
    }
    methods
}

pub fn rank_sweep(args: SweepArgs) -> Result<()> {
    let methods = distinct(&args.grid.methods);
    let adapter = AdapterArgs {
        rank: args.grid.ranks.first().copied().unwrap_or(8),
        k: args.grid.k.unwrap_or(2),
        hybrid_r: 0,
        alpha: args.alpha,
        dropout: args.dropout,
        targets: args.targets.clone(),
    };
    // Built as GoRA so that GoRA's settings are parsed; other methods drop them.
    let base = build_config(&args.model, &args.task, Method::Gora, &adapter, &args.hyper)?;
    let spec = gralora_train::experiments::SweepSpec {
        base,
        ranks: args.grid.ranks.clone(),
        methods,
        k: args.grid.k,
        options: MethodOptions {
            alpha: args.alpha,
            lr: args.hyper.lr,
            b_lr_ratio: args.hyper.b_lr_ratio,
        },
    };
    let runs = spec.runs()?;
    fetch_missing(&args.model, Some(&args.task))?;
    let device = select_device(args.device)?;
    eprintln!(
        "rank sweep: {} runs of {} on {} on {} into {}",
        runs.len(),
        args.model,
        args.task,
        device_name(&device),
        args.out.display()
    );
    let home = assets::home();
    let rows = gralora_train::experiments::rank_sweep(
        &spec,
        &args.out,
        &mut |line| eprintln!("{line}"),
        &mut |config, out, resume, report| {
            gralora_train::tasks::train(config, out, resume, &device, &home, report).map(|_| ())
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

pub fn grad_deviation(args: DeviationArgs) -> Result<()> {
    let spec = gralora_train::experiments::DeviationSpec {
        model: args.model.clone(),
        task: args.task.clone(),
        ranks: args.grid.ranks.clone(),
        methods: distinct(&args.grid.methods),
        k: args.grid.k,
        layer: args.layer.clone(),
        batches: args.batches,
        batch_size: args.batch_size,
        max_len: args.max_len,
        seed: args.seed,
        from: args.from.clone(),
    };
    fetch_missing(&args.model, Some(&args.task))?;
    let device = select_device(args.device)?;
    let r = gralora_train::experiments::grad_deviation(
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
