//! GraLoRA (docs/METHODS.md §2): the update split into a `k × k` grid of rank-`r/k` adapters.
//!
//! Sub-adapter (input block n, output block j) is `A_nj = A[n][:, j·rb..(j+1)·rb]`,
//! `B_nj = B[j][n·rb..(n+1)·rb, :]`, and `ΔW[n-block, j-block] = s · A_nj B_nj`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use crate::config::{GraLoraConfig, Init};
use crate::error::AdapterError;
use crate::init::{kaiming_uniform, param};
use crate::methods::lora::LoraAdapter;

/// The block adapters of one layer, stored exactly as PEFT stores them.
#[derive(Module, Debug)]
pub struct GraLoraAdapter {
    /// `[k, in/k, r]`: input block n owns `A[n]`, its k sub-adapters side by side along r.
    pub a: Param<Tensor<3>>,
    /// `[k, r, out/k]`: output block j owns `B[j]`, its k sub-adapters stacked along r.
    pub b: Param<Tensor<3>>,
    /// Hybrid GraLoRA's plain LoRA pair (rank `hybrid_r`, same scale), if any.
    pub general: Option<LoraAdapter>,
    /// The scale `s = alpha / (r + hybrid_r)`.
    pub scale: f64,
}

impl GraLoraAdapter {
    /// The parameters LoRA+ trains at its higher learning rate: B, and the hybrid pair's B.
    pub fn b_param_ids(&self) -> Vec<burn::module::ParamId> {
        let mut ids = vec![self.b.id];
        ids.extend(self.general.iter().flat_map(LoraAdapter::b_param_ids));
        ids
    }

    /// Block adapters for a `[d_in, d_out]` layer with PEFT's initialisation.
    /// The configuration must have been validated against these dimensions.
    pub fn init(config: &GraLoraConfig, d_in: usize, d_out: usize, device: &Device) -> Self {
        let k = config.k;
        let (ib, ob, r) = (d_in / k, d_out / k, config.r);
        let scale = config.scale();
        // PEFT draws each A[n] as a [r, ib] nn.Linear-shaped weight: fan_in = ib.
        let a = param(device, || kaiming_uniform([k, ib, r], ib, device));
        let b = match config.init {
            // PyTorch's B[j] is [ob, r]: fan_in = r.
            Init::Random => param(device, || kaiming_uniform([k, r, ob], r, device)),
            Init::Kaiming | Init::Gaussian => param(device, || Tensor::zeros([k, r, ob], device)),
        };
        let general = (config.hybrid_r > 0).then(|| {
            LoraAdapter::init_raw(d_in, d_out, config.hybrid_r, scale, config.init, device)
        });
        Self {
            a,
            b,
            general,
            scale,
        }
    }

    /// Block adapters from explicit factors (`a: [k, in/k, r]`, `b: [k, r, out/k]`).
    pub fn from_tensors(
        a: Tensor<3>,
        b: Tensor<3>,
        general: Option<LoraAdapter>,
        scale: f64,
    ) -> Self {
        Self {
            a: Param::from_tensor(a),
            b: Param::from_tensor(b),
            general,
            scale,
        }
    }

    /// `(k, in/k, r, out/k)`.
    pub fn dims(&self) -> (usize, usize, usize, usize) {
        let [k, ib, r] = self.a.shape().dims::<3>();
        let ob = self.b.shape().dims::<3>()[2];
        (k, ib, r, ob)
    }

    /// The block branch without scale or hybrid part, by burn's own ops (METHODS.md §2 steps
    /// 1–5, regroup copy included). The forward uses the block-matmul op instead; this is the
    /// composite it is measured and checked against.
    ///
    /// # Shapes
    /// - x: `[T, in]`
    /// - output: `[T, out]`
    pub fn blocks_composite(x: Tensor<2>, a: Tensor<3>, b: Tensor<3>) -> Tensor<2> {
        let [k, ib, r] = a.dims();
        let ob = b.dims()[2];
        let t = x.dims()[0];
        let rb = r / k;
        let xb = x.reshape([t, k, ib]).swap_dims(0, 1); // [k(n), T, ib]
        let h = xb.matmul(a); // [k(n), T, r]
        let h = h
            .reshape([k, t, k, rb])
            .permute([2, 1, 0, 3])
            .reshape([k, t, r]); // [k(j), T, r]
        let yb = h.matmul(b); // [k(j), T, ob]
        yb.swap_dims(0, 1).reshape([t, k * ob])
    }

