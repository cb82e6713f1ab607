//! How a [`GpuBackend`](super::GpuBackend) is built: which kernel set it runs
//! ([`KernelSet`]), its tile sizes and micro-batch cap ([`GpuOptions`]), and
//! how many rows its per-sample buffers can hold on a device
//! ([`micro_batch_rows`]).

use super::context::GpuContext;
use super::kernels::{checked_by_env, Core, KernelConfig, TileConfig, WG};
use super::plan::{KernelPlan, Source};
pub use super::tune::TuneMode;
use crate::error::{Error, Result, Setting};
use crate::network::Network;
use std::path::PathBuf;

/// Which kernels a [`GpuBackend`](super::GpuBackend) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// One invocation per output element: the GPU reference twins.
    Simple,
    /// Tiled products, the parallel loss fused with the output delta, and in
    /// `step` the plain SGD update fused into the gradient pass.
    Tiled,
}

/// The heuristic configuration of the tiled kernels for `net` at `rows` rows
/// on an adapter of type `device`, one for every product: the
/// [`heuristic_product`](super::plan::heuristic_product) of the widest forward
/// product (`rows × widest layer`). A backend chooses per product
/// ([`super::plan::heuristic_plan`]).
pub fn heuristic(
    device: wgpu::DeviceType,
    limits: &wgpu::Limits,
    net: &Network,
    rows: usize,
) -> KernelConfig {
    let widest = net.sizes()[1..].iter().copied().max().unwrap_or(1);
    super::plan::heuristic_product(device, limits, rows, widest)
}

/// How a [`GpuBackend`](super::GpuBackend) is built; `Default` is the fast
/// path for the adapter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuOptions {
    /// The kernels to run.
    pub kernels: KernelSet,
    /// Tile sizes of the tiled kernels; `None` chooses by adapter
    /// ([`TileConfig::for_adapter`](super::TileConfig::for_adapter)).
    pub tiles: Option<super::TileConfig>,
    /// How the tiled products' core is built: generated per tile sizes
    /// (the default) or tiled.wgsl's loops.
    pub core: Core,
    /// Register double buffering of the generated core, with `tiles`
    /// ([`KernelConfig::double_buffer`]).
    pub double_buffer: bool,
    /// `vec4` loads along K in every block of the generated core, with
    /// `tiles` ([`KernelConfig::k_vec4`]).
    pub k_vec4: bool,
    /// Most samples per micro-batch; `None` for as many as the device's
    /// bindings hold. Larger batches are split (tiled kernels only).
    pub max_chunk: Option<usize>,
    /// Build the modules with naga's runtime checks (bounds clamps, loop
    /// bounds, division guards). Off by default, where the host guarantees
    /// what the checks would (see [`super::kernels`]); `SHADERTRAIN_CHECKED=1`
    /// turns it on in `Default`. Results are bitwise the same either way.
    pub checked: bool,
    /// Where the products' configurations come from when neither `plan`
    /// nor `tiles` gives them: the heuristic, the tuning cache, or
    /// measured first ([`TuneMode`]).
    pub tune: TuneMode,
    /// A configuration per product to run exactly (a replayed record), or
    /// the simple set (with `kernels: Simple`, as [`GpuOptions::with_plan`]
    /// sets it); overrides `tiles`, `core` and `tune`.
    pub plan: Option<KernelPlan>,
    /// With `kernels: Tiled` and a `tune` that reads the cache: run the
    /// simple set where the cache's whole-step entry measured it faster
    /// (and `Auto` measures it). `true` by default; `false` keeps the tiled
    /// products ([`GpuBackend::with_kernel_set`](super::GpuBackend::with_kernel_set),
    /// `bench --kernels tiled`).
    pub tune_kernel_set: bool,
    /// The tuning cache's directory; `None`: [`super::tune::default_cache_dir`]
    /// (`SHADERTRAIN_CACHE_DIR`, else `$XDG_CACHE_HOME/shadertrain`, else
    /// `~/.cache/shadertrain`).
    pub cache_dir: Option<PathBuf>,
    /// Run a tiny network's fused step as one dispatch of one workgroup
    /// where it fits ([`super::whole_step`]). On in `Default` unless
    /// `SHADERTRAIN_WHOLE_STEP` is `0` or `false`; off in
    /// [`GpuOptions::BASE`], whose users (tuning, the kernels' tests) time
    /// or test the tiled step itself.
    pub whole_step: bool,
}

