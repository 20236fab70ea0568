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

/// Replace `path` with what `write` puts into a temporary file beside it (`.STEM.XXXXXX.EXT`:
/// the extension kept for writers that choose a format by it, the leading dot keeping it out of
/// the names readers look for). The file is written, flushed to the disk (`fsync`) and renamed
/// over `path`, so `path` is always either the old complete file or the new complete one —
/// after a kill at any moment, a write error (a full disk, a file-size limit) or a power loss.
/// On error the temporary file is removed.
pub fn replace_with(
    path: &Path,
    write: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path
        .file_stem()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    let prefix = format!(".{stem}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(&ext);
    // A temporary file is private (0600); the file it becomes gets the mode any new file gets
    // (0666 less the umask), like one `File::create` makes.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let tmp = builder.tempfile_in(dir)?;
    write(tmp.path())?;
    // `write` may have written through its own handle: fsync is per file, so any handle does.
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename itself is durable once the directory is synced (not possible everywhere).
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    Ok(())
}

/// Write a file atomically (see [`replace_with`]): the old complete file or the new complete
/// file, never a part; on error nothing new is left.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace_with(path, |tmp| std::fs::write(tmp, bytes))
}

/// Little-endian f32 bytes (for safetensors views).
pub fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    #[cfg(unix)]
    #[test]
    fn a_replaced_file_has_the_mode_of_a_created_one() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let atomic = dir.path().join("atomic.json");
        super::write_atomic(&atomic, b"{}").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&plain));
        assert_eq!(std::fs::read(&atomic).unwrap(), b"{}");
    }
}
