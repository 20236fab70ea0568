//! A Llama-family decoder for llama.cpp: its adapters as a LoRA adapter file (GGUF), or the
//! merged model as a GGUF model file ([`write_merged_gguf`]).
//!
//! llama.cpp reads an adapter as `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha` (f32) and, per adapted weight, `blk.N.<tensor>.weight.lora_a`
//! (PyTorch shape `[rank, in]`) and `.lora_b` (`[out, rank]`), and adds
//! `alpha / rank · x Aᵀ Bᵀ` to the weight's product (its `llama-adapter.cpp`). GraLoRA adapters
//! are written as their exact plain LoRA ([`gralora::GraLoraAdapter::to_lora`]); the file holds
//! one alpha, so each layer's own scale `s` is folded into its `lora_b` (`B · s · rank / alpha`),
//! which keeps GoRA's per-layer ranks and scales exact. llama.cpp stores `attn_q`/`attn_k` rows
//! permuted ([`crate::gguf::permute_rows`]); the same permutation is applied to the rows of
//! their `lora_b`, which are the weight's output rows.

use std::collections::BTreeMap;
use std::path::Path;

use gralora::{Adapter, AdapterHost};

use crate::error::{ModelError, Result};
use crate::gguf::{
    ALIGNMENT, GgmlType, GgufFile, MetaValue, RawTensorOut, TensorOut, gguf_bytes,
    gguf_module_name, gguf_tensor_name, permute_rows, quantize, write_gguf,
};
use crate::llama::{Llama, LlamaConfig};
use crate::weights::Export;

/// What [`gguf_lora_bytes`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufLora {
    /// Adapted weights (pairs of tensors).
    pub layers: usize,
    /// The file's `adapter.lora.alpha`.
    pub alpha: f32,
    /// Layers whose scale was folded into `lora_b` (their `s · rank` differs from `alpha`).
    pub folded: usize,
}

/// The adapters of `model` as the bytes of a llama.cpp LoRA adapter file. GraLoRA adapters are
/// replaced in `model` by their plain LoRA (the same update). Errors if the model has none.
pub fn gguf_lora_bytes(model: &mut Llama, config: &LlamaConfig) -> Result<(Vec<u8>, GgufLora)> {
    gralora::convert_to_lora(model)?;
    struct Pair {
        name: String,
        rank: usize,
        d_in: usize,
        d_out: usize,
        a: Vec<f32>,
        b: Vec<f32>,
        scale: f64,
    }
    let mut pairs = Vec::new();
    let mut failure: Option<ModelError> = None;
    model.for_each_linear_mut(&mut |path, layer| {
        if failure.is_some() {
            return;
        }
        let Some(Adapter::Lora(l)) = &layer.adapter else {
            return;
        };
        let Some(name) = gguf_module_name(path) else {
            failure = Some(ModelError::Input(format!(
                "layer `{path}` has no llama.cpp tensor name; a GGUF adapter can hold only the \
                 attention and MLP projections of the blocks"
            )));
            return;
        };
        let (d_in, d_out) = layer.dims();
        let read = |t| gralora::io::read_f32::<2>(t);
        match (read(l.a.val()), read(l.b.val())) {
            (Ok(a), Ok(b)) => pairs.push(Pair {
                name,
                rank: l.rank(),
                d_in,
                d_out,
                a,
                b,
                scale: l.scale,
            }),
            (Err(e), _) | (_, Err(e)) => failure = Some(e.into()),
        }
    });
    if let Some(e) = failure {
        return Err(e);
    }
    if pairs.is_empty() {
        return Err(ModelError::Input(
            "the model has no adapters to write; load one with --adapter".into(),
        ));
    }
    // The file's alpha: the most common s · rank, so most layers are written bit for bit.
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for p in &pairs {
        *counts
            .entry(((p.scale * p.rank as f64) as f32).to_bits())
            .or_default() += 1;
    }
    let (&bits, _) = counts.iter().max_by_key(|(_, c)| **c).expect("non-empty");
    let alpha = f32::from_bits(bits);
    let mut tensors = Vec::with_capacity(2 * pairs.len());
    let mut folded = 0;
    for p in pairs {
        // burn's A [in, r] → lora_a [r, in]; B [r, out] → lora_b [out, r].
        let lora_a = gralora::io::transpose(&p.a, p.d_in, p.rank);
        let mut lora_b = gralora::io::transpose(&p.b, p.rank, p.d_out);
        let fold = p.scale * p.rank as f64 / alpha as f64;
        if (p.scale * p.rank as f64) as f32 != alpha {
            folded += 1;
            lora_b
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * fold) as f32);
        }
        if p.name.ends_with(".attn_q") {
            permute_rows(&mut lora_b, p.d_out, p.rank, config.num_attention_heads);
        } else if p.name.ends_with(".attn_k") {
            permute_rows(&mut lora_b, p.d_out, p.rank, config.kv_heads());
        }
        tensors.push(TensorOut {
            name: format!("{}.weight.lora_a", p.name),
            shape: vec![p.rank, p.d_in],
            data: lora_a,
        });
        tensors.push(TensorOut {
            name: format!("{}.weight.lora_b", p.name),
            shape: vec![p.d_out, p.rank],
            data: lora_b,
        });
    }
    let layers = tensors.len() / 2;
    let metadata = [
        ("general.architecture", MetaValue::Str("llama".into())),
        ("general.type", MetaValue::Str("adapter".into())),
        ("adapter.type", MetaValue::Str("lora".into())),
        ("adapter.lora.alpha", MetaValue::F32(alpha)),
        (
            "general.alignment",
            MetaValue::U32(crate::gguf::ALIGNMENT as u32),
        ),
    ];
    Ok((
        gguf_bytes(&metadata, &tensors),
        GgufLora {
            layers,
            alpha,
            folded,
        },
    ))
}

