//! The `#[cube]` twin of the WGSL kernel (used on runtimes that do not compile WGSL), forced on
//! the wgpu device here with `GRALORA_CUBE_TWIN=1`. A separate test binary: the variable is
//! process-wide, so it must not leak into the WGSL kernel tests.

mod common;

use common::*;

#[test]
fn cube_twin_forward_and_gradients_equal_the_composite_reference() {
    // SAFETY: set before any device thread exists; this binary has a single test.
    unsafe { std::env::set_var("GRALORA_CUBE_TWIN", "1") };
    let before = gralora::ops::cube_twin_launches();
    let gpu_devices = wgpu_devices();
    for (name, device) in &gpu_devices {
        for shape in [
            (1, 64, 16, 2),
            (77, 200, 40, 4),
            (130, 96, 256, 8),
            (512, 384, 32, 2),
        ] {
            assert_branch_matches_composite(&format!("{name} (cube twin)"), device, shape);
        }
        for (i, spec) in map_kind_specs().iter().enumerate() {
            assert_block_matmul_matches_definition(
                &format!("{name} (cube twin) spec {i}"),
                device,
                spec,
            );
        }
    }
    if !gpu_devices.is_empty() {
        // 2 forward + 4 backward launches a shape.
        assert!(
            gralora::ops::cube_twin_launches() - before >= 24,
            "the twin kernel must have run"
        );
    }
}
