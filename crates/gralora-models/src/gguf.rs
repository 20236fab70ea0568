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
    fn from_id(id: u32) -> Option<Self> {
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
        for _ in 0..n_kv {
            let key = c.string()?;
            let ty = c.u32()?;
            let value = c.value(ty, 0)?;
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
        })
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
        let n = info.numel();
        let raw = &self.map[info.offset..info.offset + n / per * bytes];
        Ok(HostTensor {
            shape: info.shape(),
            data: dequantize(ty, raw, n),
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
