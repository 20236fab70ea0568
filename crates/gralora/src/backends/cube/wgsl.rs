//! The WGSL kernels' sources and their specialisation: `shaders/block_matmul.wgsl` (tiled
//! through workgroup memory, for GPUs) and `shaders/block_matmul_direct.wgsl` (operands read
//! straight from storage, for software devices), rendered per shape class (element type, split
//! axes, tile, vec4 loads, shared loads), and the info words every launch passes.

use burn_cubecl::cubecl::prelude::KernelId;
use burn_cubecl::template::{KernelSource, SourceTemplate};

use crate::ops::{Axis, BlockMatmul};

pub(super) const SOURCE: &str = include_str!("../../../../../shaders/block_matmul.wgsl");

pub(super) const DIRECT_SOURCE: &str =
    include_str!("../../../../../shaders/block_matmul_direct.wgsl");

/// Reduction step per workgroup-memory round (two barriers each).
pub(super) const BK: u32 = 16;

/// Threads along N (x) and M (y), and outputs per thread along M and N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Tile {
    pub(super) wx: u32,
    pub(super) wy: u32,
    pub(super) tm: u32,
    pub(super) tn: u32,
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
    pub(super) fn for_shape(m: usize, n: usize, software: bool) -> Self {
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
    pub(super) fn cut_to(mut self, m: usize, n: usize) -> Self {
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
    pub(super) fn shared(m: usize, n: usize, lanes: u32) -> (Self, Share) {
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
    pub(super) fn shared_bytes(&self) -> usize {
        (BK * (self.bm() + self.bn())) as usize * 4
    }

    /// This tile, with its register blocks (then its thread counts) halved until the workgroup
    /// tiles fit in `limit` bytes.
    pub(super) fn within(mut self, limit: usize) -> Self {
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
    pub(super) fn bm(&self) -> u32 {
        self.wy * self.tm
    }
    pub(super) fn bn(&self) -> u32 {
        self.wx * self.tn
    }
}

/// The kernel specialised on what changes its code: element type, which axes are split (and by
/// how much) and the tile shape. Strides and sizes travel in the info buffer, so a new batch size
/// compiles nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BlockMatmulKernel {
    pub(super) f16: bool,
    pub(super) splits: [usize; 6],
    pub(super) tile: Tile,
    /// The lhs is contiguous along K (load the workgroup tile K-fastest).
    pub(super) lhs_k_fast: bool,
    /// The rhs is contiguous along K.
    pub(super) rhs_k_fast: bool,
    /// `block_matmul_direct.wgsl` (software devices: no workgroup memory) instead of the tiled
    /// kernel.
    pub(super) direct: bool,
    /// Which axis of the lhs and of the rhs the direct kernel reads four at a time.
    pub(super) vec: [Vec4; 2],
    /// The direct kernel writes the output as `vec4`s (contiguous along N in aligned runs of 4).
    pub(super) vec_out: bool,
    /// Which operand's loads the direct kernel shares over a subgroup.
    pub(super) share: Share,
    /// The subgroup size (where `share` is not `None`).
    pub(super) subgroup: u32,
}

/// Which operand the lanes of a subgroup load together, each lane a part, then broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Share {
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
pub(super) enum Vec4 {
    /// Scalar loads.
    No,
    /// Along the output axis: M for the lhs, N for the rhs (four rows or columns at once).
    Outer,
    /// Along the reduction: four steps of one row (lhs) or column (rhs) at once.
    K,
}

/// WGSL for one axis' offset of index variable `var`, strides named `{name}_hi` / `{name}_lo`.
pub(super) fn axis_expr(var: &str, split: usize, name: &str) -> String {
    if split == 0 {
        format!("{var} * {name}_lo")
    } else {
        format!("(({var} / {split}u) * {name}_hi + ({var} % {split}u) * {name}_lo)")
    }
}

impl BlockMatmulKernel {
    /// The unrolled accumulators: `acc{i}_{q}` is row i of the thread's block, columns 4q..4q+4.
    pub(super) fn acc_decl(&self) -> String {
        let Tile { tm, tn, .. } = self.tile;
        (0..tm)
            .flat_map(|i| {
                (0..tn / 4).map(move |q| format!("    var acc{i}_{q} = vec4<f32>(0.0);\n"))
            })
            .collect()
    }

    /// The tiled kernel's multiply-adds over one workgroup-memory step.
    pub(super) fn tiled_compute(&self) -> String {
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
    pub(super) fn store(&self, vec4: bool) -> String {
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
    pub(super) fn direct_source(&self) -> SourceTemplate {
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
pub(super) struct DirectSide {
    /// Its binding (`lhs` or `rhs`).
    pub(super) buf: &'static str,
    /// Prefix of its offsets and loaded values (`l` or `r`).
    pub(super) name: &'static str,
    /// Prefix of its per-step `vec4`s of values the multiply-adds take (`a` or `b`).
    pub(super) value: &'static str,
    /// Rows (lhs) or columns (rhs) per thread: TM or TN.
    pub(super) count: u32,
    /// The thread's first row or column.
    pub(super) first: &'static str,
    /// `m` or `n`.
    pub(super) len: &'static str,
    /// Offset of a row or column `IDX`, batch included.
    pub(super) outer: String,
    /// Split of its reduction axis, and that axis' stride names.
    pub(super) k_split: usize,
    pub(super) k_name: &'static str,
    pub(super) vec: Vec4,
    /// Subgroup size over which its loads are shared (0: not shared).
    pub(super) share: u32,
}

impl DirectSide {
    /// Units a thread needs per load round (a `vec4` along M/N, or one row or column) and rows
    /// or columns per unit.
    pub(super) fn units(&self) -> (u32, u32) {
        if self.vec == Vec4::Outer {
            (self.count / 4, 4)
        } else {
            (self.count, 1)
        }
    }

    /// Units each lane loads when shared.
    pub(super) fn own(&self) -> u32 {
        self.units().0.div_ceil(self.share.max(1))
    }

    /// Offsets computed once: one per unit, or, shared, one per unit this lane loads (lane s
    /// loads units s, s + S, ...). Past the output they clamp to the last row or column (group).
    pub(super) fn offsets(&self) -> String {
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
    pub(super) fn load(&self, off: &str, k: &str) -> String {
        let kk = axis_expr(k, self.k_split, self.k_name);
        match self.vec {
            Vec4::No => format!("f32({}[{off} + {kk}])", self.buf),
            _ => format!("vec4<f32>({}[({off} + {kk}) / 4u])", self.buf),
        }
    }

    /// Unit `u` of the round: loaded by this thread, or broadcast from the lane that loaded it.
    pub(super) fn unit(&self, u: u32, suffix: &str) -> String {
        // Lane s loaded units s, s + S, ...: unit u is the lane's (u / S)-th, on lane u % S.
        match (u.checked_div(self.share), u.checked_rem(self.share)) {
            (Some(own), Some(lane)) => {
                format!("subgroupBroadcast({}k{own}{suffix}, {lane}u)", self.name)
            }
            _ => format!("{}u{u}{suffix}", self.name),
        }
    }

    /// Loads made once per four reduction steps (a `vec4` along K per row or column).
    pub(super) fn k_loads(&self) -> String {
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
    pub(super) fn round_loads(&self, suffix: &str, k: &str) -> String {
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
    pub(super) fn step_values(&self, kk: u32, k: &str) -> String {
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
pub(super) fn load_index(major: &str, kvar: &str, len: &str, k_fast: bool) -> String {
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
pub(super) const INFO_LEN: usize = 4 + 3 * 7 + 3;

/// The info words of `spec`, run as one part.
pub(super) fn info(spec: &BlockMatmul) -> Vec<u32> {
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

pub(super) fn splits(spec: &BlockMatmul) -> [usize; 6] {
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

/// Every offset along `a` is a multiple of 4.
pub(super) fn aligned(a: Axis) -> bool {
    a.lo.is_multiple_of(4) && (a.split == 0 || a.hi.is_multiple_of(4))
}

/// `a` is contiguous in aligned runs of 4 (stride 1; blocks of a split axis a multiple of 4 long).
pub(super) fn runs_of_4(a: Axis) -> bool {
    a.lo == 1 && (a.split == 0 || (a.split.is_multiple_of(4) && a.hi.is_multiple_of(4)))
}

/// The axes along which the direct kernel can read each operand of `spec` as `vec4`s: an axis
/// contiguous in runs of 4 (stride 1, blocks of a split axis a multiple of 4 long) whose length is
/// a multiple of 4, with every other offset (batch, the other axis) a multiple of 4, so each group
/// of four is one aligned `vec4`.
pub(super) fn vec_axes(spec: &BlockMatmul) -> [Vec4; 2] {
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
pub(super) fn vec_out(spec: &BlockMatmul) -> bool {
    let o = spec.out;
    aligned(o.batch) && aligned(o.row) && runs_of_4(o.col) && spec.n.is_multiple_of(4)
}
