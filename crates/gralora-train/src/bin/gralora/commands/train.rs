//! `gralora train`: fine-tune a model on a task and report the evaluation metric.

use anyhow::Result;
use gralora_models::assets;
use gralora_train::trainer::{
    DataSettings, GoraSettings, Method, MethodOptions, RunDir, TrainConfig,
};

use crate::args::{AdapterArgs, DataArgs, HyperArgs, TrainArgs};
use crate::commands::fetch::fetch_missing;
use crate::setup::{device_name, select_device};
use crate::usage;

pub fn run(args: TrainArgs) -> Result<()> {
    let config = if args.resume {
        let dir = RunDir(args.out.clone());
        if !dir.config().is_file() {
            return Err(usage(format!(
                "{} holds no run to resume (no train_config.json); drop --resume to start one",
                args.out.display()
            )));
        }
        dir.read_config()?
    } else {
        let mut config = build_config(
            args.model.as_deref().unwrap_or_default(),
            args.task.as_deref().unwrap_or_default(),
            args.method,
            &args.adapter,
            &args.hyper,
        )?;
        config.data = data_settings(&args.data)?;
        if let Some(d) = &config.data {
            config.task = d.task_name();
        }
        config
    };
    gralora_train::tasks::validate(&config)?;
    let task = config.data.is_none().then_some(config.task.as_str());
    fetch_missing(&config.model, task)?;
    let device = select_device(args.device)?;
    eprintln!(
        "training {} on {} with {} on {}",
        config.model,
        config.task,
        config.method,
        device_name(&device)
    );
    let done = gralora_train::tasks::train(
        &config,
        &args.out,
        args.resume,
        &device,
        &assets::home(),
        &mut |line| eprintln!("{line}"),
    )?;
    let m = &done.metrics;
    let samples = args.out.join("samples.json");
    if !args.json
        && let Ok(text) = std::fs::read_to_string(&samples)
        && let Ok(samples) = serde_json::from_str::<Vec<gralora_train::tasks::Sample>>(&text)
    {
        for s in samples {
            eprintln!("sample: {:?}\n  -> {:?}", s.prompt, s.completion);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(m)?);
        return Ok(());
    }
    let e = &m.eval;
    let score = if let (Some(r), Some(rho)) = (e.pearson, e.spearman) {
        format!("MSE {:.4}, Pearson {r:.4}, Spearman {rho:.4}", e.loss)
    } else if let Some(ppl) = e.perplexity {
        format!(
            "loss {:.4}, perplexity {ppl:.3}, token accuracy {:.4}{}",
            e.loss,
            e.accuracy,
            m.baseline_loss
                .map(|b| format!(" (untrained loss {b:.4}, perplexity {:.3})", b.exp()))
                .unwrap_or_default()
        )
    } else {
        format!(
            "accuracy {:.4}{}{}{}",
            e.accuracy,
            m.accuracy_std
                .map(|s| format!(
                    " ± {s:.4} over {} folds",
                    m.folds.as_ref().map_or(0, Vec::len)
                ))
                .unwrap_or_default(),
            m.baseline_accuracy
                .map(|b| format!(" (untrained {b:.4})"))
                .unwrap_or_default(),
            e.f1.map(|f| format!(", F1 {f:.4}")).unwrap_or_default()
        )
    };
    println!(
        "{} {} {score} ({} examples) | {} epochs, {:.0} train tokens/s, {:.0} s, peak memory {:.0} MiB | {}",
        m.task,
        m.eval_split,
        e.examples,
        m.epochs,
        m.tokens_per_s,
        m.wall_s,
        m.peak_rss_mb.unwrap_or(f64::NAN),
        args.out.display()
    );
    Ok(())
}

/// The data settings of the command line (`None` without --data); paths made absolute, so a
/// resumed run finds its files from any directory.
pub fn data_settings(a: &DataArgs) -> Result<Option<DataSettings>> {
    let Some(train) = &a.data else {
        return Ok(None);
    };
    let absolute = |p: &std::path::Path| -> Result<std::path::PathBuf> {
        std::path::absolute(p).map_err(|e| usage(format!("{}: {e}", p.display())))
    };
    let mut d = DataSettings::new(absolute(train)?);
    d.eval = a.eval_data.as_deref().map(absolute).transpose()?;
    d.eval_split = a.eval_split;
    d.text_column = a.text_column.clone();
    d.pair_column = a.pair_column.clone();
    d.label_column = a.label_column.clone();
    d.regression = a.regression;
    d.prompt_column = a.prompt_column.clone();
    d.completion_column = a.completion_column.clone();
    d.chat_template = a.chat_template.as_deref().map(absolute).transpose()?;
    d.train_on_prompt = a.train_on_prompt;
    d.packing = a.packing;
    d.sample_prompts = a.sample_prompts;
    Ok(Some(d))
}

/// The adapter settings of `a` into `config`.
pub fn adapter_config(config: &mut TrainConfig, a: &AdapterArgs) {
    config.rank = a.rank;
    config.k = a.k;
    config.hybrid_r = a.hybrid_r;
    config.alpha = a.alpha.unwrap_or(2.0 * a.rank as f64);
    config.dropout = a.dropout;
    config.targets = a.targets.clone();
}

/// A training configuration from the command line (method-dependent defaults from the library).
pub fn build_config(
    model: &str,
    task: &str,
    method: Method,
    adapter: &AdapterArgs,
    h: &HyperArgs,
) -> Result<TrainConfig> {
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
            feature: h.gora_feature.into(),
            importance: h.gora_importance.into(),
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
    c.pooling = h.pooling.name().into();
    c.folds = h.folds;
    c.checkpoint_every = h.checkpoint_every;
    Ok(c)
}
