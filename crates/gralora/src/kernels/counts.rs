//! Device work counted as it is issued, for the step benchmark and the step budgets: kernel
//! launches (cubecl's launch observer, which only counts: it never times a launch, so the
//! kernels still run back to back), distinct kernels (cubecl's launched-kernel collection, by
//! kernel id: every compiled pipeline, autotune candidates included, is launched at least once),
//! what burn's Fusion registers and runs (its observer), and the engine's own host transfers.
//!
//! Host transfers have no hook in cubecl or burn, so they are counted where this workspace makes
//! them: every read of a device tensor to the host through [`crate::io::read_f32`] or a caller
//! that reports one with [`host_read`], and every upload the custom ops make or a caller reports
//! with [`host_write`] (the trainer reports its batches' tensors). Transfers burn makes on its
//! own (none in a training step) are not seen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use burn_cubecl::cubecl::hash::StableHash;
use burn_cubecl::cubecl::launched::LaunchedKernels;
use burn_cubecl::cubecl::logging::{LaunchObservation, LaunchObserver};
use burn_fusion::observer::{BlockOperations, FusionObservation, FusionObserver};
use burn_ir::OperationIr;

/// cubecl's dry run: while one lives, every launch is issued, counted, compiled and cached, then
/// dropped instead of executed (autotune's measurements still run). Counting a workload that
/// reads nothing back under it gives the counts of a real run without its device time.
pub use burn_cubecl::cubecl::dry_run::DryRun;

static HOST_READS: AtomicU64 = AtomicU64::new(0);
static HOST_WRITES: AtomicU64 = AtomicU64::new(0);

/// Count one read of device data to the host (a scalar, a tensor, a sync that waits for the
/// device). [`crate::io::read_f32`] counts its own.
pub fn host_read() {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
}

/// Count `n` uploads of host data to the device (one per buffer written).
pub fn host_write(n: u64) {
    HOST_WRITES.fetch_add(n, Ordering::Relaxed);
}

/// Totals of device work between two points of a [`Counting`], or since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Kernel launches issued to a cubecl device (fused kernels, burn's own kernels, the custom
    /// ops' kernels, autotune's candidate runs).
    pub launches: u64,
    /// Launches by kernel name, when the counting was started with names.
    pub by_kernel: BTreeMap<String, u64>,
    /// Reads of device data to the host (see the module's note on what is seen).
    pub host_reads: u64,
    /// Uploads of host data to the device (see the module's note).
    pub host_writes: u64,
    /// Operations registered with burn's Fusion (0 on a device without Fusion).
    pub fusion_ops: u64,
    /// Blocks Fusion ran: each one fused kernel, or one operation run on its own.
    pub fusion_blocks: u64,
    /// Of those, blocks that fused more than one operation.
    pub fused_blocks: u64,
    /// Custom (backend-extension) operations registered: each a Fusion barrier that no fused
    /// kernel absorbs.
    pub opaque_ops: u64,
}

/// One line: launches, host reads and writes, and Fusion's operations, blocks and opaque ops.
impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} launches, {} host reads, {} host writes; Fusion: {} ops, {} blocks ({} fused), {} opaque",
            self.launches,
            self.host_reads,
            self.host_writes,
            self.fusion_ops,
            self.fusion_blocks,
            self.fused_blocks,
            self.opaque_ops
        )
    }
}

impl Counts {
    /// What happened from `earlier` to `self` (both from one [`Counting`]).
    pub fn since(&self, earlier: &Counts) -> Counts {
        let by_kernel = self
            .by_kernel
            .iter()
            .filter_map(|(name, &n)| {
                let d = n - earlier.by_kernel.get(name).copied().unwrap_or(0);
                (d > 0).then(|| (name.clone(), d))
            })
            .collect();
        Counts {
            launches: self.launches - earlier.launches,
            by_kernel,
            host_reads: self.host_reads - earlier.host_reads,
            host_writes: self.host_writes - earlier.host_writes,
            fusion_ops: self.fusion_ops - earlier.fusion_ops,
            fusion_blocks: self.fusion_blocks - earlier.fusion_blocks,
            fused_blocks: self.fused_blocks - earlier.fused_blocks,
            opaque_ops: self.opaque_ops - earlier.opaque_ops,
        }
    }
}

#[derive(Default)]
struct Observer {
    names: bool,
    launches: AtomicU64,
    by_kernel: Mutex<HashMap<&'static str, u64>>,
    fusion_ops: AtomicU64,
    fusion_blocks: AtomicU64,
    fused_blocks: AtomicU64,
    opaque_ops: AtomicU64,
}

impl LaunchObserver for Observer {
    fn launched(&self, kernel: &'static str) {
        self.launches.fetch_add(1, Ordering::Relaxed);
        if self.names {
            let mut names = self.by_kernel.lock().unwrap_or_else(|e| e.into_inner());
            *names.entry(kernel).or_default() += 1;
        }
    }
}

