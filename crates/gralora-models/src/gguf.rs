//! GGUF (llama.cpp) files: metadata, tensor directory, dequantisation.
//!
//! Format: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>. Versions 2 and 3.
//! Dequantised types: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::weights::{HostTensor, TensorSource, mmap};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// bool.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U64(v) => Some(v),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F64(v) => Some(v),
            Value::U64(v) => Some(v as f64),
            Value::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// GGML tensor types this loader knows the layout of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    BF16,
}

const SUPPORTED: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0";

impl GgmlType {
    /// GGML's type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q5_0 => 6,
            Self::Q5_1 => 7,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
        }
    }

    /// The type of GGML type id `id`, if this module knows its layout.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block).
    fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
        }
    }
}

fn type_name(id: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    names.get(id as usize).map_or_else(
        || format!("type id {id}"),
        |n| format!("{n} (type id {id})"),
    )
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGML dims, innermost first (the reverse of PyTorch order).
    pub ggml_dims: Vec<usize>,
    /// Raw GGML type id.
    pub type_id: u32,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
}

impl TensorInfo {
    /// Shape in PyTorch order.
    pub fn shape(&self) -> Vec<usize> {
        self.ggml_dims.iter().rev().copied().collect()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.ggml_dims.iter().product()
    }
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/values.
    pub metadata: HashMap<String, Value>,
    /// Tensor directory, by GGUF name.
    pub tensors: HashMap<String, TensorInfo>,
    /// Metadata as stored: key, GGUF type id, byte range of the encoded value.
    raw_metadata: Vec<(String, u32, std::ops::Range<usize>)>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(ModelError::format(
                self.path,
                format!(
                    "GGUF header ends early (needs {n} bytes at offset {} of {}); the file is truncated",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn len(&mut self, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n > self.bytes.len() as u64 {
            return Err(ModelError::format(
                self.path,
                format!(
                    "GGUF {what} length {n} at offset {} exceeds the file size",
                    self.pos - 8
                ),
            ));
        }
        Ok(n as usize)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.len("string")?;
        let at = self.pos;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| {
            ModelError::format(
                self.path,
                format!("GGUF string at offset {at} is not UTF-8"),
            )
        })
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U64(self.u8()? as u64),
            1 => Value::I64(self.u8()? as i8 as i64),
            2 => Value::U64(self.u16()? as u64),
            3 => Value::I64(self.u16()? as i16 as i64),
            4 => Value::U64(self.u32()? as u64),
            5 => Value::I64(self.u32()? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32()?) as f64),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 if depth < 4 => {
                let item = self.u32()?;
                let n = self.len("array")?;
                let mut items = Vec::with_capacity(n.min(1 << 12));
                for _ in 0..n {
                    items.push(self.value(item, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            other => {
                return Err(ModelError::format(
                    self.path,
                    format!(
                        "unknown GGUF metadata type {other} at offset {}",
                        self.pos - 4
                    ),
                ));
            }
        })
    }
}

impl GgufFile {
    /// Open a GGUF file and read its metadata and tensor directory (data stays mapped).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = mmap(&path)?;
        let mut c = Cursor {
            bytes: &map,
            pos: 0,
            path: &path,
        };
        if c.take(4).ok() != Some(b"GGUF".as_slice()) {
            return Err(ModelError::format(
                &path,
                "not a GGUF file (no `GGUF` magic)",
            ));
        }
        let version = c.u32()?;
        if !(2..=3).contains(&version) {
            return Err(ModelError::format(
                &path,
                format!("GGUF version {version} is not supported (2 and 3 are)"),
            ));
        }
        let n_tensors = c.len("tensor count")?;
        let n_kv = c.len("metadata count")?;
        let mut metadata = HashMap::new();
        let mut raw_metadata = Vec::with_capacity(n_kv.min(1 << 12));
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let start = c.pos;
            let value = c.value(ty, 0)?;
            raw_metadata.push((key.clone(), ty, start..c.pos));
            metadata.insert(key, value);
        }
        let mut dir = Vec::with_capacity(n_tensors.min(1 << 12));
        for _ in 0..n_tensors {
            let name = c.string()?;
            let n_dims = c.u32()? as usize;
            if n_dims > 4 {
                return Err(ModelError::format(
                    &path,
                    format!("tensor `{name}` has {n_dims} dims (GGUF allows at most 4)"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.len("dim")?);
            }
            let type_id = c.u32()?;
            let offset = c.u64()? as usize;
            dir.push((name, dims, type_id, offset));
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        if alignment == 0 || !alignment.is_power_of_two() {
            return Err(ModelError::format(
                &path,
                format!("general.alignment = {alignment} is not a power of two"),
            ));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = HashMap::new();
        for (name, ggml_dims, type_id, rel) in dir {
            let beyond = |what: &str| {
                ModelError::format(
                    &path,
                    format!(
                        "tensor `{name}`: its {what} lies beyond any file; the file is damaged"
                    ),
                )
            };
            let offset = data_start
                .checked_add(rel)
                .ok_or_else(|| beyond("offset"))?;
            let info = TensorInfo {
                ggml_dims,
                type_id,
                offset,
            };
            if let Some(ty) = GgmlType::from_id(type_id) {
                let (per, bytes) = ty.block();
                let row = info.ggml_dims.first().copied().unwrap_or(1);
                if row % per != 0 {
                    return Err(ModelError::format(
                        &path,
                        format!(
                            "tensor `{name}`: row length {row} is not a multiple of the {per}-element block"
                        ),
                    ));
                }
                let size = info
                    .ggml_dims
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .and_then(|n| (n / per).checked_mul(bytes))
                    .ok_or_else(|| beyond("size"))?;
                let end = info.offset.checked_add(size).ok_or_else(|| beyond("end"))?;
                if end > map.len() {
                    return Err(ModelError::format(
                        &path,
                        format!(
                            "tensor `{name}` data ends at byte {} but the file has {} bytes; the file is truncated",
                            end,
                            map.len()
                        ),
                    ));
                }
            }
            tensors.insert(name, info);
        }
        Ok(Self {
            path,
            map,
            version,
            metadata,
            tensors,
            raw_metadata,
        })
    }

    /// The metadata as stored, in file order: key, GGUF type id and the value's encoded bytes
    /// (what a writer copies to carry a key over with its exact type).
    pub fn metadata_raw(&self) -> impl Iterator<Item = (&str, u32, &[u8])> {
        self.raw_metadata
            .iter()
            .map(|(k, t, r)| (k.as_str(), *t, &self.map[r.clone()]))
    }

    /// Tensor names in the order of their data in the file.
    pub fn tensor_order(&self) -> Vec<&str> {
        let mut names: Vec<(&str, usize)> = self
            .tensors
            .iter()
            .map(|(n, i)| (n.as_str(), i.offset))
            .collect();
        names.sort_by_key(|&(n, o)| (o, n));
        names.into_iter().map(|(n, _)| n).collect()
    }

    /// A tensor's type and its data as stored (a type whose layout this reader knows).
    pub fn raw_tensor(&self, name: &str) -> Result<(GgmlType, &[u8])> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                count: self.tensors.len(),
            })?;
        let ty = GgmlType::from_id(info.type_id).ok_or_else(|| ModelError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: type_name(info.type_id),
            supported: SUPPORTED,
        })?;
        let (per, bytes) = ty.block();
        Ok((
            ty,
            &self.map[info.offset..info.offset + info.numel() / per * bytes],
        ))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A metadata value or a clear error naming the key.
    pub fn meta(&self, key: &str) -> Result<&Value> {
        self.metadata.get(key).ok_or_else(|| {
            ModelError::config(&self.path, format!("GGUF metadata key `{key}` is missing"))
        })
    }

    /// An unsigned integer metadata value.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta(key)?.as_u64().ok_or_else(|| {
            ModelError::config(
                &self.path,
                format!("GGUF metadata `{key}` is not an integer"),
            )
        })
    }

    /// A float metadata value.
    pub fn meta_f64(&self, key: &str) -> Result<f64> {
        self.meta(key)?.as_f64().ok_or_else(|| {
            ModelError::config(&self.path, format!("GGUF metadata `{key}` is not a number"))
        })
    }

    /// A string metadata value.
    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta(key)?.as_str().ok_or_else(|| {
            ModelError::config(&self.path, format!("GGUF metadata `{key}` is not a string"))
        })
    }

    /// Decode a tensor (by GGUF name) to f32, PyTorch shape order.
    pub fn dequantize(&self, name: &str) -> Result<HostTensor> {
        let (ty, raw) = self.raw_tensor(name)?;
        let info = &self.tensors[name];
        Ok(HostTensor {
            shape: info.shape(),
            data: dequantize(ty, raw, info.numel()),
        })
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decode `n` values of type `ty` from `raw` (GGML block layouts, as in ggml-quants.c).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    match ty {
        GgmlType::F32 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, c) in out.iter_mut().zip(raw.chunks_exact(2)) {
                *o = bf16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    o[j] = b[2 + j] as i8 as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(18)) {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    let q = b[2 + j];
                    o[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                    o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    let q = b[4 + j];
                    o[j] = (q & 0x0F) as f32 * d + m;
                    o[j + 16] = (q >> 4) as f32 * d + m;
                }
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (size, qh_at) = if ty == GgmlType::Q5_0 {
                (22, 2)
            } else {
                (24, 4)
            };
            for (o, b) in out.chunks_exact_mut(32).zip(raw.chunks_exact(size)) {
                let d = f16_at(b, 0);
                let m = if ty == GgmlType::Q5_1 {
                    f16_at(b, 2)
                } else {
                    0.0
                };
                let qh = u32::from_le_bytes(b[qh_at..qh_at + 4].try_into().unwrap());
                let qs = &b[qh_at + 4..];
                for j in 0..16 {
                    let lo = ((qs[j] & 0x0F) as u32) | (((qh >> j) & 1) << 4);
                    let hi = ((qs[j] >> 4) as u32) | (((qh >> (j + 16)) & 1) << 4);
                    if ty == GgmlType::Q5_0 {
                        o[j] = (lo as i32 - 16) as f32 * d;
                        o[j + 16] = (hi as i32 - 16) as f32 * d;
                    } else {
                        o[j] = lo as f32 * d + m;
                        o[j + 16] = hi as f32 * d + m;
                    }
                }
            }
        }
    }
    out
}

