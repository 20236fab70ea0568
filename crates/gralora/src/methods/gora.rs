//! GoRA (docs/METHODS.md §3): gradient-driven rank allocation and initialisation, for LoRA and,
//! with ranks in multiples of k and one least-squares solve per sub-adapter, for GraLoRA.
//!
//! The math here runs on the host in f64 on the mean gradients the caller measured; the trainer
//! (`gralora-train`) measures them. Ranks are small (≤ a few hundred), so the `r × r` normal
//! equations are solved by a Cholesky factorisation written out below.

use rand::Rng;

use crate::error::AdapterError;

/// The feature function `f` of the budget (`f(in + out)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Feature {
    /// The paper's choice.
    Sqrt,
    /// The released scripts' choice: keeps LoRA's parameter count at `r_ref` before clipping.
    Identity,
}

impl Feature {
    fn apply(self, x: f64) -> f64 {
        match self {
            Self::Sqrt => x.sqrt(),
            Self::Identity => x,
        }
    }
}

/// How a layer's importance is measured from its weight `W` and mean gradient `G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Importance {
    /// `mean(|W ⊙ G|)` (the paper's).
    MeanAbs,
    /// `‖W ⊙ G‖_F`.
    Frobenius,
}

/// GoRA's settings.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GoraConfig {
    /// Reference rank of the LoRA budget.
    pub r_ref: usize,
    /// Smallest rank.
    pub r_min: usize,
    /// Largest rank.
    pub r_max: usize,
    /// Feature function of the budget.
    pub feature: Feature,
    /// Importance measure.
    pub importance: Importance,
    /// alpha: the scale is `alpha / sqrt(r_i)`.
    pub alpha: f64,
    /// γ of `ξ = γ · sqrt(in) / alpha`.
    pub gamma: f64,
}

impl Default for GoraConfig {
    /// The released defaults: r_ref 8, r_min 4, r_max 32, sqrt, mean |W ⊙ G|, alpha 16, γ 5e-2.
    fn default() -> Self {
        Self {
            r_ref: 8,
            r_min: 4,
            r_max: 32,
            feature: Feature::Sqrt,
            importance: Importance::MeanAbs,
            alpha: 16.0,
            gamma: 5e-2,
        }
    }
}

impl GoraConfig {
    /// Check the settings; `k` is the multiple ranks must have (1 for LoRA).
    pub fn validate(&self, k: usize) -> Result<(), AdapterError> {
        let bad = |m: String| Err(AdapterError::State(m));
        if self.r_min == 0 || self.r_min > self.r_ref || self.r_ref > self.r_max {
            return bad(format!(
                "GoRA needs 1 <= r_min <= r_ref <= r_max, got r_min {}, r_ref {}, r_max {}",
                self.r_min, self.r_ref, self.r_max
            ));
        }
        if k == 0 || self.r_max < k {
            return bad(format!(
                "GoRA-GraLoRA needs r_max >= k, got r_max {} and k {k}",
                self.r_max
            ));
        }
        if !(self.alpha > 0.0 && self.gamma > 0.0) {
            return bad("GoRA needs alpha > 0 and gamma > 0".into());
        }
        Ok(())
    }
}

/// The importance of one layer from `W` and `G` (both `[in, out]`, row-major).
pub fn importance(w: &[f32], g: &[f32], kind: Importance) -> f64 {
    let products = w.iter().zip(g).map(|(&a, &b)| f64::from(a) * f64::from(b));
    match kind {
        Importance::MeanAbs => products.map(f64::abs).sum::<f64>() / w.len().max(1) as f64,
        Importance::Frobenius => products.map(|p| p * p).sum::<f64>().sqrt(),
    }
}

