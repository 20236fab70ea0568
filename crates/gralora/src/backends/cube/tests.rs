//! Unit tests of the kernels' specialisation, plans and two-pass views.

use super::plan::*;
use super::two_pass::*;
use super::wgsl::*;
use crate::ops::*;
use burn_cubecl::template::KernelSource;

/// Every specialisation the op can launch renders to WGSL that naga (wgpu's own front end)
/// parses and validates, with or without a GPU on the machine.
#[test]
fn every_kernel_variant_is_valid_wgsl() {
    let shapes = [
        (2048, 16),
        (16, 2048),
        (2048, 32),
        (32, 2048),
        (2048, 2048),
        (2048, 192),
        (96, 96),
        (77, 5),
        (1, 1),
    ];
    let split_sets = [
        [0; 6],
        [0, 8, 0, 0, 0, 0],
        [4, 0, 0, 4, 0, 4],
        [2, 3, 5, 7, 11, 13],
    ];
    for (m, n) in shapes {
        for splits in split_sets {
            for (f16, k_fast, software, direct) in [
                (false, false, false, false),
                (true, true, true, false),
                (false, true, true, false),
                (true, false, false, false),
                (false, false, true, true),
                (true, true, true, true),
            ] {
                let vecs: &[[Vec4; 2]] = if direct {
                    &[
                        [Vec4::No, Vec4::No],
                        [Vec4::Outer, Vec4::Outer],
                        [Vec4::K, Vec4::K],
                        [Vec4::Outer, Vec4::K],
                        [Vec4::K, Vec4::No],
                        [Vec4::No, Vec4::Outer],
                    ]
                } else {
                    &[[Vec4::No, Vec4::No]]
                };
                let shares: &[Share] = if direct {
                    &[Share::None, Share::Lhs, Share::Rhs]
                } else {
                    &[Share::None]
                };
                // The tiled kernel in every tile the tuner may pick.
                let tiles: Vec<Tile> = if direct {
                    vec![Tile::for_shape(m, n, software)]
                } else {
                    candidate_tiles(m, n, software).collect()
                };
                let mut combos = Vec::new();
                for &vec in vecs {
                    for &share in shares {
                        for &tile in &tiles {
                            combos.push((vec, share, tile));
                        }
                    }
                }
                for (vec, share, tile) in combos {
                    let mut tile = tile;
                    if share == Share::Lhs {
                        tile.wx = 8;
                    }
                    if share == Share::Rhs {
                        tile.wy = 8;
                    }
                    let kernel = BlockMatmulKernel {
                        f16,
                        splits,
                        tile,
                        lhs_k_fast: k_fast,
                        rhs_k_fast: !k_fast,
                        direct,
                        vec,
                        vec_out: direct && vec[1] != Vec4::K,
                        share,
                        subgroup: 8,
                    };
                    let source = kernel.source().complete();
                    let module = wgpu::naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
                        panic!("{kernel:?}:\n{}\n{source}", e.emit_to_string(&source))
                    });
                    let mut validator = wgpu::naga::valid::Validator::new(
                        wgpu::naga::valid::ValidationFlags::all(),
                        wgpu::naga::valid::Capabilities::all(),
                    );
                    validator
                        .validate(&module)
                        .unwrap_or_else(|e| panic!("{kernel:?}: {e:?}\n{source}"));
                }
            }
        }
    }
}

/// GraLoRA's six products read both operands as `vec4`s on a 384-wide layer (along the axis
/// each is contiguous in), and an operand with no aligned run of four is read by scalars.
#[test]
fn vec4_loads_where_runs_of_four_are_aligned() {
    use crate::ops::{gralora_first_spec, gralora_second_spec};
    use Vec4::{K, No, Outer};
    for (k, r) in [(2, 16), (2, 32), (4, 16), (4, 128)] {
        let first = gralora_first_spec(2048, 384, k, r);
        let second = gralora_second_spec(&first, 384 / k, 2.0);
        for (spec, want) in [
            (&first, [K, Outer]),
            (&first.grad_lhs(), [K, K]),
            (&first.grad_rhs(), [Outer, Outer]),
            (&second, [K, Outer]),
            (&second.grad_lhs(), [K, K]),
            (&second.grad_rhs(), [Outer, Outer]),
        ] {
            assert_eq!(vec_axes(spec), want, "k {k}, r {r}: {spec:?}");
            assert!(vec_out(spec), "k {k}, r {r}: {spec:?}");
        }
    }
    // r / k = 2: the regrouped h has runs of two only; x's blocks (in / k = 27) are unaligned.
    let second = gralora_second_spec(&gralora_first_spec(2048, 384, 8, 16), 48, 2.0);
    assert_eq!(vec_axes(&second), [No, Outer]);
    assert_eq!(vec_axes(&gralora_first_spec(16, 54, 2, 8)), [No, Outer]);
    // Lengths that are no multiple of 4.
    assert_eq!(vec_axes(&BlockMatmul::batched(3, 77, 5, 6)), [No, No]);
    assert_eq!(vec_axes(&BlockMatmul::batched(3, 77, 8, 6)), [No, Outer]);
    assert_eq!(vec_axes(&BlockMatmul::batched(3, 77, 8, 12)), [K, Outer]);
    assert!(vec_out(&BlockMatmul::batched(3, 77, 8, 12)));
    assert!(!vec_out(&BlockMatmul::batched(3, 77, 6, 12)));
    assert!(!vec_out(&BlockMatmul::batched(3, 77, 8, 6).grad_lhs()));
}

