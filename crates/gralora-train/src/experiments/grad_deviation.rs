//! The gradient deviation of LoRA and GraLoRA from full fine-tuning (GraLoRA paper, Fig. 3),
//! with the input-channel outliers of the layer measured: a table and a chart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use gralora::{Adapter, AdapterConfig, AdapterHost, GraLoraConfig, InputProbe, LoraConfig};
use gralora_models::source::{LoadedModel, ModelSource};
use gralora_models::{BertClassifier, Pooling};
use serde::{Deserialize, Serialize};

use super::plot::{Chart, Series, write_chart};
use super::ranks::paper_k;
use super::tables::{write_csv, write_text};
use crate::data::seeded_subset;
use crate::error::{Result, TrainError};
use crate::tasks::Task;
use crate::tasks::classification::{ClassBatch, Item};
use crate::tasks::{load_head, pad_id, tokenize};
use crate::trainer::{Method, Report, RunDir, write_json};

/// What the gradient-deviation experiment measures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviationSpec {
    /// Model alias or snapshot directory (BERT family).
    pub model: String,
    /// Encoder task whose training examples are the batches.
    pub task: String,
    /// Ranks.
    pub ranks: Vec<usize>,
    /// `lora` and/or `gralora`.
    pub methods: Vec<Method>,
    /// GraLoRA's k for every rank; `None`: [`paper_k`].
    pub k: Option<usize>,
    /// The layer (module path); `None`: the FFN output layer (`…output.dense`, not the
    /// attention's) whose inputs have the strongest outlier channel.
    pub layer: Option<String>,
    /// Batches the gradients are summed over.
    pub batches: usize,
    /// Examples per batch.
    pub batch_size: usize,
    /// Longest input.
    pub max_len: usize,
    /// Seed of the batches, the head and the adapters.
    pub seed: u64,
    /// A rank-sweep directory: measure at its trained adapters and heads (`<method>-r<rank>`)
    /// instead of at initialisation.
    pub from: Option<PathBuf>,
}

/// Input-channel statistics of one layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChannelReport {
    /// Module path.
    pub layer: String,
    /// Input features.
    pub d_in: usize,
    /// Tokens seen (padding included).
    pub tokens: usize,
    /// Mean |x| per input channel.
    pub mean_abs: Vec<f64>,
    /// Max |x| per input channel.
    pub max_abs: Vec<f32>,
    /// Largest mean |x| over the median one: how strong the outlier channel is.
    pub outlier_ratio: f64,
    /// The five channels with the largest mean |x|, with it.
    pub top: Vec<(usize, f64)>,
}

impl ChannelReport {
    fn new(layer: &str, stats: &gralora::InputStats) -> Self {
        let mean_abs = stats.mean_abs();
        let mut sorted = mean_abs.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted.get(sorted.len() / 2).copied().unwrap_or(0.0);
        let max = sorted.last().copied().unwrap_or(0.0);
        let mut top: Vec<(usize, f64)> = mean_abs.iter().copied().enumerate().collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(5);
        Self {
            layer: layer.into(),
            d_in: mean_abs.len(),
            tokens: stats.tokens,
            outlier_ratio: if median > 0.0 { max / median } else { 0.0 },
            top,
            max_abs: stats.max_abs.clone(),
            mean_abs,
        }
    }
}

/// One measurement: how close a method's update direction is to full fine-tuning's gradient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviationRow {
    /// Method.
    pub method: String,
    /// Rank.
    pub rank: usize,
    /// GraLoRA's k (1 for LoRA).
    pub k: usize,
    /// cos(D, G): D the weight-space direction of one gradient step on the adapter, G full
    /// fine-tuning's gradient of the same weight. 1: the same direction.
    pub cosine: f64,
    /// ‖D/‖D‖ − G/‖G‖‖ = √(2 − 2 cos): the gradient deviation (0 = none, √2 = orthogonal).
    pub deviation: f64,
    /// Share of ‖D‖² in the rows of the five strongest input channels, against the same share
    /// of ‖G‖² (`g_outlier_share`): above it, the outliers' gradient dominates more than in full
    /// fine-tuning; below it, it is spread over other channels.
    pub d_outlier_share: f64,
    /// Share of ‖G‖² in the rows of the five strongest input channels.
    pub g_outlier_share: f64,
    /// `init` (fresh adapter, B = 0) or `trained` (a sweep's adapter).
    pub state: String,
}

