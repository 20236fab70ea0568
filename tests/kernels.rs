//! The block-matmul op (WGSL on wgpu, gemm on Flex) against independent references: the f64 loop
//! definition, and GraLoRA written with burn's own ops (METHODS.md §2, regroup copy included)
//! differentiated by burn's autodiff on Flex.

mod common;

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use common::*;
use gralora::ops::gralora_blocks;
use gralora::{AdaptedLinear, Adapter, GraLoraConfig, Init};

#[test]
fn block_matmul_matches_its_definition_on_every_map_kind() {
    let before = gralora::kernels::kernel_stats().direct;
    for (name, device) in devices() {
        for (i, spec) in map_kind_specs().iter().enumerate() {
            assert_block_matmul_matches_definition(&format!("{name} spec {i}"), &device, spec);
        }
    }
    // Where wgpu has only a software adapter (CI's lavapipe) it ran the direct kernel.
    let adapters = gralora::device::wgpu_adapters();
    if !adapters.is_empty() && !gralora::device::has_gpu() {
        assert!(
            gralora::kernels::kernel_stats().direct > before,
            "a software device must run the direct kernel"
        );
    }
}

#[test]
fn kernel_forward_and_gradients_equal_the_composite_reference() {
    let before = gralora::kernels::kernel_stats().shared;
    // (T, in = out, r, k): tile remainders, T = 1, k up to 8, r up to 256, and the bench grid's shapes.
    let grid = [
        (1, 64, 16, 2),
        (5, 24, 8, 4),
        (77, 200, 40, 4),
        (130, 96, 256, 8),
        (33, 128, 8, 8),
        (64, 48, 12, 1),
        (2048, 384, 16, 2),
        (2048, 384, 128, 4),
        (512, 1536, 32, 2),
        (256, 1536, 128, 4),
        (128, 4096, 32, 4),
    ];
    for (name, device) in devices() {
        for &shape in &grid {
            assert_branch_matches_composite(name, &device, shape);
        }
    }
    // On lavapipe (llvmpipe's Vulkan driver) the direct kernel shared the rhs loads of the T-row
    // products and the lhs loads of the rank-row ones over a subgroup's lanes.
    let lavapipe = gralora::device::wgpu_adapters()
        .iter()
        .any(|a| a.name.starts_with("llvmpipe") && a.backend == wgpu::Backend::Vulkan);
    if lavapipe && !gralora::device::has_gpu() {
        let after = gralora::kernels::kernel_stats().shared;
        assert!(
            after[0] > before[0] && after[1] > before[1],
            "lavapipe must share lhs and rhs loads: {before:?} -> {after:?}"
        );
    }
}

#[test]
fn f16_runs_where_the_device_has_it() {
    for (name, device) in devices() {
        // Flex computes f16 inputs in f32 and casts back; wgpu runs the f16 kernel where the
        // adapter has SHADER_F16.
        if !device.supports_dtype(DType::F16) {
            eprintln!("{name}: f16 skipped (the device has no f16 arithmetic)");
            continue;
        }
        let (t, d, r, k) = (40, 64, 16, 2);
        let mut rng = Rng::new(5);
        let (x, a, b) = (
            rng.vec(t * d),
            rng.vec(k * (d / k) * r),
            rng.vec(k * r * (d / k)),
        );
        let run = |dtype: FloatDType| {
            let y = gralora_blocks(
                tensor(&x, [t, d], &device).cast(dtype),
                tensor(&a, [k, d / k, r], &device).cast(dtype),
                tensor(&b, [k, r, d / k], &device).cast(dtype),
                0.5,
            );
            assert_eq!(y.dtype(), DType::from(dtype));
            host(y.cast(FloatDType::F32))
        };
        let e = rel(&run(FloatDType::F16), &run(FloatDType::F32));
        assert!(e < 5e-3, "{name}: f16 vs f32 rel err {e}");
    }
}

