//! CubeCL runtimes: the hand-written WGSL kernels where the runtime compiles WGSL (wgpu on Vulkan,
//! Metal, DX12): `shaders/block_matmul.wgsl` (tiled through workgroup memory; its tile and split-K
//! plan picked per shape class by cubecl's autotuner, which also times a two-pass form through
//! burn's matmul kernel) on a GPU,
//! `shaders/block_matmul_direct.wgsl` (operands read straight from storage; on lavapipe one
//! operand's loads shared over a subgroup's lanes) on a software device; their `#[cube]` twin
//! (`cube_twin.rs`) elsewhere.

use burn::backend::ops::FloatTensorOps;
use burn::tensor::{DType, Shape};
use burn_cubecl::CubeBackend;
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim, KernelId};
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::template::{KernelSource, SourceKernel, SourceTemplate};
use burn_cubecl::tensor::CubeTensor;

use crate::ops::{Axis, BlockMatmul, BlockMatmulOps, Operand};

const SOURCE: &str = include_str!("../../../../shaders/block_matmul.wgsl");
const DIRECT_SOURCE: &str = include_str!("../../../../shaders/block_matmul_direct.wgsl");

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
    /// The tile for an `m × n` output. A thin side of 16 or 32 (a rank) gets a thin tile, so that
    /// most of a square one is not left idle.
    ///
    /// On a real GPU: 256 threads, 4×4 outputs each (8×8 for wide outputs), the usual SGEMM
    /// shapes, for the tiled kernel. On a software device (lavapipe: every per-invocation load is
    /// a loop over the SIMD lanes, and each workgroup runs on one CPU thread) what sets the speed
    /// is loads per multiply-add, so threads own 16×16 blocks (32×4 or 32×8 against a thin rank
    /// side) and workgroups are small, each only as wide as the output needs (any thread count
    /// works). Chosen by timing ~20 tile shapes on each of the adapter's products on 2 cores with
    /// the tiled kernel (2048×384×384 went from 1057 ms with scalar 4×4 tiles to 205 ms; burn's
    /// own autotuned matmul: 269 ms), and kept for the direct kernel, where ~15 other shapes
    /// (32×32, 64×16, 16×32, 8×8 blocks; 8 to 64 threads) were no faster on any product, nor
    /// were 8 shapes re-timed once the direct kernel read `vec4`s. On lavapipe the direct kernel
    /// shares loads over a subgroup and takes [`Tile::shared`] instead.
    /// On a GPU these are the default plan's tiles, which the autotuner times against
    /// [`TUNED_TILES`] (see [`tuned`]); no GPU has measured them yet.
    fn for_shape(m: usize, n: usize, software: bool) -> Self {
        let (wx, wy, tm, tn) = match (software, m, n) {
            (true, m, n) if n <= 16 && m > 16 => (4, 8, 32, 4),
            (true, m, n) if m <= 16 && n > 16 => (8, 1, 16, 16),
            (true, m, n) if n <= 32 && m > 32 => (4, 8, 32, 8),
            (true, m, n) if m <= 32 && n > 32 => (8, 2, 16, 16),
            (true, _, _) => (8, 8, 16, 16),
            (false, m, n) if n <= 16 && m > 16 => (4, 32, 4, 4),
            (false, m, n) if m <= 16 && n > 16 => (32, 4, 4, 4),
            (false, m, n) if n <= 32 && m > 32 => (8, 32, 4, 4),
            (false, m, n) if m <= 32 && n > 32 => (32, 8, 4, 4),
            (false, m, n) if m >= 128 && n >= 128 => (16, 16, 8, 8),
            (false, _, _) => (16, 16, 4, 4),
        };
        let tile = Self { wx, wy, tm, tn };
        if software {
            // The same number of tiles, each only as wide as it must be: GraLoRA's blocks (192
            // or 96 wide at in 384) would otherwise idle a quarter of a 256- or 128-wide tile.
            let fit = |len: usize, threads: u32, per: u32| {
                let tiles = len.div_ceil((threads * per) as usize).max(1);
                (len.div_ceil(tiles * per as usize).max(1) as u32).min(threads)
            };
            return Self {
                wy: fit(m, tile.wy, tile.tm),
                wx: fit(n, tile.wx, tile.tn),
                ..tile
            };
        }
        tile.cut_to(m, n)
    }

    /// This GPU tile with fewer threads where half of it would still cover the `m × n` output
    /// (GraLoRA's k = 4 blocks of a 384-wide layer are 96 wide: a 256-row tile would idle 62 % of
    /// its threads).
    fn cut_to(mut self, m: usize, n: usize) -> Self {
        while self.wy > 1 && (self.bm() / 2) as usize >= m {
            self.wy /= 2;
        }
        while self.wx > 1 && (self.bn() / 2) as usize >= n {
            self.wx /= 2;
        }
        self
    }

    /// The tile and shared operand of the direct kernel where a subgroup is `lanes` consecutive
    /// invocations along x (lavapipe). The lanes are one thread column (the hardware's x axis
    /// laid along M) and share the rhs: each lane loads 1/lanes of the column units and takes the
    /// rest from the lanes that loaded them; a thread covers 8 or 4 rows against 16 or 32
    /// columns. An output of 32 rows or fewer (a rank side, as in ∂B) shares the lhs instead,
    /// lanes along a thread row. Chosen by timing 13 tile and sharing shapes on each of
    /// GraLoRA's six products at in 384 and 1536, r 16/32/128, k 2/4 on 2 cores: per class
    /// (N ≤ 32; M ≤ 32; both larger) this choice was on average within 8-16 % of each product's
    /// fastest shape, the unshared tile 32-131 % slower than it.
    fn shared(m: usize, n: usize, lanes: u32) -> (Self, Share) {
        if m <= 32 && n > 32 {
            let tile = Self {
                wx: lanes,
                wy: 1,
                tm: 16,
                tn: 12,
            };
            (tile, Share::Lhs)
        } else {
            let (tm, tn) = if n <= 32 { (8, 16) } else { (4, 32) };
            let tile = Self {
                wx: 1,
                wy: lanes,
                tm,
                tn,
            };
            (tile, Share::Rhs)
        }
    }

    /// Bytes of workgroup memory the two tiles take.
    fn shared_bytes(&self) -> usize {
        (BK * (self.bm() + self.bn())) as usize * 4
    }

    /// This tile, with its register blocks (then its thread counts) halved until the workgroup
    /// tiles fit in `limit` bytes.
    fn within(mut self, limit: usize) -> Self {
        while self.shared_bytes() > limit {
            if self.tm > 4 || self.tn > 4 {
                if self.tm >= self.tn {
                    self.tm /= 2;
                } else {
                    self.tn /= 2;
                }
            } else if self.wy > 1 && self.wy >= self.wx {
                self.wy /= 2;
            } else if self.wx > 1 {
                self.wx /= 2;
            } else {
                break;
            }
        }
        self
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
    /// The lhs is contiguous along K (load the workgroup tile K-fastest).
    lhs_k_fast: bool,
    /// The rhs is contiguous along K.
    rhs_k_fast: bool,
    /// `block_matmul_direct.wgsl` (software devices: no workgroup memory) instead of the tiled
    /// kernel.
    direct: bool,
    /// Which axis of the lhs and of the rhs the direct kernel reads four at a time.
    vec: [Vec4; 2],
    /// The direct kernel writes the output as `vec4`s (contiguous along N in aligned runs of 4).
    vec_out: bool,
    /// Which operand's loads the direct kernel shares over a subgroup.
    share: Share,
    /// The subgroup size (where `share` is not `None`).
    subgroup: u32,
}