/// Undo llama.cpp's row permutation of `attn_q`/`attn_k` (its converter interleaves the two rotary
/// halves of each head); the result is in Hugging Face order (rotate-half rotary).
pub fn unpermute_rows(t: &mut HostTensor, n_head: usize) {
    let (out, cols) = (t.shape[0], t.shape[1]);
    let hd = out / n_head;
    let half = hd / 2;
    let src = t.data.clone();
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let from = h * hd + i * 2 + j;
                let to = h * hd + j * half + i;
                t.data[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
}

/// llama.cpp's row permutation of `attn_q`/`attn_k` (`LlamaModel.permute` in its converter:
/// `w.reshape(n_head, 2, hd/2, ..).swapaxes(1, 2)`), from Hugging Face order; the inverse of
/// [`unpermute_rows`]. `data` is `[rows, cols]` row-major.
pub fn permute_rows(data: &mut [f32], rows: usize, cols: usize, n_head: usize) {
    let hd = rows / n_head;
    let half = hd / 2;
    let src = data.to_vec();
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                let to = h * hd + i * 2 + j;
                let from = h * hd + j * half + i;
                data[to * cols..(to + 1) * cols]
                    .copy_from_slice(&src[from * cols..(from + 1) * cols]);
            }
        }
    }
}

/// The llama.cpp name of a Hugging Face Llama linear layer's module path
/// (`model.layers.3.self_attn.q_proj` → `blk.3.attn_q`), if it is one.
pub fn gguf_module_name(hf_path: &str) -> Option<String> {
    let rest = hf_path.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let name = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}"))
}

