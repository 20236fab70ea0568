//! `gralora`: fetch assets, run and fine-tune models with GraLoRA, GoRA and LoRA adapters.
//!
//! Exit codes: 0 success, 2 a usage error (bad arguments or settings), 1 any other failure.
//! Every error is one line on stderr, `error: ` and its context chain.

mod args;
mod commands;
mod setup;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

use args::{BenchCommand, Cli, Command, ExperimentCommand};

/// A usage error raised by the binary itself (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A [`UsageError`] as an `anyhow` error.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn main() -> ExitCode {
    setup::tune_allocator();
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan drivers print an error line when probing adapters without it; gralora
        // itself never reads it. Safety: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e.render().to_string()));
            return ExitCode::from(2);
        }
    };
    // The kernel switches (docs/DEVELOPING.md) come from the environment, read here only.
    match gralora::kernels::KernelPolicy::from_vars(|k| std::env::var(k).ok()) {
        Ok(policy) => gralora::kernels::set_kernel_policy(policy),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Fetch(args) => commands::fetch::run(args),
        Command::Infer(args) => commands::infer::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Export(args) => commands::export::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Bench(BenchCommand::Step(args)) => commands::bench::step(args),
        Command::Experiment(ExperimentCommand::RankSweep(args)) => {
            commands::experiment::rank_sweep(args)
        }
        Command::Experiment(ExperimentCommand::GradDeviation(args)) => {
            commands::experiment::grad_deviation(args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&with_flags(&e)));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The error's context chain, a library's setting named by its flag (`max_len` → `--max-len`).
fn with_flags(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match e.downcast_ref::<gralora_train::TrainError>() {
        Some(inner @ gralora_train::TrainError::Setting { setting, msg }) => text.replace(
            &inner.to_string(),
            &format!("--{} {msg}", setting.replace('_', "-")),
        ),
        _ => text,
    }
}

/// A message on one line: clap's `error: ` prefix and its `--help` hint dropped, the remaining
/// lines joined.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ")
}

/// 2 for a usage error anywhere in the chain, 1 otherwise.
fn exit_code(e: &anyhow::Error) -> u8 {
    use gralora::AdapterError;
    use gralora_models::ModelError;
    use gralora_train::TrainError;
    // Bad settings of an adapter (rank, k, targets); an unreadable file is a failure.
    let adapter_usage = |a: &AdapterError| {
        matches!(
            a,
            AdapterError::InvalidConfig { .. }
                | AdapterError::NotDivisible { .. }
                | AdapterError::NoTargetMatched { .. }
                | AdapterError::InvalidPattern { .. }
        )
    };
    let is_usage = e.chain().any(|c| {
        c.is::<UsageError>()
            || c.downcast_ref::<AdapterError>().is_some_and(adapter_usage)
            || match c.downcast_ref::<TrainError>() {
                Some(TrainError::Usage(_) | TrainError::Setting { .. }) => true,
                Some(TrainError::Adapter(a)) => adapter_usage(a),
                Some(TrainError::Model(ModelError::Adapter(a))) => adapter_usage(a),
                _ => false,
            }
    });
    if is_usage { 2 } else { 1 }
}
