//! Crash-safe files: a child process that keeps replacing the tool's kinds of files (a JSON
//! file through `write_atomic`, a safetensors file, a burn-train checkpoint, a chart) is
//! SIGKILLed at seeded random moments, and every file left under its final name must be one
//! complete version; under a file-size limit (`RLIMIT_FSIZE`) every save fails with a clear
//! error, leaves no temporary file and keeps the previous version loadable.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use burn::module::Module;
use burn::train::checkpoint::{Checkpointer, FileCheckpointer};
use rand::{Rng, SeedableRng};

use super::tmp_dir;

/// The JSON file of version `v`: its version, then 2 MiB of text derived from it.
fn json_version(v: u64) -> Vec<u8> {
    let filler: String = (0..(2 << 20) / 16)
        .map(|i| {
            format!(
                "{:015x}",
                (i as u64).wrapping_mul(v + 1) & 0xfff_ffff_ffff_ffff
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    format!("{{\"version\":{v},\"filler\":\"{filler}\"}}").into_bytes()
}

fn tensors_version(v: u64) -> gralora_models::weights::Export {
    vec![(
        "w".to_string(),
        vec![768, 512],
        (0..768 * 512).map(|i| (i as u64 + v) as f32).collect(),
    )]
}

fn chart(v: u64) -> gralora_train::experiments::plot::Chart {
    gralora_train::experiments::plot::Chart {
        title: format!("version {v}"),
        x_label: "x".into(),
        y_label: "y".into(),
        log_x: false,
        series: vec![gralora_train::experiments::plot::Series {
            name: "line".into(),
            points: (0..50)
                .map(|i| (i as f64, (i as f64 * (v + 1) as f64).sin()))
                .collect(),
            reference: false,
        }],
    }
}

fn module(device: &burn::tensor::Device) -> burn::nn::Linear {
    burn::nn::LinearConfig::new(512, 1024).init(device)
}

/// Write every kind of file once as version `v`; checkpoints keyed `v`, the last two kept.
fn write_all(dir: &Path, v: u64) -> Result<(), String> {
    gralora::io::write_atomic(&dir.join("metrics.json"), &json_version(v))
        .map_err(|e| format!("metrics.json: {e}"))?;
    gralora_models::weights::write_safetensors(
        &dir.join("weights.safetensors"),
        &tensors_version(v),
    )
    .map_err(|e| e.to_string())?;
    let device = burn::tensor::Device::default();
    let ck = FileCheckpointer::new(dir.join("checkpoints"), "model");
    Checkpointer::save(&ck, v as usize, module(&device).into_record())
        .map_err(|e| e.to_string())?;
    if v >= 2 {
        Checkpointer::<burn::store::ModuleRecord>::delete(&ck, v as usize - 2)
            .map_err(|e| e.to_string())?;
    }
    gralora_train::experiments::plot::write_chart(&chart(v), &dir.join("chart"))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Every file under its final name is one complete version; returns the versions seen.
fn check_complete(dir: &Path) -> Vec<u64> {
    let mut seen = Vec::new();
    if let Ok(bytes) = std::fs::read(dir.join("metrics.json")) {
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).expect("metrics.json is complete JSON");
        let v = v["version"].as_u64().unwrap();
        assert_eq!(
            bytes,
            json_version(v),
            "metrics.json is version {v} exactly"
        );
        seen.push(v);
    }
    if let Ok(bytes) = std::fs::read(dir.join("weights.safetensors")) {
        let st =
            safetensors::SafeTensors::deserialize(&bytes).expect("weights.safetensors is complete");
        let w = st.tensor("w").unwrap();
        let first = f32::from_le_bytes(w.data()[..4].try_into().unwrap()) as u64;
        let expected = &tensors_version(first)[0].2;
        let got: Vec<f32> = w
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            &got, expected,
            "weights.safetensors is version {first} exactly"
        );
        seen.push(first);
    }
    let ck_dir = dir.join("checkpoints");
    let ck = FileCheckpointer::new(&ck_dir, "model");
    for key in gralora_keys(&ck_dir) {
        let record: burn::store::ModuleRecord =
            Checkpointer::restore(&ck, key).unwrap_or_else(|e| panic!("checkpoint {key}: {e}"));
        let device = burn::tensor::Device::flex();
        let loaded = module(&device)
            .try_load_record(record)
            .unwrap_or_else(|e| panic!("checkpoint {key} does not apply: {e}"));
        // A restored record reads its file lazily: read it now, before the next child's
        // writer deletes the file.
        let weight = loaded.weight.val().into_data();
        assert_eq!(weight.shape().to_vec(), vec![512, 1024], "checkpoint {key}");
        let bias = loaded.bias.expect("a bias").val().into_data();
        assert_eq!(bias.shape().to_vec(), vec![1024], "checkpoint {key}");
    }
    for ext in ["svg", "png"] {
        if let Ok(bytes) = std::fs::read(dir.join(format!("chart.{ext}"))) {
            if ext == "svg" {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.trim_end().ends_with("</svg>"), "chart.svg is complete");
            } else {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
                assert_eq!(
                    &bytes[bytes.len() - 8..bytes.len() - 4],
                    b"IEND",
                    "chart.png is complete"
                );
            }
        }
    }
    seen
}

fn gralora_keys(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("model-")?
                .strip_suffix(".bpk")?
                .parse()
                .ok()
        })
        .collect()
}

