//! The adapter core against docs/METHODS.md §1–2, on Flex and (when present) wgpu.

mod common;

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Device;
use common::*;
use gralora::{
    AdaptedLinear, Adapter, AdapterConfig, AdapterError, GraLoraConfig, Init, LoraConfig,
};

fn linear(d_in: usize, d_out: usize, seed: u64, device: &Device) -> (Linear, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let w = rng.vec(d_in * d_out);
    let b = rng.vec(d_out);
    let lin = Linear {
        weight: Param::from_tensor(tensor(&w, [d_in, d_out], device)),
        bias: Some(Param::from_tensor(tensor(&b, [d_out], device))),
    };
    (lin, w, b)
}

/// A pair of factors (A, B) as host vectors.
type Factors = (Vec<f32>, Vec<f32>);

/// (A, B) of the block part, and the hybrid pair if any, as host vectors.
fn gralora_factors(layer: &AdaptedLinear) -> (Vec<f32>, Vec<f32>, Option<Factors>) {
    match layer.adapter.as_ref().unwrap() {
        Adapter::GraLora(g) => (
            host(g.a.val()),
            host(g.b.val()),
            g.general
                .as_ref()
                .map(|l| (host(l.a.val()), host(l.b.val()))),
        ),
        Adapter::Lora(_) => panic!("expected GraLoRA"),
    }
}

fn reference_delta(
    config: &GraLoraConfig,
    layer: &AdaptedLinear,
    d_in: usize,
    d_out: usize,
) -> Vec<f64> {
    let (a, b, general) = gralora_factors(layer);
    let s = config.alpha / (config.r + config.hybrid_r) as f64;
    let mut dw = gralora_delta_ref(&a, &b, config.k, d_in, d_out, config.r, s);
    if let Some((ga, gb)) = general {
        let hybrid = lora_delta_ref(&ga, &gb, d_in, d_out, config.hybrid_r, s);
        dw.iter_mut().zip(hybrid).for_each(|(d, h)| *d += h);
    }
    dw
}

#[test]
fn gralora_forward_equals_dense_block_formula() {
    // (T, in, out, r, k, hybrid_r)
    let cases = [
        (5, 8, 12, 4, 1, 0),
        (7, 8, 12, 4, 2, 0),
        (3, 16, 8, 8, 4, 0),
        (6, 12, 20, 4, 2, 2),
        (1, 16, 16, 8, 4, 3),
        (9, 24, 8, 12, 2, 0),
    ];
    for (name, device) in devices() {
        for (i, &(t, d_in, d_out, r, k, hybrid_r)) in cases.iter().enumerate() {
            let config = GraLoraConfig::new(r, k)
                .with_alpha(3.0)
                .with_hybrid_r(hybrid_r)
                .with_init(Init::Random);
            let (base, w, bias) = linear(d_in, d_out, 10 + i as u64, &device);
            let layer = AdaptedLinear::with_adapter(base, &config.clone().into(), "test").unwrap();
            let x = Rng::new(100 + i as u64).vec(t * d_in);
            let y = host(layer.forward(tensor(&x, [t, d_in], &device)));
            let dw = reference_delta(&config, &layer, d_in, d_out);
            assert!(
                dw.iter().any(|v| v.abs() > 1e-3),
                "random init must give a non-zero ΔW"
            );
            let want = dense_forward_ref(&x, &w, &dw, Some(&bias), t, d_in, d_out);
            let err = max_rel_err(&y, &want);
            assert!(
                err < 1e-4,
                "{name} case {i} (T={t} in={d_in} out={d_out} r={r} k={k} hybrid={hybrid_r}): err {err}"
            );

            // delta_weight() is the same ΔW.
            let got_dw = host(layer.delta_weight().unwrap());
            let err = max_rel_err(&got_dw, &dw);
            assert!(err < 1e-5, "{name} case {i}: delta_weight err {err}");
        }
    }
}