/// A metadata value to write, with its GGUF type.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `UINT32` (type 4).
    U32(u32),
    /// `FLOAT32` (type 6).
    F32(f32),
    /// `STRING` (type 8).
    Str(String),
    /// Any type, already encoded (a value carried over from another file).
    Raw {
        /// GGUF metadata type id.
        type_id: u32,
        /// The encoded value.
        bytes: Vec<u8>,
    },
}

/// A tensor to write: its GGUF name, its shape in PyTorch order (outermost first; GGUF stores
/// the reverse) and its values, written as F32.
#[derive(Debug, Clone)]
pub struct TensorOut {
    /// GGUF name (`blk.0.attn_q.weight.lora_a`).
    pub name: String,
    /// PyTorch-order shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// The alignment of tensor data in files this writer makes (GGUF's default).
pub const ALIGNMENT: usize = 32;

/// A GGUF version 3 file as bytes: `metadata` in order, then the tensor directory and the F32
/// data of `tensors`, each aligned to [`ALIGNMENT`] bytes.
///
/// The writer is a short piece beside the reader (format:
/// <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>); files it writes are checked by
/// llama.cpp's own `gguf` Python package (`scripts/gguf_check.py`).
pub fn gguf_bytes(metadata: &[(&str, MetaValue)], tensors: &[TensorOut]) -> Vec<u8> {
    let raw: Vec<RawTensorOut> = tensors
        .iter()
        .map(|t| RawTensorOut {
            name: t.name.clone(),
            shape: t.shape.clone(),
            type_id: GgmlType::F32.id(),
            bytes: quantize(GgmlType::F32, &t.data).expect("f32 encodes any length"),
        })
        .collect();
    let mut out = Vec::new();
    write_gguf(&mut out, metadata, &raw).expect("writing to memory does not fail");
    out
}

/// The GGUF name of a Hugging Face Llama tensor (`model.layers.0.input_layernorm.weight` →
/// `blk.0.attn_norm.weight`): the inverse of the names [`GgufLlama`] reads.
pub fn gguf_tensor_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let (module, param) = hf.rsplit_once('.')?;
    if let Some(name) = gguf_module_name(module) {
        return Some(format!("{name}.{param}"));
    }
    let rest = module.strip_prefix("model.layers.")?;
    let (layer, norm) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let norm = match norm {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{norm}.{param}"))
}

/// `data` encoded as GGML type `ty`, the way llama.cpp's reference quantiser does it
/// (`quantize_row_q8_0_ref`: per 32 values, `d = max |x| / 127` stored as f16, `q = round(x / d)`).
/// `None` for a type this writer does not produce (F32, F16 and Q8_0 it does) or a length that
/// is not a whole number of blocks.
pub fn quantize(ty: GgmlType, data: &[f32]) -> Option<Vec<u8>> {
    Some(match ty {
        GgmlType::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => data
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 if data.len().is_multiple_of(32) => {
            let mut out = Vec::with_capacity(data.len() / 32 * 34);
            for block in data.chunks_exact(32) {
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(block.iter().map(|&v| (v * id).round() as i8 as u8));
            }
            out
        }
        _ => return None,
    })
}

/// A tensor as it is stored: GGML type id and encoded bytes.
#[derive(Debug, Clone)]
pub struct RawTensorOut {
    /// GGUF name.
    pub name: String,
    /// PyTorch-order shape.
    pub shape: Vec<usize>,
    /// GGML type id of `bytes`.
    pub type_id: u32,
    /// The encoded data.
    pub bytes: Vec<u8>,
}

/// Write a GGUF version 3 file to `w`: `metadata` in order, then the tensor directory and the
/// data of `tensors`, each aligned to [`ALIGNMENT`] bytes (see [`gguf_bytes`]).
pub fn write_gguf(
    w: &mut impl std::io::Write,
    metadata: &[(&str, MetaValue)],
    tensors: &[RawTensorOut],
) -> std::io::Result<()> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    let pad = |n: usize| (ALIGNMENT - n % ALIGNMENT) % ALIGNMENT;
    let mut head = Vec::new();
    head.extend(b"GGUF");
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut head, key);
        match value {
            MetaValue::U32(v) => {
                head.extend(4u32.to_le_bytes());
                head.extend(v.to_le_bytes());
            }
            MetaValue::F32(v) => {
                head.extend(6u32.to_le_bytes());
                head.extend(v.to_le_bytes());
            }
            MetaValue::Str(v) => {
                head.extend(8u32.to_le_bytes());
                string(&mut head, v);
            }
            MetaValue::Raw { type_id, bytes } => {
                head.extend(type_id.to_le_bytes());
                head.extend(bytes);
            }
        }
    }
    let mut offset = 0usize;
    for t in tensors {
        string(&mut head, &t.name);
        head.extend((t.shape.len() as u32).to_le_bytes());
        for d in t.shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(t.type_id.to_le_bytes());
        head.extend((offset as u64).to_le_bytes());
        offset += t.bytes.len();
        offset += pad(offset);
    }
    head.resize(head.len() + pad(head.len()), 0);
    w.write_all(&head)?;
    let zeros = [0u8; ALIGNMENT];
    for t in tensors {
        w.write_all(&t.bytes)?;
        w.write_all(&zeros[..pad(t.bytes.len())])?;
    }
    w.flush()
}