/// Temporary files under `dir`: `gralora::io::replace_with`'s `.STEM.XXXXXX.EXT` (hidden) and
/// any name with `tmp` in it.
fn temporaries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("checkpoints")] {
        if let Ok(entries) = std::fs::read_dir(&sub) {
            out.extend(
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with('.') || n.contains("tmp")),
            );
        }
    }
    out
}

fn child(test: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("GRALORA_CRASH_DIR", dir)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    cmd
}

/// The child of the kill test: replaces every file, version after version, until killed.
#[test]
#[ignore = "run as a child process by every_file_survives_a_sigkill_at_any_moment"]
fn crash_child_writes_until_killed() {
    let dir = std::path::PathBuf::from(std::env::var("GRALORA_CRASH_DIR").unwrap());
    let start: u64 = std::fs::read_to_string(dir.join("next"))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    for v in start.. {
        gralora::io::write_atomic(&dir.join("next"), (v + 1).to_string().as_bytes()).unwrap();
        write_all(&dir, v).unwrap();
    }
}

#[test]
fn every_file_survives_a_sigkill_at_any_moment() {
    let dir = tmp_dir("crash-kill");
    let mut rng = rand::rngs::StdRng::seed_from_u64(30);
    let (mut kills, mut mid_write) = (0, 0);
    let mut versions = std::collections::BTreeSet::new();
    let mut seen_temporaries = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let mut c = child("crash::crash_child_writes_until_killed", &dir)
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(40..700)));
        if c.try_wait().unwrap().is_some() {
            let out = c.wait_with_output().unwrap();
            panic!(
                "the writer stopped: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        c.kill().unwrap(); // SIGKILL
        c.wait().unwrap();
        kills += 1;
        // A kill inside a write leaves its temporary file behind (under a new random name).
        let left = temporaries(&dir);
        if left.iter().any(|t| !seen_temporaries.contains(t)) {
            mid_write += 1;
        }
        seen_temporaries.extend(left);
        versions.extend(check_complete(&dir));
    }
    eprintln!(
        "{kills} kills, {mid_write} in the middle of a write, versions seen {:?}",
        versions
    );
    assert!(mid_write > 0, "no kill landed in a write");
    assert!(versions.len() > 2, "the writer made progress: {versions:?}");
}

/// The child of the file-size test: under a 1 MiB limit, with SIGXFSZ ignored so that writes
/// fail with EFBIG instead of killing the process, every save must fail cleanly.
#[test]
#[ignore = "run as a child process by a_file_size_limit_fails_every_save_cleanly"]
fn crash_child_saves_under_a_size_limit() {
    let dir = std::path::PathBuf::from(std::env::var("GRALORA_CRASH_DIR").unwrap());
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let lim = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
    }
    let e = gralora::io::write_atomic(&dir.join("metrics.json"), &json_version(9)).unwrap_err();
    println!("json: {e}");
    let e = gralora_models::weights::write_safetensors(
        &dir.join("weights.safetensors"),
        &tensors_version(9),
    )
    .unwrap_err();
    println!("safetensors: {e}");
    let device = burn::tensor::Device::default();
    let ck = FileCheckpointer::new(dir.join("checkpoints"), "model");
    let e = Checkpointer::save(&ck, 9, module(&device).into_record()).unwrap_err();
    println!("checkpoint: {e}");
}

