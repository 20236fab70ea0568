//! The tiled WGSL kernel with its reduction cut into parts (split-K), forced on every product with
//! `GRALORA_SPLIT_K=3` (and the tiled kernel with `GRALORA_WGSL_TILED=1`): on a real GPU split-K
//! runs only for small outputs with long reductions, and a software device runs the direct
//! kernel in one part, so the lavapipe device in CI would never reach it otherwise. A separate
//! test binary: the variables are process-wide.

mod common;

#[test]
fn split_k_kernel_matches_the_definition_and_the_composite_gradients() {
    // SAFETY: set before any device thread exists; this binary has a single test.
    unsafe {
        std::env::set_var("GRALORA_SPLIT_K", "3");
        std::env::set_var("GRALORA_WGSL_TILED", "1");
    }
    let before = gralora::ops::split_k_launches();
    // K from 8 (fewer BK rounds than parts) to 2048, T = 1 included.
    let ran = common::assert_kernel_form(
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
            gralora::ops::split_k_launches() > before,
            "the split-K path must have run"
        );
    }
}
