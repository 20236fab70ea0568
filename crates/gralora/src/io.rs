//! Small host-side helpers shared by the file formats (PEFT adapters here, model weights in
//! `gralora-models`).

use std::path::Path;

use burn::tensor::Tensor;
use safetensors::Dtype;

use crate::error::AdapterError;

/// A float tensor's values on the host as f32. A failed device read is an error, never an empty
/// vector.
/// Counted as a host read ([`crate::kernels::host_read`]).
pub fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>, AdapterError> {
    crate::kernels::host_read();
    t.try_into_data_as::<f32>()
        .map_err(|e| AdapterError::DeviceRead(format!("{e:?}")))?
        .try_into_vec::<f32>()
        .map_err(|e| AdapterError::DeviceRead(format!("{e:?}")))
}

/// Decode little-endian F32, F16 or BF16 bytes to f32; `None` for any other dtype.
pub fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

/// The transpose of a row-major `[rows, cols]` matrix (PyTorch `[out, in]` <-> burn `[in, out]`).
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    debug_assert_eq!(data.len(), rows * cols);
    let mut t = vec![0f32; data.len()];
    for (r, row) in data.chunks_exact(cols).enumerate() {
        for (c, v) in row.iter().enumerate() {
            t[c * rows + r] = *v;
        }
    }
    t
}

/// Write a file atomically: a temporary file beside it, then a rename. On error nothing is left.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Little-endian f32 bytes (for safetensors views).
pub fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}
