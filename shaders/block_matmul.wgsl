// Batched block matmul with two-level operand addressing (gralora, docs/METHODS.md §2), tiled
// through workgroup memory: the kernel GPUs run. Software devices (lavapipe) run
// `block_matmul_direct.wgsl` instead, unless GRALORA_WGSL_TILED=1 (tests run this one there so).
//
//   out[g, m, n] = alpha * Σ_kk L(g, m, kk) · R(g, kk, n)
//
// Every operand is read or written through `offset = axis(g) + axis(row) + axis(col)` where an
// axis is either plain (`i · lo`) or split (`(i / split) · hi + (i % split) · lo`). The split form
// lets GraLoRA's regrouped intermediate be read in place: no `[k, T, r]` copy is ever made.
//
// This file is a template filled by `crates/gralora/src/backends/cube.rs`:
// - the row and column split factors are baked in (the lhs/rhs/out offset placeholders become
//   expressions of the indices `gm`, `gk`, `gn`); the batch offset is computed once per workgroup
//   from `info` (a plain batch has split u32::MAX), e.g. attention's (sequence, head) pairs,
//   strides, sizes and alpha come through `info`, so one compiled kernel serves every batch size;
// - the tile shape (WX×WY threads, TM×TN outputs each, TM and TN multiples of 4) is chosen per call
//   so that a small rank (N or M = 16) does not leave most of a square tile idle; any thread count
//   works (the tile loads are guarded), so a software device's tiles are cut to the output's width;
// - each thread owns a contiguous TM×TN block; the workgroup tiles hold vec4s, so one step of the
//   inner product is TM/4 + TN/4 vector loads for TM·TN multiply-adds (on software Vulkan, where
//   every per-invocation load is a gather, loads per multiply-add set the speed: a 2048×384×384
//   product took 1057 ms with scalar 4×4 tiles and takes 205 ms with 16×16 vec4 blocks there);
// - the register tile is written out unrolled (declaration, inner product and store), so the
//   accumulators stay in registers instead of a dynamically indexed private array;
// - the global loads walk whichever axis of an operand is contiguous fastest (coalesced on GPUs).
// Out-of-range loads read 0 and out-of-range stores are skipped: any M, N, K (T = 1 included) works.
// Split-K: with `parts` > 1 the reduction is cut into chunks of `k_chunk`; workgroup z = g·parts + part
// reduces its chunk and writes its partial output `part_stride` elements further on (the host sums the
// partials). Products with a small output and a long reduction (an adapter's weight gradients) then
// fill a large GPU instead of a dozen workgroups. With one part this is the plain kernel.
// All bindings are read_write: cubecl sub-allocates tensors from shared buffers, and wgpu refuses one
// buffer bound both read-only and writable in a dispatch.
{{ enable_f16 }}
@group(0) @binding(0) var<storage, read_write> lhs: array<{{ elem }}>;
@group(0) @binding(1) var<storage, read_write> rhs: array<{{ elem }}>;
@group(0) @binding(2) var<storage, read_write> out: array<{{ elem }}>;
// [M, N, K, alpha bits,
//  lhs: batch_split, batch_hi, batch_lo, row_hi, row_lo, col_hi, col_lo,
//  rhs: batch_split, batch_hi, batch_lo, row_hi, row_lo, col_hi, col_lo,
//  out: batch_split, batch_hi, batch_lo, row_hi, row_lo, col_hi, col_lo,
//  parts, k_chunk, part_stride]
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const WX: u32 = {{ wx }}u;
const WY: u32 = {{ wy }}u;
const BM: u32 = {{ bm }}u;
const BN: u32 = {{ bn }}u;
const BK: u32 = {{ bk }}u;
const TM: u32 = {{ tm }}u;
const TN: u32 = {{ tn }}u;
const THREADS: u32 = WX * WY;

var<workgroup> a_tile: array<vec4<f32>, {{ a_tile_len }}>; // [BK][BM / 4]
var<workgroup> b_tile: array<vec4<f32>, {{ b_tile_len }}>; // [BK][BN / 4]

@compute @workgroup_size({{ wx }}, {{ wy }}, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(local_invocation_index) lidx: u32,
) {
    let m_len = info[0];
    let n_len = info[1];
    let k_len = info[2];
    let alpha = bitcast<f32>(info[3]);
    let l_row_hi = info[7];
    let l_row_lo = info[8];
    let l_col_hi = info[9];
    let l_col_lo = info[10];
    let r_row_hi = info[14];
    let r_row_lo = info[15];
    let r_col_hi = info[16];
    let r_col_lo = info[17];
    let o_row_hi = info[21];
    let o_row_lo = info[22];
    let o_col_hi = info[23];
    let o_col_lo = info[24];
    let parts = info[25];
    let g = wid.z / parts;
    let part = wid.z % parts;
    let k_begin = part * info[26];
    let k_end = min(k_begin + info[26], k_len);
    let lhs_base = (g / info[4]) * info[5] + (g % info[4]) * info[6];
    let rhs_base = (g / info[11]) * info[12] + (g % info[11]) * info[13];
    let out_base = (g / info[18]) * info[19] + (g % info[18]) * info[20] + part * info[27];
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;
    // The thread's block in the tile (named as in `block_matmul_direct.wgsl`, whose stores these
    // share).
    let tx = lid.x;
    let ty = lid.y;
    let a_off = ty * (TM / 4u);
    let b_off = tx * (TN / 4u);

{{ acc_decl }}
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        for (var s = 0u; s < (BK * BM + THREADS - 1u) / THREADS; s++) {
            let e = lidx + THREADS * s;
            if (e < BK * BM) {
{{ a_index }}
                let gm = row0 + am;
                let gk = k0 + ak;
                var v = 0.0;
                if (gm < m_len && gk < k_end) {
                    v = f32(lhs[lhs_base + {{ lhs_row }} + {{ lhs_col }}]);
                }
                a_tile[ak * (BM / 4u) + am / 4u][am % 4u] = v;
            }
        }
        for (var s = 0u; s < (BK * BN + THREADS - 1u) / THREADS; s++) {
            let e = lidx + THREADS * s;
            if (e < BK * BN) {
{{ b_index }}
                let gn = col0 + bn;
                let gk = k0 + bk;
                var v = 0.0;
                if (gn < n_len && gk < k_end) {
                    v = f32(rhs[rhs_base + {{ rhs_row }} + {{ rhs_col }}]);
                }
                b_tile[bk * (BN / 4u) + bn / 4u][bn % 4u] = v;
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a_row = kk * (BM / 4u) + a_off;
            let b_row = kk * (BN / 4u) + b_off;
{{ compute }}
        }
        workgroupBarrier();
    }
{{ store }}
}