/// Which operand the lanes of a subgroup load together, each lane a part, then broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Share {
    /// Every thread loads its own operands.
    None,
    /// The lanes are one thread row (`wx` a multiple of the subgroup size): the same lhs rows.
    Lhs,
    /// The lanes are one thread column (`wy` a multiple of the subgroup size; the workgroup's x
    /// axis then runs along M): the same rhs columns.
    Rhs,
}

/// Along which axis the direct kernel reads an operand as `vec4`s: where that axis is contiguous
/// (stride 1), its length and every other offset a multiple of 4. On lavapipe a load is a loop
/// over the SIMD lanes with a bounds check per value; a `vec4` load runs that loop once for four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Vec4 {
    /// Scalar loads.
    No,
    /// Along the output axis: M for the lhs, N for the rhs (four rows or columns at once).
    Outer,
    /// Along the reduction: four steps of one row (lhs) or column (rhs) at once.
    K,
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
    /// The unrolled accumulators: `acc{i}_{q}` is row i of the thread's block, columns 4q..4q+4.
    fn acc_decl(&self) -> String {
        let Tile { tm, tn, .. } = self.tile;
        (0..tm)
            .flat_map(|i| {
                (0..tn / 4).map(move |q| format!("    var acc{i}_{q} = vec4<f32>(0.0);\n"))
            })
            .collect()
    }

    /// The tiled kernel's multiply-adds over one workgroup-memory step.
    fn tiled_compute(&self) -> String {
        let Tile { tm, tn, .. } = self.tile;
        let mut compute = String::new();
        for p in 0..tm / 4 {
            compute += &format!("            let a{p} = a_tile[a_row + {p}u];\n");
        }
        for q in 0..tn / 4 {
            compute += &format!("            let b{q} = b_tile[b_row + {q}u];\n");
        }
        for i in 0..tm {
            for q in 0..tn / 4 {
                compute += &format!("            acc{i}_{q} += a{}[{}u] * b{q};\n", i / 4, i % 4);
            }
        }
        compute
    }

    /// The stores of the thread's block (at tile position `tx`, `ty`), guarded at the output's
    /// edges: four values a store where `vec4` (N a multiple of 4, so a group of four columns is
    /// all in or all out), else one.
    fn store(&self, vec4: bool) -> String {
        let Tile { tm, tn, .. } = self.tile;
        let elem = if self.f16 { "f16" } else { "f32" };
        let (out_row, out_col) = (
            axis_expr("gm", self.splits[4], "o_row"),
            axis_expr("gn", self.splits[5], "o_col"),
        );
        let at = format!("out_base + {out_row} + {out_col}");
        let mut store = String::new();
        for i in 0..tm {
            store += &format!(
                "    {{\n        let gm = row0 + ty * TM + {i}u;\n        if (gm < m_len) {{\n"
            );
            for q in 0..tn / 4 {
                let stores: Vec<(u32, String)> = if vec4 {
                    vec![(
                        4 * q,
                        format!("out[({at}) / 4u] = vec4<{elem}>(alpha * acc{i}_{q});"),
                    )]
                } else {
                    (0..4)
                        .map(|c| {
                            (
                                4 * q + c,
                                format!("out[{at}] = {elem}(alpha * acc{i}_{q}[{c}u]);"),
                            )
                        })
                        .collect()
                };
                for (col, write) in stores {
                    store += &format!(
                        "            {{ let gn = col0 + tx * TN + {col}u; if (gn < n_len) {{ {write} }} }}\n"
                    );
                }
            }
            store += "        }\n    }\n";
        }
        store
    }

    /// `block_matmul_direct.wgsl` filled in: each thread's row and column offsets computed once,
    /// then per reduction step TM lhs and TN rhs values loaded from storage into the unrolled
    /// tile; four at a time (one `vec4` load) along an operand's contiguous axis where `vec`
    /// allows, the reduction then stepping four at a time; one operand's loads shared over a
    /// subgroup where `share` says.
    fn direct_source(&self) -> SourceTemplate {
        let Tile { tm, tn, .. } = self.tile;
        let sp = &self.splits;
        let [lv, rv] = self.vec;
        let elem = if self.f16 { "f16" } else { "f32" };
        let step = if lv == Vec4::K || rv == Vec4::K { 4 } else { 1 };
        let kvar = |kk: u32| {
            if step == 1 {
                "gk".to_string()
            } else {
                format!("(gk + {kk}u)")
            }
        };
        // The subgroup size for the operand the lanes share, 0 for the other.
        let shared = |side| if self.share == side { self.subgroup } else { 0 };
        let sides = [
            DirectSide {
                buf: "lhs",
                name: "l",
                value: "a",
                count: tm,
                first: "row0 + ty * TM",
                len: "m",
                outer: format!("lhs_base + {}", axis_expr("IDX", sp[0], "l_row")),
                k_split: sp[1],
                k_name: "l_col",
                vec: lv,
                share: shared(Share::Lhs),
            },
            DirectSide {
                buf: "rhs",
                name: "r",
                value: "b",
                count: tn,
                first: "col0 + tx * TN",
                len: "n",
                outer: format!("rhs_base + {}", axis_expr("IDX", sp[3], "r_col")),
                k_split: sp[2],
                k_name: "r_row",
                vec: rv,
                share: shared(Share::Rhs),
            },
        ];
        let mut prelude = self.acc_decl();
        if self.share != Share::None {
            // Lanes of a subgroup are consecutive invocations (`wx` or `wy` is a whole number of
            // subgroups, so they share their rows or their columns).
            prelude += &format!("    let sid = lix % {}u;\n", self.subgroup);
        }
        let mut compute = String::new();
        for side in &sides {
            prelude += &side.offsets();
            compute += &side.k_loads();
        }
        for kk in 0..step {
            for side in &sides {
                compute += &side.step_values(kk, &kvar(kk));
            }
            for i in 0..tm {
                for q in 0..tn / 4 {
                    compute += &format!(
                        "        acc{i}_{q} += a{}_{kk}[{}u] * b{q}_{kk};\n",
                        i / 4,
                        i % 4
                    );
                }
            }
        }
        let ty = |v: Vec4| {
            if v == Vec4::No {
                elem.to_string()
            } else {
                format!("vec4<{elem}>")
            }
        };
        let t = self.tile;
        SourceTemplate::new(DIRECT_SOURCE)
            .register("elem", elem)
            .register("enable_f16", if self.f16 { "enable f16;" } else { "" })
            .register("lhs_ty", ty(lv))
            .register("rhs_ty", ty(rv))
            .register(
                "out_ty",
                ty(if self.vec_out { Vec4::Outer } else { Vec4::No }),
            )
            .register("k_step", step.to_string())
            .register(
                "size_x",
                if self.share == Share::Rhs { t.wy } else { t.wx }.to_string(),
            )
            .register(
                "size_y",
                if self.share == Share::Rhs { t.wx } else { t.wy }.to_string(),
            )
            // The thread's block in the tile: swapped where the rhs is shared (a subgroup's lanes
            // run along lid.x, so they are then one thread column).
            .register(
                "thread",
                if self.share == Share::Rhs {
                    "let tx = lid.y;\n    let ty = lid.x;"
                } else {
                    "let tx = lid.x;\n    let ty = lid.y;"
                },
            )
            .register(
                "subgroup_id",
                if self.share == Share::None {
                    ""
                } else {
                    "\n    @builtin(local_invocation_index) lix: u32,"
                },
            )
            .register("wx", t.wx.to_string())
            .register("wy", t.wy.to_string())
            .register("tm", t.tm.to_string())
            .register("tn", t.tn.to_string())
            .register("prelude", prelude)
            .register("compute", compute)
            .register("store", self.store(self.vec_out))
    }
}

