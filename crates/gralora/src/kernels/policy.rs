//! [`KernelPolicy`]: which form of the block-matmul op runs on cubecl devices. One process-wide
//! value, set in code ([`set_kernel_policy`], [`with_kernel_policy`]); the library never reads the
//! environment (the `gralora` binary does, through [`KernelPolicy::from_vars`]).

use std::sync::{Mutex, RwLock};

/// The kernel a block matmul runs on a runtime that compiles WGSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelForm {
    /// The direct kernel on a software device (lavapipe), the tiled kernel (tuned) on a GPU.
    #[default]
    Auto,
    /// The tiled (workgroup-memory) kernel everywhere, software devices included (to test the
    /// GPUs' kernel on lavapipe).
    Tiled,
    /// The `#[cube]` twin even where WGSL would do (to test it anywhere).
    CubeTwin,
    /// What a runtime that compiles no WGSL runs (burn's `vulkan` SPIR-V build, Metal, CUDA):
    /// the two-pass form (burn's autotuned matmul through strided views), or the `#[cube]` twin
    /// where a map has a partial last block. Forced, it runs so on wgpu too (to test it there).
    Portable,
}

/// How the block-matmul op runs on cubecl devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Which kernel.
    pub form: KernelForm,
    /// The direct kernel reads and writes `vec4`s where the maps are aligned (off: scalar loads
    /// and stores, to compare their speed).
    pub vector_loads: bool,
    /// The direct kernel shares one operand's loads over a subgroup's lanes where the device's
    /// lane order is known (lavapipe); off: every thread loads its own (the form other software
    /// devices run).
    pub shared_loads: bool,
    /// Cut every tiled product's reduction into this many parts (split-K); `None`: chosen per shape.
    pub split_k: Option<usize>,
    /// Tune the tiled kernel's plan per shape class: `None` on a GPU only, `Some(false)` never,
    /// `Some(true)` on a software device too (with [`KernelForm::Tiled`]).
    pub tune: Option<bool>,
    /// Run the tuner's candidate `i` (below [`KernelPolicy::CANDIDATES`]) instead of the default
    /// or tuned plan; the last candidate, the two-pass form, falls back to the default plan where
    /// a map has a partial last block.
    pub candidate: Option<usize>,
}

impl Default for KernelPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static POLICY: RwLock<KernelPolicy> = RwLock::new(KernelPolicy::DEFAULT);

/// Serialises [`with_kernel_policy`] calls.
static SCOPE: Mutex<()> = Mutex::new(());

impl KernelPolicy {
    /// Every form chosen by the device and the shape: the direct kernel on software devices, the
    /// tuned tiled kernel on GPUs, vec4 and shared loads where they apply.
    pub const DEFAULT: Self = Self {
        form: KernelForm::Auto,
        vector_loads: true,
        shared_loads: true,
        split_k: None,
        tune: None,
        candidate: None,
    };

    /// How many candidates the tuner times for a tiled-kernel block matmul: the tiled WGSL
    /// kernel's plans (tile shapes, with and without split-K; fewer are timed where several come
    /// to the same plan for a shape), then, last, the two-pass form (operands copied out of their
    /// maps where they are not plain matrices, burn's matmul kernel, the result copied through the
    /// output map).
    pub const CANDIDATES: usize = crate::backends::cube::TUNED_CANDIDATES;

