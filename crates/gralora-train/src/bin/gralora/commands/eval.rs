//! `gralora eval`: score a model, with a trained adapter and head, on a task.

use std::time::Instant;

use anyhow::Result;
use gralora_models::assets;
use serde_json::json;

use crate::args::EvalArgs;
use crate::commands::fetch::{fetch_list, fetch_missing};
use crate::setup::select_device;

pub fn run(args: EvalArgs) -> Result<()> {
    let task = match (&args.task, &args.data) {
        (Some(t), _) => t.clone(),
        (None, Some(file)) => file.display().to_string(),
        (None, None) => unreachable!("clap requires --task or --data"),
    };
    if task.eq_ignore_ascii_case("gsm8k") {
        return eval_gsm8k(args);
    }
    fetch_missing(&args.model, args.task.as_deref())?;
    let device = select_device(args.device)?;
    let start = Instant::now();
    let m = match (&args.data, &args.adapter) {
        (Some(file), Some(run)) => gralora_train::tasks::eval_file(
            &args.model,
            run,
            file,
            args.max_eval,
            32,
            &device,
            &assets::home(),
        )?,
        _ => gralora_train::tasks::eval(
            &args.model,
            args.adapter.as_deref(),
            &task,
            args.max_len,
            args.max_eval,
            64,
            &device,
            &assets::home(),
        )?,
    };
    if args.json {
        let mut v = serde_json::to_value(m)?;
        v["task"] = json!(task);
        println!("{v}");
    } else if let (Some(r), Some(rho)) = (m.pearson, m.spearman) {
        println!(
            "{task} MSE {:.4}, Pearson {r:.4}, Spearman {rho:.4} ({} examples, {:.1} s)",
            m.loss,
            m.examples,
            start.elapsed().as_secs_f64()
        );
    } else if let Some(ppl) = m.perplexity {
        println!(
            "{task} loss {:.4}, perplexity {ppl:.3}, token accuracy {:.4} ({} examples, {:.1} s)",
            m.loss,
            m.accuracy,
            m.examples,
            start.elapsed().as_secs_f64()
        );
    } else {
        println!(
            "{} accuracy {:.4}{} loss {:.4} ({} examples, {:.1} s)",
            task,
            m.accuracy,
            m.f1.map(|f| format!(", F1 {f:.4}")).unwrap_or_default(),
            m.loss,
            m.examples,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

fn eval_gsm8k(args: EvalArgs) -> Result<()> {
    fetch_missing(&args.model, None)?;
    let home = assets::home();
    if !home.join(gralora_train::tasks::gsm8k::GSM8K_TEST).is_file() {
        fetch_list(vec![assets::find("gsm8k")?], false)?;
    }
    let device = select_device(args.device)?;
    let start = Instant::now();
    let m = gralora_train::tasks::gsm8k::eval_model(
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