fn train_step(device: &Device) -> Vec<Vec<f32>> {
    let ad = device.clone().autodiff();
    let (t, d_in, d_out) = (24, 32, 16);
    let mut rng = Rng::new(77);
    let base = Linear {
        weight: Param::from_tensor(tensor(&rng.vec(d_in * d_out), [d_in, d_out], &ad)),
        bias: None,
    };
    let mut layer = AdaptedLinear::with_adapter(
        base,
        &GraLoraConfig::new(8, 2)
            .with_hybrid_r(2)
            .with_init(Init::Random)
            .into(),
        "l",
    )
    .unwrap();
    // Same starting factors on every device.
    if let Some(Adapter::GraLora(g)) = &mut layer.adapter {
        g.a = Param::from_tensor(tensor(&rng.vec(2 * 16 * 8), [2, 16, 8], &ad));
        g.b = Param::from_tensor(tensor(&rng.vec(2 * 8 * 8), [2, 8, 8], &ad));
        let h = g.general.as_mut().unwrap();
        h.a = Param::from_tensor(tensor(&rng.vec(d_in * 2), [d_in, 2], &ad));
        h.b = Param::from_tensor(tensor(&rng.vec(2 * d_out), [2, d_out], &ad));
    }
    let x = tensor(&rng.vec(t * d_in), [t, d_in], &ad);
    let target = tensor(&rng.vec(t * d_out), [t, d_out], &ad);
    let mut optim = AdamWConfig::new().init();
    for _ in 0..3 {
        let loss = (layer.forward(x.clone()) - target.clone())
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &layer);
        layer = optim.step(1e-2, layer, grads);
    }
    let Some(Adapter::GraLora(g)) = &layer.adapter else {
        unreachable!()
    };
    vec![host(g.a.val()), host(g.b.val()), host(layer.forward(x))]
}

#[test]
fn a_training_step_on_wgpu_matches_flex() {
    let devices = devices();
    let reference = train_step(&devices[0].1);
    for (name, device) in &devices[1..] {
        let got = train_step(device);
        for (i, (g, w)) in got.iter().zip(&reference).enumerate() {
            assert!(
                rel(g, w) < 1e-4,
                "{name}: tensor {i} after 3 AdamW steps differs by {}",
                rel(g, w)
            );
        }
    }
}

/// `acc + alpha · L · R` and its gradients for `loss = Σ y ⊙ c`, by f64 loops:
/// (y, ∂acc (column sums for a `[1, n]` row), ∂L = alpha · c Rᵀ, ∂R = alpha · Lᵀ c).
#[allow(clippy::too_many_arguments)]
fn dense_ref(
    acc: Option<&[f32]>,
    l: &[f32],
    r: &[f32],
    c: &[f32],
    alpha: f64,
    (m, k, n): (usize, usize, usize),
) -> [Vec<f32>; 4] {
    let row_acc = acc.is_some_and(|a| a.len() == n && m != 1);
    let mut y = vec![0f32; m * n];
    let mut da = vec![0f64; acc.map_or(0, <[f32]>::len)];
    let mut dl = vec![0f32; m * k];
    let mut dr = vec![0f32; k * n];
    for i in 0..m {
        for j in 0..n {
            let base = acc.map_or(0.0, |a| a[if row_acc { j } else { i * n + j }] as f64);
            let dot: f64 = (0..k)
                .map(|p| l[i * k + p] as f64 * r[p * n + j] as f64)
                .sum();
            y[i * n + j] = (base + alpha * dot) as f32;
            if acc.is_some() {
                da[if row_acc { j } else { i * n + j }] += c[i * n + j] as f64;
            }
        }
        for p in 0..k {
            let s: f64 = (0..n)
                .map(|j| c[i * n + j] as f64 * r[p * n + j] as f64)
                .sum();
            dl[i * k + p] = (alpha * s) as f32;
        }
    }
    for p in 0..k {
        for j in 0..n {
            let s: f64 = (0..m)
                .map(|i| l[i * k + p] as f64 * c[i * n + j] as f64)
                .sum();
            dr[p * n + j] = (alpha * s) as f32;
        }
    }
    [y, da.iter().map(|v| *v as f32).collect(), dl, dr]
}

