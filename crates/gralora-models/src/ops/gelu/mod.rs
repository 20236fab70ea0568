//! GELU (erf form) as a backend-extension op, so the CPU backend can run it fast.
//!
//! burn's Flex backend evaluates GELU and its derivative one element at a time through libm's
//! `erff`, on one thread: 8 % of a MiniLM training step (perf). Here Flex computes erf with a
//! rational approximation that the compiler vectorises (within 4e-7 of erf, 3 f32 ulps near ±1; tested) over all
//! cores, and Autodiff's backward is the matching `gelu_backward`. Other devices (wgpu) build the
//! same formula from burn's elementwise ops instead, so that Fusion fuses it.

use burn::backend::{Backend, backend_extension, tensor::FloatTensor};
use burn::tensor::Tensor;
use rayon::prelude::*;

/// GELU with the exact (erf) form and its derivative.
#[backend_extension(Flex, Cube, Fusion, Autodiff)]
pub trait GeluOps: Backend {
    /// `0.5 · x · (1 + erf(x / √2))`.
    #[fusion(dtype = x, shape = x)]
    fn erf_gelu(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `grad · d gelu(x) / dx`.
    #[fusion(dtype = x, shape = x)]
    fn erf_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// GELU (erf form) of `x` on any device, differentiable.
///
/// The extension op runs on Flex. Elsewhere the formula is built from burn's elementwise tensor
/// ops, which Fusion fuses into the kernels around them and Autodiff differentiates exactly
/// (burn's own `gelu_backward` is the tanh approximation's derivative).
pub fn gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !gralora::device::is_flex(&x.device()) {
        return x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5;
    }
    use burn::backend::Dispatch;
    Tensor::from_dispatch(Dispatch::erf_gelu(x.into_dispatch()))
}

/// erf(x) in f32 by the odd/even rational approximation of Eigen's `generic_fast_erf_float`
/// (inputs clamped to ±4, where erf is ±1 in f32). Branch-free, so loops over it vectorise.
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_6e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1 / √(2π).
const INV_SQRT_2PI: f32 = 0.398_942_3;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// GELU of each element, on all cores.
pub fn gelu_slice(x: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(o, x)| gelu_chunk(x, o));
}

#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn gelu_chunk(x: &[f32], o: &mut [f32]) {
    for (o, &x) in o.iter_mut().zip(x) {
        *o = 0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
    }
}

/// `grad · gelu'(x)` of each element, on all cores.
pub fn gelu_backward_slice(x: &[f32], grad: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(grad.par_chunks(CHUNK)))
        .for_each(|(o, (x, g))| gelu_backward_chunk(x, g, o));
}

#[multiversion::multiversion(targets("x86_64+avx2+fma", "aarch64+neon"))]
fn gelu_backward_chunk(x: &[f32], g: &[f32], o: &mut [f32]) {
    for ((o, &x), &g) in o.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
        let pdf = INV_SQRT_2PI * crate::fastmath::exp_f32(-0.5 * x * x);
        *o = g * (cdf + x * pdf);
    }
}

mod flex;

mod cube;

mod autodiff;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    #[test]
    fn fast_erf_is_within_3_ulps_of_erf() {
        let mut worst = 0f32;
        let mut x = -6.0f32;
        while x <= 6.0 {
            worst = worst.max((erf_f32(x) - exact_erf(x)).abs());
            x += 1.0 / 1024.0;
        }
        assert!(worst < 4e-7, "max |erf - exact| = {worst:e}");
    }

    fn exact_erf(x: f32) -> f32 {
        // f64 reference from the standard series/continued fraction via libm-free means:
        // erf(x) = sign · (1 - erfc(|x|)); computed in f64 with 60 terms of the Taylor series
        // for |x| < 3 and the asymptotic complement beyond.
        let xd = x as f64;
        let a = xd.abs();
        let v = if a < 3.0 {
            let mut term = a;
            let mut sum = a;
            for n in 1..200 {
                term *= -a * a / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            // erfc by its continued fraction (Lentz), accurate far beyond f32 here.
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / (f * std::f64::consts::PI.sqrt())
        };
        (v.copysign(xd)) as f32
    }

    #[test]
    fn gelu_and_its_gradient_match_the_formula_on_flex() {
        let device = Device::flex().autodiff();
        let xs: Vec<f32> = (0..70_001).map(|i| -7.0 + i as f32 * 2e-4).collect();
        let n = xs.len();
        let x = Tensor::<1>::from_data(TensorData::new(xs.clone(), [n]), &device).require_grad();
        let y = gelu(x.clone());
        let grads = (y.clone() * y.clone()).sum().backward();
        let gx: Vec<f32> = x.grad(&grads).unwrap().into_data().try_to_vec().unwrap();
        let y: Vec<f32> = y.into_data().try_to_vec().unwrap();
        for (i, &x) in xs.iter().enumerate() {
            let xd = x as f64;
            let cdf = 0.5 * (1.0 + exact_erf((xd / 2f64.sqrt()) as f32) as f64);
            let want = xd * cdf;
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let want_g = 2.0 * want * (cdf + xd * pdf);
            // erf is good to 4e-7, so gelu to 0.5·|x|·4e-7 (plus rounding).
            let tol = 3e-7 * (1.0 + xd.abs());
            assert!(
                (y[i] as f64 - want).abs() < tol,
                "gelu({x}) = {} vs {want}",
                y[i]
            );
            assert!(
                // d(y²)/dx = 2·y·gelu': the value's error times 2·gelu' (≤ 2.3) plus rounding.
                (gx[i] as f64 - want_g).abs() < 2.5 * tol + 1e-6 * want_g.abs(),
                "gelu'({x}): {} vs {want_g}",
                gx[i]
            );
        }
    }
}
