//! Named tensors from weight files, and turning them into burn modules.
//!
//! Shapes are in PyTorch order (`[out, in]` for linear weights) whatever the file format;
//! [`Loader`] checks every shape against what the model's config implies and transposes linear
//! weights into burn's `[in, out]`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::{Device, Tensor, TensorData};
use gralora::io::{decode_floats, f32_bytes, transpose};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::{ModelError, Result};

/// A tensor on the host, f32, row-major, PyTorch shape order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// A file of named tensors.
pub trait TensorSource {
    /// The file, for errors.
    fn path(&self) -> &Path;
    /// All tensor names.
    fn names(&self) -> Vec<String>;
    /// A tensor's shape (PyTorch order), if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Decode a tensor to f32.
    fn read(&self, name: &str) -> Result<HostTensor>;
}

pub(crate) fn mmap(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    // Safety: the file is opened read-only and we never hand out the map beyond this
    // process; a concurrent truncation by another process is the usual mmap caveat.
    unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))
}

/// A `.safetensors` file, memory-mapped.
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    header_len: usize,
    infos: HashMap<String, safetensors::tensor::TensorInfo>,
}

impl SafetensorsFile {
    /// Open and validate (header, offsets, file length) a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = mmap(&path)?;
        SafeTensors::deserialize(&map).map_err(|e| {
            ModelError::format(
                &path,
                format!("not a valid safetensors file ({e}); is it truncated?"),
            )
        })?;
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| ModelError::format(&path, format!("bad safetensors header: {e}")))?;
        let infos = meta
            .tensors()
            .into_iter()
            .map(|(k, v)| (k, v.clone()))
            .collect();
        Ok(Self {
            path,
            map,
            header_len,
            infos,
        })
    }
}

impl TensorSource for SafetensorsFile {
    fn path(&self) -> &Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.infos.keys().cloned().collect();
        names.sort();
        names
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.infos.get(name).map(|i| i.shape.clone())
    }
    fn read(&self, name: &str) -> Result<HostTensor> {
        let info = self
            .infos
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                count: self.infos.len(),
            })?;
        let start = 8 + self.header_len + info.data_offsets.0;
        let end = 8 + self.header_len + info.data_offsets.1;
        let bytes = &self.map[start..end];
        let data = decode_floats(info.dtype, bytes).ok_or_else(|| ModelError::UnsupportedType {
            path: self.path.clone(),
            tensor: name.to_string(),
            dtype: format!("{:?}", info.dtype),
            supported: "F32, F16, BF16",
        })?;
        Ok(HostTensor {
            shape: info.shape.clone(),
            data,
        })
    }
}

/// Builds burn modules from a [`TensorSource`], checking every shape.
pub struct Loader<'a> {
    source: &'a dyn TensorSource,
    device: Device,
    /// Rename applied to every requested name before lookup (e.g. a `bert.` prefix).
    prefix: String,
}

impl<'a> Loader<'a> {
    /// Load from `source` onto `device`.
    pub fn new(source: &'a dyn TensorSource, device: &Device) -> Self {
        Self {
            source,
            device: device.clone(),
            prefix: String::new(),
        }
    }

    /// Look names up under `prefix` (e.g. `"bert."` for checkpoints saved from a task model).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The device modules are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Whether the source holds `name`.
    pub fn has(&self, name: &str) -> bool {
        self.source
            .shape(&format!("{}{name}", self.prefix))
            .is_some()
    }

