//! The CPU products through a run-time loaded OpenBLAS (`gralora::blas`) against the same products
//! through the `gemm` crate and against independent references: GraLoRA's branch and its three
//! gradients vs burn's composite (METHODS.md §2), dense products with a bias, a full accumulator and
//! transposed views vs f64 loops. One test function: the library choice is process-wide.
//!
//! Needs an OpenBLAS: `GRALORA_BLAS`, the fetched `openblas` asset or the system's
//! `libopenblas.so.0`; skipped without one, unless `GRALORA_REQUIRE_ASSETS=1` on x86-64 Linux.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use gralora::blas::{self, CpuBlas};
use gralora_models::assets;

fn openblas() -> Option<CpuBlas> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("GRALORA_BLAS") {
        candidates.push(std::path::PathBuf::from(p));
    }
    candidates.push(assets::home().join("openblas/libscipy_openblas.so"));
    candidates.extend(blas::SYSTEM_NAMES.iter().map(std::path::PathBuf::from));
    let found = blas::first_available(&candidates);
    let required = std::env::var("GRALORA_REQUIRE_ASSETS").as_deref() == Ok("1")
        && cfg!(all(target_arch = "x86_64", target_os = "linux"));
    match &found {
        Some(b) => eprintln!("blas: {} ({})", b.describe(), b.path().display()),
        None if required => {
            panic!("GRALORA_REQUIRE_ASSETS=1 but no OpenBLAS was found (gralora fetch openblas)")
        }
        None => eprintln!("blas: skipped (no OpenBLAS; gralora fetch openblas)"),
    }
    found
}

/// `acc + alpha · L · R` (rhs given as `[k, n]` or as the transposed view of an `[n, k]` tensor)
/// and its gradients for `Σ y ⊙ c`, on Flex through whatever `gralora::blas` holds now.
fn dense_case(
    (m, k, n): (usize, usize, usize),
    acc_rows: Option<usize>,
    rhs_view: bool,
    seed: u64,
) -> [Vec<f32>; 4] {
    let ad = Device::flex().autodiff();
    let mut rng = Rng::new(seed);
    let (l, r, c) = (rng.vec(m * k), rng.vec(k * n), rng.vec(m * n));
    let acc = acc_rows.map(|rows| rng.vec(rows * n));
    let lt: Tensor<2> = tensor(&l, [m, k], &ad).require_grad();
    let r_leaf: Tensor<2> = if rhs_view {
        tensor(&r, [n, k], &ad).require_grad()
    } else {
        tensor(&r, [k, n], &ad).require_grad()
    };
    let rt = if rhs_view {
        r_leaf.clone().transpose()
    } else {
        r_leaf.clone()
    };
    let at = acc_rows.map(|rows| tensor(acc.as_ref().unwrap(), [rows, n], &ad).require_grad());
    let y = gralora::ops::matmul_acc(at.clone(), lt.clone(), rt, 0.75);
    let grads = (y.clone() * tensor(&c, [m, n], &ad)).sum().backward();
    [
        host(y),
        at.map(|a| host(a.grad(&grads).unwrap()))
            .unwrap_or_default(),
        host(lt.grad(&grads).unwrap()),
        host(r_leaf.grad(&grads).unwrap()),
    ]
}

/// f64 loops for `y = acc + alpha · L · R` with R `[k, n]` row-major (no view).
fn dense_loops(m: usize, k: usize, n: usize, acc_rows: Option<usize>, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let (l, r, _c) = (rng.vec(m * k), rng.vec(k * n), rng.vec(m * n));
    let acc = acc_rows.map(|rows| rng.vec(rows * n));
    (0..m * n)
        .map(|q| {
            let (i, j) = (q / n, q % n);
            let base = match (&acc, acc_rows) {
                (Some(a), Some(1)) => a[j] as f64,
                (Some(a), _) => a[q] as f64,
                _ => 0.0,
            };
            let dot: f64 = (0..k)
                .map(|p| l[i * k + p] as f64 * r[p * n + j] as f64)
                .sum();
            (base + 0.75 * dot) as f32
        })
        .collect()
}

#[test]
fn openblas_products_equal_the_gemm_crate_and_the_references() {
    let Some(lib) = openblas() else { return };
    blas::set(Some(lib));
    assert!(blas::active().is_some());

    // GraLoRA's branch (both block products, forward and the three gradients) vs burn's composite,
    // from one token to a training batch, k from 1 to 8, r up to 128.
    for shape in [
        (1, 64, 16, 2),
        (37, 96, 32, 4),
        (300, 384, 32, 2),
        (2048, 384, 32, 2),
        (130, 1536, 128, 8),
        (64, 128, 16, 1),
    ] {
        assert_branch_matches_composite("flex+openblas", &Device::flex(), shape);
    }

    // Dense products: no accumulator, a bias row, a full accumulator; plain and transposed rhs;
    // small (one thread) and large (row blocks over the pool).
    let cases = [
        ((37, 24, 19), None, false),
        ((37, 24, 19), Some(1), true),
        ((64, 48, 40), Some(64), false),
        ((1, 16, 8), Some(1), false),
        ((2048, 384, 384), Some(1), false),
        ((2048, 384, 1536), None, true),
        ((384, 2048, 96), Some(384), true),
    ];
    for (i, &((m, k, n), acc, view)) in cases.iter().enumerate() {
        let seed = 500 + i as u64;
        blas::set(openblas());
        let with_blas = dense_case((m, k, n), acc, view, seed);
        blas::set(None);
        let with_gemm = dense_case((m, k, n), acc, view, seed);
        let what = format!("case {i} ({m}×{k}×{n}, acc {acc:?}, view {view})");
        for (j, part) in ["y", "∂acc", "∂L", "∂R"].iter().enumerate() {
            let e = rel(&with_blas[j], &with_gemm[j]);
            assert!(
                e < 1e-5,
                "{what}: {part} differs from the gemm crate's by {e:.2e}"
            );
        }
        if !view {
            let e = rel(&with_blas[0], &dense_loops(m, k, n, acc, seed));
            assert!(e < 1e-5, "{what}: y differs from the f64 loops by {e:.2e}");
        }
    }
    blas::set(None);
}