#[test]
fn only_small_outputs_with_long_reductions_split_k_on_a_gpu() {
    let parts = |s: &BlockMatmul, software, f16| {
        split_k_parts(s, Tile::for_shape(s.m, s.n, software), software, f16)
    };
    // GraLoRA's ∂A at in 384, r 128, k 2, T 2048: 2 × (192 × 128) outputs, a 2048-long sum.
    let grad_a = BlockMatmul::batched(2, 192, 128, 2048);
    let p = parts(&grad_a, false, false);
    assert!((2..=8).contains(&p), "{p}");
    // A dense layer's product has workgroups enough; a short reduction is not worth cutting.
    assert_eq!(
        parts(&BlockMatmul::batched(1, 2048, 1536, 384), false, false),
        1
    );
    assert_eq!(
        parts(&BlockMatmul::batched(2, 192, 128, 300), false, false),
        1
    );
    // Software devices and f16 never split.
    assert_eq!(parts(&grad_a, true, false), 1);
    assert_eq!(parts(&grad_a, false, true), 1);
}

/// The shared-load tiles keep a subgroup's lanes on one thread row (lhs shared) or one thread
/// column (rhs shared, the hardware's x axis then running along M), and their register blocks
/// in whole `vec4`s.
#[test]
fn shared_tiles_keep_a_subgroup_on_one_thread_row_or_column() {
    for lanes in [4, 8, 16] {
        for (m, n) in [
            (2048, 16),
            (2048, 32),
            (2048, 768),
            (16, 768),
            (32, 96),
            (1, 1),
        ] {
            let (t, share) = Tile::shared(m, n, lanes);
            assert!(t.tm % 4 == 0 && t.tn % 4 == 0, "{t:?}");
            match share {
                Share::Lhs => assert_eq!(t.wx % lanes, 0, "{m}x{n}: {t:?}"),
                Share::Rhs => assert_eq!(t.wy % lanes, 0, "{m}x{n}: {t:?}"),
                Share::None => panic!("{m}x{n}: nothing shared"),
            }
        }
    }
    // A rank-sized row count shares the lhs; GraLoRA's T-row products share the rhs.
    assert_eq!(Tile::shared(16, 768, 8).1, Share::Lhs);
    assert_eq!(Tile::shared(2048, 16, 8).1, Share::Rhs);
    assert_eq!(Tile::shared(2048, 768, 8).1, Share::Rhs);
}

/// The two-pass form's strided views address exactly what the maps do: GraLoRA's products and
/// their gradients, and attention's two-level batches; its output permutation exists for all
/// of them; a partial last block or a map with gaps is declined.
#[test]
fn two_pass_views_reproduce_the_maps() {
    let first = crate::ops::gralora_first_spec(77, 200, 4, 40);
    let second = crate::ops::gralora_second_spec(&first, 50, 2.0);
    // Attention's per-head products: 2 sequences of 3 heads, 10 queries, 7 keys, width 12.
    let scores = crate::ops::head_scores_spec(2, 10, 7, 12, 3);
    let context = crate::ops::head_context_spec(2, 3, 10, 7, 12);
    let mut specs = Vec::new();
    for spec in [first, second, scores, context] {
        specs.extend([spec.grad_lhs(), spec.grad_rhs(), spec]);
    }
    for spec in &specs {
        let (g, m, n, k) = (spec.g, spec.m, spec.n, spec.k);
        for (op, rows, cols) in [(spec.lhs, m, k), (spec.rhs, k, n), (spec.out, m, n)] {
            let dims = operand_dims(&op, g, rows, cols).expect("whole blocks");
            let total: usize = dims.iter().map(|d| d.0).product();
            assert_eq!(total, g * rows * cols, "{spec:?}");
            // Index (b, i, j) in [g, rows, cols] order, split into the dims' mixed radix.
            for (flat, (b, i, j)) in (0..g)
                .flat_map(|b| (0..rows).flat_map(move |i| (0..cols).map(move |j| (b, i, j))))
                .enumerate()
            {
                let (mut rest, mut offset) = (flat, 0);
                for &(len, stride) in dims.iter().rev() {
                    offset += (rest % len) * stride;
                    rest /= len;
                }
                assert_eq!(offset, op.offset(b, i, j), "{op:?} at ({b}, {i}, {j})");
            }
        }
        assert!(scatter_order(&spec.out, g, m, n).is_some(), "{spec:?}");
    }
    // A split axis whose last block is partial, and an output map with gaps between rows.
    assert!(axis_dims(10, Axis::split(4, 100, 1)).is_none());
    assert!(axis_dims(3, Axis::split(4, 100, 2)).is_some());
    let gaps = Operand {
        batch: Axis::plain(2 * 5 * 3),
        row: Axis::plain(2 * 3),
        col: Axis::plain(1),
    };
    assert!(scatter_order(&gaps, 2, 5, 3).is_none());
}

