//! Small constant buffers the kernels read (the info words of a block-matmul spec, the twin's
//! split factors and alpha), uploaded once per device, thread and content, and reused.
//!
//! A fresh upload per launch costs a buffer write, and in cubecl-wgpu a buffer write first
//! flushes the queued work, so an upload per adapter product broke the step's dispatch batching
//! and made the step's uploads grow with the number of adapted layers. The contents depend only
//! on the spec (shapes, maps, split-K), so a training run needs a few dozen of them.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::thread::ThreadId;

use burn_cubecl::cubecl::server::Handle;
use burn_cubecl::tensor::CubeTensor;

use crate::kernels::host_write;

/// The device (its cubecl service id, hashed), the thread, the bytes.
type Key = (u64, ThreadId, Vec<u8>);

/// Past this many buffers the cache starts over (shapes that never repeat).
const LIMIT: usize = 4096;

static CACHE: LazyLock<Mutex<HashMap<Key, Handle>>> = LazyLock::new(Default::default);

/// A device buffer holding `bytes`, on `like`'s device, uploaded on first use. Handles are per
/// thread because a cubecl handle belongs to the stream (thread) that created it.
pub(super) fn constant(like: &CubeTensor, bytes: &[u8]) -> Handle {
    let service = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        like.client.service_id().hash(&mut h);
        h.finish()
    };
    let key = (service, std::thread::current().id(), bytes.to_vec());
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(h) = cache.get(&key) {
        return h.clone();
    }
    if cache.len() >= LIMIT {
        cache.clear();
    }
    host_write(1);
    let handle = like.client.create_from_slice(bytes);
    cache.insert(key, handle.clone());
    handle
}