#[test]
fn dense_products_and_their_gradients_equal_loops() {
    // (m, k, n), accumulator kind (none, [1, n] bias, [m, n]), rhs given as a transposed view.
    let cases = [
        ((37, 24, 19), 0, false),
        ((37, 24, 19), 1, true),
        ((64, 48, 40), 2, false),
        ((1, 16, 8), 1, false),
        ((300, 200, 196), 2, true),
        ((2048, 384, 32), 1, false),
    ];
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        for (i, &((m, k, n), acc_kind, rhs_view)) in cases.iter().enumerate() {
            let mut rng = Rng::new(100 + i as u64);
            let (l, r, c) = (rng.vec(m * k), rng.vec(k * n), rng.vec(m * n));
            let acc = match acc_kind {
                1 => Some(rng.vec(n)),
                2 => Some(rng.vec(m * n)),
                _ => None,
            };
            let alpha = 0.75;
            let want = dense_ref(acc.as_deref(), &l, &r, &c, alpha, (m, k, n));
            let lt: Tensor<2> = tensor(&l, [m, k], &ad).require_grad();
            // The transposed view: an [n, k] tensor holding Rᵀ, read through swapped strides.
            let rt_leaf: Tensor<2> = if rhs_view {
                let rt: Vec<f32> = (0..n * k).map(|q| r[(q % k) * n + q / k]).collect();
                tensor(&rt, [n, k], &ad).require_grad()
            } else {
                tensor(&r, [k, n], &ad).require_grad()
            };
            let rt = if rhs_view {
                rt_leaf.clone().transpose()
            } else {
                rt_leaf.clone()
            };
            let at: Option<Tensor<2>> = acc.as_ref().map(|a| {
                let rows = if a.len() == n { 1 } else { m };
                tensor(a, [rows, n], &ad).require_grad()
            });
            let y = gralora::ops::matmul_acc(at.clone(), lt.clone(), rt, alpha as f32);
            let grads = (y.clone() * tensor(&c, [m, n], &ad)).sum().backward();
            let what = format!("{name} case {i} ({m}×{k}×{n}, acc {acc_kind})");
            assert!(rel(&host(y), &want[0]) < 1e-5, "{what}: y");
            if let Some(at) = at {
                assert!(
                    rel(&host(at.grad(&grads).unwrap()), &want[1]) < 1e-5,
                    "{what}: ∂acc"
                );
            }
            assert!(
                rel(&host(lt.grad(&grads).unwrap()), &want[2]) < 1e-5,
                "{what}: ∂L"
            );
            let mut dr = host(rt_leaf.grad(&grads).unwrap());
            if rhs_view {
                dr = (0..k * n).map(|q| dr[(q % n) * k + q / n]).collect();
            }
            assert!(rel(&dr, &want[3]) < 1e-5, "{what}: ∂R");
        }
    }
}

#[test]
fn head_products_and_their_gradients_equal_loops() {
    // Attention's two products from the [B, T, D] projections (the CPU backend: block matmuls
    // with (sequence, head) batch indices; elsewhere burn's reshape/swap/matmul), forward and
    // every gradient against f64 loops.
    let (b, h, tq, tk, dh) = (2, 3, 5, 7, 4);
    let d = h * dh;
    let mut rng = Rng::new(31);
    let (q, k, v) = (
        rng.vec(b * tq * d),
        rng.vec(b * tk * d),
        rng.vec(b * tk * d),
    );
    let p = rng.vec(b * h * tq * tk);
    let (c1, c2) = (rng.vec(b * h * tq * tk), rng.vec(b * tq * d));
    let qi = |s: usize, i: usize, e: usize| (s * tq + i) * d + e;
    let ki = |s: usize, j: usize, e: usize| (s * tk + j) * d + e;
    let si = |s: usize, hh: usize, i: usize, j: usize| ((s * h + hh) * tq + i) * tk + j;
    let mut want = [
        vec![0.0f64; b * h * tq * tk], // scores
        vec![0.0f64; b * tq * d],      // ∂q
        vec![0.0f64; b * tk * d],      // ∂k
        vec![0.0f64; b * tq * d],      // ctx
        vec![0.0f64; b * h * tq * tk], // ∂probs
        vec![0.0f64; b * tk * d],      // ∂v
    ];
    for s in 0..b {
        for hh in 0..h {
            for i in 0..tq {
                for j in 0..tk {
                    for c in 0..dh {
                        let e = hh * dh + c;
                        let (qv, kv, vv) = (
                            q[qi(s, i, e)] as f64,
                            k[ki(s, j, e)] as f64,
                            v[ki(s, j, e)] as f64,
                        );
                        let (g1, pv, g2) = (
                            c1[si(s, hh, i, j)] as f64,
                            p[si(s, hh, i, j)] as f64,
                            c2[qi(s, i, e)] as f64,
                        );
                        want[0][si(s, hh, i, j)] += qv * kv;
                        want[1][qi(s, i, e)] += g1 * kv;
                        want[2][ki(s, j, e)] += g1 * qv;
                        want[3][qi(s, i, e)] += pv * vv;
                        want[4][si(s, hh, i, j)] += g2 * vv;
                        want[5][ki(s, j, e)] += pv * g2;
                    }
                }
            }
        }
    }
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        let qt: Tensor<3> = tensor(&q, [b, tq, d], &ad).require_grad();
        let kt: Tensor<3> = tensor(&k, [b, tk, d], &ad).require_grad();
        let vt: Tensor<3> = tensor(&v, [b, tk, d], &ad).require_grad();
        let pt: Tensor<4> = tensor(&p, [b, h, tq, tk], &ad).require_grad();
        let scores = gralora::ops::head_scores(qt.clone(), kt.clone(), h);
        let ctx = gralora::ops::head_context(pt.clone(), vt.clone());
        assert_eq!(scores.dims(), [b, h, tq, tk], "{name}");
        assert_eq!(ctx.dims(), [b, tq, d], "{name}");
        let loss = (scores.clone() * tensor(&c1, [b, h, tq, tk], &ad)).sum()
            + (ctx.clone() * tensor(&c2, [b, tq, d], &ad)).sum();
        let grads = loss.backward();
        let got = [
            host(scores),
            host(qt.grad(&grads).unwrap()),
            host(kt.grad(&grads).unwrap()),
            host(ctx),
            host(pt.grad(&grads).unwrap()),
            host(vt.grad(&grads).unwrap()),
        ];
        for (what, (got, want)) in ["scores", "∂q", "∂k", "ctx", "∂probs", "∂v"]
            .iter()
            .zip(got.iter().zip(&want))
        {
            let e = max_rel_err(got, want);
            assert!(e < 1e-5, "{name} {what}: {e}");
        }
    }
}

