//! CubeCL runtimes: the hand-written WGSL kernel (`shaders/block_matmul.wgsl`) where the runtime
//! compiles WGSL (wgpu on Vulkan, Metal, DX12), its `#[cube]` twin (`cube_twin.rs`) elsewhere.

use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim, KernelId};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::template::{KernelSource, SourceKernel, SourceTemplate};
use burn_cubecl::tensor::CubeTensor;

use crate::ops::{Axis, BlockMatmul, BlockMatmulOps};

const SOURCE: &str = include_str!("../../../../shaders/block_matmul.wgsl");

/// Reduction step per workgroup-memory round (two barriers each).
const BK: u32 = 16;

/// Threads along N (x) and M (y), and outputs per thread along M and N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tile {
    wx: u32,
    wy: u32,
    tm: u32,
    tn: u32,
}

impl Tile {
    /// 256 threads a workgroup; a thin side of 16 or 32 (a rank) gets a thin tile.
    fn for_shape(m: usize, n: usize) -> Self {
        match (m, n) {
            (_, n) if n <= 16 && m > 16 => Self {
                wx: 4,
                wy: 64,
                tm: 2,
                tn: 4,
            },
            (m, _) if m <= 16 && n > 16 => Self {
                wx: 64,
                wy: 4,
                tm: 4,
                tn: 2,
            },
            (_, n) if n <= 32 && m > 32 => Self {
                wx: 8,
                wy: 32,
                tm: 4,
                tn: 4,
            },
            (m, _) if m <= 32 && n > 32 => Self {
                wx: 32,
                wy: 8,
                tm: 4,
                tn: 4,
            },
            _ => Self {
                wx: 16,
                wy: 16,
                tm: 4,
                tn: 4,
            },
        }
    }
    fn bm(&self) -> u32 {
        self.wy * self.tm
    }
    fn bn(&self) -> u32 {
        self.wx * self.tn
    }
}

/// The kernel specialised on what changes its code: element type, which axes are split (and by
/// how much) and the tile shape. Strides and sizes travel in the info buffer, so a new batch size
/// compiles nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct BlockMatmulKernel {
    f16: bool,
    splits: [usize; 6],
    tile: Tile,
}

/// WGSL for one axis' offset of index variable `var`, strides named `{name}_hi` / `{name}_lo`.
fn axis_expr(var: &str, split: usize, name: &str) -> String {
    if split == 0 {
        format!("{var} * {name}_lo")
    } else {
        format!("(({var} / {split}u) * {name}_hi + ({var} % {split}u) * {name}_lo)")
    }
}

impl BlockMatmulKernel {
    fn unrolled(&self) -> (String, String, String) {
        let Tile { wx, wy, tm, tn } = self.tile;
        let elem = if self.f16 { "f16" } else { "f32" };
        let mut decl = String::new();
        let mut compute = String::new();
        let mut store = String::new();
        for i in 0..tm {
            compute += &format!("            let a{i} = a_tile[a_row + {}u];\n", wy * i);
        }
        for j in 0..tn {
            compute += &format!("            let b{j} = b_tile[b_row + {}u];\n", wx * j);
        }
        for i in 0..tm {
            for j in 0..tn {
                decl += &format!("    var acc{i}_{j} = 0.0;\n");
                compute += &format!("            acc{i}_{j} += a{i} * b{j};\n");
            }
        }
        let (out_row, out_col) = (
            axis_expr("gm", self.splits[4], "o_row"),
            axis_expr("gn", self.splits[5], "o_col"),
        );
        for i in 0..tm {
            store += &format!(
                "    {{\n        let gm = row0 + lid.y + {}u;\n        if (gm < m_len) {{\n",
                wy * i
            );
            for j in 0..tn {
                store += &format!(
                    "            {{ let gn = col0 + lid.x + {}u; if (gn < n_len) {{ out[out_base + {out_row} + {out_col}] = {elem}(alpha * acc{i}_{j}); }} }}\n",
                    wx * j
                );
            }
            store += "        }\n    }\n";
        }
        (decl, compute, store)
    }
}

