//! An optional OpenBLAS for the CPU backend's products, loaded at run time.
//!
//! The Flex backend's dense and block products ([`crate::ops`]) run on the `gemm` crate by
//! default. When an OpenBLAS library is loaded here they run on its `cblas_sgemm` instead: on
//! the 2-core AVX2 machines this project is measured on, OpenBLAS 0.3.34's single-precision GEMM
//! reaches 1.2–1.7× the `gemm` crate's throughput on a transformer layer's shapes (see the README).
//! Nothing links against it: a machine without OpenBLAS builds and runs the same, on `gemm`.
//!
//! Both Debian's `libopenblas.so.0` and the `scipy_openblas32` wheel's `libscipy_openblas.so`
//! (whose symbols carry a `scipy_` prefix) are understood. OpenBLAS's own threads are switched off
//! (`openblas_set_num_threads(1)`): the callers split each product into row blocks over rayon's
//! pool, so one set of threads serves every op.

use std::ffi::{CStr, c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// `cblas_sgemm`'s signature (32-bit integers, the LP64 interface).
type SgemmFn = unsafe extern "C" fn(
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
    f32,
    *const f32,
    c_int,
    *const f32,
    c_int,
    f32,
    *mut f32,
    c_int,
);

const ROW_MAJOR: c_int = 101;
const NO_TRANS: c_int = 111;
const TRANS: c_int = 112;

/// A loaded BLAS library.
pub struct CpuBlas {
    _lib: libloading::Library,
    sgemm: SgemmFn,
    path: PathBuf,
    config: String,
}

impl std::fmt::Debug for CpuBlas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBlas")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish()
    }
}

/// Why a BLAS library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BlasError {
    /// The file could not be opened as a shared library.
    #[error(
        "cannot load the BLAS library {path}: {reason}; give the path of an OpenBLAS shared library (libopenblas.so.0) or set GRALORA_BLAS=off"
    )]
    Open {
        /// The path or name given.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library has no `cblas_sgemm`.
    #[error(
        "{path} has no cblas_sgemm (nor scipy_cblas_sgemm); it is not an OpenBLAS/CBLAS library, set GRALORA_BLAS to one or to off"
    )]
    NoSgemm {
        /// The library.
        path: PathBuf,
    },
}

impl CpuBlas {
    /// Open `path` (a file path, or a library name the system loader searches for) and check
    /// that it has `cblas_sgemm`; switches OpenBLAS's own threading off.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, BlasError> {
        let path = path.as_ref().to_path_buf();
        // SAFETY: loading runs the library's initialisers; OpenBLAS's only set up its state.
        let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| BlasError::Open {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let prefixes = ["", "scipy_"];
        // SAFETY: the symbol, when present, is CBLAS's `cblas_sgemm` with `SgemmFn`'s signature.
        let found = prefixes.iter().find_map(|p| unsafe {
            lib.get::<SgemmFn>(format!("{p}cblas_sgemm\0").as_bytes())
                .ok()
                .map(|s| (*p, *s))
        });
        let Some((prefix, sgemm)) = found else {
            return Err(BlasError::NoSgemm { path });
        };
        // SAFETY: OpenBLAS's `openblas_set_num_threads(int)` and `char *openblas_get_config()`.
        let config = unsafe {
            if let Ok(set) = lib.get::<unsafe extern "C" fn(c_int)>(
                format!("{prefix}openblas_set_num_threads\0").as_bytes(),
            ) {
                set(1);
            }
            match lib.get::<unsafe extern "C" fn() -> *const c_char>(
                format!("{prefix}openblas_get_config\0").as_bytes(),
            ) {
                Ok(get) => {
                    let p = get();
                    if p.is_null() {
                        String::from("CBLAS")
                    } else {
                        CStr::from_ptr(p).to_string_lossy().trim().to_string()
                    }
                }
                Err(_) => String::from("CBLAS"),
            }
        };
        Ok(Self {
            _lib: lib,
            sgemm,
            path,
            config,
        })
    }

    /// Where it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The library's build description (`OpenBLAS 0.3.34 DYNAMIC_ARCH ... Haswell MAX_THREADS=64`).
    pub fn describe(&self) -> &str {
        &self.config
    }