/// Everything the experiment produced.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviationResult {
    /// The layer measured.
    pub layer: String,
    /// Its input-channel statistics.
    pub channels: ChannelReport,
    /// Outlier ratio of every candidate layer, in model order.
    pub candidates: Vec<(String, f64)>,
    /// One row per method and rank.
    pub rows: Vec<DeviationRow>,
}

fn host2(t: Tensor<2>) -> Result<Vec<f64>> {
    Ok(gralora::io::read_f32(t)?
        .into_iter()
        .map(f64::from)
        .collect())
}

/// cos(D, G), and the shares of ‖D‖², ‖G‖² in rows `rows` (`[in, out]`, row-major, `out` wide).
pub fn compare(d: &[f64], g: &[f64], out: usize, rows: &[usize]) -> (f64, f64, f64) {
    let dot: f64 = d.iter().zip(g).map(|(a, b)| a * b).sum();
    let nd: f64 = d.iter().map(|a| a * a).sum();
    let ng: f64 = g.iter().map(|a| a * a).sum();
    let share = |v: &[f64], total: f64| {
        let part: f64 = rows
            .iter()
            .flat_map(|&r| v[r * out..(r + 1) * out].iter())
            .map(|a| a * a)
            .sum();
        if total > 0.0 { part / total } else { 0.0 }
    };
    let cos = if nd > 0.0 && ng > 0.0 {
        dot / (nd.sqrt() * ng.sqrt())
    } else {
        0.0
    };
    (cos, share(d, nd), share(g, ng))
}

fn is_ffn_output(path: &str) -> bool {
    path.ends_with("output.dense") && !path.ends_with("attention.output.dense")
}