    /// The branch output `s · blocks(x) (+ s · (x A_g) B_g)`.
    ///
    /// # Shapes
    /// - x: `[T, in]`
    /// - output: `[T, out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let y = crate::ops::gralora_blocks(x.clone(), self.a.val(), self.b.val(), self.scale);
        match &self.general {
            Some(g) => y + g.forward(x),
            None => y,
        }
    }

    /// `acc + s · blocks(x) (+ s · (x A_g) B_g)`, added into `acc` (`[T, out]`).
    pub fn forward_acc(&self, acc: Tensor<2>, x: Tensor<2>) -> Tensor<2> {
        match &self.general {
            Some(g) => {
                let y = crate::ops::gralora_blocks_acc(
                    acc,
                    x.clone(),
                    self.a.val(),
                    self.b.val(),
                    self.scale,
                );
                g.forward_acc(y, x)
            }
            None => crate::ops::gralora_blocks_acc(acc, x, self.a.val(), self.b.val(), self.scale),
        }
    }

    /// `ΔW`, `[in, out]`, from the block formula: for every (n, j), `Z = A_nj B_nj` placed at block
    /// (n, j). One batched matmul of k² products, `in · out · r / k` MACs.
    pub fn delta_weight(&self) -> Tensor<2> {
        let (k, ib, r, ob) = self.dims();
        let rb = r / k;
        // A[n][:, j-block] for all (n, j) → [k(n), k(j), ib, rb]
        let a = self
            .a
            .val()
            .reshape([k, ib, k, rb])
            .permute([0, 2, 1, 3])
            .reshape([k * k, ib, rb]);
        // B[j][n-block, :] for all (n, j) → [k(n), k(j), rb, ob]
        let b = self
            .b
            .val()
            .reshape([k, k, rb, ob])
            .swap_dims(0, 1)
            .reshape([k * k, rb, ob]);
        let z = a.matmul(b); // [(n, j), ib, ob]
        let delta = z
            .reshape([k, k, ib, ob])
            .swap_dims(1, 2) // [n, ib, j, ob]
            .reshape([k * ib, k * ob])
            .mul_scalar(self.scale);
        match &self.general {
            Some(g) => delta + g.delta_weight(),
            None => delta,
        }
    }

    /// The same update as one plain LoRA pair of rank `k·r + hybrid_r` (docs/METHODS.md §2,
    /// "As a plain LoRA"): `A' [in, k·r + hr]` holds each `A[n]` block-diagonally (rows of input
    /// block n, columns `n·r .. (n+1)·r`), then `A_g`; `B' [k·r + hr, out]` holds `B_nj` at rows
    /// `n·r + j·rb ..` and the columns of output block j, then `B_g`. Only the sub-adapter (n, j)
    /// meets block (n, j) of `A' B'`, so `s · A' B'` is `ΔW`: the factors are copied, not
    /// multiplied, and the pair is exact (a hybrid pair with its own scale is folded into `B_g`).
    /// Reads the factors to the host and builds the pair on the adapter's device.
    pub fn to_lora(&self) -> Result<LoraAdapter, AdapterError> {
        let (k, ib, r, ob) = self.dims();
        let rb = r / k;
        let (d_in, d_out) = (k * ib, k * ob);
        let hr = self.general.as_ref().map_or(0, LoraAdapter::rank);
        let rank = k * r + hr;
        let a = crate::io::read_f32(self.a.val())?; // [k, ib, r]
        let b = crate::io::read_f32(self.b.val())?; // [k, r, ob]
        let mut a2 = vec![0f32; d_in * rank];
        for n in 0..k {
            for i in 0..ib {
                let row = (n * ib + i) * rank + n * r;
                a2[row..row + r].copy_from_slice(&a[(n * ib + i) * r..(n * ib + i + 1) * r]);
            }
        }
        let mut b2 = vec![0f32; rank * d_out];
        for j in 0..k {
            for n in 0..k {
                for t in 0..rb {
                    let dst = (n * r + j * rb + t) * d_out + j * ob;
                    let src = (j * r + n * rb + t) * ob;
                    b2[dst..dst + ob].copy_from_slice(&b[src..src + ob]);
                }
            }
        }
        if let Some(g) = &self.general {
            let ga = crate::io::read_f32(g.a.val())?; // [in, hr]
            let gb = crate::io::read_f32(g.b.val())?; // [hr, out]
            for i in 0..d_in {
                a2[i * rank + k * r..(i + 1) * rank].copy_from_slice(&ga[i * hr..(i + 1) * hr]);
            }
            let fold = (g.scale / self.scale) as f32;
            for (dst, src) in b2[k * r * d_out..].iter_mut().zip(&gb) {
                *dst = if fold == 1.0 { *src } else { src * fold };
            }
        }
        let device = self.a.val().device();
        Ok(LoraAdapter::from_tensors(
            Tensor::from_data(TensorData::new(a2, [d_in, rank]), &device),
            Tensor::from_data(TensorData::new(b2, [rank, d_out]), &device),
            self.scale,
        ))
    }
}
