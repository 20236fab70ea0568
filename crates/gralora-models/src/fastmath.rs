//! Branch-free `f32` functions that the compiler vectorises, for the CPU kernels of this crate.
//!
//! libm's `expf` is one call per element; the loops here run 8 elements per instruction (AVX2).

/// `ln 2` split for Cody–Waite range reduction: `HI` has few mantissa bits, so `n · HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// `1.5 · 2^23`: adding it rounds an `f32` of magnitude < 2^22 to the nearest integer, which
/// then sits in the low mantissa bits.
const ROUND: f32 = 12_582_912.0;
/// Below this `exp` is subnormal in `f32`; the result is flushed to 0.
const MIN_X: f32 = -87.336_55;
/// Above this `2^n` would leave the exponent range; inputs are clamped here (`exp(88) ≈ 1.65e38`).
const MAX_X: f32 = 88.0;

/// `e^x` for `x ≤ 88` within 2 ulp (tested against `f64::exp`); `0` below `-87.34` (where
/// `e^x` is subnormal), `e^88` above 88, NaN for NaN. Cephes' `expf` polynomial.
#[inline(always)]
#[allow(clippy::excessive_precision)] // Cephes' coefficients as published
pub fn exp_f32(x: f32) -> f32 {
    let c = x.clamp(MIN_X, MAX_X);
    let t = c * LOG2E + ROUND;
    let n = t - ROUND;
    let r = c - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * r * r + r + 1.0;
    // n sits in t's low mantissa bits, offset by 2^22. (Wrapping integer ops: an overflow
    // check would be a branch, and a branch stops the loops over this function vectorising.)
    let n_int = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits((n_int.wrapping_add(127) as u32).wrapping_shl(23));
    if x < MIN_X { 0.0 } else { y * scale }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_2_ulps_of_f64_exp() {
        let mut worst = 0f64;
        let mut x = -87.3f32;
        while x <= 88.0 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            // one f32 ulp at `want`
            let ulp = (want as f32).to_bits();
            let ulp = (f32::from_bits(ulp + 1) - want as f32) as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 1.0 / 1024.0 + x.abs() * 1e-7;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-100.0), 0.0);
        assert_eq!(exp_f32(-1e9), 0.0);
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
        assert!((exp_f32(1.0) - std::f32::consts::E).abs() <= f32::EPSILON * 3.0);
        assert!(exp_f32(88.0).is_finite() && exp_f32(1e9) == exp_f32(88.0));
    }
}