/// One operand as the direct kernel reads it.
struct DirectSide {
    /// Its binding (`lhs` or `rhs`).
    buf: &'static str,
    /// Prefix of its offsets and loaded values (`l` or `r`).
    name: &'static str,
    /// Prefix of its per-step `vec4`s of values the multiply-adds take (`a` or `b`).
    value: &'static str,
    /// Rows (lhs) or columns (rhs) per thread: TM or TN.
    count: u32,
    /// The thread's first row or column.
    first: &'static str,
    /// `m` or `n`.
    len: &'static str,
    /// Offset of a row or column `IDX`, batch included.
    outer: String,
    /// Split of its reduction axis, and that axis' stride names.
    k_split: usize,
    k_name: &'static str,
    vec: Vec4,
    /// Subgroup size over which its loads are shared (0: not shared).
    share: u32,
}

impl DirectSide {
    /// Units a thread needs per load round (a `vec4` along M/N, or one row or column) and rows
    /// or columns per unit.
    fn units(&self) -> (u32, u32) {
        if self.vec == Vec4::Outer {
            (self.count / 4, 4)
        } else {
            (self.count, 1)
        }
    }

    /// Units each lane loads when shared.
    fn own(&self) -> u32 {
        self.units().0.div_ceil(self.share.max(1))
    }

    /// Offsets computed once: one per unit, or, shared, one per unit this lane loads (lane s
    /// loads units s, s + S, ...). Past the output they clamp to the last row or column (group).
    fn offsets(&self) -> String {
        let (units, per) = self.units();
        let last = if per == 4 {
            format!("{}_len - 4u", self.len)
        } else {
            format!("{}_last", self.len)
        };
        let offset = |unit: String| {
            let index = format!("min({} + {unit} * {per}u, {last})", self.first);
            self.outer.replace("IDX", &index)
        };
        if self.share > 0 {
            (0..self.own())
                .map(|j| {
                    let unit = format!("min(sid + {}u, {}u)", j * self.share, units - 1);
                    format!("    let {}s{j} = {};\n", self.name, offset(unit))
                })
                .collect()
        } else {
            (0..units)
                .map(|u| format!("    let {}o{u} = {};\n", self.name, offset(format!("{u}u"))))
                .collect()
        }
    }

    /// The load of unit `u` (or of the lane's own unit `j` when shared) at reduction index `k`.
    fn load(&self, off: &str, k: &str) -> String {
        let kk = axis_expr(k, self.k_split, self.k_name);
        match self.vec {
            Vec4::No => format!("f32({}[{off} + {kk}])", self.buf),
            _ => format!("vec4<f32>({}[({off} + {kk}) / 4u])", self.buf),
        }
    }

    /// Unit `u` of the round: loaded by this thread, or broadcast from the lane that loaded it.
    fn unit(&self, u: u32, suffix: &str) -> String {
        // Lane s loaded units s, s + S, ...: unit u is the lane's (u / S)-th, on lane u % S.
        match (u.checked_div(self.share), u.checked_rem(self.share)) {
            (Some(own), Some(lane)) => {
                format!("subgroupBroadcast({}k{own}{suffix}, {lane}u)", self.name)
            }
            _ => format!("{}u{u}{suffix}", self.name),
        }
    }

