//! Helpers shared by the integration tests: the devices to run on, host-side data, and an
//! independent f64 reference of docs/METHODS.md written with plain loops.
#![allow(dead_code)]

use burn::tensor::{DType, Device, DeviceKind, FloatDType, Tensor, TensorData, f16};
use gralora::GraLoraAdapter;
use gralora::ops::{Axis, BlockMatmul, Operand, gralora_blocks};

/// Flex always; wgpu when an adapter exists. Without one the wgpu half is reported as skipped,
/// unless `GRALORA_REQUIRE_WGPU=1`, where a missing adapter fails the test.
pub fn devices() -> Vec<(&'static str, Device)> {
    let mut out = vec![("flex", Device::flex())];
    if gralora::device::wgpu_adapters().is_empty() {
        if std::env::var("GRALORA_REQUIRE_WGPU").as_deref() == Ok("1") {
            panic!(
                "GRALORA_REQUIRE_WGPU=1 but no wgpu adapter was found (install mesa-vulkan-drivers libvulkan1)"
            );
        }
        eprintln!("wgpu: skipped (no adapter on this machine)");
    } else {
        out.push(("wgpu", Device::wgpu(DeviceKind::DefaultDevice)));
    }
    out
}

/// The devices of [`devices`] other than Flex: the wgpu adapter when there is one.
pub fn wgpu_devices() -> Vec<(&'static str, Device)> {
    devices()
        .into_iter()
        .filter(|(n, _)| *n != "flex")
        .collect()
}

/// Deterministic pseudo-random numbers in [-1, 1) (splitmix64), so tests need no RNG crate state.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next_f64() as f32).collect()
    }
}

pub fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// ΔW `[in, out]` (row-major) of GraLoRA from the block formula of METHODS.md §2:
/// `ΔW[n·ib + p, j·ob + q] = s · Σ_t A[n][p][j·rb + t] · B[j][n·rb + t][q]`.
pub fn gralora_delta_ref(
    a: &[f32],
    b: &[f32],
    k: usize,
    d_in: usize,
    d_out: usize,
    r: usize,
    s: f64,
) -> Vec<f64> {
    let (ib, ob, rb) = (d_in / k, d_out / k, r / k);
    let mut dw = vec![0.0f64; d_in * d_out];
    for n in 0..k {
        for j in 0..k {
            for p in 0..ib {
                for q in 0..ob {
                    let mut acc = 0.0f64;
                    for t in 0..rb {
                        let av = a[(n * ib + p) * r + j * rb + t] as f64;
                        let bv = b[(j * r + n * rb + t) * ob + q] as f64;
                        acc += av * bv;
                    }
                    dw[(n * ib + p) * d_out + j * ob + q] = s * acc;
                }
            }
        }
    }
    dw
}

/// `s · A B` for LoRA `A: [in, r]`, `B: [r, out]`.
pub fn lora_delta_ref(
    a: &[f32],
    b: &[f32],
    d_in: usize,
    d_out: usize,
    r: usize,
    s: f64,
) -> Vec<f64> {
    let mut dw = vec![0.0f64; d_in * d_out];
    for i in 0..d_in {
        for o in 0..d_out {
            let acc: f64 = (0..r)
                .map(|t| a[i * r + t] as f64 * b[t * d_out + o] as f64)
                .sum();
            dw[i * d_out + o] = s * acc;
        }
    }
    dw
}

/// `x (W + ΔW) + bias`, `x: [T, in]`.
pub fn dense_forward_ref(
    x: &[f32],
    w: &[f32],
    dw: &[f64],
    bias: Option<&[f32]>,
    t: usize,
    d_in: usize,
    d_out: usize,
) -> Vec<f64> {
    let mut y = vec![0.0f64; t * d_out];
    for row in 0..t {
        for o in 0..d_out {
            let mut acc = bias.map_or(0.0, |b| b[o] as f64);
            for i in 0..d_in {
                acc += x[row * d_in + i] as f64 * (w[i * d_out + o] as f64 + dw[i * d_out + o]);
            }
            y[row * d_out + o] = acc;
        }
    }
    y
}

/// Largest `|got - want| / max(1, |want|)`.
pub fn max_rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs() / w.abs().max(1.0))
        .fold(0.0, f64::max)
}

