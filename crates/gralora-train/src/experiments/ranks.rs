//! The papers' rules for a method's shape at a given rank.

/// GraLoRA's k for rank `r` by the paper's rule (r/k² ≈ 8: 2 up to 32, 4 from 64), lowered to
/// the largest power of two that divides r.
pub fn paper_k(r: usize) -> usize {
    let mut k = gralora::recommended_k(r);
    while k > 1 && !r.is_multiple_of(k) {
        k /= 2;
    }
    k
}