    /// Loads made once per four reduction steps (a `vec4` along K per row or column).
    fn k_loads(&self) -> String {
        if self.vec != Vec4::K {
            return String::new();
        }
        let mut code = self.round_loads("", "gk");
        for u in 0..self.count {
            code += &format!("        let {}{u} = {};\n", self.name, self.unit(u, ""));
        }
        code
    }

    /// One round's loads: every unit, or the lane's own when shared.
    fn round_loads(&self, suffix: &str, k: &str) -> String {
        if self.share > 0 {
            (0..self.own())
                .map(|j| {
                    let load = self.load(&format!("{}s{j}", self.name), k);
                    format!("        let {}k{j}{suffix} = {load};\n", self.name)
                })
                .collect()
        } else {
            (0..self.units().0)
                .map(|u| {
                    let load = self.load(&format!("{}o{u}", self.name), k);
                    format!("        let {}u{u}{suffix} = {load};\n", self.name)
                })
                .collect()
        }
    }

    /// The `vec4`s of reduction step `kk` (index expression `k`) the multiply-adds take.
    fn step_values(&self, kk: u32, k: &str) -> String {
        let suffix = format!("_{kk}");
        let mut code = if self.vec == Vec4::K {
            String::new()
        } else {
            self.round_loads(&suffix, k)
        };
        for p in 0..self.count / 4 {
            let v = match self.vec {
                Vec4::Outer => self.unit(p, &suffix),
                Vec4::K => {
                    let n = self.name;
                    let (a, b, c, d) = (4 * p, 4 * p + 1, 4 * p + 2, 4 * p + 3);
                    format!("vec4<f32>({n}{a}[{kk}u], {n}{b}[{kk}u], {n}{c}[{kk}u], {n}{d}[{kk}u])")
                }
                Vec4::No => format!(
                    "vec4<f32>({}, {}, {}, {})",
                    self.unit(4 * p, &suffix),
                    self.unit(4 * p + 1, &suffix),
                    self.unit(4 * p + 2, &suffix),
                    self.unit(4 * p + 3, &suffix)
                ),
            };
            code += &format!("        let {}{p}{suffix} = {v};\n", self.value);
        }
        code
    }
}

/// WGSL splitting the load index `e` into a tile position `(major, k)`, K fastest or not.
fn load_index(major: &str, kvar: &str, len: &str, k_fast: bool) -> String {
    if k_fast {
        format!("            let {kvar} = e % BK;\n            let {major} = e / BK;")
    } else {
        format!("            let {major} = e % {len};\n            let {kvar} = e / {len};")
    }
}

impl KernelSource for BlockMatmulKernel {
    fn source(&self) -> SourceTemplate {
        if self.direct {
            return self.direct_source();
        }
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
            .register("tm", t.tm.to_string())
            .register("tn", t.tn.to_string())
            .register("a_tile_len", (BK * t.bm() / 4).to_string())
            .register("b_tile_len", (BK * t.bn() / 4).to_string())
            .register("a_index", load_index("am", "ak", "BM", self.lhs_k_fast))
            .register("b_index", load_index("bn", "bk", "BN", self.rhs_k_fast))
            .register("lhs_row", axis_expr("gm", sp[0], "l_row"))
            .register("lhs_col", axis_expr("gk", sp[1], "l_col"))
            .register("rhs_row", axis_expr("gk", sp[2], "r_row"))
            .register("rhs_col", axis_expr("gn", sp[3], "r_col"))
            .register("acc_decl", self.acc_decl())
            .register("compute", self.tiled_compute())
            .register("store", self.store(false))
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.clone())
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Words in the info buffer: M, N, K, alpha, then per operand (lhs, rhs, out) the batch's split,
/// hi and lo strides and the row's and column's hi and lo strides, then the split-K plan (parts,
/// chunk length, distance between partial outputs).
const INFO_LEN: usize = 4 + 3 * 7 + 3;

/// The info words of `spec`, run as one part.
fn info(spec: &BlockMatmul) -> Vec<u32> {
    let mut info = vec![
        spec.m as u32,
        spec.n as u32,
        spec.k as u32,
        spec.alpha.to_bits(),
    ];
    for op in [spec.lhs, spec.rhs, spec.out] {
        // The batch offset is computed at run time, once per workgroup: a plain batch is a
        // split one whose blocks never end (`g / u32::MAX = 0` for every g a launch can have).
        let b = op.batch;
        info.push(if b.split == 0 {
            u32::MAX
        } else {
            b.split as u32
        });
        info.push(b.hi as u32);
        info.push(b.lo as u32);
        for axis in [op.row, op.col] {
            info.push(axis.hi as u32);
            info.push(axis.lo as u32);
        }
    }
    info.extend([1, spec.k as u32, 0]);
    debug_assert_eq!(info.len(), INFO_LEN);
    info
}

/// Workgroups a GPU launch should have at least: a few per compute unit of a large GPU (an H200
/// has 132).
const TARGET_WORKGROUPS: usize = 256;
/// The shortest reduction a split-K part gets (16 workgroup-memory rounds).
const MIN_K_CHUNK: usize = 256;

/// How many parts the reduction of `spec` is cut into on a real GPU with `tile`: more than one
/// only when the output alone gives too few workgroups and the reduction is long (GraLoRA's and
/// LoRA's weight gradients: outputs of `in/k × r`, reductions over all T tokens). A software
/// device (a few CPU threads) and f16 (whose partial sums would round) take one.
/// `GRALORA_SPLIT_K=n` forces n parts on the tiled kernel (tests run split-K on lavapipe that way,
/// with `GRALORA_WGSL_TILED=1`).
fn split_k_parts(spec: &BlockMatmul, tile: Tile, software: bool, f16: bool) -> usize {
    // At least one BK round a part, workgroup z (= g · parts) within WebGPU's 65535, and the
    // partial outputs' offsets 32-bit.
    let most = spec
        .k
        .div_ceil(BK as usize)
        .min(65535 / spec.g.max(1))
        .min((u32::MAX as usize - 1) / (spec.g * spec.m * spec.n).max(1))
        .max(1);
    if let Some(n) = forced_split_k() {
        return n.clamp(1, most);
    }
    if software || f16 {
        return 1;
    }
    let workgroups =
        spec.g * spec.m.div_ceil(tile.bm() as usize) * spec.n.div_ceil(tile.bn() as usize);
    if workgroups >= TARGET_WORKGROUPS || spec.k < 2 * MIN_K_CHUNK {
        return 1;
    }
    TARGET_WORKGROUPS
        .div_ceil(workgroups)
        .min(spec.k / MIN_K_CHUNK)
        .min(64)
        .min(most)
        .max(1)
}

/// Launches that cut their reduction into parts (split-K) so far.
pub(crate) static SPLIT_K_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

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
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("GRALORA_CUBE_TWIN").as_deref() == Ok("1"))
}