    /// `C = alpha · A · B + (accumulate ? C : 0)` for strided operands, if CBLAS can express the
    /// strides (one of each matrix's strides is 1 and the other a valid leading dimension);
    /// returns `false` (and does nothing) otherwise.
    ///
    /// `A` is `m × k`, `B` is `k × n`, `C` is `m × n`; `(rs, cs)` are row and column strides in
    /// elements.
    ///
    /// # Safety
    /// Every element of `A` and `B` reached through the strides must be readable, every element of
    /// `C` writable, and, with `accumulate`, initialised.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn sgemm(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: (*const f32, isize, isize),
        b: (*const f32, isize, isize),
        c: (*mut f32, isize, isize),
        accumulate: bool,
    ) -> bool {
        if m == 0 || n == 0 {
            return true;
        }
        if k == 0 {
            return false; // the caller's path handles the degenerate product
        }
        let beta = if accumulate { 1.0 } else { 0.0 };
        let (cp, c_rs, c_cs) = c;
        // C row-major as it is, or Cᵀ = Bᵀ Aᵀ row-major when C is stored by columns.
        let plan = match layout(m, n, c_rs, c_cs) {
            Some((NO_TRANS, ldc)) => Some((m, n, a, b, ldc)),
            Some((_, ldc)) => Some((n, m, (b.0, b.2, b.1), (a.0, a.2, a.1), ldc)),
            None => None,
        };
        let Some((m, n, (ap, a_rs, a_cs), (bp, b_rs, b_cs), ldc)) = plan else {
            return false;
        };
        let (Some((ta, lda)), Some((tb, ldb))) =
            (layout(m, k, a_rs, a_cs), layout(k, n, b_rs, b_cs))
        else {
            return false;
        };
        let fits = [m, n, k, lda, ldb, ldc]
            .iter()
            .all(|&v| v <= c_int::MAX as usize);
        if !fits {
            return false;
        }
        // SAFETY: the layouts above describe exactly the elements the strides reach; the caller
        // guarantees those are valid.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                ta,
                tb,
                m as c_int,
                n as c_int,
                k as c_int,
                alpha,
                ap,
                lda as c_int,
                bp,
                ldb as c_int,
                beta,
                cp,
                ldc as c_int,
            );
        }
        true
    }
}

/// A `rows × cols` matrix with strides `(rs, cs)` as CBLAS sees it in row-major order:
/// `(NO_TRANS, ld)` when rows are contiguous runs, `(TRANS, ld)` when columns are, else `None`.
fn layout(rows: usize, cols: usize, rs: isize, cs: isize) -> Option<(c_int, usize)> {
    let (rs, cs) = (usize::try_from(rs).ok()?, usize::try_from(cs).ok()?);
    if (cols <= 1 || cs == 1) && (rows <= 1 || rs >= cols.max(1)) {
        let ld = if rows <= 1 { cols.max(1) } else { rs };
        return Some((NO_TRANS, ld));
    }
    if (rows <= 1 || rs == 1) && (cols <= 1 || cs >= rows.max(1)) {
        let ld = if cols <= 1 { rows.max(1) } else { cs };
        return Some((TRANS, ld));
    }
    None
}

static ACTIVE: RwLock<Option<&'static CpuBlas>> = RwLock::new(None);

/// Use `blas` for the CPU products from now on (process-wide), or the `gemm` crate with `None`.
/// A library once set stays loaded for the life of the process.
pub fn set(blas: Option<CpuBlas>) {
    let leaked = blas.map(|b| &*Box::leak(Box::new(b)));
    *ACTIVE.write().unwrap_or_else(|e| e.into_inner()) = leaked;
}

/// The library the CPU products use now, if any.
pub fn active() -> Option<&'static CpuBlas> {
    *ACTIVE.read().unwrap_or_else(|e| e.into_inner())
}

/// Library names the system loader is asked for when nothing more specific is given.
pub const SYSTEM_NAMES: &[&str] = &["libopenblas.so.0", "libopenblas.so", "libopenblas.dylib"];

/// The first of `candidates` (paths or loader names) that opens as a CBLAS library.
pub fn first_available<P: AsRef<Path>>(candidates: &[P]) -> Option<CpuBlas> {
    candidates.iter().find_map(|c| CpuBlas::open(c).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_follow_the_contiguous_axis() {
        // Row-major [3, 4] and its transposed view.
        assert_eq!(layout(3, 4, 4, 1), Some((NO_TRANS, 4)));
        assert_eq!(layout(4, 3, 1, 4), Some((TRANS, 4)));
        // A padded row stride is a leading dimension.
        assert_eq!(layout(3, 4, 10, 1), Some((NO_TRANS, 10)));
        // Degenerate rows/columns take any stride.
        assert_eq!(layout(1, 4, 0, 1), Some((NO_TRANS, 4)));
        assert_eq!(layout(4, 1, 1, 0), Some((NO_TRANS, 1)));
        // Neither axis contiguous, overlapping rows, broadcast rows, negative strides: no.
        assert_eq!(layout(3, 4, 8, 2), None);
        assert_eq!(layout(3, 4, 2, 1), None);
        assert_eq!(layout(3, 4, 0, 1), None);
        assert_eq!(layout(3, 4, -4, 1), None);
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let e = CpuBlas::open("/nonexistent/libopenblas.so.0").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/libopenblas.so.0") && msg.contains("GRALORA_BLAS=off"),
            "{msg}"
        );
    }
}
