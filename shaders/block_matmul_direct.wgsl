// Batched block matmul for software devices (lavapipe): the same product, operand maps, info
// layout and register tiles as `block_matmul.wgsl`, without workgroup memory.
//
//   out[g, m, n] = alpha * Σ_kk L(g, m, kk) · R(g, kk, n)
//
// On a CPU rasteriser every per-invocation load, from storage or from workgroup memory alike, is a
// loop over the SIMD lanes, and a barrier suspends and resumes every lane group. Staging tiles
// through workgroup memory there only adds a store and a load per element and two barriers per
// round, so this kernel reads both operands straight from storage: per reduction step a thread
// loads its TM lhs and TN rhs values and does TM·TN multiply-adds into unrolled vec4 accumulators.
// Where an operand is contiguous in aligned runs of four (along its output axis or along K) it is
// bound as `array<vec4>` and read four values a load: the lane loop then runs once for four values
// (`lhs_ty` / `rhs_ty`); a run along K makes the reduction step four at a time (`k_step`). An output
// contiguous along N in aligned fours is written four values a store (`out_ty`). (On 2 cores: 29-38 %
// less time for GraLoRA's forward + backward than the same kernel with scalar loads.)
// Shared loads (lavapipe): its compute lanes are consecutive invocations along x of one workgroup
// row, 8 to a SIMD group (a subgroup), and threads of one thread row need the same lhs values,
// threads of one thread column the same rhs values. Lanes along a thread column (`tx` = lid.y,
// `ty` = lid.x: the hardware's x axis then runs along M) share the rhs: lane s loads only units
// s, s + 8, ... of the thread's columns (a unit: one column, or a vec4 of four) and takes every
// other unit with `subgroupBroadcast` from the lane that loaded it (a register shuffle there), so
// each rhs value is loaded once per subgroup instead of once per lane. Outputs of few rows (a
// rank side) share the lhs instead, lanes along a thread row. (On 2 cores: 17-52 % less time for
// GraLoRA's forward + backward than every thread loading its own operands.) `lix % lanes` is the
// lane (WGSL's `subgroup_invocation_id` is refused with a 2-D workgroup); `cube.rs` shares only
// where the lane order is known.
// Rows and columns past the output are clamped to the last one (the last group of four for vec4
// reads; a valid element, whose results are never stored) and the reduction runs exactly to its
// end, so no load needs a guard: any M, N, K works (vec4 reads only where the lengths are
// multiples of four).
// Filled by `crates/gralora/src/backends/cube.rs` like the tiled kernel (axis expressions, tile
// shape, unrolled accumulators, loads); split-K words in `info` are honoured but a software device
// always runs one part.
{{ enable_f16 }}
@group(0) @binding(0) var<storage, read_write> lhs: array<{{ lhs_ty }}>;
@group(0) @binding(1) var<storage, read_write> rhs: array<{{ rhs_ty }}>;
@group(0) @binding(2) var<storage, read_write> out: array<{{ out_ty }}>;
@group(0) @binding(3) var<storage, read_write> info: array<u32>;

const TM: u32 = {{ tm }}u;
const TN: u32 = {{ tn }}u;

@compute @workgroup_size({{ size_x }}, {{ size_y }}, 1)
fn main(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,{{ subgroup_id }}
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
    {{ thread }}
    let row0 = wid.y * ({{ wy }}u * TM);
    let col0 = wid.x * ({{ wx }}u * TN);
    let m_last = max(m_len, 1u) - 1u;
    let n_last = max(n_len, 1u) - 1u;

{{ prelude }}
    for (var gk = k_begin; gk < k_end; gk += {{ k_step }}u) {
{{ compute }}
    }
{{ store }}
}
