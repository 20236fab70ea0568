//! Forward + backward of one adapted layer, four ways, timed in one run:
//! LoRA (gralora's `LoraAdapter`: burn's matmuls on wgpu, the crate's gemm op on Flex), GraLoRA composite (burn ops, regroup copy), GraLoRA through the
//! block-matmul op (WGSL kernel on wgpu, strided gemm on Flex), and burn 0.22's built-in LoRA
//! (dense `W + s·A B` rebuilt every step).
//!
//! `cargo run --release --example bench_layer -- --device wgpu|flex [--json] [--iters N] [--warmup W] [--chain C] [--max-dim D]`
//!
//! An iteration (a step) is the forward, `backward()`, and one scalar that depends on every gradient
//! (so lazy backends run it all). Each method first runs `--warmup` untimed steps; then `--iters`
//! rounds time the four methods in turn (round i starts at method i mod 4), so a slow spell of the
//! machine or a kernel still being tuned hits all alike. A sample is `--chain` steps queued back to
//! back with one read of their summed scalars at the end, divided by `--chain`: with 1, every step
//! pays a full device round trip (on a fast GPU that round trip, not the layer, sets the time);
//! with more, the read is spread over the steps, as in a training loop, which reads nothing back
//! between steps. Each time reported is the median sample.

use std::time::Instant;

use burn::module::{Lora, Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Parser;
use gralora::ops::gralora_blocks;
use gralora::{GraLoraAdapter, LoraAdapter};

#[derive(Parser)]
#[command(
    about = "Time one adapted layer's forward+backward: LoRA, GraLoRA composite, GraLoRA fused, burn's dense LoRA"
)]
struct Args {
    /// `wgpu` (best adapter, software ones included) or `flex` (CPU).
    #[arg(long, default_value = "flex")]
    device: String,
    /// One JSON object per shape instead of the table.
    #[arg(long)]
    json: bool,
    /// Timed samples per method (median reported), taken round-robin across the methods.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    iters: u64,
    /// Steps per timed sample, queued back to back and read back once at the end (the time is
    /// per step). 1: every step ends in a device round trip.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    chain: u64,
    /// Untimed steps of each method first. On a GPU give several: a new shape's kernels are
    /// compiled and tuned over its first calls (on an H200, one warm-up left LoRA's time varying
    /// 3× by order).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Tokens per batch.
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Skip shapes wider than this (the full grid goes to 4096).
    #[arg(long, default_value_t = 4096)]
    max_dim: usize,
    /// Ranks to time (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "16,32,128")]
    ranks: Vec<usize>,
    /// Block counts to time (comma separated).
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    ks: Vec<usize>,
    /// Run the op's block matmuls with the tuner's candidate N instead of the tuned plan (0 to
    /// `gralora::kernels::KernelPolicy::CANDIDATES` - 1; the last is the two-pass form). Applies where the
    /// tiled kernel runs: a GPU, or a software device with GRALORA_WGSL_TILED=1.
    #[arg(long)]
    candidate: Option<usize>,
}

/// One method's step: runs the forward and backward and returns a one-element tensor that
/// depends on every gradient, without reading it.
type Step<'a> = Box<dyn FnMut() -> Tensor<1> + 'a>;

