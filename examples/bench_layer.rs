//! Forward + backward of one adapted layer, four ways, timed in one run:
//! LoRA (gralora's `LoraAdapter`: burn's matmuls on wgpu, the crate's gemm op on Flex), GraLoRA composite (burn ops, regroup copy), GraLoRA through the
//! block-matmul op (WGSL kernel on wgpu, strided gemm on Flex), and burn 0.22's built-in LoRA
//! (dense `W + s·A B` rebuilt every step).
//!
//! `cargo run --release --example bench_layer -- --device wgpu|flex [--json] [--iters N] [--warmup W] [--max-dim D]`
//!
//! Each time is the median of `--iters` iterations after `--warmup` untimed ones; an iteration is the forward,
//! `backward()`, and a read of one scalar that depends on every gradient (so lazy backends run it).

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
    /// Timed iterations per measurement (median reported).
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Untimed iterations first. On a GPU give several: a new shape's kernels are compiled and
    /// tuned over its first calls (on an H200, one warm-up left LoRA's time varying 3× by order).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
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
}

fn median_ms(device: &Device, warmup: usize, iters: usize, mut step: impl FnMut() -> f32) -> f64 {
    for _ in 0..warmup {
        step();
    }
    device.sync().expect("device sync");
    let mut times: Vec<f64> = (0..iters)
        .map(|_| {
            let start = Instant::now();
            let v = step();
            device.sync().expect("device sync");
            std::hint::black_box(v);
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Sum of one element of every gradient: forces them all without moving them to the host.
fn touch(grads: &[Tensor<1>]) -> f32 {
    grads
        .iter()
        .cloned()
        .reduce(|a, b| a + b)
        .unwrap()
        .into_scalar::<f32>()
}

fn first<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    t.flatten::<1>(0, D - 1).slice([0..1])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // The CPU products use OpenBLAS when GRALORA_BLAS names the library (as `gralora` does).
    if let Some(path) = std::env::var_os("GRALORA_BLAS").filter(|v| v != "off") {
        let blas = gralora::blas::CpuBlas::open(&path)?;
        eprintln!("CPU GEMM: {}", blas.describe());
        gralora::blas::set(Some(blas));
    }
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
            "device: {}  tokens: {t}  iters: {} (median) after {} warm-up",
            args.device, args.iters, args.warmup
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
                let lora_ms = median_ms(&device, args.warmup, args.iters, || {
                    let y = lora.forward(x.clone());
                    let g = y.sum().backward();
                    touch(&[
                        first(x.grad(&g).unwrap()),
                        first(la.grad(&g).unwrap()),
                        first(lb.grad(&g).unwrap()),
                    ])
                });

                let ga = Tensor::<3>::random([k, ib, r], Distribution::Uniform(-0.1, 0.1), &device)
                    .require_grad();
                let gb = Tensor::<3>::random([k, r, ob], Distribution::Uniform(-0.1, 0.1), &device)
                    .require_grad();
                let gralora = |fused: bool| {
                    median_ms(&device, args.warmup, args.iters, || {
                        let y = if fused {
                            gralora_blocks(x.clone(), ga.clone(), gb.clone(), s)
                        } else {
                            GraLoraAdapter::blocks_composite(x.clone(), ga.clone(), gb.clone())
                                .mul_scalar(s)
                        };
                        let g = y.sum().backward();
                        touch(&[
                            first(x.grad(&g).unwrap()),
                            first(ga.grad(&g).unwrap()),
                            first(gb.grad(&g).unwrap()),
                        ])
                    })
                };
                let composite_ms = gralora(false);
                let fused_ms = gralora(true);

                // burn's built-in LoRA: a frozen Linear whose weight is rebuilt densely each step.
                let linear = Linear {
                    weight: Param::from_tensor(rand([d, d])),
                    bias: None,
                }
                .apply_lora(Lora::new(r, s * r as f64));
                let dense_ms = median_ms(&device, args.warmup, args.iters, || {
                    let y = linear.forward(x.clone());
                    let g = y.sum().backward();
                    let adapter = linear.weight.adapter().expect("burn attached its LoRA");
                    touch(&[
                        first(x.grad(&g).unwrap()),
                        first(adapter.a.val().grad(&g).unwrap()),
                        first(adapter.b.val().grad(&g).unwrap()),
                    ])
                });

                if args.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "t": t, "in": d, "out": d, "r": r, "k": k,
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