#[test]
fn accumulating_leaves_a_shared_accumulator_untouched() {
    // The CPU writes into the accumulator's buffer only when nothing else holds it.
    for (name, device) in devices() {
        let (m, k, n) = (20, 12, 16);
        let mut rng = Rng::new(7);
        let (acc, l, r) = (rng.vec(m * n), rng.vec(m * k), rng.vec(k * n));
        let acc_t: Tensor<2> = tensor(&acc, [m, n], &device);
        let y = gralora::ops::matmul_acc(
            Some(acc_t.clone()),
            tensor(&l, [m, k], &device),
            tensor(&r, [k, n], &device),
            1.0,
        );
        let want = dense_ref(Some(&acc), &l, &r, &vec![0.0; m * n], 1.0, (m, k, n));
        assert!(rel(&host(y), &want[0]) < 1e-5, "{name}: y");
        assert_eq!(host(acc_t), acc, "{name}: the shared accumulator changed");

        // The same for the block product's accumulator (GraLoRA's second product).
        let (t, d, rank, kk) = (9, 8, 4, 2);
        let (x, a, b, base) = (
            rng.vec(t * d),
            rng.vec(kk * (d / kk) * rank),
            rng.vec(kk * rank * (d / kk)),
            rng.vec(t * d),
        );
        let base_t: Tensor<2> = tensor(&base, [t, d], &device);
        let args = || {
            (
                tensor::<2>(&x, [t, d], &device),
                tensor::<3>(&a, [kk, d / kk, rank], &device),
                tensor::<3>(&b, [kk, rank, d / kk], &device),
            )
        };
        let (xt, at, bt) = args();
        let y = gralora::ops::gralora_blocks_acc(base_t.clone(), xt, at, bt, 0.5);
        let (xt, at, bt) = args();
        let branch = host(gralora_blocks(xt, at, bt, 0.5));
        let want: Vec<f32> = base.iter().zip(&branch).map(|(p, q)| p + q).collect();
        assert!(rel(&host(y), &want) < 1e-5, "{name}: block acc");
        assert_eq!(
            host(base_t),
            base,
            "{name}: the shared block accumulator changed"
        );
    }
}

#[test]
fn block_accumulation_passes_the_gradient_through() {
    // ∂(acc + s · blocks(x))/∂acc = the output gradient; x, A, B get the branch's gradients.
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        let (t, d, r, k) = (33, 24, 8, 2);
        let mut rng = Rng::new(11);
        let (x, a, b, base, c) = (
            rng.vec(t * d),
            rng.vec(k * (d / k) * r),
            rng.vec(k * r * (d / k)),
            rng.vec(t * d),
            rng.vec(t * d),
        );
        let run = |acc: bool| {
            let xt: Tensor<2> = tensor(&x, [t, d], &ad).require_grad();
            let at: Tensor<3> = tensor(&a, [k, d / k, r], &ad).require_grad();
            let bt: Tensor<3> = tensor(&b, [k, r, d / k], &ad).require_grad();
            let pt: Tensor<2> = tensor(&base, [t, d], &ad).require_grad();
            let y = if acc {
                gralora::ops::gralora_blocks_acc(
                    pt.clone(),
                    xt.clone(),
                    at.clone(),
                    bt.clone(),
                    0.5,
                )
            } else {
                pt.clone() + gralora_blocks(xt.clone(), at.clone(), bt.clone(), 0.5)
            };
            let grads = (y.clone() * tensor(&c, [t, d], &ad)).sum().backward();
            [
                host(y),
                host(pt.grad(&grads).unwrap()),
                host(xt.grad(&grads).unwrap()),
                host(at.grad(&grads).unwrap()),
                host(bt.grad(&grads).unwrap()),
            ]
        };
        let (got, want) = (run(true), run(false));
        assert_eq!(got[1], c, "{name}: ∂acc is the output gradient");
        for (i, what) in ["y", "∂acc", "∂x", "∂A", "∂B"].iter().enumerate() {
            assert!(rel(&got[i], &want[i]) < 1e-5, "{name}: {what}");
        }
    }
}