impl Default for GpuOptions {
    /// [`GpuOptions::BASE`] reading the tuning cache, checked where
    /// `SHADERTRAIN_CHECKED` says so, with the whole-step kernel unless
    /// `SHADERTRAIN_WHOLE_STEP=0`.
    fn default() -> Self {
        let off = std::env::var("SHADERTRAIN_WHOLE_STEP")
            .is_ok_and(|v| matches!(v.trim(), "0" | "false"));
        GpuOptions {
            checked: checked_by_env(),
            tune: TuneMode::Cached,
            whole_step: !off,
            ..GpuOptions::BASE
        }
    }
}

impl GpuOptions {
    /// The defaults without reading the environment (for constants and
    /// tests that set every option themselves): tiled kernels, the
    /// heuristic's configurations (no tuning cache), no micro-batch cap,
    /// unchecked modules, no whole-step kernel. `Default` reads the cache
    /// ([`TuneMode::Cached`]) and runs the whole step where it fits.
    pub const BASE: GpuOptions = GpuOptions {
        kernels: KernelSet::Tiled,
        tiles: None,
        core: Core::Generated,
        double_buffer: false,
        k_vec4: false,
        max_chunk: None,
        checked: false,
        tune: TuneMode::Off,
        plan: None,
        tune_kernel_set: true,
        cache_dir: None,
        whole_step: false,
    };
}

/// Samples per micro-batch for `net`: as many as each per-sample buffer
/// (activations, deltas, targets) holds within `limits`' largest storage
/// binding and buffer, and as many as the element-wise kernels' grids (one
/// invocation per sample and neuron) reach within
/// `max_compute_workgroups_per_dimension`; at most `capacity` and `cap`. An
/// error names the limit when not even one sample fits.
pub fn micro_batch_rows(
    net: &Network,
    capacity: usize,
    limits: &wgpu::Limits,
    cap: Option<usize>,
) -> Result<usize> {
    if cap == Some(0) {
        return Err(Error::Invalid("max_chunk must be at least 1".into()));
    }
    let (fit, _) = rows_limit(net, limits)?;
    let fit = usize::try_from(fit).unwrap_or(usize::MAX);
    Ok(capacity.min(fit).min(cap.unwrap_or(usize::MAX)))
}

/// The most rows each per-sample buffer of a backend for batches of up to
/// `capacity` holds ([`micro_batch_rows`]); an error where that is fewer
/// than `capacity` and the kernel set cannot run micro-batches.
pub(super) fn buffer_capacity(
    ctx: &GpuContext,
    net: &Network,
    capacity: usize,
    options: &GpuOptions,
) -> Result<usize> {
    let rows = micro_batch_rows(net, capacity, &ctx.limits, options.max_chunk)?;
    if rows < capacity && options.kernels == KernelSet::Simple {
        let why = match options.max_chunk {
            Some(c) if c == rows => "max_chunk".to_string(),
            _ => format!("its {}", rows_limit(net, &ctx.limits)?.1),
        };
        return Err(Error::setting(
            Setting::Batch,
            capacity,
            format!(
                "needs micro-batches of {rows} on this device ({why}), which only the tiled kernels run; a batch of {rows} fits"
            ),
        ));
    }
    Ok(rows)
}