/// [`gguf_lora_bytes`] written to `path` atomically (a temporary file renamed into place).
pub fn write_gguf_lora(model: &mut Llama, config: &LlamaConfig, path: &Path) -> Result<GgufLora> {
    let (bytes, summary) = gguf_lora_bytes(model, config)?;
    gralora::io::write_atomic(path, &bytes).map_err(|e| ModelError::io(path, e))?;
    Ok(summary)
}

/// What [`write_merged_gguf`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct MergedGguf {
    /// Tensors in the file.
    pub tensors: usize,
    /// Tensors written from the merged model at the chosen type (the rest copied as stored).
    pub written: usize,
    /// Matrices written as F16 because their rows are not whole Q8_0 blocks.
    pub f16_fallback: usize,
    /// Metadata keys carried over from the source file.
    pub metadata: usize,
}

/// `general.file_type` of a file whose matrices are `ty` (llama.cpp's `LLAMA_FTYPE_*`).
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q8_0 => 7,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::BF16 => 32,
    }
}

/// A merged Llama-family decoder as a GGUF file llama.cpp runs: `tensors` (the merged model's
/// weights with Hugging Face names, [`Llama::export`]) in place of `source`'s, every matrix
/// encoded as `ty` (F32, F16 or Q8_0; a matrix whose rows are not whole Q8_0 blocks as F16) and
/// 1-D tensors as F32; q/k rows permuted back to llama.cpp's order. Every metadata key of
/// `source` (architecture, hyper-parameters, the tokenizer, the chat template) is carried over
/// byte for byte, with `general.file_type` and `general.alignment` set for the new file; tensors
/// of `source` the model does not hold travel as they are stored. Written to `path` atomically.
pub fn write_merged_gguf(
    source: &GgufFile,
    tensors: &Export,
    config: &LlamaConfig,
    ty: GgmlType,
    path: &Path,
) -> Result<MergedGguf> {
    if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
        return Err(ModelError::Input(format!(
            "a merged GGUF can be written as f32, f16 or q8_0, not {ty:?}"
        )));
    }
    let mut merged: BTreeMap<String, (&[usize], &[f32])> = BTreeMap::new();
    for (hf, shape, data) in tensors {
        let name = gguf_tensor_name(hf)
            .ok_or_else(|| ModelError::Input(format!("tensor `{hf}` has no llama.cpp name")))?;
        merged.insert(name, (shape, data));
    }
    let mut out = Vec::new();
    let (mut written, mut f16_fallback) = (0, 0);
    let mut encode = |name: &str, shape: &[usize], data: &[f32]| -> Result<RawTensorOut> {
        let permuted: Vec<f32>;
        let mut data = data;
        let heads = if name.ends_with(".attn_q.weight") {
            Some(config.num_attention_heads)
        } else if name.ends_with(".attn_k.weight") {
            Some(config.kv_heads())
        } else {
            None
        };
        if let (Some(h), [rows, cols]) = (heads, shape) {
            let mut v = data.to_vec();
            permute_rows(&mut v, *rows, *cols, h);
            permuted = v;
            data = &permuted;
        }
        // Q8_0 blocks run along rows: a row that is not whole blocks is written as F16.
        let row = shape.last().copied().unwrap_or(0);
        let t = match (shape.len() >= 2, ty) {
            (false, _) => GgmlType::F32,
            (true, GgmlType::Q8_0) if !row.is_multiple_of(32) => {
                f16_fallback += 1;
                GgmlType::F16
            }
            (true, ty) => ty,
        };
        let bytes = quantize(t, data).expect("F32, F16 and whole Q8_0 rows encode");
        written += 1;
        Ok(RawTensorOut {
            name: name.to_string(),
            shape: shape.to_vec(),
            type_id: t.id(),
            bytes,
        })
    };
    for name in source.tensor_order() {
        let info = &source.tensors[name];
        match merged.remove(name) {
            Some((shape, data)) => {
                if shape != info.shape() {
                    return Err(ModelError::Input(format!(
                        "tensor `{name}`: the model's shape {shape:?} differs from the source \
                         file's {:?}; merge into the file the model was loaded from",
                        info.shape()
                    )));
                }
                out.push(encode(name, shape, data)?);
            }
            None => {
                let (t, bytes) = source.raw_tensor(name)?;
                out.push(RawTensorOut {
                    name: name.to_string(),
                    shape: info.shape(),
                    type_id: t.id(),
                    bytes: bytes.to_vec(),
                });
            }
        }
    }
    // Tensors the source did not have (none for a model loaded from it).
    for (name, (shape, data)) in std::mem::take(&mut merged) {
        out.push(encode(&name, shape, data)?);
    }
    let mut metadata: Vec<(&str, MetaValue)> = source
        .metadata_raw()
        .filter(|(k, _, _)| !matches!(*k, "general.file_type" | "general.alignment"))
        .map(|(k, type_id, bytes)| {
            (
                k,
                MetaValue::Raw {
                    type_id,
                    bytes: bytes.to_vec(),
                },
            )
        })
        .collect();
    let carried = metadata.len();
    metadata.push(("general.file_type", MetaValue::U32(file_type(ty))));
    metadata.push(("general.alignment", MetaValue::U32(ALIGNMENT as u32)));
    gralora::io::replace_with(path, |tmp| {
        let mut w = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        write_gguf(&mut w, &metadata, &out)
    })
    .map_err(|e| ModelError::io(path, e))?;
    Ok(MergedGguf {
        tensors: out.len(),
        written,
        f16_fallback,
        metadata: carried,
    })
}
