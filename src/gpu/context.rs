//! Finding a GPU: the instance, the adapter choice, the device and its limits.
//!
//! Honours wgpu's own conventions: `WGPU_BACKEND` (e.g. `vulkan`, `gl`),
//! `WGPU_ADAPTER_NAME` (a case-insensitive substring of the adapter's name)
//! and `WGPU_POWER_PREF` (`low` prefers an integrated GPU). Otherwise a
//! discrete GPU wins, then integrated, virtual, and software (llvmpipe) last;
//! among equals a native API beats OpenGL.

use super::pipeline_cache::PipelineStore;
use crate::error::{Error, Result, Setting};
use std::sync::{Arc, Mutex};

/// What `devices` prints about one adapter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `NVIDIA H100` or `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// `Vulkan`, `Metal`, `Dx12` or `Gl`.
    pub backend: String,
    /// `DiscreteGpu`, `IntegratedGpu`, `VirtualGpu`, `Cpu` or `Other`.
    pub device_type: String,
    /// Driver name and version, where the driver reports them.
    pub driver: String,
    /// Whether compute shaders are supported (shadertrain needs them).
    pub compute: bool,
    /// Largest buffer, bytes.
    pub max_buffer_size: u64,
    /// Largest storage-buffer binding, bytes.
    pub max_storage_binding: u64,
    /// Workgroups per dispatch dimension.
    pub max_workgroups_per_dim: u32,
    /// Invocations per workgroup.
    pub max_invocations_per_workgroup: u32,
    /// Storage buffers per shader stage.
    pub max_storage_buffers_per_stage: u32,
}

fn summary(adapter: &wgpu::Adapter) -> AdapterSummary {
    let info = adapter.get_info();
    let limits = adapter.limits();
    AdapterSummary {
        name: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        driver: format!("{} {}", info.driver, info.driver_info)
            .trim()
            .to_string(),
        compute: supports_compute(adapter),
        max_buffer_size: limits.max_buffer_size,
        max_storage_binding: limits.max_storage_buffer_binding_size,
        max_workgroups_per_dim: limits.max_compute_workgroups_per_dimension,
        max_invocations_per_workgroup: limits.max_compute_invocations_per_workgroup,
        max_storage_buffers_per_stage: limits.max_storage_buffers_per_shader_stage,
    }
}

/// Our kernels bind up to 5 storage buffers and use 256-invocation workgroups.
fn supports_compute(adapter: &wgpu::Adapter) -> bool {
    let l = adapter.limits();
    adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        && l.max_storage_buffers_per_shader_stage >= 5
        && l.max_compute_invocations_per_workgroup >= 256
}

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env())
}

fn all_adapters() -> Vec<wgpu::Adapter> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::all()))
}

/// Every adapter wgpu can see (filtered by `WGPU_BACKEND` when set).
pub fn list_adapters() -> Vec<AdapterSummary> {
    all_adapters().iter().map(summary).collect()
}

/// Lower is better.
fn rank(info: &wgpu::AdapterInfo, low_power: bool) -> (u8, u8) {
    use wgpu::DeviceType::*;
    let kind = match info.device_type {
        DiscreteGpu if low_power => 1,
        IntegratedGpu if low_power => 0,
        DiscreteGpu => 0,
        IntegratedGpu => 1,
        VirtualGpu => 2,
        Cpu => 3,
        Other => 4,
    };
    let api = u8::from(info.backend == wgpu::Backend::Gl);
    (kind, api)
}

/// Pick the adapter by the rules in the module docs.
fn choose_adapter() -> Result<wgpu::Adapter> {
    let adapters = all_adapters();
    if adapters.is_empty() {
        let filter = match std::env::var("WGPU_BACKEND") {
            Ok(b) => format!(" with WGPU_BACKEND={b}"),
            Err(_) => String::new(),
        };
        return Err(Error::NoAdapter(format!(
            "wgpu found none{filter} (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1)"
        )));
    }
    let names: Vec<String> = adapters
        .iter()
        .map(|a| {
            let i = a.get_info();
            format!("{} ({:?})", i.name, i.backend)
        })
        .collect();
    let mut usable: Vec<wgpu::Adapter> = adapters.into_iter().filter(supports_compute).collect();
    if usable.is_empty() {
        return Err(Error::NoAdapter(format!(
            "none of the adapters supports the compute shaders shadertrain needs: {}",
            names.join(", ")
        )));
    }
    if let Ok(want) = std::env::var("WGPU_ADAPTER_NAME") {
        let want = want.to_lowercase();
        usable.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        if usable.is_empty() {
            return Err(Error::NoAdapter(format!(
                "WGPU_ADAPTER_NAME={want:?} matches none of: {}",
                names.join(", ")
            )));
        }
    }
    let low_power = matches!(
        wgpu::PowerPreference::from_env(),
        Some(wgpu::PowerPreference::LowPower)
    );
    usable.sort_by_key(|a| rank(&a.get_info(), low_power));
    Ok(usable.swap_remove(0))
}