#[test]
fn gralora_as_plain_lora_is_exact_with_rank_k_times_r_plus_hybrid() {
    // (in, out, r, k, hybrid_r)
    let cases = [
        (8, 12, 4, 1, 0),
        (8, 12, 4, 2, 0),
        (16, 8, 8, 4, 0),
        (12, 20, 4, 2, 2),
    ];
    for (name, device) in devices() {
        for (i, &(d_in, d_out, r, k, hybrid_r)) in cases.iter().enumerate() {
            let config = GraLoraConfig::new(r, k)
                .with_alpha(3.0)
                .with_hybrid_r(hybrid_r)
                .with_init(Init::Random);
            let (base, _, _) = linear(d_in, d_out, 30 + i as u64, &device);
            let layer = AdaptedLinear::with_adapter(base, &config.clone().into(), "test").unwrap();
            let want = reference_delta(&config, &layer, d_in, d_out);
            let Some(Adapter::GraLora(g)) = &layer.adapter else {
                unreachable!()
            };
            let lora = g.to_lora().unwrap();
            assert_eq!(lora.rank(), k * r + hybrid_r, "{name} case {i}");
            assert_eq!(lora.scale, config.alpha / (r + hybrid_r) as f64);
            // The plain pair's ΔW from METHODS.md §1, on the host, against the block formula.
            let (a, b) = (host(lora.a.val()), host(lora.b.val()));
            let got = lora_delta_ref(&a, &b, d_in, d_out, k * r + hybrid_r, lora.scale);
            let got: Vec<f32> = got.iter().map(|v| *v as f32).collect();
            let err = max_rel_err(&got, &want);
            assert!(err < 1e-6, "{name} case {i}: ΔW err {err}");
            // A' is zero off its diagonal blocks: only A's in·r entries and the hybrid's in·hybrid_r.
            let nonzero = a.iter().filter(|v| **v != 0.0).count();
            assert_eq!(
                nonzero,
                d_in * r + d_in * hybrid_r,
                "{name} case {i}: A' sparsity"
            );
        }
    }
}

#[test]
fn forward_keeps_leading_dimensions() {
    for (name, device) in devices() {
        let config: AdapterConfig = GraLoraConfig::new(4, 2).with_init(Init::Random).into();
        let (base, _, _) = linear(8, 6, 1, &device);
        let layer = AdaptedLinear::with_adapter(base, &config, "test").unwrap();
        let x = Rng::new(2).vec(2 * 3 * 8);
        let y3 = layer.forward(tensor(&x, [2, 3, 8], &device));
        assert_eq!(y3.dims(), [2, 3, 6], "{name}");
        let y2 = layer.forward(tensor(&x, [6, 8], &device));
        let (a, b) = (host(y3), host(y2));
        assert_eq!(
            a, b,
            "{name}: a [2, 3, in] input must equal the flattened [6, in] one"
        );
    }
}

#[test]
fn lora_forward_and_scales_follow_peft() {
    for (name, device) in devices() {
        for rslora in [false, true] {
            let (t, d_in, d_out, r) = (4, 10, 6, 3);
            let config = LoraConfig::new(r)
                .with_alpha(7.0)
                .with_rslora(rslora)
                .with_init(Init::Random);
            let s = if rslora {
                7.0 / (r as f64).sqrt()
            } else {
                7.0 / r as f64
            };
            let (base, w, bias) = linear(d_in, d_out, 3, &device);
            let layer = AdaptedLinear::with_adapter(base, &config.into(), "test").unwrap();
            let (a, b) = match layer.adapter.as_ref().unwrap() {
                Adapter::Lora(l) => {
                    assert!((l.scale - s).abs() < 1e-12);
                    (host(l.a.val()), host(l.b.val()))
                }
                _ => unreachable!(),
            };
            let dw = lora_delta_ref(&a, &b, d_in, d_out, r, s);
            let x = Rng::new(4).vec(t * d_in);
            let y = host(layer.forward(tensor(&x, [t, d_in], &device)));
            let err = max_rel_err(
                &y,
                &dense_forward_ref(&x, &w, &dw, Some(&bias), t, d_in, d_out),
            );
            assert!(err < 1e-4, "{name} rslora={rslora}: err {err}");
        }
    }
}

#[test]
fn gralora_scale_is_alpha_over_r_plus_hybrid() {
    let c = GraLoraConfig::new(8, 2).with_alpha(32.0).with_hybrid_r(8);
    assert_eq!(c.scale(), 2.0);
    assert_eq!(GraLoraConfig::default().scale(), 2.0); // PEFT: alpha 64 / r 32
    let device = Device::flex();
    let (base, _, _) = linear(8, 8, 5, &device);
    let layer = AdaptedLinear::with_adapter(base, &c.into(), "test").unwrap();
    let Adapter::GraLora(g) = layer.adapter.as_ref().unwrap() else {
        unreachable!()
    };
    assert_eq!(g.scale, 2.0);
    assert_eq!(
        g.general.as_ref().unwrap().scale,
        2.0,
        "the hybrid pair shares the scale"
    );
}