/// Run the experiment and write `deviation.csv`, `deviation.md`, `channels.csv`,
/// `grad-deviation.svg/png`, `channels.svg/png` and `deviation.json` into `out`.
pub fn grad_deviation(
    spec: &DeviationSpec,
    out: &Path,
    device: &Device,
    home: &Path,
    report: Report<'_>,
) -> Result<DeviationResult> {
    if spec.ranks.is_empty() || spec.ranks.contains(&0) {
        return Err(TrainError::Usage(
            "--ranks needs at least one rank, each at least 1".into(),
        ));
    }
    if spec.batches == 0 || spec.batch_size == 0 {
        return Err(TrainError::Usage(
            "--batches and --batch-size must be at least 1".into(),
        ));
    }
    if let Some(m) = spec
        .methods
        .iter()
        .find(|m| !matches!(m, Method::Lora | Method::Gralora))
    {
        return Err(TrainError::Usage(format!(
            "grad-deviation compares lora and gralora with full fine-tuning; `{}` is not one of them",
            m
        )));
    }
    let task: Task = spec.task.parse()?;
    let source = ModelSource::resolve(&spec.model, home)?;
    let loaded = LoadedModel::load(&source, device)?;
    let LoadedModel::Encoder {
        model: bert,
        mut tokenizer,
        ..
    } = loaded.model
    else {
        return Err(TrainError::Usage(format!(
            "grad-deviation runs on BERT-family encoders (e.g. --model minilm); {} is a decoder",
            spec.model
        )));
    };
    let data = task.load(home)?;
    let n = spec.batches * spec.batch_size;
    let train = seeded_subset(data.train, Some(n), spec.seed, true);
    let items = tokenize(&mut tokenizer, &train, spec.max_len)?;
    let pad = pad_id(&tokenizer);
    let batches: Vec<Vec<&Item>> = items
        .chunks(spec.batch_size)
        .map(|c| c.iter().collect())
        .collect();
    report(&format!(
        "{} batches of {} {} training examples",
        batches.len(),
        spec.batch_size,
        task.name()
    ));

    // 1. Input statistics of every linear layer (no adapters, no gradients).
    let mut probed = BertClassifier::new(bert.clone(), task.num_classes(), Pooling::Mean, 0.0);
    let mut probes: Vec<(String, InputProbe, usize)> = Vec::new();
    probed.for_each_linear_mut(&mut |path, l| {
        let p = InputProbe::new();
        l.probe = Some(p.clone());
        probes.push((path.to_string(), p, l.dims().0));
    });
    for b in &batches {
        let batch = ClassBatch::new(b, pad, device);
        let _ = probed.forward(&batch.input);
    }
    drop(probed);
    let mut candidates: Vec<(String, f64)> = Vec::new();
    let mut reports: BTreeMap<String, ChannelReport> = BTreeMap::new();
    for (path, p, _) in &probes {
        let r = ChannelReport::new(path, &p.stats()?);
        candidates.push((path.clone(), r.outlier_ratio));
        reports.insert(path.clone(), r);
    }
    let layer = match &spec.layer {
        Some(l) => {
            if !reports.contains_key(l) {
                let names: Vec<&str> = probes.iter().map(|(p, _, _)| p.as_str()).take(6).collect();
                return Err(TrainError::Usage(format!(
                    "no linear layer `{l}` in {}; layers look like {}",
                    spec.model,
                    names.join(", ")
                )));
            }
            l.clone()
        }
        None => candidates
            .iter()
            .filter(|(p, _)| is_ffn_output(p))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(p, _)| p.clone())
            .ok_or_else(|| {
                TrainError::Usage(
                    "found no FFN output layer (`…output.dense`); pass --layer PATH".into(),
                )
            })?,
    };
    let channels = reports.remove(&layer).expect("checked above");
    report(&format!(
        "layer {layer}: strongest input channel {} (mean |x| {:.3}), {:.1}× the median channel",
        channels.top.first().map_or(0, |t| t.0),
        channels.top.first().map_or(0.0, |t| t.1),
        channels.outlier_ratio
    ));
    let outlier_rows: Vec<usize> = channels.top.iter().map(|t| t.0).collect();

    // 2. Per method and rank: G of the layer's weight and the adapter's gradients.
    let ad = device.clone().autodiff();
    let mut rows = Vec::new();
    for &rank in &spec.ranks {
        for &method in &spec.methods {
            let k = match method {
                Method::Gralora => spec.k.unwrap_or_else(|| paper_k(rank)),
                _ => 1,
            };
            let (mut clf, state) = match &spec.from {
                None => {
                    crate::trainer::seed_device(&ad, spec.seed);
                    let clf = BertClassifier::new(
                        bert.clone().train().no_grad(),
                        task.num_classes(),
                        Pooling::Mean,
                        0.0,
                    );
                    (clf, "init")
                }
                Some(sweep) => {
                    let run = sweep.join(format!("{}-r{rank}", method));
                    (load_run(&source, &run, device)?, "trained")
                }
            };
            let mut result: Result<()> = Ok(());
            clf.for_each_linear_mut(&mut |path, l| {
                if path != layer {
                    return;
                }
                if state == "init" {
                    let config: AdapterConfig = match method {
                        Method::Gralora => GraLoraConfig::new(rank, k).into(),
                        _ => LoraConfig::new(rank).into(),
                    };
                    crate::trainer::seed_device(&ad, spec.seed ^ rank as u64);
                    result = l.attach(&config, path).map_err(Into::into);
                } else if l.adapter.is_none() {
                    result = Err(TrainError::Usage(format!(
                        "the sweep run for {} r{rank} has no adapter on {path}",
                        method
                    )));
                }
                l.base.weight = l.base.weight.clone().set_require_grad(true);
                if let Some(a) = l.adapter.take() {
                    l.adapter = Some(a.set_require_grad(true));
                }
            });
            result?;
            crate::trainer::seed_device(&ad, spec.seed);
            let (g, ga, gb, adapter, d_out) =
                layer_gradients(&mut clf, &layer, &batches, pad, &ad)?;
            let d = adapter.update_direction(ga, gb)?;
            let (cos, ds, gs) = compare(&host2(d)?, &host2(g)?, d_out, &outlier_rows);
            let row = DeviationRow {
                method: method.to_string(),
                rank,
                k: match &adapter {
                    Adapter::GraLora(g) => g.a.dims()[0],
                    Adapter::Lora(_) => 1,
                },
                cosine: cos,
                deviation: (2.0 - 2.0 * cos).max(0.0).sqrt(),
                d_outlier_share: ds,
                g_outlier_share: gs,
                state: state.into(),
            };
            report(&format!(
                "{} r{rank} (k {}): cos(D, G) {:.4}, deviation {:.4}; outlier rows hold {:.1} % of ‖D‖², {:.1} % of ‖G‖²",
                row.method,
                row.k,
                row.cosine,
                row.deviation,
                100.0 * row.d_outlier_share,
                100.0 * row.g_outlier_share
            ));
            rows.push(row);
        }
    }
    let result = DeviationResult {
        layer,
        channels,
        candidates,
        rows,
    };
    write_deviation_outputs(spec, &result, out)?;
    Ok(result)
}