/// `GRALORA_WGSL_TILED=1` runs the tiled (workgroup-memory) kernel on a software device too, where
/// the direct one would run (to test the GPUs' kernel on lavapipe).
fn tiled_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("GRALORA_WGSL_TILED").as_deref() == Ok("1"))
}

/// `GRALORA_WGSL_SCALAR=1` keeps the direct kernel to scalar loads and stores (to compare their
/// speed; shapes without aligned runs of four test the scalar form anyway).
fn scalar_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("GRALORA_WGSL_SCALAR").as_deref() == Ok("1"))
}

/// Every offset along `a` is a multiple of 4.
fn aligned(a: Axis) -> bool {
    a.lo.is_multiple_of(4) && (a.split == 0 || a.hi.is_multiple_of(4))
}

/// `a` is contiguous in aligned runs of 4 (stride 1; blocks of a split axis a multiple of 4 long).
fn runs_of_4(a: Axis) -> bool {
    a.lo == 1 && (a.split == 0 || (a.split.is_multiple_of(4) && a.hi.is_multiple_of(4)))
}

/// The axes along which the direct kernel can read each operand of `spec` as `vec4`s: an axis
/// contiguous in runs of 4 (stride 1, blocks of a split axis a multiple of 4 long) whose length is
/// a multiple of 4, with every other offset (batch, the other axis) a multiple of 4, so each group
/// of four is one aligned `vec4`.
fn vec_axes(spec: &BlockMatmul) -> [Vec4; 2] {
    // (an operand's batch axis, its output axis and that axis' length, its reduction axis)
    let pick = |batch: Axis, outer: Axis, outer_len: usize, k: Axis| {
        if !aligned(batch) {
            Vec4::No
        } else if runs_of_4(outer) && outer_len.is_multiple_of(4) && aligned(k) {
            Vec4::Outer
        } else if runs_of_4(k) && spec.k.is_multiple_of(4) && aligned(outer) {
            Vec4::K
        } else {
            Vec4::No
        }
    };
    let (l, r) = (spec.lhs, spec.rhs);
    [
        pick(l.batch, l.row, spec.m, l.col),
        pick(r.batch, r.col, spec.n, r.row),
    ]
}

/// Whether the direct kernel can write the output of `spec` as `vec4`s: contiguous along N in
/// aligned runs of 4, N a multiple of 4, the batch and row offsets multiples of 4.
fn vec_out(spec: &BlockMatmul) -> bool {
    let o = spec.out;
    aligned(o.batch) && aligned(o.row) && runs_of_4(o.col) && spec.n.is_multiple_of(4)
}

/// Launches of the direct (software-device) WGSL kernel so far.
pub(crate) static DIRECT_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// Direct-kernel launches so far that shared lhs loads, and rhs loads, over a subgroup.
pub(crate) static SHARED_LAUNCHES: [std::sync::atomic::AtomicUsize; 2] = [
    std::sync::atomic::AtomicUsize::new(0),
    std::sync::atomic::AtomicUsize::new(0),
];

/// `GRALORA_WGSL_NO_SHARE=1` keeps every thread of the direct kernel to its own loads (to compare
/// speeds, and to test that form on lavapipe).
fn no_share_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var("GRALORA_WGSL_NO_SHARE").as_deref() == Ok("1"))
}

/// The lanes of one subgroup on a device where the direct kernel shares loads across them:
/// lavapipe (llvmpipe), whose compute shaders run a workgroup row's invocations along x in
/// groups of its SIMD width (Mesa's `lp_state_cs.c`), that width being the one subgroup size its
/// adapter reports, with subgroup operations on. Other software devices (whose lane order is not
/// known here) and GPUs: none.
fn shared_lanes(properties: &burn_cubecl::cubecl::ir::DeviceProperties) -> Option<u32> {
    let (lo, hi) = (
        properties.hardware.plane_size_min,
        properties.hardware.plane_size_max,
    );
    let name = &properties.identity.name;
    (!no_share_forced()
        && lo == hi
        && (4..=16).contains(&lo)
        && lo.is_power_of_two()
        && name.starts_with("llvmpipe")
        && crate::device::vulkan_adapter_has_subgroups(name))
    .then_some(lo)
}

/// `GRALORA_SPLIT_K=n`: n parts for every product (read once; a value that is no count is
/// reported on stderr once and ignored).
fn forced_split_k() -> Option<usize> {
    static FORCED: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| {
        let v = std::env::var("GRALORA_SPLIT_K").ok()?;
        let n = v.parse::<usize>().ok();
        if n.is_none() {
            eprintln!("warning: GRALORA_SPLIT_K={v:?} is not a count of parts; ignored");
        }
        n
    })
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
                    BufferArg::from_raw_parts(info, INFO_LEN),
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
        let empty = |shape: Vec<usize>| empty_on(&lhs, shape);
        if spec.m == 0 || spec.n == 0 || spec.g == 0 {
            return empty(spec.out_shape.clone());
        }
        if !compiles_wgsl(&lhs) || twin_forced() {
            let out = empty(spec.out_shape.clone());
            let info = client.create_from_slice(bytemuck::cast_slice(&info(&spec)));
            launch_twin(&lhs, &rhs, &out, info, &spec, f16);
            return out;
        }
        // A device that is no card (cubecl's identity has no physical device): a CPU rasteriser.
        let properties = client.properties();
        let software = properties.identity.physical.is_none();
        let plan = Plan::default_for(&spec, properties, software, f16);
        if !plan.direct {
            if let Some(i) = forced_candidate() {
                if i == TILED_CANDIDATES {
                    // The two-pass form, where the maps allow it (else the default plan).
                    return two_pass(&lhs, &rhs, &spec)
                        .unwrap_or_else(|_| run(&lhs, &rhs, &spec, f16, plan));
                }
                let limit = properties.hardware.max_shared_memory_size;
                let plan = candidate_plans(&spec, limit, software, f16)[i];
                return run(&lhs, &rhs, &spec, f16, plan);
            }
            if tune_setting().unwrap_or(!software) {
                return tuned(lhs, rhs, spec, f16);
            }
        }
        run(&lhs, &rhs, &spec, f16, plan)
    }
}

