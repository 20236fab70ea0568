//! Dropout with masks drawn fast on the CPU backend.
//!
//! burn's `Dropout` samples a Bernoulli tensor element by element through a ChaCha generator
//! behind a lock, then multiplies twice; on Flex that was a tenth of a MiniLM training step, all
//! on one thread. Here, on Flex, the scaled mask (`0` or `1/keep`) is drawn on all cores with a
//! small generator per chunk and applied with one multiply. On every other device burn's own
//! dropout runs (the GPU draws its masks itself).
//!
//! Masks are reproducible: [`seed`] fixes a base seed and the masks of the calls after it depend
//! only on that seed and the calls' order (the trainer seeds before every batch).

use std::sync::atomic::{AtomicU64, Ordering};

use burn::nn::Dropout;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;

static BASE: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Elements per independently seeded chunk of a mask.
const CHUNK: usize = 1 << 16;

/// Make the masks drawn from now on depend only on `seed` and their order.
pub fn seed(seed: u64) {
    BASE.store(seed, Ordering::SeqCst);
    CALLS.store(0, Ordering::SeqCst);
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64's finaliser over the pair
    let mut z = a ^ b.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A mask of `n` values, each `1/keep` with probability `keep` and `0` otherwise.
pub fn mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let threshold = (keep * 4_294_967_296.0).min(4_294_967_295.0) as u64;
    let scale = (1.0 / keep) as f32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut rng = SmallRng::seed_from_u64(mix(seed, c as u64));
            for pair in chunk.chunks_mut(2) {
                let r = rng.next_u64();
                for (i, v) in pair.iter_mut().enumerate() {
                    let u = (r >> (32 * i)) & 0xFFFF_FFFF;
                    *v = if u < threshold { scale } else { 0.0 };
                }
            }
        });
    out
}

/// `dropout.forward(x)`, with the mask drawn as above on Flex. Identity outside training, on a
/// device without autodiff, or at probability 0 (as burn's).
pub fn apply<const D: usize>(dropout: &Dropout, x: Tensor<D>) -> Tensor<D> {
    let device = x.device();
    if !gralora::device::is_flex(&device) {
        return dropout.forward(x);
    }
    if !dropout.training.is_enabled() || !device.is_autodiff() || dropout.prob == 0.0 {
        return x;
    }
    let call = CALLS.fetch_add(1, Ordering::SeqCst);
    let seed = mix(BASE.load(Ordering::SeqCst), call);
    let shape = x.shape();
    let m = mask(shape.num_elements(), 1.0 - dropout.prob, seed);
    gralora::kernels::host_write(1);
    x * Tensor::<D>::from_data(TensorData::new(m, shape), &device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use burn::tensor::Device;

    #[test]
    fn masks_keep_the_expected_share_scaled_and_are_reproducible() {
        let n = 1_000_003;
        let m = mask(n, 0.9, 7);
        let kept = m.iter().filter(|&&v| v != 0.0).count() as f64;
        // Binomial(n, 0.9): s.d. 300; 5 s.d.
        assert!((kept - 0.9 * n as f64).abs() < 1500.0, "{kept}");
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
        assert_eq!(m, mask(n, 0.9, 7));
        assert_ne!(m, mask(n, 0.9, 8));
        // Neighbouring elements are independent: P(both kept) = 0.81.
        let both = m
            .chunks_exact(2)
            .filter(|p| p[0] != 0.0 && p[1] != 0.0)
            .count() as f64;
        assert!((both / (n / 2) as f64 - 0.81).abs() < 0.005, "{both}");
    }

    #[test]
    fn dropout_on_flex_scales_kept_values_and_follows_the_seed() {
        let device = Device::flex().autodiff();
        let d = DropoutConfig::new(0.25).init();
        let x = Tensor::<2>::ones([64, 64], &device);
        seed(3);
        let a: Vec<f32> = apply(&d, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let b: Vec<f32> = apply(&d, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        seed(3);
        let a2: Vec<f32> = apply(&d, x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(a, a2, "the same seed and call order give the same mask");
        assert_ne!(a, b, "each call draws a new mask");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        let dropped = a.iter().filter(|&&v| v == 0.0).count();
        // Binomial(4096, 0.25): mean 1024, s.d. 27.7; 5 s.d.
        assert!((885..1163).contains(&dropped), "{dropped} of 4096");
        // Without autodiff (inference) and at p = 0 it is the identity.
        let plain = Tensor::<2>::ones([4, 4], &Device::flex());
        let y: Vec<f32> = apply(&d, plain).into_data().try_to_vec::<f32>().unwrap();
        assert!(y.iter().all(|&v| v == 1.0));
    }
}
