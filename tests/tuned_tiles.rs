//! The tuner's candidates (the tiled WGSL kernel's plans: tile shapes, with and without split-K;
//! and the two-pass form: copies and burn's matmul) and cubecl's autotuner that picks among them
//! on a GPU, forced on the wgpu device here with
//! `GRALORA_WGSL_TILED=1 GRALORA_WGSL_TUNE=1`: on a software device such as CI's lavapipe the
//! direct kernel runs untuned instead, so without this binary neither the candidates nor the
//! tuned path would be tested there. Every candidate runs in f32 and, where the adapter has f16 (lavapipe
//! does), in f16. A separate test binary: the variables are process-wide.

mod common;

use burn::tensor::{DType, FloatDType};

use gralora::ops::{
    BlockMatmul, force_tuned_candidate, split_k_launches, tuned_candidates, two_pass_launches,
};

#[test]
fn every_tuner_candidate_computes_the_op_and_the_tuned_kernel_matches_the_composite() {
    // SAFETY: set before any device thread exists; this binary has a single test.
    unsafe {
        std::env::set_var("GRALORA_WGSL_TILED", "1");
        std::env::set_var("GRALORA_WGSL_TUNE", "1");
    }
    let devices = common::wgpu_devices();
    // Every map kind, and a long reduction (plain, and read transposed) that the split-K
    // candidates cut into parts.
    let long = BlockMatmul::batched(2, 600, 24, 40);
    let mut specs = common::map_kind_specs();
    specs.extend([long.grad_rhs(), BlockMatmul::batched(2, 40, 24, 600)]);
    let split_before = split_k_launches();
    let two_pass_before = two_pass_launches();
    let mut runs = 0;
    for (name, device) in &devices {
        // f16 where the adapter has it (lavapipe does): the kernel's f16 form, and burn's matmul
        // in f16 inside the two-pass form.
        let dtypes = if device.supports_dtype(DType::F16) {
            vec![FloatDType::F32, FloatDType::F16]
        } else {
            eprintln!("{name}: f16 skipped (the device has no f16 arithmetic)");
            vec![FloatDType::F32]
        };
        for dtype in dtypes {
            runs += 1;
            for i in 0..tuned_candidates() {
                force_tuned_candidate(Some(i));
                for (j, spec) in specs.iter().enumerate() {
                    common::assert_block_matmul_matches_definition_in(
                        &format!("{name} {dtype:?} candidate {i} spec {j}"),
                        device,
                        spec,
                        dtype,
                    );
                }
            }
        }
    }
    force_tuned_candidate(None);
    if !devices.is_empty() {
        assert!(
            split_k_launches() > split_before,
            "the split-K candidates must have run"
        );
        // Every spec here has whole blocks: the two-pass candidate ran on each (alone and with
        // an accumulator), on every device and dtype.
        assert_eq!(
            two_pass_launches() - two_pass_before,
            2 * specs.len() * runs,
            "the two-pass candidate must have run on every spec"
        );
    }
    // The tuned path: the tuner times the candidates on the first call for each shape class and
    // runs the one it picks; forward and gradients against the composite.
    let tuned_before = gralora::ops::tuned_kernel_launches();
    let ran = common::assert_kernel_form(
        "tuned",
        &[(1, 64, 16, 2), (77, 200, 40, 4), (600, 96, 32, 2)],
    );
    if ran {
        assert!(
            gralora::ops::tuned_kernel_launches() > tuned_before,
            "the tuned path must have run"
        );
    }
}