/// How one call runs: which kernel, its tile, the operand its subgroups share (direct kernel) and
/// into how many parts its reduction is cut (tiled kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    tile: Tile,
    /// `block_matmul_direct.wgsl` instead of the tiled kernel.
    direct: bool,
    share: Share,
    /// The subgroup size (where `share` is not `None`).
    lanes: u32,
    /// The reduction's parts wanted (split-K; fewer where K has fewer BK rounds).
    parts: usize,
}

impl Plan {
    /// The plan chosen from the shape alone: on a software device the direct kernel (sharing
    /// loads where the lanes allow), on a GPU the tiled kernel with the SGEMM-style tile of
    /// [`Tile::for_shape`] and split-K where the output gives too few workgroups.
    fn default_for(
        spec: &BlockMatmul,
        properties: &burn_cubecl::cubecl::ir::DeviceProperties,
        software: bool,
        f16: bool,
    ) -> Self {
        if software && !tiled_forced() {
            let lanes = shared_lanes(properties);
            let (tile, share) = match lanes {
                Some(lanes) => Tile::shared(spec.m, spec.n, lanes),
                None => (Tile::for_shape(spec.m, spec.n, true), Share::None),
            };
            // The direct kernel runs one part (its workgroups already keep every CPU thread busy).
            return Self {
                tile,
                direct: true,
                share,
                lanes: lanes.unwrap_or(0),
                parts: 1,
            };
        }
        let tile = Tile::for_shape(spec.m, spec.n, software)
            .within(properties.hardware.max_shared_memory_size);
        Self::tiled(tile, split_k_parts(spec, tile, software, f16))
    }

    fn tiled(tile: Tile, parts: usize) -> Self {
        Self {
            tile,
            direct: false,
            share: Share::None,
            lanes: 0,
            parts,
        }
    }
}

/// The tiles the tuner tries on the tiled kernel besides the default one, as (threads along N,
/// threads along M, outputs per thread along M, along N), each cut to the output as the default
/// is: square 64 and 128 tiles, a small 32 one for outputs that give few workgroups, and tall,
/// wide and thin ones for the adapters' rank-sized sides.
const TUNED_TILES: [(u32, u32, u32, u32); 7] = [
    (16, 16, 4, 4),
    (16, 16, 8, 8),
    (8, 8, 4, 4),
    (8, 32, 4, 4),
    (32, 8, 4, 4),
    (4, 64, 4, 4),
    (64, 4, 4, 4),
];

/// The tiled kernel's candidate plans: candidate `2i` takes tile i (0: [`Tile::for_shape`]'s,
/// then [`TUNED_TILES`]) with split-K as a GPU would choose it for that tile, candidate `2i + 1`
/// the same tile in one part.
/// `limit`: the device's bytes of workgroup memory.
fn candidate_plans(spec: &BlockMatmul, limit: usize, software: bool, f16: bool) -> Vec<Plan> {
    candidate_tiles(spec.m, spec.n, software)
        .flat_map(|tile| {
            let tile = tile.within(limit);
            [
                Plan::tiled(tile, split_k_parts(spec, tile, false, f16)),
                Plan::tiled(tile, 1),
            ]
        })
        .collect()
}

/// The tiled kernel's candidate tiles for an `m × n` output: [`Tile::for_shape`]'s, then
/// [`TUNED_TILES`], each cut to the output.
fn candidate_tiles(m: usize, n: usize, software: bool) -> impl Iterator<Item = Tile> {
    std::iter::once(Tile::for_shape(m, n, software)).chain(
        TUNED_TILES
            .iter()
            .map(move |&(wx, wy, tm, tn)| Tile { wx, wy, tm, tn }.cut_to(m, n)),
    )
}

/// How many plans the tuner tries on the tiled kernel.
pub(crate) const TILED_CANDIDATES: usize = 2 * (1 + TUNED_TILES.len());

/// The tuner's candidates: the tiled kernel's plans, then the two-pass form ([`two_pass`]).
pub(crate) const TUNED_CANDIDATES: usize = TILED_CANDIDATES + 1;