impl GpuOptions {
    /// The plan these options fix without measuring or a cache, if they
    /// fix one: `plan` as given, or `tiles` (with `core`) for every product,
    /// or tiled.wgsl's core on the adapter's tiles.
    pub fn fixed_plan(&self, ctx: &GpuContext, net: &Network) -> Result<Option<KernelPlan>> {
        if let Some(plan) = &self.plan {
            if plan.layers() != net.layers().len() {
                return Err(Error::setting(
                    Setting::KernelConfig,
                    plan,
                    format!(
                        "records {} layers, the network has {}",
                        plan.layers(),
                        net.layers().len()
                    ),
                ));
            }
            return Ok(Some(plan.clone()));
        }
        let config = match (self.tiles, self.core) {
            (Some(tiles), core) => KernelConfig {
                core,
                tiles,
                double_buffer: self.double_buffer,
                k_vec4: self.k_vec4,
                splits: None,
            },
            (None, Core::Generated) => return Ok(None),
            (None, Core::Loops) => {
                KernelConfig::loops(TileConfig::for_adapter(&ctx.info, &ctx.limits))
            }
        };
        Ok(Some(KernelPlan::uniform(net, config, Source::Given)))
    }

    /// Options that run `config`'s tiled kernels for every product (K
    /// slices derived: [`GpuOptions::with_plan`] of a plan gives them).
    pub fn with_config(self, config: KernelConfig) -> GpuOptions {
        GpuOptions {
            kernels: KernelSet::Tiled,
            tiles: Some(config.tiles),
            core: config.core,
            double_buffer: config.double_buffer,
            k_vec4: config.k_vec4,
            ..self
        }
    }

    /// Options that run `plan`'s configurations exactly: the simple set
    /// for a simple plan ([`KernelPlan::simple`]), else the tiled kernels.
    pub fn with_plan(self, plan: KernelPlan) -> GpuOptions {
        GpuOptions {
            kernels: match plan.simple() {
                Some(_) => KernelSet::Simple,
                None => KernelSet::Tiled,
            },
            plan: Some(plan),
            ..self
        }
    }

    /// These options with the plan fixed that a backend of them for `net`
    /// and batches of up to `capacity` would resolve on `ctx` (cache,
    /// tuning or heuristic; each product keeps its [`Source`]): resolved
    /// once, so that several workers run one plan. The simple kernels
    /// have none and are returned as they are.
    pub fn resolved(
        self,
        ctx: &std::sync::Arc<GpuContext>,
        net: &Network,
        capacity: usize,
    ) -> Result<GpuOptions> {
        if self.kernels == KernelSet::Simple {
            return Ok(self);
        }
        let rows = buffer_capacity(ctx, net, capacity, &self)?;
        let plan = super::tune::resolve_plan(ctx, net, rows, &self)?;
        Ok(self.with_plan(plan))
    }
}

/// The most bytes one storage buffer of a backend may hold: the device's
/// binding and buffer limits, and under 2³⁰ floats so that no index or shape
/// in a [`Dims`](super::Dims) wraps (safety condition 2 of unchecked modules);
/// a multiple of 16, so that buffers rounded up to whole `vec4`s fit too.
pub(super) fn binding_bytes(limits: &wgpu::Limits) -> u64 {
    let bound = 4 * (super::kernels::DIMS_BOUND as u64 - 1);
    let bytes = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
        .min(bound);
    bytes / 16 * 16
}

/// The most samples one micro-batch of `net` may hold on a device with
/// `limits`, and the name of the limit that sets it.
fn rows_limit(net: &Network, limits: &wgpu::Limits) -> Result<(u64, &'static str)> {
    let limit = binding_bytes(limits);
    let widest = net.sizes().iter().copied().max().unwrap_or(1) as u64;
    let by_binding = limit / (widest * 4);
    if by_binding == 0 {
        return Err(Error::Gpu(format!(
            "one sample of a {widest}-wide layer needs {} bytes, over this device's max_storage_buffer_binding_size / max_buffer_size of {limit}; use narrower layers",
            widest * 4
        )));
    }
    // grid() folds workgroups into at most max × max.
    let max = limits.max_compute_workgroups_per_dimension.max(1) as u64;
    let by_grid = max * max * WG as u64 / widest;
    if by_grid == 0 {
        return Err(Error::Gpu(format!(
            "one sample of a {widest}-wide layer needs {} workgroups, more than this device's max_compute_workgroups_per_dimension of {max} allows; use narrower layers",
            widest.div_ceil(WG as u64)
        )));
    }
    Ok(if by_grid < by_binding {
        (by_grid, "max_compute_workgroups_per_dimension")
    } else {
        (by_binding, "max_storage_buffer_binding_size")
    })
}