#[test]
fn a_file_size_limit_fails_every_save_cleanly() {
    let dir = tmp_dir("crash-fsize");
    write_all(&dir, 0).unwrap();
    write_all(&dir, 1).unwrap();
    let before = check_complete(&dir);
    let out = child("crash::crash_child_saves_under_a_size_limit", &dir)
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (what, needle) in [
        ("json", ""),
        ("safetensors", "weights.safetensors"),
        ("checkpoint", ""),
    ] {
        // The harness may print `test … ... ` before the child's first line.
        let tag = format!("{what}: ");
        let line = stdout
            .lines()
            .find_map(|l| l.find(&tag).map(|i| &l[i..]))
            .unwrap_or_else(|| panic!("no {what} line in {stdout}"));
        assert!(
            line.contains("too large") || line.contains("File too large"),
            "{line}"
        );
        assert!(line.contains(needle), "{line}");
    }
    assert_eq!(
        check_complete(&dir),
        before,
        "the previous versions are intact"
    );
    assert_eq!(gralora_keys(&dir.join("checkpoints")).len(), 2);
    assert!(temporaries(&dir).is_empty(), "{:?}", temporaries(&dir));
}

/// The trainer under a full disk: a run SIGKILLed after a mid-epoch checkpoint is resumed under
/// a 128 KiB file-size limit, so its next checkpoint cannot be written. The run fails with a
/// one-line error naming the cause, leaves no partial or temporary checkpoint file, keeps the
/// checkpoint it resumed from, and a later resume without the limit finishes from there.
#[test]
fn a_full_disk_fails_a_checkpoint_cleanly_and_the_run_resumes_later() {
    use std::os::unix::process::CommandExt;
    let Some(home) = super::excerpt_home("crash-trainer-fsize") else {
        return;
    };
    let out = home.join("cut");
    let args: Vec<String> = [
        "train",
        "--model",
        "minilm",
        "--task",
        "sst2",
        "--method",
        "gralora",
        "--rank",
        "8",
        "--k",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-len",
        "32",
        "--max-train",
        "64",
        "--max-eval",
        "16",
        "--device",
        "flex",
        "--seed",
        "3",
        "--checkpoint-every",
        "2",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gralora"))
        .args(&args)
        .env("GRALORA_HOME", &*home)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let steps = out.join("run/steps");
    let start = std::time::Instant::now();
    while gralora_train::trainer::complete_checkpoints(&steps).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(start.elapsed() < Duration::from_secs(600));
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = gralora_train::trainer::complete_checkpoints(&steps);
    let at = *kept.last().unwrap();

    let resume = |limit: Option<u64>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gralora"));
        cmd.args([
            "train",
            "--out",
            out.to_str().unwrap(),
            "--resume",
            "--device",
            "flex",
        ])
        .env("GRALORA_HOME", &*home);
        if let Some(bytes) = limit {
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: bytes,
                        rlim_max: bytes,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.output().unwrap()
    };
    let o = resume(Some(128 << 10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "a run that cannot checkpoint must fail: {err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error:"), "{err}");
    assert!(last.contains("File too large"), "{last}");
    assert!(last.contains("--resume"), "says how to go on: {last}");
    eprintln!("resumed from batch {at} under the limit: {last}");
    assert!(
        !out.join("metrics.json").exists(),
        "a failed run must not look complete"
    );
    assert!(temporaries(&out.join("run")).is_empty() && temporaries(&steps).is_empty());
    let after = gralora_train::trainer::complete_checkpoints(&steps);
    assert!(
        after.contains(&at),
        "the checkpoint resumed from is kept: {after:?}"
    );

    let o = resume(None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = super::metrics(&out);
    assert_eq!(m.epochs, 2);
    assert!(
        m.resumed_from_batch.is_some(),
        "resumed from a step checkpoint"
    );
}