#[test]
fn gralora_with_k1_equals_lora_with_the_same_factors() {
    for (name, device) in devices() {
        let (t, d_in, d_out, r) = (5, 12, 10, 4);
        let mut rng = Rng::new(7);
        let (a, b) = (rng.vec(d_in * r), rng.vec(r * d_out));
        let x = rng.vec(t * d_in);
        let s = 1.5;
        let lora = gralora::LoraAdapter::from_tensors(
            tensor(&a, [d_in, r], &device),
            tensor(&b, [r, d_out], &device),
            s,
        );
        let gra = gralora::GraLoraAdapter::from_tensors(
            tensor(&a, [1, d_in, r], &device),
            tensor(&b, [1, r, d_out], &device),
            None,
            s,
        );
        let xt = tensor(&x, [t, d_in], &device);
        let y_lora = host(lora.forward(xt.clone()));
        let y_gra = host(gra.forward(xt));
        let want: Vec<f64> = y_lora.iter().map(|v| *v as f64).collect();
        assert!(max_rel_err(&y_gra, &want) < 1e-6, "{name}");
        let dw_l: Vec<f64> = host(lora.delta_weight())
            .iter()
            .map(|v| *v as f64)
            .collect();
        assert!(
            max_rel_err(&host(gra.delta_weight()), &dw_l) < 1e-6,
            "{name}"
        );
    }
}

#[test]
fn merge_then_forward_equals_unmerged_and_unmerge_restores_w() {
    for (name, device) in devices() {
        for config in [
            AdapterConfig::from(
                GraLoraConfig::new(8, 4)
                    .with_hybrid_r(2)
                    .with_init(Init::Random),
            ),
            AdapterConfig::from(LoraConfig::new(4).with_init(Init::Random)),
        ] {
            let (t, d_in, d_out) = (6, 16, 12);
            let (base, w, _) = linear(d_in, d_out, 8, &device);
            let layer = AdaptedLinear::with_adapter(base, &config, "test").unwrap();
            let x = tensor(&Rng::new(9).vec(t * d_in), [t, d_in], &device);
            let before = host(layer.forward(x.clone()));
            let merged = layer.merge().unwrap();
            assert!(merged.merged);
            let after: Vec<f64> = host(merged.forward(x.clone()))
                .iter()
                .map(|v| *v as f64)
                .collect();
            assert!(max_rel_err(&before, &after) < 1e-5, "{name} {config:?}");
            assert!(
                matches!(merged.clone().merge(), Err(AdapterError::State(_))),
                "merging twice is an error"
            );
            let unmerged = merged.unmerge().unwrap();
            let w_back = host(unmerged.base.weight.val());
            let w64: Vec<f64> = w.iter().map(|v| *v as f64).collect();
            assert!(
                max_rel_err(&w_back, &w64) < 1e-6,
                "{name}: unmerge must restore W"
            );
            let again: Vec<f64> = host(unmerged.forward(x))
                .iter()
                .map(|v| *v as f64)
                .collect();
            assert!(max_rel_err(&before, &again) < 1e-5, "{name}");
        }
    }
}