/// What the tuner's choice for the tiled kernel depends on: element type, which axes are split,
/// which operands are contiguous along K, the batch count and M, N, K (anchored to powers of a
/// base, as burn's matmul keys are, so a new batch length reuses the choice for a similar one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
struct TiledKey {
    f16: bool,
    split: [bool; 6],
    k_fast: [bool; 2],
    g: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl std::fmt::Display for TiledKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl burn_cubecl::cubecl::tune::AutotuneKey for TiledKey {}

type TunedArgs = (CubeTensor, CubeTensor, BlockMatmul, bool);

fn tiled_key((_, _, spec, f16): &TunedArgs) -> TiledKey {
    use burn_cubecl::cubecl::tune::anchor;
    TiledKey {
        f16: *f16,
        split: splits(spec).map(|s| s != 0),
        k_fast: [
            spec.lhs.col == Axis::plain(1),
            spec.rhs.row == Axis::plain(1),
        ],
        g: anchor(spec.g, None, None, None),
        m: anchor(spec.m, None, None, None),
        n: anchor(spec.n, None, None, None),
        k: anchor(spec.k, None, None, None),
    }
}

/// Launches of the tiled kernel that went through the tuner so far.
pub(crate) static TUNED_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// The tiled kernel with the plan that cubecl's autotuner measured fastest for this key on this
/// device (the first call for a key times every distinct candidate; burn's matmul is chosen the
/// same way), or the two-pass form where that measured faster. GPUs differ too much for one tile
/// to suit them all, and a vendor's matmul kernel may beat the tiled one by more than the copies
/// cost.
fn tuned(lhs: CubeTensor, rhs: CubeTensor, spec: BlockMatmul, f16: bool) -> CubeTensor {
    use burn_cubecl::CubeTuneId;
    use burn_cubecl::cubecl::tune::{LocalTuner, Tunable, TunableSet, local_tuner};
    static TUNER: LocalTuner<TiledKey, CubeTuneId> = local_tuner!("gralora-block-matmul");
    TUNED_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = lhs.client.clone();
    let id = CubeTuneId::new(&client, &lhs.device);
    let set = TUNER.init(&id, || {
        (0..TILED_CANDIDATES)
            .fold(
                TunableSet::<TiledKey, TunedArgs, CubeTensor>::new_cloning_inputs(tiled_key),
                |set, i| {
                    set.with(Tunable::new(
                        &format!("plan-{i}"),
                        move |(lhs, rhs, spec, f16): TunedArgs| {
                            let properties = lhs.client.properties();
                            let software = properties.identity.physical.is_none();
                            let limit = properties.hardware.max_shared_memory_size;
                            let plans = candidate_plans(&spec, limit, software, f16);
                            if plans[..i].contains(&plans[i]) {
                                return Err(format!(
                                    "plan-{i} is an earlier candidate's plan here"
                                ));
                            }
                            Ok(run(&lhs, &rhs, &spec, f16, plans[i]))
                        },
                    ))
                },
            )
            .with(Tunable::new(
                "two-pass",
                |(lhs, rhs, spec, _): TunedArgs| two_pass(&lhs, &rhs, &spec),
            ))
    });
    TUNER.execute(&id, &client, set, (lhs, rhs, spec, f16))
}

/// `GRALORA_WGSL_TUNE`: `0` keeps a GPU's tiled kernel to the default plan (no tuning), `1` tunes
/// the tiled kernel on a software device too (where it runs: with `GRALORA_WGSL_TILED=1`); unset,
/// GPUs tune.
fn tune_setting() -> Option<bool> {
    static SETTING: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *SETTING.get_or_init(|| match std::env::var("GRALORA_WGSL_TUNE").as_deref() {
        Ok("0") => Some(false),
        Ok("1") => Some(true),
        Ok(other) => {
            eprintln!("warning: GRALORA_WGSL_TUNE={other:?} is neither 0 nor 1; ignored");
            None
        }
        Err(_) => None,
    })
}

/// The candidate plan forced on the tiled kernel (tests run each one), `usize::MAX` for none.
pub(crate) static FORCED_CANDIDATE: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(usize::MAX);

fn forced_candidate() -> Option<usize> {
    let i = FORCED_CANDIDATE.load(std::sync::atomic::Ordering::Relaxed);
    (i != usize::MAX).then_some(i)
}

/// Launches of the two-pass form so far.
pub(crate) static TWO_PASS_LAUNCHES: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// One axis of an operand map over `len` indices as strided dimensions `(len, stride)`: a plain
/// axis is one, a split axis two (blocks, then the index within a block), or one where every
/// index falls in the first block. `None` where the last block is partial: no strided view has
/// that shape.
fn axis_dims(len: usize, axis: Axis) -> Option<Vec<(usize, usize)>> {
    if axis.split == 0 || len <= axis.split {
        Some(vec![(len, axis.lo)])
    } else if len.is_multiple_of(axis.split) {
        Some(vec![(len / axis.split, axis.hi), (axis.split, axis.lo)])
    } else {
        None
    }
}

/// `op` over `[g, rows, cols]` as strided dimensions of its buffer, in index order (batch, row,
/// column; each split axis as two), without the dimensions of length one.
fn operand_dims(op: &Operand, g: usize, rows: usize, cols: usize) -> Option<Vec<(usize, usize)>> {
    let mut dims = axis_dims(g, op.batch)?;
    dims.extend(axis_dims(rows, op.row)?);
    dims.extend(axis_dims(cols, op.col)?);
    dims.retain(|&(len, _)| len != 1);
    if dims.is_empty() {
        dims.push((1, 1));
    }
    Some(dims)
}

/// `t`'s buffer seen through `dims` (lengths and strides).
fn strided_view(t: &CubeTensor, dims: &[(usize, usize)]) -> CubeTensor {
    use burn_cubecl::cubecl::zspace::metadata::Metadata;
    let (shape, strides): (Vec<usize>, Vec<usize>) = dims.iter().copied().unzip();
    CubeTensor::new(
        t.client.clone(),
        t.handle.clone(),
        Metadata::new(shape, strides),
        t.device.clone(),
        t.dtype,
    )
}

/// `t`'s buffer as a contiguous tensor of `shape`.
fn packed_view(t: &CubeTensor, shape: &[usize]) -> CubeTensor {
    let dims: Vec<(usize, usize)> = shape.iter().copied().zip(packed_strides(shape)).collect();
    strided_view(t, &dims)
}

/// The contiguous strides of `shape`.
fn packed_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    strides
}

/// An operand as the `[g, rows, cols]` tensor a batched matmul reads: a plain map of packed
/// row- or column-major matrices as it is, any other map copied out of its buffer.
fn gather(t: &CubeTensor, op: &Operand, g: usize, rows: usize, cols: usize) -> Option<CubeTensor> {
    let plain = op.batch.split == 0 && op.row.split == 0 && op.col.split == 0;
    let packed = g == 1 || op.batch.lo == rows * cols;
    if plain && packed {
        if op.col.lo == 1 && op.row.lo == cols {
            return Some(strided_view(
                t,
                &[(g, rows * cols), (rows, cols), (cols, 1)],
            ));
        }
        if op.row.lo == 1 && op.col.lo == rows {
            return Some(strided_view(
                t,
                &[(g, rows * cols), (rows, 1), (cols, rows)],
            ));
        }
    }
    let copy = into_contiguous(strided_view(t, &operand_dims(op, g, rows, cols)?));
    Some(packed_view(&copy, &[g, rows, cols]))
}

