//! `gralora fetch`, and fetching what another command needs before it runs.

use std::io::IsTerminal;

use anyhow::Result;
use gralora_models::assets::{self, Fetched, Progress};
use gralora_train::tasks::{Task, mc_tasks};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::FetchArgs;
use crate::setup::setup_cpu_blas;

pub fn run(args: FetchArgs) -> Result<()> {
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
pub fn fetch_missing(model: &str, task: Option<&str>) -> Result<()> {
    let home = assets::home();
    let mut list = Vec::new();
    if let Some(name) = model_asset(model)
        && !home.join(name).is_dir()
    {
        list.push(assets::find(name)?);
    }
    let (files, names): (Vec<String>, Vec<&str>) = match task {
        None => (Vec::new(), Vec::new()),
        Some(t) => match (t.parse::<Task>(), mc_tasks(t)) {
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
    // OpenBLAS for the CPU products, fetched on x86-64 Linux when missing (a failed fetch only
    // warns: the `gemm` crate computes them then), unless GRALORA_BLAS names one.
    let blas = assets::find("openblas")?;
    if std::env::var_os("GRALORA_BLAS").is_none()
        && assets::available_here(blas)
        && !assets::is_present(&home, blas)
        && let Err(e) = fetch_list(vec![blas], false)
    {
        eprintln!("warning: {e:#}; the CPU backend uses its built-in GEMM");
    }
    setup_cpu_blas(&home)
}

/// Fetch `list` into the asset cache, with a progress bar on a terminal.
pub fn fetch_list(list: Vec<&'static assets::Asset>, quiet: bool) -> Result<()> {
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

/// The model alias's asset, if the argument is one.
fn model_asset(model: &str) -> Option<&'static str> {
    assets::ASSETS
        .iter()
        .find(|a| a.name == model && matches!(a.name, "minilm" | "smollm2"))
        .map(|a| a.name)
}