/// Per-step milliseconds of each method: `warmup` untimed steps of each, then `iters` rounds in
/// which each method takes one sample of `chain` steps (read back once), the first method of
/// round i being method i mod n. The median sample of each method.
fn time_round_robin(
    device: &Device,
    methods: &mut [Step<'_>],
    warmup: u64,
    iters: u64,
    chain: u64,
) -> Vec<f64> {
    for step in methods.iter_mut() {
        for _ in 0..warmup {
            std::hint::black_box(step().into_scalar::<f32>());
        }
    }
    device.sync().expect("device sync");
    let n = methods.len();
    let mut times = vec![Vec::new(); n];
    for round in 0..iters as usize {
        for j in 0..n {
            let m = (round + j) % n;
            let step = &mut methods[m];
            let start = Instant::now();
            let mut sum = step();
            for _ in 1..chain {
                sum = sum + step();
            }
            std::hint::black_box(sum.into_scalar::<f32>());
            device.sync().expect("device sync");
            times[m].push(start.elapsed().as_secs_f64() * 1e3 / chain as f64);
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[t.len() / 2]
        })
        .collect()
}

/// Sum of one element of every gradient: depends on them all, read by nobody yet.
fn touch(grads: [Tensor<1>; 3]) -> Tensor<1> {
    let [a, b, c] = grads;
    a + b + c
}

fn first<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    t.flatten::<1>(0, D - 1).narrow(0, 0, 1)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The CPU products use OpenBLAS when GRALORA_BLAS names the library (as `gralora` does).
    if let Some(path) = std::env::var_os("GRALORA_BLAS").filter(|v| v != "off") {
        let blas = gralora::blas::CpuBlas::open(&path)?;
        eprintln!("CPU GEMM: {}", blas.describe());
        gralora::blas::set(Some(blas));
    }
    // The kernel switches of docs/DEVELOPING.md, as the `gralora` binary reads them.
    let mut policy = gralora::kernels::KernelPolicy::from_vars(|k| std::env::var(k).ok())?;
    if let Some(i) = args.candidate {
        if args.device != "wgpu" {
            return Err("--candidate applies to --device wgpu (the tiled kernel's tuner)".into());
        }
        let n = gralora::kernels::KernelPolicy::CANDIDATES;
        if i >= n {
            return Err(format!("--candidate {i}: the tuner has candidates 0 to {}", n - 1).into());
        }
        policy.candidate = Some(i);
    }
    gralora::kernels::set_kernel_policy(policy);
    let base = gralora::device::select(&args.device)?;
    if args.device == "wgpu" {
        // Which adapter the numbers come from (burn takes the first of the best kind: a discrete GPU first).
        for a in gralora::device::wgpu_adapters() {
            eprintln!(
                "wgpu adapter: {} ({:?}, {:?}, driver {} {})",
                a.name, a.device_type, a.backend, a.driver, a.driver_info
            );
        }
    }
    let device = base.autodiff();
    let t = args.tokens;
    if !args.json {
        println!(
            "device: {}  tokens: {t}  median of {} samples of {} step(s), round-robin, after {} warm-up",
            args.device, args.iters, args.chain, args.warmup
        );
        println!(
            "{:>5} {:>5} {:>4} {:>2} | {:>9} {:>11} {:>9} {:>10} | {:>10} {:>14}",
            "in",
            "out",
            "r",
            "k",
            "lora ms",
            "compos. ms",
            "fused ms",
            "dense ms",
            "fused/lora",
            "compos./fused"
        );
    }
    for d in [384usize, 1536, 4096]
        .into_iter()
        .filter(|d| *d <= args.max_dim)
    {
        for &r in &args.ranks {
            for &k in &args.ks {
                let s = 2.0;
                let rand = |shape: [usize; 2]| {
                    Tensor::<2>::random(shape, Distribution::Uniform(-0.1, 0.1), &device)
                };
                let x = rand([t, d]).require_grad();
                let (ib, ob) = (d / k, d / k);

                // LoRA as the library runs it.
                let la = rand([d, r]).require_grad();
                let lb = rand([r, d]).require_grad();
                let lora = LoraAdapter::from_tensors(la.clone(), lb.clone(), s);
                let ga = Tensor::<3>::random([k, ib, r], Distribution::Uniform(-0.1, 0.1), &device)
                    .require_grad();
                let gb = Tensor::<3>::random([k, r, ob], Distribution::Uniform(-0.1, 0.1), &device)
                    .require_grad();
                let gralora = |fused: bool| {
                    let (x, ga, gb) = (&x, &ga, &gb);
                    move || {
                        let y = if fused {
                            gralora_blocks(x.clone(), ga.clone(), gb.clone(), s)
                        } else {
                            GraLoraAdapter::blocks_composite(x.clone(), ga.clone(), gb.clone())
                                .mul_scalar(s)
                        };
                        let g = y.sum().backward();
                        touch([
                            first(x.grad(&g).unwrap()),
                            first(ga.grad(&g).unwrap()),
                            first(gb.grad(&g).unwrap()),
                        ])
                    }
                };

                // burn's built-in LoRA: a frozen Linear whose weight is rebuilt densely each step.
                let linear = Linear {
                    weight: Param::from_tensor(rand([d, d])),
                    bias: None,
                }
                .apply_lora(Lora::new(r, s * r as f64));
                let mut methods: [Step<'_>; 4] = [
                    Box::new(|| {
                        let y = lora.forward(x.clone());
                        let g = y.sum().backward();
                        touch([
                            first(x.grad(&g).unwrap()),
                            first(la.grad(&g).unwrap()),
                            first(lb.grad(&g).unwrap()),
                        ])
                    }),
                    Box::new(gralora(false)),
                    Box::new(gralora(true)),
                    Box::new(|| {
                        let y = linear.forward(x.clone());
                        let g = y.sum().backward();
                        let adapter = linear.weight.adapter().expect("burn attached its LoRA");
                        touch([
                            first(x.grad(&g).unwrap()),
                            first(adapter.a.val().grad(&g).unwrap()),
                            first(adapter.b.val().grad(&g).unwrap()),
                        ])
                    }),
                ];
                let [lora_ms, composite_ms, fused_ms, dense_ms] = time_round_robin(
                    &device,
                    &mut methods,
                    args.warmup,
                    args.iters,
                    args.chain,
                )[..] else {
                    unreachable!("four methods, four times")
                };

                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "t": t, "in": d, "out": d, "r": r, "k": k, "chain": args.chain,
                            "lora_ms": lora_ms, "gralora_composite_ms": composite_ms,
                            "gralora_fused_ms": fused_ms, "burn_dense_lora_ms": dense_ms,
                        })
                    );
                } else {
                    println!(
                        "{d:>5} {d:>5} {r:>4} {k:>2} | {lora_ms:>9.2} {composite_ms:>11.2} {fused_ms:>9.2} {dense_ms:>10.2} | {:>10.3} {:>14.3}",
                        fused_ms / lora_ms,
                        composite_ms / fused_ms
                    );
                }
            }
        }
    }
    Ok(())
}