impl FusionObserver for Observer {
    fn registered(&self, operation: &OperationIr) {
        self.fusion_ops.fetch_add(1, Ordering::Relaxed);
        if matches!(operation, OperationIr::Custom(_)) {
            self.opaque_ops.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn block_starts(&self, block: BlockOperations<'_>) {
        self.fusion_blocks.fetch_add(1, Ordering::Relaxed);
        if block.iter().len() > 1 {
            self.fused_blocks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn block_ran(&self) {}
}

/// Counts device work from [`Counting::start`] until it is dropped (or
/// [`finish`](Counting::finish)ed). The observers are process-wide: work issued by every thread
/// and device in that span is counted, so count one workload at a time.
///
/// Fusion reports an operation when its server processes it, which lags the call that recorded
/// it: sync the device before taking a [`snapshot`](Counting::snapshot) that should include
/// what came just before.
pub struct Counting {
    observer: Arc<Observer>,
    reads0: u64,
    writes0: u64,
    kernels: Option<LaunchedKernels>,
    seen: HashSet<StableHash>,
    _launches: LaunchObservation,
    _fusion: FusionObservation,
}

impl std::fmt::Debug for Counting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counting")
            .field("counts", &self.snapshot())
            .finish()
    }
}

impl Counting {
    /// Start counting; with `names`, launches are also counted by kernel name (a map update per
    /// launch instead of one atomic add).
    pub fn start(names: bool) -> Self {
        let observer = Arc::new(Observer {
            names,
            ..Observer::default()
        });
        Self {
            reads0: HOST_READS.load(Ordering::Relaxed),
            writes0: HOST_WRITES.load(Ordering::Relaxed),
            kernels: Some(LaunchedKernels::new()),
            seen: HashSet::new(),
            _launches: LaunchObservation::new(observer.clone()),
            _fusion: FusionObservation::new(observer.clone()),
            observer,
        }
    }

    /// The totals since the start.
    pub fn snapshot(&self) -> Counts {
        let o = &self.observer;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let by_kernel = o
            .by_kernel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, &n)| (short_name(k), n))
            .fold(BTreeMap::new(), |mut m, (k, n)| {
                *m.entry(k).or_default() += n;
                m
            });
        Counts {
            launches: get(&o.launches),
            by_kernel,
            host_reads: HOST_READS.load(Ordering::Relaxed) - self.reads0,
            host_writes: HOST_WRITES.load(Ordering::Relaxed) - self.writes0,
            fusion_ops: get(&o.fusion_ops),
            fusion_blocks: get(&o.fusion_blocks),
            fused_blocks: get(&o.fused_blocks),
            opaque_ops: get(&o.opaque_ops),
        }
    }

    /// How many distinct kernels (kernel ids: a kernel type with its compile-time arguments and
    /// launch settings) were launched since the last call (or the start) that none launched in
    /// this counting before had been. On a device that compiles a kernel at its first launch
    /// (every cubecl runtime; autotune's candidates are launched too), the kernels compiled in
    /// that span, if none had been compiled before the counting started.
    pub fn new_kernels(&mut self) -> usize {
        let launched = self.kernels.take().map(LaunchedKernels::finish);
        self.kernels = Some(LaunchedKernels::new());
        launched
            .into_iter()
            .flatten()
            .filter(|h| self.seen.insert(*h))
            .count()
    }
}

/// A kernel's type name without its module path or generic arguments.
fn short_name(name: &str) -> String {
    let base = name.split('<').next().unwrap_or(name);
    base.rsplit("::").next().unwrap_or(base).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_lose_their_paths_and_generics() {
        assert_eq!(
            short_name("burn_cubecl::kernel::matmul::Tiled<f32, 4>"),
            "Tiled"
        );
        assert_eq!(short_name("ElemwiseFuse"), "ElemwiseFuse");
    }

    #[test]
    fn counts_since_subtract_every_field() {
        let a = Counts {
            launches: 3,
            by_kernel: [("x".to_string(), 2)].into(),
            host_reads: 1,
            ..Counts::default()
        };
        let b = Counts {
            launches: 10,
            by_kernel: [("x".to_string(), 2), ("y".to_string(), 4)].into(),
            host_reads: 2,
            opaque_ops: 5,
            ..Counts::default()
        };
        let d = b.since(&a);
        assert_eq!(d.launches, 7);
        assert_eq!(d.by_kernel, [("y".to_string(), 4)].into());
        assert_eq!(d.host_reads, 1);
        assert_eq!(d.opaque_ops, 5);
        assert_eq!(
            d.to_string(),
            "7 launches, 1 host reads, 0 host writes; Fusion: 0 ops, 0 blocks (0 fused), 5 opaque"
        );
    }
}