/// `max |got - want| / max |want|`.
pub fn rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().map(|v| v.abs() as f64).fold(1e-12, f64::max);
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - *w as f64).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Forward and the three gradients of the block branch on `device` with the op, and on Flex with
/// burn's ops (autodiff of the composite), for `L = Σ y ⊙ c`.
pub fn branch_and_grads(
    t: usize,
    d: usize,
    r: usize,
    k: usize,
    device: &Device,
    composite: bool,
) -> [Vec<f32>; 4] {
    let mut rng = Rng::new((t * 31 + d * 7 + r * 3 + k) as u64);
    let (ib, ob) = (d / k, d / k);
    let x = rng.vec(t * d);
    let a = rng.vec(k * ib * r);
    let b = rng.vec(k * r * ob);
    let c = rng.vec(t * d);
    let ad = device.clone().autodiff();
    let xt: Tensor<2> = tensor(&x, [t, d], &ad).require_grad();
    let at: Tensor<3> = tensor(&a, [k, ib, r], &ad).require_grad();
    let bt: Tensor<3> = tensor(&b, [k, r, ob], &ad).require_grad();
    let y = if composite {
        GraLoraAdapter::blocks_composite(xt.clone(), at.clone(), bt.clone()).mul_scalar(0.75)
    } else {
        gralora_blocks(xt.clone(), at.clone(), bt.clone(), 0.75)
    };
    let grads = (y.clone() * tensor(&c, [t, d], &ad)).sum().backward();
    [
        host(y),
        host(xt.grad(&grads).unwrap()),
        host(at.grad(&grads).unwrap()),
        host(bt.grad(&grads).unwrap()),
    ]
}

/// The block branch's output and its three gradients on `device` (through the op) equal Flex
/// autodiff of the burn-ops composite within 1e-4 relative.
pub fn assert_branch_matches_composite(
    name: &str,
    device: &Device,
    (t, d, r, k): (usize, usize, usize, usize),
) {
    let want = branch_and_grads(t, d, r, k, &Device::flex(), true);
    let got = branch_and_grads(t, d, r, k, device, false);
    for (what, (g, w)) in ["y", "dL/dx", "dL/dA", "dL/dB"]
        .iter()
        .zip(got.iter().zip(&want))
    {
        let e = rel(g, w);
        assert!(
            e < 1e-4,
            "{name} T={t} d={d} r={r} k={k}: {what} rel err {e:.2e}"
        );
    }
}

/// For the test binaries that force one kernel form through process-wide variables: the op
/// against its definition on every map kind and the block branch's forward and gradients against
/// the composite at `shapes`, on the wgpu device (labelled `form`). Returns whether a wgpu device
/// ran them (none: the machine has no adapter and wgpu tests are skipped).
pub fn assert_kernel_form(form: &str, shapes: &[(usize, usize, usize, usize)]) -> bool {
    let devices = wgpu_devices();
    for (name, device) in &devices {
        for (i, spec) in map_kind_specs().iter().enumerate() {
            assert_block_matmul_matches_definition(
                &format!("{name} ({form}) spec {i}"),
                device,
                spec,
            );
        }
        for &shape in shapes {
            assert_branch_matches_composite(&format!("{name} ({form})"), device, shape);
        }
    }
    !devices.is_empty()
}

/// A scratch directory under the system temp dir, removed with everything in it when dropped
/// (training runs write checkpoints of hundreds of MiB; nothing may pile up in /tmp).
/// Derefs to its path.
pub struct Scratch(tempfile::TempDir);

impl Scratch {
    /// A fresh empty directory named `gralora-{name}-…`.
    pub fn new(name: &str) -> Self {
        Self(
            tempfile::Builder::new()
                .prefix(&format!("gralora-{name}-"))
                .tempdir()
                .expect("create a scratch directory"),
        )
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.path().as_os_str()
    }
}

/// Block matmuls over every kind of operand map: contiguous; GraLoRA's regrouped read (split lhs
/// columns), a transposed read and a strided write; that product's lhs gradient (the regrouped
/// write: split output columns); two-level batch indices on every operand (attention's
/// (sequence, head) pairs). Every operand is 3-D, the output 3-D or 2-D.
pub fn map_kind_specs() -> Vec<BlockMatmul> {
    let (g, m, n, k) = (3, 10, 7, 12);
    let mut specs = vec![
        BlockMatmul {
            alpha: 0.5,
            ..BlockMatmul::batched(g, m, n, k)
        },
        BlockMatmul {
            g,
            m,
            n,
            k,
            alpha: 2.0,
            // lhs column c = (c / 4, c % 4) over a [3 blocks][m][g·4] buffer
            lhs: Operand {
                batch: Axis::plain(4),
                row: Axis::plain(g * 4),
                col: Axis::split(4, m * g * 4, 1),
            },
            rhs: Operand::contiguous(k, n).transposed(),
            out: Operand {
                batch: Axis::plain(n),
                row: Axis::plain(g * n),
                col: Axis::plain(1),
            },
            out_shape: vec![m, g * n],
            lhs_shape: vec![3, m, g * 4],
            rhs_shape: vec![g, k, n],
        },
        // Two-level batches (attention's (sequence, head) pairs): g = s·3 + h over 2 sequences
        // of 3 heads; lhs head h of sequence s is [m, 4] at columns 4h.. of a [2, m, 12] buffer,
        // rhs read transposed the same way from [2, n, 12], out written into [2, m, 3·n].
        BlockMatmul {
            g: 6,
            m,
            n,
            k: 4,
            alpha: 1.5,
            lhs: Operand {
                batch: Axis::split(3, m * 12, 4),
                row: Axis::plain(12),
                col: Axis::plain(1),
            },
            rhs: Operand {
                batch: Axis::split(3, n * 12, 4),
                row: Axis::plain(1),
                col: Axis::plain(12),
            },
            out: Operand {
                batch: Axis::split(3, m * 3 * n, n),
                row: Axis::plain(3 * n),
                col: Axis::plain(1),
            },
            out_shape: vec![2, m, 3 * n],
            lhs_shape: vec![2, m, 12],
            rhs_shape: vec![2, n, 12],
        },
    ];
    // The regrouped read's lhs gradient: its output columns split in runs of 4. As a 3-D
    // product: its lhs (the read's output) viewed as [1, m, g·n].
    let mut write = specs[1].grad_lhs();
    write.lhs_shape = vec![1, m, g * n];
    specs.push(write);
    specs
}