/// A sweep run's encoder with its adapters and head, on the autodiff device, all frozen.
fn load_run(source: &ModelSource, run: &Path, device: &Device) -> Result<BertClassifier> {
    let dir = RunDir(run.to_path_buf());
    if !dir.metrics().is_file() {
        return Err(TrainError::Usage(format!(
            "{} is not a finished run of the sweep (no metrics.json); run `gralora experiment rank-sweep` with these ranks and methods first",
            run.display()
        )));
    }
    let mut loaded = LoadedModel::load(source, device)?;
    loaded.model.load_adapter(run)?;
    let LoadedModel::Encoder { model: bert, .. } = loaded.model else {
        return Err(TrainError::Usage(
            "the sweep's model is not an encoder".into(),
        ));
    };
    let pooling = match dir.read_config()?.pooling.as_str() {
        "cls" => Pooling::Cls,
        _ => Pooling::Mean,
    };
    let mut clf = load_head(bert, &dir.head(), pooling)?;
    // Gradients of the model itself: no dropout.
    clf.dropout = burn::nn::DropoutConfig::new(0.0).init();
    Ok(clf.train().no_grad())
}

type LayerGrads = (Tensor<2>, Tensor<3>, Tensor<3>, Adapter, usize);

/// Summed over the batches: ∂L/∂W of `layer`, and ∂L/∂A, ∂L/∂B of its adapter (as `[k, …]`).
fn layer_gradients(
    clf: &mut BertClassifier,
    layer: &str,
    batches: &[Vec<&Item>],
    pad: u32,
    ad: &Device,
) -> Result<LayerGrads> {
    let mut sums: Option<(Tensor<2>, Tensor<3>, Tensor<3>)> = None;
    let mut target = None;
    clf.for_each_linear_mut(&mut |path, l| {
        if path == layer {
            target = Some((l.base.weight.clone(), l.adapter.clone(), l.dims().1));
        }
    });
    let Some((weight, Some(adapter), d_out)) = target else {
        return Err(TrainError::Usage(format!("layer {layer} has no adapter")));
    };
    let missing = || TrainError::Training(format!("no gradient reached {layer}"));
    for b in batches {
        let batch = ClassBatch::new(b, pad, ad);
        let logits = clf.forward(&batch.input);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(ad)
            .forward(logits, batch.labels);
        let grads = loss.backward();
        let g = weight.val().grad(&grads).ok_or_else(missing)?;
        let (ga, gb) = match &adapter {
            Adapter::Lora(l) => (
                l.a.val().grad(&grads).ok_or_else(missing)?.unsqueeze_dim(0),
                l.b.val().grad(&grads).ok_or_else(missing)?.unsqueeze_dim(0),
            ),
            Adapter::GraLora(l) => (
                l.a.val().grad(&grads).ok_or_else(missing)?,
                l.b.val().grad(&grads).ok_or_else(missing)?,
            ),
        };
        sums = Some(match sums {
            None => (g, ga, gb),
            Some((sg, sa, sb)) => (sg + g, sa + ga, sb + gb),
        });
    }
    let (g, ga, gb) = sums.ok_or_else(missing)?;
    // The adapter's tensors on the inner device, to combine with the (inner) gradients.
    let adapter = adapter.valid();
    Ok((g, ga, gb, adapter, d_out))
}

