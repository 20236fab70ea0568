//! Choosing a device in one line: `gralora::device::select("auto")?`.

use burn::tensor::{Device, DeviceKind};

use crate::error::AdapterError;

/// The wgpu adapters present (any backend wgpu was built with), without initialising burn's runtime.
pub fn wgpu_adapters() -> Vec<wgpu::AdapterInfo> {
    adapters(wgpu::Backends::all())
        .iter()
        .map(|a| a.get_info())
        .collect()
}

/// The wgpu adapters of `backends`.
fn adapters(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    pollster::block_on(instance.enumerate_adapters(backends))
}

/// Whether the Vulkan adapter named `name` has subgroup operations (WGSL's `subgroupBroadcast`);
/// the adapters are asked once per process.
pub(crate) fn vulkan_adapter_has_subgroups(name: &str) -> bool {
    static ADAPTERS: std::sync::OnceLock<Vec<(String, bool)>> = std::sync::OnceLock::new();
    ADAPTERS
        .get_or_init(|| {
            adapters(wgpu::Backends::VULKAN)
                .into_iter()
                .map(|a| {
                    let subgroups = a.features().contains(wgpu::Features::SUBGROUP);
                    (a.get_info().name, subgroups)
                })
                .collect()
        })
        .iter()
        .any(|(n, subgroups)| n == name && *subgroups)
}

/// Whether `device` is the CPU backend, Flex (under autodiff or not).
pub fn is_flex(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        burn::backend::DispatchDevice::Flex(_)
    )
}

/// Whether a real GPU (not a software rasteriser such as lavapipe) is reachable through wgpu.
pub fn has_gpu() -> bool {
    wgpu_adapters()
        .iter()
        .any(|a| a.device_type != wgpu::DeviceType::Cpu)
}

/// The device named by `name`: `flex` (CPU reference backend), `wgpu` (best wgpu adapter, a
/// software one included), or `auto` (a GPU through wgpu if there is one, else `flex`).
pub fn select(name: &str) -> Result<Device, AdapterError> {
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        "wgpu" => {
            if wgpu_adapters().is_empty() {
                return Err(AdapterError::State(
                    "no wgpu adapter found; install a Vulkan/Metal/DX12 driver (on Linux without a GPU: \
                     mesa-vulkan-drivers) or use --device flex"
                        .into(),
                ));
            }
            Ok(Device::wgpu(DeviceKind::DefaultDevice))
        }
        "auto" => Ok(if has_gpu() {
            Device::wgpu(DeviceKind::DefaultDevice)
        } else {
            Device::flex()
        }),
        other => Err(AdapterError::State(format!(
            "unknown device `{other}`; use `auto`, `wgpu` or `flex`"
        ))),
    }
}