/// Per-layer ranks for layers `(in, out, importance)` under the budget of LoRA at `r_ref`:
/// `r_i = clip(round(budget · a_i / f(in_i + out_i)), r_min, r_max)`, rounded to a multiple of
/// `k` (GraLoRA; the bounds are rounded the same way, and every rank is at least k).
pub fn allocate(layers: &[(usize, usize, f64)], config: &GoraConfig, k: usize) -> Vec<usize> {
    let f = |l: &(usize, usize, f64)| config.feature.apply((l.0 + l.1) as f64);
    let budget: f64 = layers.iter().map(|l| f(l) * config.r_ref as f64).sum();
    let total: f64 = layers.iter().map(|l| l.2.max(0.0)).sum();
    let k = k.max(1);
    let to_k = |r: f64| ((r / k as f64).round() as usize).max(1) * k;
    let (lo, hi) = (to_k(config.r_min as f64), (config.r_max / k).max(1) * k);
    layers
        .iter()
        .map(|l| {
            let share = if total > 0.0 {
                l.2.max(0.0) / total
            } else {
                1.0 / layers.len() as f64
            };
            let r = (budget * share / f(l)).round();
            to_k(r).clamp(lo, hi.max(lo))
        })
        .collect()
}

/// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))` (PyTorch's Kaiming-uniform with a = sqrt(5)).
fn kaiming(n: usize, fan_in: usize, rng: &mut impl Rng) -> Vec<f64> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

/// Solve `M X = R` for symmetric positive definite `M` (`r × r`) and `R` (`r × c`), in place.
fn cholesky_solve(m: &mut [f64], r: usize, rhs: &mut [f64], c: usize) -> Result<(), AdapterError> {
    for j in 0..r {
        let mut d = m[j * r + j];
        for p in 0..j {
            d -= m[j * r + p] * m[j * r + p];
        }
        if d <= 0.0 {
            return Err(AdapterError::State(
                "GoRA: AᵀA is not positive definite (rank larger than the layer's input?)".into(),
            ));
        }
        let d = d.sqrt();
        m[j * r + j] = d;
        for i in j + 1..r {
            let mut s = m[i * r + j];
            for p in 0..j {
                s -= m[i * r + p] * m[j * r + p];
            }
            m[i * r + j] = s / d;
        }
    }
    for col in 0..c {
        // L y = b, then Lᵀ x = y.
        for i in 0..r {
            let mut s = rhs[i * c + col];
            for p in 0..i {
                s -= m[i * r + p] * rhs[p * c + col];
            }
            rhs[i * c + col] = s / m[i * r + i];
        }
        for i in (0..r).rev() {
            let mut s = rhs[i * c + col];
            for p in i + 1..r {
                s -= m[p * r + i] * rhs[p * c + col];
            }
            rhs[i * c + col] = s / m[i * r + i];
        }
    }
    Ok(())
}

/// `B = ξ · (−(AᵀA)⁻¹ Aᵀ G)` for `A: [n, r]`, `G: [n, c]` (row-major, f64).
fn least_squares_step(
    a: &[f64],
    n: usize,
    r: usize,
    g: &[f64],
    c: usize,
    xi: f64,
) -> Result<Vec<f64>, AdapterError> {
    let mut ata = vec![0f64; r * r];
    let mut atg = vec![0f64; r * c];
    for row in 0..n {
        let ar = &a[row * r..(row + 1) * r];
        let gr = &g[row * c..(row + 1) * c];
        for i in 0..r {
            let ai = ar[i];
            for j in 0..r {
                ata[i * r + j] += ai * ar[j];
            }
            let out = &mut atg[i * c..(i + 1) * c];
            for (o, &gv) in out.iter_mut().zip(gr) {
                *o += ai * gv;
            }
        }
    }
    cholesky_solve(&mut ata, r, &mut atg, c)?;
    Ok(atg.into_iter().map(|v| -xi * v).collect())
}

/// A GoRA-initialised LoRA pair: `(A [in, r], B [r, out], scale)`, row-major f32.
pub fn init_lora(
    g: &[f32],
    d_in: usize,
    d_out: usize,
    r: usize,
    config: &GoraConfig,
    rng: &mut impl Rng,
) -> Result<(Vec<f32>, Vec<f32>, f64), AdapterError> {
    let a = kaiming(d_in * r, d_in, rng);
    let g64: Vec<f64> = g.iter().map(|&v| f64::from(v)).collect();
    let xi = config.gamma * (d_in as f64).sqrt() / config.alpha;
    let b = least_squares_step(&a, d_in, r, &g64, d_out, xi)?;
    Ok((
        a.into_iter().map(|v| v as f32).collect(),
        b.into_iter().map(|v| v as f32).collect(),
        config.alpha / (r as f64).sqrt(),
    ))
}