/// The tuner's candidates: the default plan first, every tile a valid one (threads,
/// `vec4` register blocks, workgroup memory), each tile once with split-K as a GPU would
/// choose it and once in one part; and enough distinct plans to choose among.
#[test]
fn tuned_candidates_lead_with_the_default_plan_and_are_valid_tiles() {
    let limit = 16384;
    for spec in [
        BlockMatmul::batched(1, 2048, 384, 384),
        BlockMatmul::batched(2, 2048, 16, 192),
        BlockMatmul::batched(2, 192, 128, 2048),
        BlockMatmul::batched(4, 16, 96, 2048),
        BlockMatmul::batched(1, 1, 1, 1),
    ] {
        let plans = candidate_plans(&spec, limit, false, false);
        assert_eq!(plans.len(), TILED_CANDIDATES);
        let tile = Tile::for_shape(spec.m, spec.n, false).within(limit);
        assert_eq!(
            plans[0],
            Plan::tiled(tile, split_k_parts(&spec, tile, false, false)),
            "{spec:?}"
        );
        for (i, plan) in plans.iter().enumerate() {
            let t = plan.tile;
            assert!(!plan.direct && plan.share == Share::None, "{plan:?}");
            assert!((1..=256).contains(&(t.wx * t.wy)), "{plan:?}");
            assert_eq!((t.tm % 4, t.tn % 4), (0, 0), "{plan:?}");
            assert!(t.shared_bytes() <= limit, "{plan:?}");
            if i % 2 == 1 {
                assert_eq!(plan.parts, 1, "{plan:?}");
                assert_eq!(plan.tile, plans[i - 1].tile, "{plan:?}");
            }
        }
        let distinct = plans
            .iter()
            .enumerate()
            .filter(|(i, p)| !plans[..*i].contains(p))
            .count();
        // (A 1 × 1 output leaves every tile one thread: only the register blocks differ.)
        let least = if spec.m * spec.n == 1 { 2 } else { 4 };
        assert!(distinct >= least, "{spec:?}: {distinct} distinct plans");
    }
    // ∂A at in 384, r 128, k 2: both split and unsplit candidates are timed.
    let plans = candidate_plans(
        &BlockMatmul::batched(2, 192, 128, 2048),
        limit,
        false,
        false,
    );
    assert!(plans.iter().any(|p| p.parts > 1));
    // f16 never splits.
    let plans = candidate_plans(&BlockMatmul::batched(2, 192, 128, 2048), limit, false, true);
    assert!(plans.iter().all(|p| p.parts == 1));
}

#[test]
fn tiles_fit_a_workgroup_and_cover_the_output() {
    for software in [false, true] {
        for (m, n) in [
            (2048, 16),
            (16, 2048),
            (2048, 32),
            (32, 2048),
            (64, 64),
            (2048, 384),
            (2048, 192),
            (192, 32),
            (96, 2048),
            (77, 5),
            (1, 1),
        ] {
            let t = Tile::for_shape(m, n, software);
            let threads = t.wx * t.wy;
            assert!((1..=256).contains(&threads), "{t:?}");
            assert_eq!(t.tm % 4, 0, "{t:?}: vec4 rows");
            assert_eq!(t.tn % 4, 0, "{t:?}: vec4 columns");
            if software {
                // Each tile idles less than one thread's block along either side.
                let (bm, bn) = (t.bm() as usize, t.bn() as usize);
                let (rows, cols) = (m.div_ceil(bm), n.div_ceil(bn));
                assert!(rows * bm - m < rows * t.tm as usize, "{m}×{n}: {t:?}");
                assert!(cols * bn - n < cols * t.tn as usize, "{m}×{n}: {t:?}");
            }
            // GPU tiles fit WebGPU's guaranteed 16 KiB of workgroup memory; software ones
            // lavapipe's 32 KiB, and any tile shrinks to fit a smaller device.
            let limit = if software { 32768 } else { 16384 };
            assert!(t.shared_bytes() <= limit, "{t:?}");
            let small = t.within(8192);
            let small_threads = small.wx * small.wy;
            assert!(small.shared_bytes() <= 8192, "{small:?}");
            assert_eq!((small.tm % 4, small.tn % 4), (0, 0), "{small:?}");
            assert!((1..=threads).contains(&small_threads), "{small:?}");
            // A thin side (a rank) is not padded to a square tile.
            if n <= 16 && m > 16 {
                assert!(t.bn() <= 16, "{t:?}");
            }
            if m <= 16 && n > 16 {
                assert!(t.bm() <= 16, "{t:?}");
            }
        }
    }
}