/// L = Σ y ⊙ c computed in f64 from the block formula, for finite differences.
fn reference_loss(
    x: &[f32],
    w: &[f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    dims: (usize, usize, usize, usize, usize),
    s: f64,
) -> f64 {
    let (t, d_in, d_out, r, k) = dims;
    let dw = gralora_delta_ref(a, b, k, d_in, d_out, r, s);
    let y = dense_forward_ref(x, w, &dw, None, t, d_in, d_out);
    y.iter().zip(c).map(|(y, c)| y * *c as f64).sum()
}

#[test]
fn gradients_match_central_finite_differences() {
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        let (t, d_in, d_out, r, k) = (3, 8, 4, 4, 2);
        let config = GraLoraConfig::new(r, k)
            .with_alpha(4.0)
            .with_init(Init::Random);
        let mut rng = Rng::new(11);
        let w = rng.vec(d_in * d_out);
        let base = Linear {
            weight: Param::from_tensor(tensor(&w, [d_in, d_out], &ad)),
            bias: None,
        };
        let layer = AdaptedLinear::with_adapter(base, &config.clone().into(), "test").unwrap();
        let (x, c) = (rng.vec(t * d_in), rng.vec(t * d_out));
        let y = layer.forward(tensor(&x, [t, d_in], &ad));
        let loss = (y * tensor(&c, [t, d_out], &ad)).sum();
        let grads = loss.backward();
        let Adapter::GraLora(g) = layer.adapter.as_ref().unwrap() else {
            unreachable!()
        };
        let ga = host(g.a.val().grad(&grads).expect("A has a gradient"));
        let gb = host(g.b.val().grad(&grads).expect("B has a gradient"));
        assert!(
            layer.base.weight.val().grad(&grads).is_none(),
            "{name}: the base weight must stay frozen"
        );

        let (a, b) = (host(g.a.val()), host(g.b.val()));
        let s = config.scale();
        let dims = (t, d_in, d_out, r, k);
        let h = 1e-3f32;
        let fd = |which: u8, i: usize| {
            let (mut ap, mut am, mut bp, mut bm) = (a.clone(), a.clone(), b.clone(), b.clone());
            if which == 0 {
                ap[i] += h;
                am[i] -= h;
            } else {
                bp[i] += h;
                bm[i] -= h;
            }
            let lp = reference_loss(&x, &w, &ap, &bp, &c, dims, s);
            let lm = reference_loss(&x, &w, &am, &bm, &c, dims, s);
            (lp - lm) / (2.0 * h as f64)
        };
        let fd_a: Vec<f64> = (0..a.len()).map(|i| fd(0, i)).collect();
        let fd_b: Vec<f64> = (0..b.len()).map(|i| fd(1, i)).collect();
        assert!(
            max_rel_err(&ga, &fd_a) < 1e-3,
            "{name}: dL/dA err {}",
            max_rel_err(&ga, &fd_a)
        );
        assert!(
            max_rel_err(&gb, &fd_b) < 1e-3,
            "{name}: dL/dB err {}",
            max_rel_err(&gb, &fd_b)
        );
        assert!(
            fd_a.iter().chain(&fd_b).any(|v| v.abs() > 1e-2),
            "gradients must not be trivially zero"
        );
    }
}

/// ∂L/∂B for L = Σ y ⊙ c (linear in y, so ∂L/∂y does not depend on x).
fn b_grad(
    layer: &AdaptedLinear,
    x: &[f32],
    shape: (usize, usize, usize),
    device: &Device,
) -> Vec<f32> {
    let (t, d_in, d_out) = shape;
    let y = layer.forward(tensor(x, [t, d_in], device));
    let c: Vec<f32> = (0..t * d_out)
        .map(|i| ((i % 7) as f32 - 3.0) / 3.0)
        .collect();
    let grads = (y * tensor(&c, [t, d_out], device)).sum().backward();
    match layer.adapter.as_ref().unwrap() {
        Adapter::GraLora(g) => host(g.b.val().grad(&grads).unwrap()),
        Adapter::Lora(l) => host(l.b.val().grad(&grads).unwrap()),
    }
}

