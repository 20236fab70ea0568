//! The block-matmul op's kernel forms that the default policy would not run on CI's software
//! device, each forced through [`KernelPolicy`] and checked against the op's f64 definition and
//! the composite's gradients: the `#[cube]` twin, the portable form of runtimes that compile no
//! WGSL (two-pass, the twin for partial blocks), the direct kernel without shared loads, the
//! tiled (GPU) kernel, split-K, and every tuner candidate with the tuned path. Each test runs
//! inside [`with_kernel_policy`], which serialises them: the policy is process-wide.

mod common;

use burn::tensor::{DType, FloatDType};
use common::*;
use gralora::kernels::{KernelForm, KernelPolicy, kernel_stats, with_kernel_policy};
use gralora::ops::BlockMatmul;

fn forced(form: KernelForm) -> KernelPolicy {
    KernelPolicy {
        form,
        ..KernelPolicy::default()
    }
}

#[test]
fn cube_twin_forward_and_gradients_equal_the_composite_reference() {
    with_kernel_policy(forced(KernelForm::CubeTwin), || {
        let before = kernel_stats().twin;
        let ran = assert_kernel_form(
            "cube twin",
            &[
                (1, 64, 16, 2),
                (77, 200, 40, 4),
                (130, 96, 256, 8),
                (512, 384, 32, 2),
            ],
        );
        if ran {
            // 2 forward + 4 backward launches a shape.
            assert!(
                kernel_stats().twin - before >= 24,
                "the twin kernel must have run"
            );
        }
    });
}

#[test]
fn the_portable_form_of_runtimes_without_wgsl_equals_the_composite_reference() {
    with_kernel_policy(forced(KernelForm::Portable), || {
        let before = kernel_stats();
        let ran = assert_kernel_form(
            "portable (two-pass, twin for partial blocks)",
            &[(1, 64, 16, 2), (77, 200, 40, 4), (512, 384, 32, 2)],
        );
        let after = kernel_stats();
        if ran {
            // Every GraLoRA product of these shapes has whole blocks: burn's matmul, no twin.
            // (The map-kind specs include partial last blocks: those take the twin.)
            assert!(
                after.two_pass - before.two_pass >= 18,
                "the two-pass form must have run: {} calls",
                after.two_pass - before.two_pass
            );
            assert_eq!(
                after.direct, before.direct,
                "a runtime without WGSL runs no WGSL kernel"
            );
        }
    });
}

#[test]
fn unshared_direct_kernel_matches_the_definition_and_the_composite_gradients() {
    let policy = KernelPolicy {
        shared_loads: false,
        ..KernelPolicy::default()
    };
    with_kernel_policy(policy, || {
        let before = kernel_stats();
        // Tile remainders, T = 1, k up to 8, r up to 256, a rank-row product (∂B at r 16) and the
        // thin 2048-row products of the bench grid.
        let ran = assert_kernel_form(
            "direct, unshared",
            &[
                (1, 64, 16, 2),
                (77, 200, 40, 4),
                (130, 96, 256, 8),
                (2048, 384, 16, 2),
            ],
        );
        let after = kernel_stats();
        assert_eq!(
            after.shared, before.shared,
            "shared_loads off must keep loads unshared"
        );
        if ran && !gralora::device::has_gpu() {
            assert!(
                after.direct > before.direct,
                "a software device must run the direct kernel"
            );
        }
    });
}

#[test]
fn tiled_kernel_matches_the_definition_and_the_composite_gradients() {
    with_kernel_policy(forced(KernelForm::Tiled), || {
        let before = kernel_stats().direct;
        // Tile remainders (T 77 and 130, blocks of 50 and 12), T = 1, k up to 8, r up to 256, and
        // the thin 2048-row products of the bench grid.
        assert_kernel_form(
            "tiled",
            &[
                (1, 64, 16, 2),
                (77, 200, 40, 4),
                (130, 96, 256, 8),
                (2048, 384, 16, 2),
                (512, 1536, 32, 2),
            ],
        );
        assert_eq!(
            kernel_stats().direct,
            before,
            "KernelForm::Tiled must keep the direct kernel from running"
        );
    });
}

#[test]
fn split_k_kernel_matches_the_definition_and_the_composite_gradients() {
    let policy = KernelPolicy {
        split_k: Some(3),
        ..forced(KernelForm::Tiled)
    };
    with_kernel_policy(policy, || {
        let before = kernel_stats().split_k;
        // K from 8 (fewer BK rounds than parts) to 2048, T = 1 included.
        let ran = assert_kernel_form(
            "split-K",
            &[
                (1, 64, 16, 2),
                (77, 200, 40, 4),
                (512, 384, 32, 2),
                (2048, 384, 128, 2),
            ],
        );
        if ran {
            assert!(
                kernel_stats().split_k > before,
                "the split-K path must have run"
            );
        }
    });
}

/// Every tuner candidate (the tiled kernel's plans: tile shapes, with and without split-K; and the
/// two-pass form: copies and burn's matmul), in f32 and, where the adapter has f16 (lavapipe
/// does), in f16; then the tuned path, which times them and runs the fastest.
#[test]
fn every_tuner_candidate_computes_the_op_and_the_tuned_kernel_matches_the_composite() {
    let tuned = KernelPolicy {
        tune: Some(true),
        ..forced(KernelForm::Tiled)
    };
    let devices = wgpu_devices();
    // Every map kind, and a long reduction (plain, and read transposed) that the split-K
    // candidates cut into parts.
    let long = BlockMatmul::batched(2, 600, 24, 40);
    let mut specs = map_kind_specs();
    specs.extend([long.grad_rhs(), BlockMatmul::batched(2, 40, 24, 600)]);
    let (mut split_k, mut two_pass) = (0, 0);
    let mut runs = 0;
    for (name, device) in &devices {
        let dtypes = if device.supports_dtype(DType::F16) {
            vec![FloatDType::F32, FloatDType::F16]
        } else {
            eprintln!("{name}: f16 skipped (the device has no f16 arithmetic)");
            vec![FloatDType::F32]
        };
        for dtype in dtypes {
            runs += 1;
            for i in 0..KernelPolicy::CANDIDATES {
                let policy = KernelPolicy {
                    candidate: Some(i),
                    ..tuned
                };
                // Counted inside the scope: the stats are process-wide, and other tests' scopes
                // run between these.
                with_kernel_policy(policy, || {
                    let at_start = kernel_stats();
                    for (j, spec) in specs.iter().enumerate() {
                        assert_block_matmul_matches_definition_in(
                            &format!("{name} {dtype:?} candidate {i} spec {j}"),
                            device,
                            spec,
                            dtype,
                        );
                    }
                    let at_end = kernel_stats();
                    split_k += at_end.split_k - at_start.split_k;
                    two_pass += at_end.two_pass - at_start.two_pass;
                });
            }
        }
    }
    if !devices.is_empty() {
        assert!(split_k > 0, "the split-K candidates must have run");
        // Every spec here has whole blocks: the two-pass candidate ran on each (alone and with
        // an accumulator), on every device and dtype.
        assert_eq!(
            two_pass,
            2 * specs.len() * runs,
            "the two-pass candidate must have run on every spec"
        );
    }
    with_kernel_policy(tuned, || {
        let before = kernel_stats().tuned;
        let ran = assert_kernel_form(
            "tuned",
            &[(1, 64, 16, 2), (77, 200, 40, 4), (600, 96, 32, 2)],
        );
        if ran {
            assert!(
                kernel_stats().tuned > before,
                "the tuned path must have run"
            );
        }
    });
}