impl KernelSource for BlockMatmulKernel {
    fn source(&self) -> SourceTemplate {
        let (decl, compute, store) = self.unrolled();
        let t = self.tile;
        let sp = &self.splits;
        SourceTemplate::new(SOURCE)
            .register("elem", if self.f16 { "f16" } else { "f32" })
            .register("enable_f16", if self.f16 { "enable f16;" } else { "" })
            .register("wx", t.wx.to_string())
            .register("wy", t.wy.to_string())
            .register("bm", t.bm().to_string())
            .register("bn", t.bn().to_string())
            .register("bk", BK.to_string())
            .register("a_tile_len", (BK * t.bm()).to_string())
            .register("b_tile_len", (BK * t.bn()).to_string())
            .register("lhs_row", axis_expr("gm", sp[0], "l_row"))
            .register("lhs_col", axis_expr("gk", sp[1], "l_col"))
            .register("rhs_row", axis_expr("gk", sp[2], "r_row"))
            .register("rhs_col", axis_expr("gn", sp[3], "r_col"))
            .register("acc_decl", decl)
            .register("compute", compute)
            .register("store", store)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.clone())
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

fn info(spec: &BlockMatmul) -> Vec<u32> {
    let mut info = vec![
        spec.m as u32,
        spec.n as u32,
        spec.k as u32,
        spec.alpha.to_bits(),
    ];
    for op in [spec.lhs, spec.rhs, spec.out] {
        info.push(op.batch as u32);
        for axis in [op.row, op.col] {
            info.push(axis.hi as u32);
            info.push(axis.lo as u32);
        }
    }
    info
}

fn splits(spec: &BlockMatmul) -> [usize; 6] {
    let s = |a: Axis| a.split;
    [
        s(spec.lhs.row),
        s(spec.lhs.col),
        s(spec.rhs.row),
        s(spec.rhs.col),
        s(spec.out.row),
        s(spec.out.col),
    ]
}

/// `GRALORA_CUBE_TWIN=1` runs the `#[cube]` twin even where WGSL would do (to test it anywhere).
fn twin_forced() -> bool {
    std::env::var("GRALORA_CUBE_TWIN").as_deref() == Ok("1")
}

/// Launches of the `#[cube]` twin so far (lets tests see which path ran).
pub(crate) static TWIN_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

fn launch_twin(
    lhs: &CubeTensor,
    rhs: &CubeTensor,
    out: &CubeTensor,
    info: burn_cubecl::cubecl::server::Handle,
    spec: &BlockMatmul,
    f16: bool,
) {
    use burn_cubecl::cubecl::calculate_cube_count_elemwise;
    use burn_cubecl::cubecl::prelude::BufferArg;
    TWIN_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = &lhs.client;
    let total = spec.g * spec.m * spec.n;
    let split_list: Vec<u32> = splits(spec).iter().map(|s| *s as u32).collect();
    let splits_handle = client.create_from_slice(bytemuck::cast_slice(&split_list));
    let cube_dim = CubeDim::new_1d(256);
    let count = calculate_cube_count_elemwise(client, total, cube_dim);
    let numel = |t: &CubeTensor| t.meta.shape().num_elements();
    macro_rules! launch {
        ($f:ty, $alpha:expr) => {{
            let alpha = client.create_from_slice(bytemuck::cast_slice(&[$alpha]));
            // SAFETY: every buffer is as long as the element count passed with it, and the maps
            // keep every offset inside its buffer (`BlockMatmul::check`).
            unsafe {
                super::cube_twin::block_matmul_twin::launch_unchecked::<$f>(
                    client,
                    count,
                    cube_dim,
                    BufferArg::from_raw_parts(lhs.handle.clone(), numel(lhs)),
                    BufferArg::from_raw_parts(rhs.handle.clone(), numel(rhs)),
                    BufferArg::from_raw_parts(out.handle.clone(), total),
                    BufferArg::from_raw_parts(info, 19),
                    BufferArg::from_raw_parts(splits_handle, 6),
                    BufferArg::from_raw_parts(alpha, 1),
                    total as u32,
                )
            }
        }};
    }
    if f16 {
        launch!(half::f16, half::f16::from_f32(spec.alpha))
    } else {
        launch!(f32, spec.alpha)
    }
}

/// Whether this tensor's runtime takes hand-written WGSL.
pub(crate) fn compiles_wgsl(t: &CubeTensor) -> bool {
    t.client.name() == "wgpu<wgsl>"
}

impl BlockMatmulOps for CubeBackend {
    fn block_matmul(lhs: CubeTensor, rhs: CubeTensor, spec: BlockMatmul) -> CubeTensor {
        let dtype = lhs.dtype;
        let f16 = match dtype {
            DType::F32 => false,
            DType::F16 => true,
            other => panic!(
                "gralora block_matmul supports f32 and f16 tensors, got {other:?}; cast the adapter"
            ),
        };
        // The offsets are 32-bit in the kernel.
        let limit = u32::MAX as usize;
        assert!(
            [&spec.out_shape, &spec.lhs_shape, &spec.rhs_shape]
                .iter()
                .all(|s| s.iter().product::<usize>() < limit),
            "gralora block_matmul: tensors over 2^32 elements are not supported"
        );
        let lhs = into_contiguous(lhs);
        let rhs = into_contiguous(rhs);
        let client = lhs.client.clone();
        let out = empty_device_contiguous_dtype(
            client.clone(),
            lhs.device.clone(),
            Shape::from(spec.out_shape.clone()),
            dtype,
        );
        if spec.m == 0 || spec.n == 0 || spec.g == 0 {
            return out;
        }
        let info_host = info(&spec);
        let info = client.create_from_slice(bytemuck::cast_slice(&info_host));
        if !compiles_wgsl(&lhs) || twin_forced() {
            launch_twin(&lhs, &rhs, &out, info, &spec, f16);
            return out;
        }
        let tile = Tile::for_shape(spec.m, spec.n);
        let kernel = BlockMatmulKernel {
            f16,
            splits: splits(&spec),
            tile,
        };
        let count = CubeCount::Static(
            (spec.n as u32).div_ceil(tile.bn()),
            (spec.m as u32).div_ceil(tile.bm()),
            spec.g as u32,
        );
        let args = KernelArguments::new().with_buffers(vec![
            lhs.handle.clone().binding(),
            rhs.handle.clone().binding(),
            out.handle.clone().binding(),
            info.binding(),
        ]);
        client.launch(
            Box::new(SourceKernel::new(kernel, CubeDim::new_2d(tile.wx, tile.wy))),
            count,
            args,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                for f16 in [false, true] {
                    let kernel = BlockMatmulKernel {
                        f16,
                        splits,
                        tile: Tile::for_shape(m, n),
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

    #[test]
    fn tiles_cover_256_threads_and_divide_the_load() {
        for (m, n) in [(2048, 16), (16, 2048), (2048, 32), (32, 2048), (64, 64)] {
            let t = Tile::for_shape(m, n);
            assert_eq!(t.wx * t.wy, 256);
            assert_eq!((BK * t.bm()) % 256, 0);
            assert_eq!((BK * t.bn()) % 256, 0);
        }
    }
}