#[test]
fn an_outlier_channel_moves_only_its_own_block_of_b() {
    for (name, device) in devices() {
        let ad = device.clone().autodiff();
        let (t, d_in, d_out, r, k) = (6, 16, 8, 8, 4);
        let (ib, ob, rb) = (d_in / k, d_out / k, r / k);
        let n_star = 2;
        let channel = n_star * ib + 1;
        let x = Rng::new(21).vec(t * d_in);
        let mut x_out = x.clone();
        for row in 0..t {
            x_out[row * d_in + channel] *= 100.0;
        }
        let config: AdapterConfig = GraLoraConfig::new(r, k).with_init(Init::Random).into();
        let (base, _, _) = linear(d_in, d_out, 22, &ad);
        let layer = AdaptedLinear::with_adapter(base, &config, "test").unwrap();
        let shape = (t, d_in, d_out);
        let _warm = b_grad(&layer, &x, shape, &ad); // autotune settles before comparing bits
        let g0 = b_grad(&layer, &x, shape, &ad);
        let g1 = b_grad(&layer, &x_out, shape, &ad);
        // B: [k(j), r, ob]; sub-adapter (n, j) is B[j][n·rb..(n+1)·rb, :].
        for j in 0..k {
            for n in 0..k {
                let idx: Vec<usize> = (n * rb..(n + 1) * rb)
                    .flat_map(|row| (0..ob).map(move |q| (j * r + row) * ob + q))
                    .collect();
                let changed = idx
                    .iter()
                    .filter(|&&i| g0[i].to_bits() != g1[i].to_bits())
                    .count();
                if n == n_star {
                    assert_eq!(
                        changed,
                        idx.len(),
                        "{name}: sub-adapter ({n}, {j}) must move with its outlier"
                    );
                } else {
                    assert_eq!(
                        changed, 0,
                        "{name}: sub-adapter ({n}, {j}) must stay bit-for-bit unchanged"
                    );
                }
            }
        }

        // LoRA: every entry of ∂L/∂B moves.
        let lora: AdapterConfig = LoraConfig::new(r).with_init(Init::Random).into();
        let (base, _, _) = linear(d_in, d_out, 22, &ad);
        let layer = AdaptedLinear::with_adapter(base, &lora, "test").unwrap();
        let g0 = b_grad(&layer, &x, shape, &ad);
        let g1 = b_grad(&layer, &x_out, shape, &ad);
        assert!(
            g0.iter().zip(&g1).all(|(a, b)| a != b),
            "{name}: LoRA's ∂L/∂B must change everywhere"
        );
    }
}

#[test]
fn init_is_peft_kaiming_with_zero_b() {
    for (name, device) in devices() {
        for k in [1, 2, 4] {
            let (d_in, d_out, r) = (256, 64, 16);
            let config = GraLoraConfig::new(r, k);
            let (base, _, _) = linear(d_in, d_out, 31, &device);
            let layer = AdaptedLinear::with_adapter(base, &config.clone().into(), "test").unwrap();
            let (a, b, _) = gralora_factors(&layer);
            let bound = (k as f64 / d_in as f64).sqrt();
            assert!(b.iter().all(|v| *v == 0.0), "{name}: B starts at zero");
            let max = a.iter().map(|v| v.abs() as f64).fold(0.0, f64::max);
            assert!(
                max <= bound + 1e-7,
                "{name} k={k}: |A| ≤ sqrt(k/in) = {bound}, got {max}"
            );
            assert!(
                max > 0.98 * bound,
                "{name} k={k}: A must fill its range, max {max} of {bound}"
            );
            let mean = a.iter().map(|v| *v as f64).sum::<f64>() / a.len() as f64;
            let var = a.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
            assert!(mean.abs() < 0.05 * bound, "{name} k={k}: mean {mean}");
            let uniform_var = bound * bound / 3.0;
            assert!(
                (var / uniform_var - 1.0).abs() < 0.1,
                "{name} k={k}: variance {var} vs uniform {uniform_var}"
            );
            let dw = host(layer.delta_weight().unwrap());
            assert!(dw.iter().all(|v| *v == 0.0), "{name}: ΔW = 0 at start");
        }
    }
}

#[test]
fn only_adapter_parameters_are_trainable() {
    let device = Device::flex().autodiff();
    let (base, _, _) = linear(16, 8, 41, &device);
    let config: AdapterConfig = GraLoraConfig::new(8, 2).with_hybrid_r(4).into();
    let layer = AdaptedLinear::with_adapter(base, &config, "test").unwrap();
    assert_eq!(layer.num_trainable_params(), (16 + 8) * (8 + 4));
    assert_eq!(config.num_params(16, 8), (16 + 8) * (8 + 4));
    assert!(!layer.base.weight.is_require_grad());
    assert!(!layer.base.bias.as_ref().unwrap().is_require_grad());
}

#[test]
fn dropout_acts_on_the_adapter_branch_only() {
    let device = Device::flex().autodiff();
    let (base, _, _) = linear(8, 4, 51, &device);
    let plain = AdaptedLinear::new(base.clone());
    let config: AdapterConfig = GraLoraConfig::new(4, 2).with_dropout(0.5).into();
    let layer = AdaptedLinear::with_adapter(base, &config, "test").unwrap();
    // B = 0 at init: with dropout on the branch only, the output must equal the base exactly.
    let x = tensor(&Rng::new(52).vec(5 * 8), [5, 8], &device);
    assert_eq!(host(layer.forward(x.clone())), host(plain.forward(x)));
    assert!(layer.dropout.is_some());
}