fn write_deviation_outputs(spec: &DeviationSpec, r: &DeviationResult, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    write_csv(&out.join("deviation.csv"), &r.rows)?;
    #[derive(Serialize)]
    struct Channel {
        channel: usize,
        mean_abs: f64,
        max_abs: f32,
    }
    let channels: Vec<Channel> = r
        .channels
        .mean_abs
        .iter()
        .zip(&r.channels.max_abs)
        .enumerate()
        .map(|(channel, (&mean_abs, &max_abs))| Channel {
            channel,
            mean_abs,
            max_abs,
        })
        .collect();
    write_csv(&out.join("channels.csv"), &channels)?;
    write_json(&out.join("deviation.json"), r)?;
    let mut md = format!(
        "{} on {}: layer `{}` ({} inputs), {} batches of {}, seed {}, adapters at {}.\n\n\
         Strongest input channels (mean |x| over {} tokens): {}; the strongest is {:.1}× the median channel.\n\n",
        spec.model,
        spec.task,
        r.layer,
        r.channels.d_in,
        spec.batches,
        spec.batch_size,
        spec.seed,
        if spec.from.is_some() {
            "the sweep's trained state"
        } else {
            "initialisation (B = 0)"
        },
        r.channels.tokens,
        r.channels
            .top
            .iter()
            .map(|(c, v)| format!("{c} ({v:.3})"))
            .collect::<Vec<_>>()
            .join(", "),
        r.channels.outlier_ratio
    );
    md.push_str(
        "| method | r | k | cos(D, G) | deviation | outlier rows' share of ‖D‖² | of ‖G‖² |\n",
    );
    md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for row in &r.rows {
        md.push_str(&format!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.1} % | {:.1} % |\n",
            row.method,
            row.rank,
            row.k,
            row.cosine,
            row.deviation,
            100.0 * row.d_outlier_share,
            100.0 * row.g_outlier_share
        ));
    }
    write_text(&out.join("deviation.md"), &md)?;
    let mut by_method: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for row in &r.rows {
        by_method
            .entry(row.method.as_str())
            .or_default()
            .push((row.rank as f64, row.deviation));
    }
    write_chart(
        &Chart {
            title: format!("gradient deviation from full fine-tuning, {}", r.layer),
            x_label: "rank r".into(),
            y_label: "deviation |D/|D| - G/|G||".into(),
            log_x: true,
            series: by_method
                .into_iter()
                .map(|(m, mut points)| {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series {
                        name: m.into(),
                        points,
                        reference: false,
                    }
                })
                .collect(),
        },
        &out.join("grad-deviation"),
    )?;
    write_chart(
        &Chart {
            title: format!("input channels of {}", r.layer),
            x_label: "input channel".into(),
            y_label: "mean |x|".into(),
            log_x: false,
            series: vec![Series {
                name: "mean |x| per channel".into(),
                points: r
                    .channels
                    .mean_abs
                    .iter()
                    .enumerate()
                    .map(|(c, &v)| (c as f64, v))
                    .collect(),
                reference: false,
            }],
        },
        &out.join("channels"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;
    use gralora::{GraLoraAdapter, LoraAdapter};

    fn host(t: Tensor<2>) -> Vec<f64> {
        host2(t).unwrap()
    }

    /// `[r, c]` row-major matmul on the host.
    fn mm(a: &[f64], b: &[f64], n: usize, m: usize, p: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * p];
        for i in 0..n {
            for k in 0..m {
                for j in 0..p {
                    out[i * p + j] += a[i * m + k] * b[k * p + j];
                }
            }
        }
        out
    }

    fn transpose(a: &[f64], n: usize, m: usize) -> Vec<f64> {
        let mut out = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                out[j * n + i] = a[i * m + j];
            }
        }
        out
    }

    /// `(G, ∂L/∂A, ∂L/∂B)` of `L = Σ adapter(x) ⊙ δ` by autodiff, and the adapter on the inner device.
    fn grads(
        adapter: Adapter,
        x: Tensor<2>,
        delta: Tensor<2>,
    ) -> (Vec<f64>, Tensor<3>, Tensor<3>, Adapter) {
        let ad = Device::flex().autodiff();
        let adapter = adapter.train().set_require_grad(true);
        let x_ad = Tensor::<2>::from_data(x.to_data(), &ad);
        let d_ad = Tensor::<2>::from_data(delta.to_data(), &ad);
        let g = host(x.clone().transpose().matmul(delta.clone()));
        let grads = (adapter.forward(x_ad) * d_ad).sum().backward();
        let (ga, gb) = match &adapter {
            Adapter::Lora(l) => (
                l.a.val().grad(&grads).unwrap().unsqueeze_dim(0),
                l.b.val().grad(&grads).unwrap().unsqueeze_dim(0),
            ),
            Adapter::GraLora(l) => (
                l.a.val().grad(&grads).unwrap(),
                l.b.val().grad(&grads).unwrap(),
            ),
        };
        (g, ga, gb, adapter.valid())
    }

    #[test]
    fn lora_update_direction_is_s2_g_btb_plus_a_at_g() {
        let dev = Device::flex();
        let (t, d_in, d_out, r, s) = (5, 6, 4, 3, 0.7);
        let rnd =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let (a, b) = (rnd([d_in, r]), rnd([r, d_out]));
        let (x, delta) = (rnd([t, d_in]), rnd([t, d_out]));
        let adapter = Adapter::Lora(LoraAdapter::from_tensors(a.clone(), b.clone(), s));
        let (g, ga, gb, adapter) = grads(adapter, x, delta);
        let d = host(adapter.update_direction(ga, gb).unwrap());
        let (a, b) = (host(a), host(b));
        let gbtb = mm(
            &mm(&g, &transpose(&b, r, d_out), d_in, d_out, r),
            &b,
            d_in,
            r,
            d_out,
        );
        let aatg = mm(
            &a,
            &mm(&transpose(&a, d_in, r), &g, r, d_in, d_out),
            d_in,
            r,
            d_out,
        );
        for i in 0..d.len() {
            let want = s * s * (gbtb[i] + aatg[i]);
            assert!(
                (d[i] - want).abs() < 1e-4 * (1.0 + want.abs()),
                "{i}: {} vs {want}",
                d[i]
            );
        }
    }

    #[test]
    fn gralora_update_direction_is_blockwise() {
        // Block (n, j): D = s²(G_nj B_njᵀ B_nj + A_nj A_njᵀ G_nj), with
        // A_nj = A[n][:, j·rb..], B_nj = B[j][n·rb.., :] (METHODS.md).
        let dev = Device::flex();
        let (t, d_in, d_out, r, k, s) = (7, 8, 6, 4, 2, 0.5);
        let (ib, ob, rb) = (d_in / k, d_out / k, r / k);
        let rnd3 =
            |shape: [usize; 3]| Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
        let (a, b) = (rnd3([k, ib, r]), rnd3([k, r, ob]));
        let x = Tensor::<2>::random([t, d_in], Distribution::Normal(0.0, 1.0), &dev);
        let delta = Tensor::<2>::random([t, d_out], Distribution::Normal(0.0, 1.0), &dev);
        let adapter = Adapter::GraLora(GraLoraAdapter::from_tensors(a.clone(), b.clone(), None, s));
        let (g, ga, gb, adapter) = grads(adapter, x, delta);
        let d = host(adapter.update_direction(ga, gb).unwrap());
        let read3 = |t: Tensor<3>| -> Vec<f64> {
            t.into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
                .into_iter()
                .map(f64::from)
                .collect()
        };
        let (a, b) = (read3(a), read3(b));
        for n in 0..k {
            for j in 0..k {
                let a_nj: Vec<f64> = (0..ib)
                    .flat_map(|i| (0..rb).map(move |c| (i, c)))
                    .map(|(i, c)| a[n * ib * r + i * r + j * rb + c])
                    .collect();
                let b_nj: Vec<f64> = (0..rb)
                    .flat_map(|c| (0..ob).map(move |o| (c, o)))
                    .map(|(c, o)| b[j * r * ob + (n * rb + c) * ob + o])
                    .collect();
                let g_nj: Vec<f64> = (0..ib)
                    .flat_map(|i| (0..ob).map(move |o| (i, o)))
                    .map(|(i, o)| g[(n * ib + i) * d_out + j * ob + o])
                    .collect();
                let t1 = mm(
                    &mm(&g_nj, &transpose(&b_nj, rb, ob), ib, ob, rb),
                    &b_nj,
                    ib,
                    rb,
                    ob,
                );
                let t2 = mm(
                    &a_nj,
                    &mm(&transpose(&a_nj, ib, rb), &g_nj, rb, ib, ob),
                    ib,
                    rb,
                    ob,
                );
                for i in 0..ib {
                    for o in 0..ob {
                        let want = s * s * (t1[i * ob + o] + t2[i * ob + o]);
                        let got = d[(n * ib + i) * d_out + j * ob + o];
                        assert!(
                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "({n},{j}) {i},{o}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn compare_is_cosine_and_row_shares() {
        // Two rows of width 2.
        let g = [3.0, 4.0, 0.0, 0.0];
        let d = [0.0, 0.0, 1.0, 0.0];
        assert_eq!(compare(&d, &g, 2, &[0]), (0.0, 0.0, 1.0));
        let (c, ds, gs) = compare(&[6.0, 8.0, 0.0, 1.0], &g, 2, &[1]);
        assert!((c - 50.0 / (101f64.sqrt() * 5.0)).abs() < 1e-12);
        assert!((ds - 1.0 / 101.0).abs() < 1e-12 && gs == 0.0);
    }
}