/// The adapter `sel` names: an index into [`list_adapters`]' order (what
/// `shadertrain devices` prints), or a case-insensitive substring of its name
/// (the best-ranked match wins). For `--adapter`.
fn select_adapter(sel: &str) -> Result<wgpu::Adapter> {
    let mut adapters = all_adapters();
    let listing = adapters
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let info = a.get_info();
            format!("[{i}] {} ({:?})", info.name, info.backend)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let none = |why: String| Error::setting(Setting::Adapter, sel, why);
    let adapter = match sel.trim().parse::<usize>() {
        Ok(i) if i < adapters.len() => adapters.swap_remove(i),
        Ok(i) => {
            return Err(none(format!(
                "there is no adapter {i}; the adapters are: {}",
                if listing.is_empty() { "none" } else { &listing }
            )))
        }
        Err(_) => {
            let want = sel.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
            adapters.sort_by_key(|a| rank(&a.get_info(), false));
            if adapters.is_empty() {
                return Err(none(format!(
                    "matches no adapter's name; the adapters are: {}",
                    if listing.is_empty() { "none" } else { &listing }
                )));
            }
            adapters.swap_remove(0)
        }
    };
    if !supports_compute(&adapter) {
        return Err(none(format!(
            "{} lacks the compute shaders shadertrain needs",
            adapter.get_info().name
        )));
    }
    Ok(adapter)
}

/// The device, its queue and what we know about the adapter, made once and shared.
pub struct GpuContext {
    /// The logical device.
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    /// The chosen adapter.
    pub info: wgpu::AdapterInfo,
    /// The limits the device was created with (all that the adapter offers).
    pub limits: wgpu::Limits,
    /// The first uncaptured validation error, or the device's loss: checked
    /// at every submit, sync and read-back, and sticky, since the work it
    /// spoiled cannot be trusted.
    errors: Arc<Mutex<Option<String>>>,
    /// Compiled pipelines kept across runs, where the device has
    /// `PIPELINE_CACHE` ([`super::pipeline_cache`]).
    pipelines: Option<PipelineStore>,
}

impl GpuContext {
    /// Choose an adapter (see the module docs) and open a device on it.
    pub fn new() -> Result<Arc<Self>> {
        let adapter = choose_adapter()?;
        Self::from_adapter(&adapter)
    }

    /// Open a device on the adapter `sel` names: an index as `shadertrain
    /// devices` lists them, or a substring of the adapter's name.
    pub fn with_adapter(sel: &str) -> Result<Arc<Self>> {
        Self::from_adapter(&select_adapter(sel)?)
    }

    /// Open a device on a given adapter, asking for every limit it offers so
    /// that large batches fit, and for timestamp queries where it has them
    /// (`GpuBackend::profile_step`).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Arc<Self>> {
        Self::from_adapter_with_limits(adapter, adapter.limits())
    }

    /// As [`GpuContext::new`], the device opened with `limits` instead of all
    /// that the adapter offers: to check that a large request is refused or
    /// split as it would be on a smaller device. A limit beyond the adapter's
    /// is an error that names it.
    pub fn with_limits(limits: wgpu::Limits) -> Result<Arc<Self>> {
        Self::from_adapter_with_limits(&choose_adapter()?, limits)
    }

    /// Open a device on `adapter` with `limits` (at most the adapter's).
    pub fn from_adapter_with_limits(
        adapter: &wgpu::Adapter,
        limits: wgpu::Limits,
    ) -> Result<Arc<Self>> {
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("shadertrain"),
            required_limits: limits.clone(),
            required_features: adapter.features()
                & (wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::PIPELINE_CACHE),
            ..Default::default()
        }))
        .map_err(|e| Error::Gpu(format!("could not open a device on {}: {e}", info.name)))?;
        // The default handler panics; record the error instead and report it
        // as an Error at the next submit, sync or read-back. Errors while
        // building are caught by error scopes ([`scoped`]) and never land here.
        let errors: Arc<Mutex<Option<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = sink.lock() {
                slot.get_or_insert_with(|| describe_error(&e));
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, msg| {
            // wgpu gives no message when the device was destroyed on purpose.
            let msg = match msg.trim() {
                "" => "the device can no longer be used".to_string(),
                m => join_lines(m),
            };
            if let Ok(mut slot) = sink.lock() {
                // A loss outranks an earlier validation error (nothing works
                // after it), which is kept as the likely cause.
                let lost = format!("device lost ({reason:?}): {msg}");
                *slot = Some(match slot.take() {
                    Some(earlier) => format!("{lost} (after: {earlier})"),
                    None => lost,
                });
            }
        });
        let dir = super::tune::default_cache_dir();
        let pipelines = PipelineStore::open(&device, &info, dir.as_deref());
        Ok(Arc::new(GpuContext {
            device,
            queue,
            info,
            limits,
            errors,
            pipelines,
        }))
    }

    /// `name (Backend, DeviceType)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?})",
            self.info.name, self.info.backend, self.info.device_type
        )
    }

    /// The pipeline cache to build kernels with, if the device has one.
    pub fn pipeline_cache(&self) -> Option<&wgpu::PipelineCache> {
        self.pipelines.as_ref().map(PipelineStore::cache)
    }

    /// The device's pipeline cache and its file, if it has one.
    pub fn pipelines(&self) -> Option<&PipelineStore> {
        self.pipelines.as_ref()
    }

    /// Write the pipeline cache back if building kernels changed it.
    pub fn save_pipelines(&self) {
        if let Some(p) = &self.pipelines {
            p.save();
        }
    }

    /// Fail with the first GPU error recorded since the device was made.
    pub fn check_errors(&self) -> Result<()> {
        match self.errors.lock() {
            Ok(slot) => match slot.as_ref() {
                Some(e) => Err(Error::Gpu(e.clone())),
                None => Ok(()),
            },
            Err(_) => Err(Error::Gpu("error handler poisoned".into())),
        }
    }
}

