//! What the binary sets up before a command runs: glibc's allocator, the CPU backend's BLAS,
//! the device; and how a device is named in progress lines.

use std::path::{Path, PathBuf};

use anyhow::Result;
use burn::tensor::Device;
use gralora_models::assets;

use crate::args::DeviceArg;

/// Keep freed tensor buffers in glibc's heap instead of handing them back to the kernel: by
/// default every buffer above 128 KiB is a fresh `mmap` and `munmap`, and each training step then
/// spends a tenth of its time in page faults on new activation buffers (measured with `perf` on
/// `bench step`: 15 % faster steps, the same peak memory).
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // Safety: mallopt only changes glibc's thresholds; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Give the CPU backend's products an OpenBLAS when one is there (`gralora::blas`): the library
/// `GRALORA_BLAS` names (`off` for none; one that does not load is an error), else the fetched
/// `openblas` asset (see [`crate::commands::fetch::fetch_missing`]), else the system's
/// `libopenblas.so.0`. Without any, the `gemm` crate computes them.
pub fn setup_cpu_blas(home: &Path) -> Result<()> {
    match std::env::var_os("GRALORA_BLAS") {
        Some(v) if ["off", "none", "0", ""].contains(&v.to_string_lossy().as_ref()) => {
            gralora::blas::set(None);
            return Ok(());
        }
        Some(v) => {
            gralora::blas::set(Some(gralora::blas::CpuBlas::open(&v)?));
            return Ok(());
        }
        None => {}
    }
    let asset = assets::find("openblas")?;
    let fetched = assets::dir(home, asset).join("libscipy_openblas.so");
    let mut candidates: Vec<PathBuf> = Vec::new();
    if assets::is_present(home, asset) {
        // A damaged library is refused (its sha256) rather than loaded into the process.
        assets::verify(home, asset)?;
        candidates.push(fetched);
    }
    candidates.extend(gralora::blas::SYSTEM_NAMES.iter().map(PathBuf::from));
    gralora::blas::set(gralora::blas::first_available(&candidates));
    Ok(())
}

/// What computes the CPU backend's products, for progress lines and benchmarks.
fn cpu_gemm() -> String {
    match gralora::blas::active() {
        Some(b) => format!("{} ({})", b.describe(), b.path().display()),
        None => "the gemm crate".into(),
    }
}

/// The device `arg` names.
pub fn select_device(arg: DeviceArg) -> Result<Device> {
    Ok(gralora::device::select(arg.name())?)
}

/// The device, and on the CPU what computes its matrix products.
pub fn device_name(device: &Device) -> String {
    if gralora::device::is_flex(device) {
        format!("{device:?} (GEMM: {})", cpu_gemm())
    } else {
        format!("{device:?}")
    }
}