    /// A tensor with exactly `shape`, on the host. A NaN or infinite value is an error naming
    /// the tensor: a corrupt file is refused at load, not found later as a NaN loss.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let full = format!("{}{name}", self.prefix);
        let found = self
            .source
            .shape(&full)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.source.path().to_path_buf(),
                tensor: full.clone(),
                count: self.source.names().len(),
            })?;
        if found != shape {
            return Err(ModelError::Shape {
                path: self.source.path().to_path_buf(),
                tensor: full,
                expected: shape.to_vec(),
                found,
            });
        }
        let t = self.source.read(&full)?;
        if let Some((i, v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ModelError::format(
                self.source.path(),
                format!(
                    "tensor `{full}` holds {v} at element {i} of {}; the file is corrupt (fetch or export it again)",
                    t.data.len()
                ),
            ));
        }
        Ok(t)
    }

    /// A tensor with exactly `shape`, on the device.
    pub fn tensor<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>> {
        let host = self.host(name, &shape)?;
        Ok(Tensor::from_data(
            TensorData::new(host.data, shape),
            &self.device,
        ))
    }

    /// A frozen linear layer from `{name}.weight` `[out, in]` (+ `{name}.bias` `[out]`).
    pub fn linear(&self, name: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        // Transposed on the host: a transposed device view would be copied on every forward.
        let w = self.host(&format!("{name}.weight"), &[d_out, d_in])?;
        let t = transpose(&w.data, d_out, d_in);
        let weight: Tensor<2> = Tensor::from_data(TensorData::new(t, [d_in, d_out]), &self.device);
        let bias = if bias {
            Some(Param::from_tensor(
                self.tensor(&format!("{name}.bias"), [d_out])?,
            ))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// An embedding table `{name}.weight` `[n, d]`.
    pub fn embedding(&self, name: &str, n: usize, d: usize) -> Result<Embedding> {
        Ok(Embedding {
            weight: Param::from_tensor(self.tensor(&format!("{name}.weight"), [n, d])?),
        })
    }

    /// A layer norm from `{name}.weight` and `{name}.bias` `[d]` (HF names; `gamma`/`beta` accepted).
    pub fn layer_norm(&self, name: &str, d: usize, eps: f64) -> Result<LayerNorm> {
        let (w, b) = if self.has(&format!("{name}.gamma")) {
            ("gamma", "beta")
        } else {
            ("weight", "bias")
        };
        let mut norm = LayerNormConfig::new(d).with_epsilon(eps).init(&self.device);
        norm.gamma = Param::from_tensor(self.tensor(&format!("{name}.{w}"), [d])?);
        norm.beta = Some(Param::from_tensor(
            self.tensor(&format!("{name}.{b}"), [d])?,
        ));
        Ok(norm)
    }
}

/// Tensors to write as a Hugging Face checkpoint: `(name, PyTorch shape, f32 data)`.
pub type Export = Vec<(String, Vec<usize>, Vec<f32>)>;

fn to_vec<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    Ok(gralora::io::read_f32(t)?)
}

/// `{name}.weight` `[out, in]` (+ `{name}.bias`) of a linear layer, with its adapter's ΔW merged in
/// when one is attached (and not merged already).
pub fn export_linear(out: &mut Export, name: &str, layer: &gralora::AdaptedLinear) -> Result<()> {
    let (d_in, d_out) = layer.dims();
    let mut w = layer.base.weight.val();
    if let (Some(delta), false) = (layer.delta_weight(), layer.merged) {
        w = w + delta;
    }
    let w = to_vec(w)?;
    let t = transpose(&w, d_in, d_out);
    out.push((format!("{name}.weight"), vec![d_out, d_in], t));
    if let Some(b) = &layer.base.bias {
        out.push((format!("{name}.bias"), vec![d_out], to_vec(b.val())?));
    }
    Ok(())
}

/// `{name}.weight` of an embedding table.
pub fn export_embedding(out: &mut Export, name: &str, e: &Embedding) -> Result<()> {
    let [n, d] = e.weight.shape().dims::<2>();
    out.push((
        format!("{name}.weight"),
        vec![n, d],
        to_vec(e.weight.val())?,
    ));
    Ok(())
}

/// `{name}.weight` / `{name}.bias` of a layer norm.
pub fn export_layer_norm(out: &mut Export, name: &str, n: &LayerNorm) -> Result<()> {
    let [d] = n.gamma.shape().dims::<1>();
    out.push((format!("{name}.weight"), vec![d], to_vec(n.gamma.val())?));
    if let Some(b) = &n.beta {
        out.push((format!("{name}.bias"), vec![d], to_vec(b.val())?));
    }
    Ok(())
}

/// `{name}.weight` of an RMS norm.
pub fn export_rms_norm(out: &mut Export, name: &str, n: &burn::nn::RmsNorm) -> Result<()> {
    let [d] = n.gamma.shape().dims::<1>();
    out.push((format!("{name}.weight"), vec![d], to_vec(n.gamma.val())?));
    Ok(())
}

/// Write tensors as `model.safetensors` (F32), atomically (temp file + rename).
pub fn write_safetensors(path: &Path, tensors: &Export) -> Result<()> {
    write_safetensors_with(path, tensors, Vec::new())
}

/// As [`write_safetensors`], plus `extra` tensors copied as they are (any dtype).
pub fn write_safetensors_with(
    path: &Path,
    tensors: &Export,
    extra: Vec<(String, safetensors::tensor::TensorView<'_>)>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, d)| f32_bytes(d)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ModelError::format(path, format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .chain(extra)
        .collect::<Vec<_>>();
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let data = safetensors::serialize(views, Some(meta))
        .map_err(|e| ModelError::format(path, e.to_string()))?;
    write_atomic(path, &data)
}

/// Write a file atomically: a temporary file beside it, then rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    gralora::io::write_atomic(path, bytes).map_err(|e| ModelError::io(path, e))
}
