//! The tiled (workgroup-memory) WGSL kernel that GPUs run, forced on the wgpu device here with
//! `GRALORA_WGSL_TILED=1`: on a software device such as CI's lavapipe the direct kernel runs
//! instead, so without this binary the GPUs' kernel would go untested there. A separate test
//! binary: the variable is process-wide.

mod common;

#[test]
fn tiled_kernel_matches_the_definition_and_the_composite_gradients() {
    // SAFETY: set before any device thread exists; this binary has a single test.
    unsafe { std::env::set_var("GRALORA_WGSL_TILED", "1") };
    let before = gralora::ops::direct_kernel_launches();
    // Tile remainders (T 77 and 130, blocks of 50 and 12), T = 1, k up to 8, r up to 256, and the
    // thin 2048-row products of the bench grid.
    common::assert_kernel_form(
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
        gralora::ops::direct_kernel_launches(),
        before,
        "GRALORA_WGSL_TILED=1 must keep the direct kernel from running"
    );
}