/// `spec` on `device` against its f64 definition ([`BlockMatmul::reference`]), alone and added to
/// an accumulator.
pub fn assert_block_matmul_matches_definition(what: &str, device: &Device, spec: &BlockMatmul) {
    assert_block_matmul_matches_definition_in(what, device, spec, FloatDType::F32);
}

/// [`assert_block_matmul_matches_definition`] with the operands (and accumulator) in `dtype`.
/// In f16 the reference takes the operands as rounded to f16, and the result may differ from it
/// by the result's rounding to f16 (within 1e-3 of the largest value; lavapipe's worst over
/// every tuner candidate is 3.5e-4).
pub fn assert_block_matmul_matches_definition_in(
    what: &str,
    device: &Device,
    spec: &BlockMatmul,
    dtype: FloatDType,
) {
    let mut rng = Rng::new(spec.g as u64 + 7 * spec.k as u64);
    // Rounded on the host (the `half` crate, through burn), not by the device under test.
    let round = |v: Vec<f32>| -> Vec<f32> {
        match dtype {
            FloatDType::F32 => v,
            FloatDType::F16 => v.into_iter().map(|x| f16::from_f32(x).to_f32()).collect(),
            other => panic!("no host rounding for {other:?}; add it here"),
        }
    };
    let lhs = round(rng.vec(spec.lhs_shape.iter().product()));
    let rhs = round(rng.vec(spec.rhs_shape.iter().product()));
    let want = spec.reference(&lhs, &rhs);
    let acc = round(rng.vec(want.len()));
    let want_acc: Vec<f32> = acc.iter().zip(&want).map(|(a, w)| a + w).collect();
    let run = |acc: Option<&[f32]>| match spec.out_shape.len() {
        3 => block_product::<3>(device, spec, &lhs, &rhs, acc, dtype),
        _ => block_product::<2>(device, spec, &lhs, &rhs, acc, dtype),
    };
    let tol = if dtype == FloatDType::F32 { 1e-5 } else { 1e-3 };
    let e = rel(&run(None), &want);
    assert!(e < tol, "{what}: rel err {e}");
    let e = rel(&run(Some(&acc)), &want_acc);
    assert!(e < tol, "{what} with an accumulator: rel err {e}");
}

/// `spec` (3-D operands, a `DO`-dimensional output) on `device` in `dtype`, added to `acc` when
/// given; the result read back as f32.
fn block_product<const DO: usize>(
    device: &Device,
    spec: &BlockMatmul,
    lhs: &[f32],
    rhs: &[f32],
    acc: Option<&[f32]>,
    dtype: FloatDType,
) -> Vec<f32> {
    let dims3 = |s: &[usize]| [s[0], s[1], s[2]];
    let l: Tensor<3> = tensor(lhs, dims3(&spec.lhs_shape), device).cast(dtype);
    let r: Tensor<3> = tensor(rhs, dims3(&spec.rhs_shape), device).cast(dtype);
    let out = match acc {
        None => gralora::ops::block_matmul::<3, 3, DO>(l, r, spec.clone()),
        Some(acc) => {
            let out: [usize; DO] = spec.out_shape.clone().try_into().expect("output rank");
            let acc = tensor(acc, out, device).cast(dtype);
            gralora::ops::block_matmul_acc::<3, 3, DO>(acc, l, r, spec.clone())
        }
    };
    assert_eq!(
        out.dtype(),
        DType::from(dtype),
        "the op keeps its operands' dtype"
    );
    host(out.cast(FloatDType::F32))
}