/// GoRA-initialised GraLoRA blocks in PEFT's layout: `(A [k, in/k, r], B [k, r, out/k], scale)`.
/// Sub-adapter (n, j) gets the least-squares step on its own block `G[n-block, j-block]`, with
/// the layer's `ξ = γ · sqrt(in) / alpha` and scale `alpha / sqrt(r)`, so every block of `ΔW` is
/// `−γ · sqrt(in / r) · P_{A_nj} G_nj`.
pub fn init_gralora(
    g: &[f32],
    d_in: usize,
    d_out: usize,
    r: usize,
    k: usize,
    config: &GoraConfig,
    rng: &mut impl Rng,
) -> Result<(Vec<f32>, Vec<f32>, f64), AdapterError> {
    if k == 0 || !d_in.is_multiple_of(k) || !d_out.is_multiple_of(k) || !r.is_multiple_of(k) {
        return Err(AdapterError::State(format!(
            "GoRA-GraLoRA: k = {k} must divide in {d_in}, out {d_out} and r {r}"
        )));
    }
    let (ib, ob, rb) = (d_in / k, d_out / k, r / k);
    let xi = config.gamma * (d_in as f64).sqrt() / config.alpha;
    let mut a = vec![0f32; k * ib * r];
    let mut b = vec![0f32; k * r * ob];
    for n in 0..k {
        for j in 0..k {
            let anj = kaiming(ib * rb, ib, rng);
            let mut gnj = vec![0f64; ib * ob];
            for i in 0..ib {
                for o in 0..ob {
                    gnj[i * ob + o] = f64::from(g[(n * ib + i) * d_out + j * ob + o]);
                }
            }
            let bnj = least_squares_step(&anj, ib, rb, &gnj, ob, xi)?;
            // A[n][:, j·rb..] and B[j][n·rb.., :].
            for i in 0..ib {
                for t in 0..rb {
                    a[(n * ib + i) * r + j * rb + t] = anj[i * rb + t] as f32;
                }
            }
            for t in 0..rb {
                for o in 0..ob {
                    b[(j * r + n * rb + t) * ob + o] = bnj[t * ob + o] as f32;
                }
            }
        }
    }
    Ok((a, b, config.alpha / (r as f64).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(3)
    }

    #[test]
    fn ranks_respect_the_bounds_and_the_identity_budget() {
        let config = GoraConfig {
            feature: Feature::Identity,
            r_min: 2,
            r_max: 64,
            ..GoraConfig::default()
        };
        let layers = vec![
            (384, 384, 1.0),
            (384, 1536, 2.0),
            (1536, 384, 4.0),
            (384, 384, 1.5),
        ];
        let ranks = allocate(&layers, &config, 1);
        assert!(ranks.iter().all(|&r| (2..=64).contains(&r)), "{ranks:?}");
        let params: usize = layers
            .iter()
            .zip(&ranks)
            .map(|(l, r)| (l.0 + l.1) * r)
            .sum();
        let budget: usize = layers.iter().map(|l| (l.0 + l.1) * 8).sum();
        let rounding: usize = layers.iter().map(|l| (l.0 + l.1) / 2 + 1).sum();
        assert!(params.abs_diff(budget) <= rounding, "{params} vs {budget}");
        // More important layers get more rank per parameter.
        assert!(ranks[2] > ranks[0]);
        // Clipping: a dominant layer is capped at r_max, the others at least r_min.
        let skewed = allocate(&[(384, 384, 1e6), (384, 384, 1e-6)], &config, 1);
        assert_eq!(skewed, vec![16, 2]);
        // GraLoRA: multiples of k.
        let k4 = allocate(
            &layers,
            &GoraConfig {
                r_min: 4,
                ..config.clone()
            },
            4,
        );
        assert!(k4.iter().all(|r| r % 4 == 0 && *r >= 4), "{k4:?}");
    }

    /// `ΔW = s·A·B` must equal `−γ·sqrt(in/r)·P_A G`: its columns lie in span(A), and
    /// `Aᵀ(G + ΔW/c) = 0` (the residual is orthogonal to A), c = γ·sqrt(in/r).
    #[test]
    fn lora_init_is_a_projected_gradient_step() {
        let (d_in, d_out, r) = (24, 10, 4);
        let mut g_rng = rand::rngs::StdRng::seed_from_u64(9);
        let g: Vec<f32> = (0..d_in * d_out)
            .map(|_| g_rng.random_range(-1.0..1.0))
            .collect();
        let config = GoraConfig::default();
        let (a, b, s) = init_lora(&g, d_in, d_out, r, &config, &mut rng()).unwrap();
        assert!((s - 16.0 / 2.0).abs() < 1e-12);
        let c = config.gamma * (d_in as f64 / r as f64).sqrt();
        let mut dw = vec![0f64; d_in * d_out];
        for i in 0..d_in {
            for o in 0..d_out {
                dw[i * d_out + o] = s
                    * (0..r)
                        .map(|t| f64::from(a[i * r + t]) * f64::from(b[t * d_out + o]))
                        .sum::<f64>();
            }
        }
        let mut worst: f64 = 0.0;
        for t in 0..r {
            for o in 0..d_out {
                let v: f64 = (0..d_in)
                    .map(|i| {
                        f64::from(a[i * r + t])
                            * (f64::from(g[i * d_out + o]) + dw[i * d_out + o] / c)
                    })
                    .sum();
                worst = worst.max(v.abs());
            }
        }
        assert!(worst < 1e-4, "Aᵀ(G + ΔW/c) = {worst}");
        // And the step is not zero: it removes part of G.
        let norm: f64 = dw.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!(norm > 1e-3 * c);
    }

    #[test]
    fn gralora_init_steps_every_block_on_its_own_gradient_block() {
        let (d_in, d_out, r, k) = (16, 8, 4, 2);
        let mut g_rng = rand::rngs::StdRng::seed_from_u64(5);
        let g: Vec<f32> = (0..d_in * d_out)
            .map(|_| g_rng.random_range(-1.0..1.0))
            .collect();
        let config = GoraConfig::default();
        let (a, b, s) = init_gralora(&g, d_in, d_out, r, k, &config, &mut rng()).unwrap();
        let (ib, ob, rb) = (d_in / k, d_out / k, r / k);
        let c = config.gamma * (d_in as f64 / r as f64).sqrt();
        for n in 0..k {
            for j in 0..k {
                let a_nj = |i: usize, t: usize| f64::from(a[(n * ib + i) * r + j * rb + t]);
                let b_nj = |t: usize, o: usize| f64::from(b[(j * r + n * rb + t) * ob + o]);
                for t in 0..rb {
                    for o in 0..ob {
                        let v: f64 = (0..ib)
                            .map(|i| {
                                let dw = s * (0..rb).map(|u| a_nj(i, u) * b_nj(u, o)).sum::<f64>();
                                a_nj(i, t)
                                    * (f64::from(g[(n * ib + i) * d_out + j * ob + o]) + dw / c)
                            })
                            .sum();
                        assert!(v.abs() < 1e-4, "block ({n}, {j}): {v}");
                    }
                }
            }
        }
        assert!(init_gralora(&g, d_in, d_out, 3, 2, &config, &mut rng()).is_err());
    }

    #[test]
    fn importance_measures() {
        let w = [1.0f32, -2.0, 3.0, 0.5];
        let g = [0.5f32, 0.5, -1.0, 2.0];
        assert!(
            (importance(&w, &g, Importance::MeanAbs) - (0.5 + 1.0 + 3.0 + 1.0) / 4.0).abs() < 1e-12
        );
        assert!(
            (importance(&w, &g, Importance::Frobenius) - (0.25f64 + 1.0 + 9.0 + 1.0).sqrt()).abs()
                < 1e-12
        );
    }
}
