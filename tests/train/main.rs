//! The trainer: data loaders on committed excerpts (expected values computed by
//! scripts/data_excerpts.py with pyarrow and Python's own parsing), training on Flex lowers the
//! loss, a SIGKILLed run resumed with --resume ends where an uninterrupted run ends, bad inputs.
//!
//! Training tests need the MiniLM asset; they skip when it is not fetched, unless
//! `GRALORA_REQUIRE_ASSETS=1` (CI).

#[path = "../common/mod.rs"]
mod common;
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod crash;
mod fuzz;
#[path = "../common/fuzz.rs"]
mod fuzz_support;
mod methods;
mod readers;
mod training;
mod user_data;

#[global_allocator]
static ALLOCATOR: fuzz_support::Bounded = fuzz_support::Bounded;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::Scratch;
use gralora_train::data;
use gralora_train::tasks::{Task, evaluate, pad_id, tokenize, train};
use gralora_train::trainer::{Method, RunMetrics, TrainConfig};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/data")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn tmp_dir(name: &str) -> Scratch {
    Scratch::new(&format!("train-{name}"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// `path` inside the asset cache, or None (skip) when it is not there, unless
/// `GRALORA_REQUIRE_ASSETS=1`, where that is a failure.
fn fetched(asset: &str, path: &str) -> Option<PathBuf> {
    let p = gralora_models::assets::home().join(path);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!("GRALORA_REQUIRE_ASSETS=1 but {asset} is not fetched; run `gralora fetch {asset}`");
    }
    eprintln!("skipped: {asset} not fetched (gralora fetch {asset})");
    None
}

/// A GRALORA_HOME with the data excerpts and (linked) the real MiniLM, or None to skip.
fn excerpt_home(name: &str) -> Option<Scratch> {
    fetched("minilm", "minilm/model.safetensors")?;
    let real = gralora_models::assets::home().join("minilm");
    let home = tmp_dir(name);
    copy_tree(&fixtures(), &home);
    std::os::unix::fs::symlink(&real, home.join("minilm")).unwrap();
    Some(home)
}

fn labels(v: &[data::Example]) -> Vec<u64> {
    v.iter().map(|e| e.label as u64).collect()
}

fn json_u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect()
}

fn gralora(args: &[&str], home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args(args)
        .env("GRALORA_HOME", home)
        .output()
        .unwrap()
}

fn metrics(dir: &Path) -> RunMetrics {
    serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap()
}
