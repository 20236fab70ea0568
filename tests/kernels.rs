//! The block-matmul op (WGSL on wgpu, gemm on Flex) against independent references: the f64 loop
//! definition, and GraLoRA written with burn's own ops (METHODS.md §2, regroup copy included)
//! differentiated by burn's autodiff on Flex.

mod common;

use burn::module::Param;
use burn::nn::Linear;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{DType, Device, FloatDType, Tensor};
use common::*;
use gralora::ops::{Axis, BlockMatmul, Operand, gralora_blocks};
use gralora::{AdaptedLinear, Adapter, GraLoraConfig, Init};

#[test]
fn block_matmul_matches_its_definition_on_every_map_kind() {
    // GraLoRA's regrouped read (split lhs columns), a transposed split read, a split write.
    let (g, m, n, k) = (3, 10, 7, 12);
    let specs = [
        BlockMatmul {
            g,
            m,
            n,
            k,
            alpha: 0.5,
            lhs: Operand::contiguous(m, k),
            rhs: Operand::contiguous(k, n),
            out: Operand::contiguous(m, n),
            out_shape: vec![g, m, n],
            lhs_shape: vec![g, m, k],
            rhs_shape: vec![g, k, n],
        },
        BlockMatmul {
            g,
            m,
            n,
            k,
            alpha: 2.0,
            // lhs column c = (c / 4, c % 4) over a [3 blocks][m][g·4] buffer
            lhs: Operand {
                batch: 4,
                row: Axis::plain(g * 4),
                col: Axis::split(4, m * g * 4, 1),
            },
            rhs: Operand::contiguous(k, n).transposed(),
            out: Operand {
                batch: n,
                row: Axis::plain(g * n),
                col: Axis::plain(1),
            },
            out_shape: vec![m, g * n],
            lhs_shape: vec![3, m, g * 4],
            rhs_shape: vec![g, k, n],
        },
    ];
    for (name, device) in devices() {
        for (i, spec) in specs.iter().enumerate() {
            let mut rng = Rng::new(i as u64);
            let lhs = rng.vec(spec.lhs_shape.iter().product());
            let rhs = rng.vec(spec.rhs_shape.iter().product());
            let want = spec.reference(&lhs, &rhs);
            let l: Tensor<3> = tensor(
                &lhs,
                [spec.lhs_shape[0], spec.lhs_shape[1], spec.lhs_shape[2]],
                &device,
            );
            let r: Tensor<3> = tensor(&rhs, [g, k, n], &device);
            let got = if spec.out_shape.len() == 3 {
                host(gralora::ops::block_matmul::<3, 3, 3>(l, r, spec.clone()))
            } else {
                host(gralora::ops::block_matmul::<3, 3, 2>(l, r, spec.clone()))
            };
            assert!(
                rel(&got, &want) < 1e-5,
                "{name} spec {i}: {}",
                rel(&got, &want)
            );
        }
    }
}

#[test]
fn kernel_forward_and_gradients_equal_the_composite_reference() {
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