/// The permutation that writes a contiguous `[g, m, n]` result through the output map `op`: the
/// map's dimensions ordered by stride, which must then be a packed layout (the map is one-to-one
/// onto the output, so any map of whole blocks is). `None` otherwise.
fn scatter_order(op: &Operand, g: usize, m: usize, n: usize) -> Option<(Vec<usize>, Vec<usize>)> {
    let dims = operand_dims(op, g, m, n)?;
    let mut order: Vec<usize> = (0..dims.len()).collect();
    order.sort_by_key(|&d| std::cmp::Reverse(dims[d].1));
    let lens: Vec<usize> = dims.iter().map(|&(len, _)| len).collect();
    let ordered: Vec<usize> = order.iter().map(|&d| lens[d]).collect();
    let packed = packed_strides(&ordered);
    order
        .iter()
        .zip(&packed)
        .all(|(&d, &stride)| dims[d].1 == stride)
        .then_some((lens, order))
}

/// The op in two passes: each operand whose map is not a plain matrix layout copied into one
/// (GraLoRA's regroup, as the composite makes it), one batched matmul through burn's own
/// autotuned matmul, and the result copied through the output map: what the composite does,
/// product by product. More memory traffic than the WGSL kernel, but on a GPU where burn's
/// matmul kernels beat the tiled one by more than the copies cost, the tuner (which times this
/// as one more candidate) keeps the op from falling behind the composite. A first call for a new
/// shape tunes burn's matmul inside this candidate's warm-up, as the composite's first call
/// would. `Err` where a map has a partial last block or K is zero.
fn two_pass(lhs: &CubeTensor, rhs: &CubeTensor, spec: &BlockMatmul) -> Result<CubeTensor, String> {
    use burn_cubecl::kernel::matmul::{MatmulStrategy, matmul};
    let BlockMatmul { g, m, n, k, .. } = *spec;
    let partial = || "two-pass: a map with a partial last block has no strided view".to_string();
    if k == 0 {
        return Err("two-pass: K is 0".into());
    }
    let (lens, order) = scatter_order(&spec.out, g, m, n).ok_or_else(partial)?;
    let mut l = gather(lhs, &spec.lhs, g, m, k).ok_or_else(partial)?;
    let mut r = gather(rhs, &spec.rhs, g, k, n).ok_or_else(partial)?;
    // alpha on the smallest of the three.
    let scale = |t: CubeTensor| CubeBackend::float_mul_scalar(t, spec.alpha.into());
    let scale_out = spec.alpha != 1.0 && m * n <= (m * k).min(k * n);
    if spec.alpha != 1.0 && !scale_out {
        if m * k <= k * n {
            l = scale(l);
        } else {
            r = scale(r);
        }
    }
    let mut out =
        matmul(l, r, None, MatmulStrategy::Autotune, lhs.dtype).map_err(|e| format!("{e:?}"))?;
    if scale_out {
        out = scale(out);
    }
    TWO_PASS_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // The result as the map's dimensions (contiguous), permuted into the output's order.
    let strides = packed_strides(&lens);
    let dims: Vec<(usize, usize)> = order.iter().map(|&d| (lens[d], strides[d])).collect();
    let written = into_contiguous(strided_view(&out, &dims));
    Ok(packed_view(&written, &spec.out_shape))
}

/// An uninitialised contiguous tensor of `shape` on `like`'s device, in its element type.
fn empty_on(like: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        Shape::from(shape),
        like.dtype,
    )
}

/// Launch `plan` for `spec` (operands contiguous) and return the output.
fn run(
    lhs: &CubeTensor,
    rhs: &CubeTensor,
    spec: &BlockMatmul,
    f16: bool,
    plan: Plan,
) -> CubeTensor {
    let Plan {
        tile,
        direct,
        share,
        lanes,
        parts: wanted,
    } = plan;
    let client = lhs.client.clone();
    let empty = |shape: Vec<usize>| empty_on(lhs, shape);
    if direct {
        DIRECT_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if share != Share::None {
        SHARED_LAUNCHES[(share == Share::Rhs) as usize]
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    let kernel = BlockMatmulKernel {
        f16,
        splits: splits(spec),
        tile,
        lhs_k_fast: spec.lhs.col == Axis::plain(1),
        rhs_k_fast: spec.rhs.row == Axis::plain(1),
        direct,
        vec: if direct && !scalar_forced() {
            vec_axes(spec)
        } else {
            [Vec4::No; 2]
        },
        vec_out: direct && !scalar_forced() && vec_out(spec),
        share,
        subgroup: lanes,
    };
    // Split-K: chunks of whole BK rounds; each part writes its partial output into its own
    // slice of one `[parts, len]` buffer, summed below.
    let chunk = spec.k.max(1).div_ceil(wanted).next_multiple_of(BK as usize);
    let parts = spec.k.div_ceil(chunk).max(1);
    let mut info_host = info(spec);
    let target = if parts > 1 {
        SPLIT_K_LAUNCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let len = spec.g * spec.m * spec.n;
        info_host[INFO_LEN - 3..].copy_from_slice(&[parts as u32, chunk as u32, len as u32]);
        empty(vec![parts, len])
    } else {
        empty(spec.out_shape.clone())
    };
    let info = client.create_from_slice(bytemuck::cast_slice(&info_host));
    let count = CubeCount::Static(
        (spec.n as u32).div_ceil(tile.bn()),
        (spec.m as u32).div_ceil(tile.bm()),
        (spec.g * parts) as u32,
    );
    let args = KernelArguments::new().with_buffers(vec![
        lhs.handle.clone().binding(),
        rhs.handle.clone().binding(),
        target.handle.clone().binding(),
        info.binding(),
    ]);
    let dim = if share == Share::Rhs {
        CubeDim::new_2d(tile.wy, tile.wx)
    } else {
        CubeDim::new_2d(tile.wx, tile.wy)
    };
    client.launch(Box::new(SourceKernel::new(kernel, dim)), count, args);
    if parts == 1 {
        return target;
    }
    let sum = CubeBackend::float_sum_dim(target, 0);
    CubeBackend::float_reshape(sum, Shape::from(spec.out_shape.clone()))
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
                        let module =
                            wgpu::naga::front::wgsl::parse_str(&source).unwrap_or_else(|e| {
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
}
