//! The direct (software-device) WGSL kernel with every thread loading its own operands, forced
//! with `GRALORA_WGSL_NO_SHARE=1`: on lavapipe the direct kernel shares one operand's loads over a
//! subgroup's lanes, so without this binary the form other software devices run would go
//! untested in CI. A separate test binary: the variable is process-wide.

mod common;

#[test]
fn unshared_direct_kernel_matches_the_definition_and_the_composite_gradients() {
    // SAFETY: set before any device thread exists; this binary has a single test.
    unsafe { std::env::set_var("GRALORA_WGSL_NO_SHARE", "1") };
    let (direct, shared) = (
        gralora::ops::direct_kernel_launches(),
        gralora::ops::shared_kernel_launches(),
    );
    // Tile remainders, T = 1, k up to 8, r up to 256, a rank-row product (∂B at r 16) and the
    // thin 2048-row products of the bench grid.
    let ran = common::assert_kernel_form(
        "direct, unshared",
        &[
            (1, 64, 16, 2),
            (77, 200, 40, 4),
            (130, 96, 256, 8),
            (2048, 384, 16, 2),
        ],
    );
    let after = gralora::ops::shared_kernel_launches();
    assert_eq!(
        after, shared,
        "GRALORA_WGSL_NO_SHARE=1 must keep loads unshared"
    );
    if ran && !gralora::device::has_gpu() {
        assert!(
            gralora::ops::direct_kernel_launches() > direct,
            "a software device must run the direct kernel"
        );
    }
}