#[test]
fn invalid_configurations_are_typed_errors_naming_layer_and_numbers() {
    let check = |config: AdapterConfig, d_in: usize, d_out: usize, needles: &[&str]| {
        let err = config
            .validate_for("encoder.layer.3.query", d_in, d_out)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("encoder.layer.3.query"), "{msg}");
        for n in needles {
            assert!(msg.contains(n), "`{msg}` should mention `{n}`");
        }
        err
    };
    let e = check(
        GraLoraConfig::new(9, 3).into(),
        12,
        10,
        &["out_features", "10", "k = 3"],
    );
    assert!(matches!(
        e,
        AdapterError::NotDivisible {
            dim: "out_features",
            value: 10,
            k: 3,
            ..
        }
    ));
    let e = check(
        GraLoraConfig::new(8, 4).into(),
        10,
        12,
        &["in_features", "10", "k = 4"],
    );
    assert!(matches!(
        e,
        AdapterError::NotDivisible {
            dim: "in_features",
            ..
        }
    ));
    let e = check(
        GraLoraConfig::new(6, 4).into(),
        16,
        16,
        &["r", "6", "k = 4"],
    );
    assert!(matches!(e, AdapterError::NotDivisible { dim: "r", .. }));
    check(GraLoraConfig::new(8, 0).into(), 16, 16, &["k = 0"]);
    check(GraLoraConfig::new(0, 2).into(), 16, 16, &["r = 0"]);
    check(LoraConfig::new(0).into(), 16, 16, &["r = 0"]);
    check(
        LoraConfig::new(4).with_dropout(-0.1).into(),
        16,
        16,
        &["dropout = -0.1"],
    );
    check(
        GraLoraConfig::new(4, 2).with_dropout(1.0).into(),
        16,
        16,
        &["dropout = 1"],
    );
    check(
        LoraConfig::new(4).with_alpha(f64::NAN).into(),
        16,
        16,
        &["alpha = NaN"],
    );
    check(
        GraLoraConfig::new(4, 2).with_init(Init::Gaussian).into(),
        16,
        16,
        &["gaussian"],
    );
    // The same errors come out of the module constructor, without a panic.
    let (base, _, _) = linear(10, 12, 1, &Device::flex());
    let err = AdaptedLinear::with_adapter(base, &GraLoraConfig::new(8, 4).into(), "my.layer")
        .unwrap_err();
    assert!(err.to_string().contains("my.layer") && err.to_string().contains("in_features = 10"));
}

#[test]
fn configuration_round_trips_through_json_with_peft_defaults() {
    let g = GraLoraConfig::default();
    assert_eq!(
        (g.r, g.alpha, g.k, g.hybrid_r, g.dropout),
        (32, 64.0, 2, 0, 0.0)
    );
    let l = LoraConfig::default();
    assert_eq!(
        (l.r, l.alpha, l.dropout, l.use_rslora),
        (8, 8.0, 0.0, false)
    );
    for c in [
        AdapterConfig::from(
            GraLoraConfig::new(16, 4)
                .with_hybrid_r(8)
                .with_dropout(0.05)
                .with_init(Init::Random),
        ),
        AdapterConfig::from(
            LoraConfig::new(64)
                .with_rslora(true)
                .with_alpha(16.0)
                .with_init(Init::Gaussian),
        ),
    ] {
        let json = c.to_json();
        assert_eq!(AdapterConfig::from_json(&json).unwrap(), c, "{json}");
    }
    let parsed = AdapterConfig::from_json(r#"{"method": "gralora", "r": 16}"#).unwrap();
    assert_eq!(
        parsed,
        GraLoraConfig {
            r: 16,
            ..Default::default()
        }
        .into()
    );
    for bad in [
        r#"{"method": "dora", "r": 8}"#,
        r#"{"method": "lora", "r": -1}"#,
        r#"{"method": "lora", "rank": 8}"#,
        r#"{"method": "gralora", "r": 8, "k": 0}"#,
    ] {
        assert!(
            AdapterConfig::from_json(bad).is_err(),
            "{bad} must be rejected"
        );
    }
}