/// A GGUF llama-family file seen through Hugging Face tensor names
/// (`model.layers.0.self_attn.q_proj.weight`, ...), with q/k rows in HF order.
pub struct GgufLlama {
    /// The file.
    pub file: GgufFile,
    n_head: usize,
    n_kv_head: usize,
    names: HashMap<String, String>,
}

fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, param) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{param}"))
}

impl GgufLlama {
    /// Wrap an opened file; `n_head`/`n_kv_head` drive the q/k un-permutation.
    pub fn new(file: GgufFile, n_head: usize, n_kv_head: usize) -> Self {
        let names = file
            .tensors
            .keys()
            .filter_map(|g| hf_name(g).map(|h| (h, g.clone())))
            .collect();
        Self {
            file,
            n_head,
            n_kv_head,
            names,
        }
    }
}

impl TensorSource for GgufLlama {
    fn path(&self) -> &Path {
        &self.file.path
    }
    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.names.keys().cloned().collect();
        v.sort();
        v
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.names
            .get(name)
            .and_then(|g| self.file.tensors.get(g))
            .map(TensorInfo::shape)
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        let gguf = self
            .names
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.file.path.clone(),
                tensor: name.to_string(),
                count: self.names.len(),
            })?;
        let mut t = self.file.dequantize(gguf)?;
        if gguf.ends_with("attn_q.weight") {
            unpermute_rows(&mut t, self.n_head);
        } else if gguf.ends_with("attn_k.weight") {
            unpermute_rows(&mut t, self.n_kv_head);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_q4_1_q8_0_match_the_ggml_formulas() {
        // Q4_0: d = 0.5, nibbles 0..15 -> (q - 8) * d.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        for j in 0..16 {
            b[2 + j] = (j as u8) | (((15 - j) as u8) << 4);
        }
        let v = dequantize(GgmlType::Q4_0, &b, 32);
        assert_eq!(v[3], (3.0 - 8.0) * 0.5);
        assert_eq!(v[16 + 3], (12.0 - 8.0) * 0.5);
        // Q4_1: x = q * d + m.
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(0.25).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4 + 5] = 0x3A;
        let v = dequantize(GgmlType::Q4_1, &b, 32);
        assert_eq!(v[5], 10.0 * 0.25 - 1.0);
        assert_eq!(v[21], 3.0 * 0.25 - 1.0);
        // Q8_0: x = q * d, q signed.
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2 + 7] = (-3i8) as u8;
        let v = dequantize(GgmlType::Q8_0, &b, 32);
        assert_eq!(v[7], -6.0);
    }

    #[test]
    fn q5_high_bits_come_from_qh() {
        let mut b = vec![0u8; 22];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2..6].copy_from_slice(&((1u32 << 2) | (1u32 << 18)).to_le_bytes());
        b[6 + 2] = 0x21;
        let v = dequantize(GgmlType::Q5_0, &b, 32);
        assert_eq!(v[2], (1 + 16 - 16) as f32);
        assert_eq!(v[18], (2 + 16 - 16) as f32);
        assert_eq!(v[0], -16.0);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // llama.cpp: w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(out, in)
        let (n_head, hd, cols) = (3, 4, 2);
        let out = n_head * hd;
        let hf: Vec<f32> = (0..out * cols).map(|v| v as f32).collect();
        let mut permuted = vec![0f32; out * cols];
        for h in 0..n_head {
            for two in 0..2 {
                for i in 0..hd / 2 {
                    let src = h * hd + two * (hd / 2) + i;
                    let dst = h * hd + i * 2 + two;
                    permuted[dst * cols..(dst + 1) * cols]
                        .copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        let mut t = HostTensor {
            shape: vec![out, cols],
            data: permuted,
        };
        unpermute_rows(&mut t, n_head);
        assert_eq!(t.data, hf);
    }

    #[test]
    fn permute_rows_is_llama_cpp_permute_and_unpermute_inverts_it() {
        let (n_head, hd, cols) = (2, 6, 3);
        let rows = n_head * hd;
        let hf: Vec<f32> = (0..rows * cols).map(|v| v as f32).collect();
        let mut p = hf.clone();
        permute_rows(&mut p, rows, cols, n_head);
        // llama.cpp: row h·hd + i·2 + two of the result is row h·hd + two·hd/2 + i of the input.
        for h in 0..n_head {
            for i in 0..hd / 2 {
                for two in 0..2 {
                    let (to, from) = (h * hd + i * 2 + two, h * hd + two * hd / 2 + i);
                    assert_eq!(
                        p[to * cols..(to + 1) * cols],
                        hf[from * cols..(from + 1) * cols]
                    );
                }
            }
        }
        let mut t = HostTensor {
            shape: vec![rows, cols],
            data: p,
        };
        unpermute_rows(&mut t, n_head);
        assert_eq!(t.data, hf);
    }

    #[test]
    fn q8_0_is_llama_cpp_reference_rounding() {
        // By hand: d = max |x| / 127 stored as f16, q = round(x / d), half away from zero.
        let mut x = vec![0f32; 64];
        x[0] = 1.0;
        x[1] = 0.3; // 38.1 → 38
        x[2] = -0.5; // -63.5 → -64
        x[32] = -2.0; // second block: d = 2 / 127, q = -127
        x[33] = 1.0; // 63.5 → 64
        let b = quantize(GgmlType::Q8_0, &x).unwrap();
        assert_eq!(b.len(), 2 * 34);
        assert_eq!(b[0..2], f16::from_f32(1.0 / 127.0).to_le_bytes());
        assert_eq!(&b[2..5], &[127u8, 38, (-64i8) as u8]);
        assert!(b[5..34].iter().all(|&q| q == 0));
        assert_eq!(b[34..36], f16::from_f32(2.0 / 127.0).to_le_bytes());
        assert_eq!(&b[36..38], &[(-127i8) as u8, 64]);
        let back = dequantize(GgmlType::Q8_0, &b, 64);
        assert_eq!(back[0], 127.0 * f16::from_f32(1.0 / 127.0).to_f32());
        // An all-zero block has d = 0 and zero quants; lengths not whole blocks are refused.
        assert!(
            quantize(GgmlType::Q8_0, &[0.0; 32])
                .unwrap()
                .iter()
                .all(|&v| v == 0)
        );
        assert!(quantize(GgmlType::Q8_0, &[1.0; 48]).is_none());
        assert!(quantize(GgmlType::Q4_1, &[1.0; 32]).is_none());
        // F16 is IEEE rounding.
        assert_eq!(
            quantize(GgmlType::F16, &[1.0 + 1.0 / 4096.0, 65504.0]).unwrap(),
            [f16::ONE.to_le_bytes(), f16::MAX.to_le_bytes()].concat()
        );
    }

    #[test]
    fn gguf_tensor_names_invert_the_loader_names() {
        let mut names = vec![
            "token_embd.weight".to_string(),
            "output_norm.weight".into(),
            "output.weight".into(),
        ];
        for m in [
            "attn_norm",
            "ffn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ] {
            names.push(format!("blk.12.{m}.weight"));
        }
        for g in &names {
            let hf = hf_name(g).unwrap();
            assert_eq!(gguf_tensor_name(&hf).as_deref(), Some(g.as_str()), "{hf}");
        }
        assert_eq!(
            gguf_tensor_name("model.layers.3.self_attn.q_proj.weight").as_deref(),
            Some("blk.3.attn_q.weight")
        );
        assert_eq!(gguf_tensor_name("model.layers.x.mlp.up_proj.weight"), None);
        assert_eq!(gguf_tensor_name("bert.pooler.dense.weight"), None);
    }

    #[test]
    fn written_gguf_reads_back() {
        let dir = std::env::temp_dir().join(format!("gralora-gguf-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.gguf");
        let tensors = vec![
            TensorOut {
                name: "a".into(),
                shape: vec![2, 3],
                data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            },
            TensorOut {
                name: "b".into(),
                shape: vec![5],
                data: vec![-1.0; 5],
            },
        ];
        let meta = [
            ("general.type", MetaValue::Str("adapter".into())),
            ("x.alpha", MetaValue::F32(0.5)),
            ("x.n", MetaValue::U32(7)),
        ];
        std::fs::write(&path, gguf_bytes(&meta, &tensors)).unwrap();
        let f = GgufFile::open(&path).unwrap();
        assert_eq!(f.version, 3);
        assert_eq!(f.meta_str("general.type").unwrap(), "adapter");
        assert_eq!(f.meta_f64("x.alpha").unwrap(), 0.5);
        assert_eq!(f.meta_u64("x.n").unwrap(), 7);
        assert_eq!(f.tensors["a"].shape(), [2, 3]);
        assert_eq!(f.tensors["a"].offset % ALIGNMENT, 0);
        assert_eq!(f.tensors["b"].offset % ALIGNMENT, 0);
        assert_eq!(f.dequantize("a").unwrap().data, tensors[0].data);
        assert_eq!(f.dequantize("b").unwrap().data, tensors[1].data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn hf_names() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight").as_deref(),
            Some("model.layers.0.mlp.down_proj.weight")
        );
        assert_eq!(hf_name("rope_freqs.weight"), None);
    }
}