    /// The policy the variables `lookup` returns describe (the binary passes the environment's):
    /// `GRALORA_WGSL_TILED=1` ([`KernelForm::Tiled`]), `GRALORA_CUBE_TWIN=1`
    /// ([`KernelForm::CubeTwin`]), `GRALORA_PORTABLE=1` ([`KernelForm::Portable`]),
    /// `GRALORA_WGSL_SCALAR=1`, `GRALORA_WGSL_NO_SHARE=1`,
    /// `GRALORA_SPLIT_K=n`, `GRALORA_WGSL_TUNE=0|1`, `GRALORA_WGSL_CANDIDATE=i`. A value that is
    /// not one of these is an error naming the variable.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let flag = |name: &str| -> Result<bool, String> {
            match lookup(name).as_deref() {
                None | Some("0") | Some("") => Ok(false),
                Some("1") => Ok(true),
                Some(v) => Err(format!("{name}={v:?} must be 0 or 1")),
            }
        };
        let count = |name: &str, below: usize| -> Result<Option<usize>, String> {
            lookup(name)
                .map(|v| match v.parse::<usize>() {
                    Ok(n) if n < below => Ok(n),
                    _ => Err(format!("{name}={v:?} must be a count below {below}")),
                })
                .transpose()
        };
        let form = match (
            flag("GRALORA_WGSL_TILED")?,
            flag("GRALORA_CUBE_TWIN")?,
            flag("GRALORA_PORTABLE")?,
        ) {
            (_, true, _) => KernelForm::CubeTwin,
            (_, false, true) => KernelForm::Portable,
            (true, false, false) => KernelForm::Tiled,
            (false, false, false) => KernelForm::Auto,
        };
        let tune = match lookup("GRALORA_WGSL_TUNE").as_deref() {
            None => None,
            Some("0") => Some(false),
            Some("1") => Some(true),
            Some(v) => return Err(format!("GRALORA_WGSL_TUNE={v:?} must be 0 or 1")),
        };
        Ok(Self {
            form,
            vector_loads: !flag("GRALORA_WGSL_SCALAR")?,
            shared_loads: !flag("GRALORA_WGSL_NO_SHARE")?,
            split_k: count("GRALORA_SPLIT_K", 65536)?.map(|n| n.max(1)),
            tune,
            candidate: count("GRALORA_WGSL_CANDIDATE", Self::CANDIDATES)?,
        })
    }
}

/// The policy in force.
pub fn kernel_policy() -> KernelPolicy {
    *POLICY.read().unwrap_or_else(|e| e.into_inner())
}

/// Put `policy` in force for every later block matmul of this process. Execution is lazy on
/// fusion devices: read the results of earlier calls back before changing it.
///
/// # Panics
/// If `policy.candidate` is not below [`KernelPolicy::CANDIDATES`].
pub fn set_kernel_policy(policy: KernelPolicy) {
    if let Some(i) = policy.candidate {
        assert!(
            i < KernelPolicy::CANDIDATES,
            "KernelPolicy::candidate {i} is not below {}",
            KernelPolicy::CANDIDATES
        );
    }
    *POLICY.write().unwrap_or_else(|e| e.into_inner()) = policy;
}

/// Run `f` with `policy` in force, then restore the previous one. Calls are serialised (one scope
/// at a time in the process), so tests of different forms can share a test binary; read every
/// result back inside `f`.
pub fn with_kernel_policy<R>(policy: KernelPolicy, f: impl FnOnce() -> R) -> R {
    let _scope = SCOPE.lock().unwrap_or_else(|e| e.into_inner());
    let before = kernel_policy();
    set_kernel_policy(policy);
    struct Restore(KernelPolicy);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_kernel_policy(self.0);
        }
    }
    let _restore = Restore(before);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_each_switch_and_refuses_bad_values() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            KernelPolicy::from_vars(vars(&[])),
            Ok(KernelPolicy::default())
        );
        let p = KernelPolicy::from_vars(vars(&[
            ("GRALORA_WGSL_TILED", "1"),
            ("GRALORA_SPLIT_K", "3"),
            ("GRALORA_WGSL_TUNE", "0"),
            ("GRALORA_WGSL_NO_SHARE", "1"),
        ]))
        .unwrap();
        assert_eq!(p.form, KernelForm::Tiled);
        assert_eq!(
            (p.split_k, p.tune, p.shared_loads),
            (Some(3), Some(false), false)
        );
        assert!(p.vector_loads);
        let e = KernelPolicy::from_vars(vars(&[("GRALORA_SPLIT_K", "many")])).unwrap_err();
        assert!(e.contains("GRALORA_SPLIT_K") && e.contains("many"), "{e}");
        let e = KernelPolicy::from_vars(vars(&[("GRALORA_WGSL_TUNE", "yes")])).unwrap_err();
        assert!(e.contains("GRALORA_WGSL_TUNE"), "{e}");
        let e = KernelPolicy::from_vars(vars(&[("GRALORA_WGSL_CANDIDATE", "999")])).unwrap_err();
        assert!(e.contains("below"), "{e}");
    }

    #[test]
    fn a_scoped_policy_is_restored_afterwards() {
        let forced = KernelPolicy {
            form: KernelForm::CubeTwin,
            ..KernelPolicy::default()
        };
        let seen = with_kernel_policy(forced, kernel_policy);
        assert_eq!(seen, forced);
        assert_eq!(kernel_policy(), KernelPolicy::default());
    }
}