/// One line from a wgpu error. wgpu's own text opens with a bare
/// "Validation Error" heading and puts the cause on indented lines below it;
/// those are joined with ": ", e.g. `In Device::create_buffer, label =
/// 'state': Buffer size 64 is greater than the maximum buffer size (16)`.
pub fn describe_error(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::OutOfMemory { source } => {
            let mut parts = vec!["out of memory".to_string()];
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source.as_ref());
            while let Some(c) = cause {
                parts.push(join_lines(&c.to_string()));
                cause = c.source();
            }
            parts.join(": ")
        }
        wgpu::Error::Validation { description, .. } | wgpu::Error::Internal { description, .. } => {
            join_lines(description)
        }
    }
}

/// The non-empty lines of wgpu's `text` joined with ": ", without its headings
/// (unlike [`crate::error::one_line`], which escapes a user's text);
/// a shader error's source excerpt shrinks to its location ("at wgsl:1:19").
fn join_lines(text: &str) -> String {
    let mut parts = Vec::new();
    for l in text.lines().map(|l| l.trim().trim_end_matches(':')) {
        if let Some(at) = l.strip_prefix("┌─") {
            parts.push(format!("at {}", at.trim()));
            break;
        }
        if !l.is_empty() && l != "Validation Error" && l != "Caused by" {
            parts.push(l.to_string());
        }
    }
    parts.join(": ")
}

/// Run `f`, which creates GPU objects on `device`, inside out-of-memory,
/// validation and internal error scopes: what `f` returned, or the first
/// error one of them caught (instead of the uncaptured-error handler, which
/// would spoil the whole context). Scopes are per thread, as `f` runs.
pub fn scoped<T>(
    device: &wgpu::Device,
    f: impl FnOnce() -> T,
) -> std::result::Result<T, wgpu::Error> {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let validation = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let internal = device.push_error_scope(wgpu::ErrorFilter::Internal);
    let out = f();
    // Popped innermost first; wgpu-core resolves these futures at once.
    let caught = [internal.pop(), validation.pop(), oom.pop()].map(pollster::block_on);
    match caught.into_iter().flatten().next() {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// [`scoped`], a caught error reported as `<what>: <wgpu's message>`, e.g.
/// `creating pipeline forward_dense_tiled: In Device::create_compute_pipeline, ...`.
pub fn creating<T>(device: &wgpu::Device, what: &str, f: impl FnOnce() -> T) -> Result<T> {
    scoped(device, f).map_err(|e| Error::Gpu(format!("creating {what}: {}", describe_error(&e))))
}

/// A buffer made inside error scopes ([`scoped`]): one the driver cannot
/// allocate becomes an [`Error::Memory`] naming its size and label and asking
/// for a smaller batch; a validation error names the buffer.
pub fn create_buffer(device: &wgpu::Device, desc: &wgpu::BufferDescriptor) -> Result<wgpu::Buffer> {
    let label = desc.label.unwrap_or("a buffer");
    scoped(device, || device.create_buffer(desc)).map_err(|e| buffer_error(label, desc.size, &e))
}

/// [`create_buffer`] with initial contents.
pub fn create_buffer_init(
    device: &wgpu::Device,
    desc: &wgpu::util::BufferInitDescriptor,
) -> Result<wgpu::Buffer> {
    use wgpu::util::DeviceExt;
    let label = desc.label.unwrap_or("a buffer");
    let size = desc.contents.len() as u64;
    scoped(device, || device.create_buffer_init(desc)).map_err(|e| buffer_error(label, size, &e))
}

/// The message for a buffer of `bytes` that could not be made.
pub fn buffer_error(label: &str, bytes: u64, e: &wgpu::Error) -> Error {
    match e {
        wgpu::Error::OutOfMemory { .. } => Error::memory(
            format!(
                "GPU out of memory allocating {:.1} MiB for {label} ({})",
                bytes as f64 / (1 << 20) as f64,
                describe_error(e)
            ),
            &[Setting::Batch],
        ),
        _ => Error::Gpu(format!("creating buffer {label}: {}", describe_error(e))),
    }
}
