//! The GPU trainer: persistent buffers and bind groups, made once; one
//! training step encodes every layer's forward, backward and update into a
//! single command encoder and submits once. Nothing is read back inside a step.
//!
//! Two kernel sets ([`KernelSet`]): the simple kernels (one invocation per
//! output, the GPU reference twins) and the tiled ones, where `step` runs the
//! fused fast path: tiled forward, output delta and loss in one parallel pass,
//! then per layer from the top the next-lower delta (from the old weights)
//! followed by the gradient with SGD applied in the same pass. Each layer's
//! activation and the network's loss travel in its `Dims`; a softmax output
//! adds one row-wise `softmax_forward` dispatch after the last product.
//!
//! Other optimizers ([`crate::optim`], chosen by [`Backend::set_optimizer`])
//! store the gradients instead (the tiled pass without the fused update, or
//! the simple gradient kernels) and add one `momentum_update` or
//! `adam_update` dispatch over the whole flat buffer, in the same submission.
//! Their state lives in one buffer, `v (P)` or `m (P)` then `v (P)`; the
//! update count `t` stays on the host, which writes the bias corrections
//! `1 − β^t` into the update's uniform before each step.
//!
//! Batches larger than one storage binding holds (or than
//! [`GpuOptions::max_chunk`]) run as fixed-order micro-batches: each chunk is
//! uploaded and submitted in turn, its gradients added into `grads`, and one
//! update follows. At most [`MAX_IN_FLIGHT`] submissions are left unfinished,
//! so a loop that never reads back cannot queue without bound.
//!
//! ```no_run
//! use shadertrain::backend::Backend;
//! use shadertrain::gpu::{GpuBackend, GpuContext, KernelSet};
//! use shadertrain::network::Network;
//! let net = Network::parse("2,16,1")?;
//! let mut gpu = GpuBackend::with_kernel_set(GpuContext::new()?, &net, 4, KernelSet::Tiled)?;
//! gpu.set_params(&net.init(1))?;
//! gpu.load_batch(&[0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], &[0.0, 1.0, 1.0, 0.0])?;
//! gpu.step(2.0)?;
//! println!("loss {}", gpu.take_totals()?.loss());
//! # Ok::<(), shadertrain::Error>(())
//! ```

use super::context::{create_buffer, create_buffer_init, creating, GpuContext};
use super::kernels::{
    dispatch, grid, grid_1d, grid_tiled, k_splits, loss_groups, Acc, Dims, Grid, Kernel, Kernels,
    OptimUniform, SgdUniform, TileConfig, TiledKernels, WG,
};
use super::readback;
use crate::backend::{check_batch, check_layer};
use crate::backend::{Backend, Metric, Totals};
use crate::network::{Activation, Network, Params};
use crate::optim::{check_state_len, Optimizer};
use crate::{Error, Result};
use std::collections::VecDeque;
use std::sync::Arc;

/// Submissions a backend leaves unfinished before it waits for the oldest.
pub const MAX_IN_FLIGHT: usize = 3;

/// Floats of split-K slice sums a backend may keep (64 MiB).
const SCRATCH_BUDGET: u64 = 16 << 20;

/// Which kernels a [`GpuBackend`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// One invocation per output element: the GPU reference twins.
    Simple,
    /// Tiled products, the parallel loss fused with the output delta, and in
    /// `step` the plain SGD update fused into the gradient pass.
    Tiled,
}

impl GpuOptions {
    /// The options [`GpuBackend::new`] uses: the kernel set for the adapter
    /// and this batch ([`KernelSet::for_adapter`]), tiles chosen by adapter.
    pub fn for_adapter(ctx: &GpuContext, net: &Network, capacity: usize) -> Result<GpuOptions> {
        let fits = micro_batch_rows(net, capacity, &ctx.limits, None)? == capacity;
        Ok(GpuOptions {
            kernels: KernelSet::for_adapter(&ctx.info, fits, capacity),
            ..GpuOptions::default()
        })
    }
}

impl KernelSet {
    /// The faster set for an adapter and a batch of `capacity` samples. On a
    /// CPU adapter (lavapipe) the tiled kernels measured no faster than the
    /// simple ones at W1 and up to 9× slower on narrow layers (barriers are
    /// costly there; BENCHMARKS.md), so it runs the simple set, unless:
    /// - the batch must be split into micro-batches (`fits` false), which only
    ///   the tiled set does;
    /// - the batch exceeds [`SIMPLE_MAX_BATCH`]: the simple gradient kernels
    ///   sum each column over the batch serially in f32, whose rounding grows
    ///   with the batch (2% off at 200,000), where the tiled ones split it.
    pub fn for_adapter(info: &wgpu::AdapterInfo, fits: bool, capacity: usize) -> KernelSet {
        if info.device_type == wgpu::DeviceType::Cpu && fits && capacity <= SIMPLE_MAX_BATCH {
            KernelSet::Simple
        } else {
            KernelSet::Tiled
        }
    }
}

/// The largest batch [`KernelSet::for_adapter`] gives the simple kernels.
pub const SIMPLE_MAX_BATCH: usize = 8192;

/// How a [`GpuBackend`] is built; `Default` is the fast path for the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// The kernels to run.
    pub kernels: KernelSet,
    /// Tile sizes of the tiled kernels; `None` chooses by adapter
    /// ([`TileConfig::for_adapter`]).
    pub tiles: Option<TileConfig>,
    /// Most samples per micro-batch; `None` for as many as the device's
    /// bindings hold. Larger batches are split (tiled kernels only).
    pub max_chunk: Option<usize>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            kernels: KernelSet::Tiled,
            tiles: None,
            max_chunk: None,
        }
    }
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

/// The most samples one micro-batch of `net` may hold on a device with
/// `limits`, and the name of the limit that sets it.
fn rows_limit(net: &Network, limits: &wgpu::Limits) -> Result<(u64, &'static str)> {
    let limit = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
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

/// Bind groups of one dense layer `l` (between sizes `l` and `l + 1`), for
/// the kernel set's kernels.
struct LayerGroups {
    forward: wgpu::BindGroup,
    /// Hidden layers only: computes deltas[l + 1] from deltas[l + 2].
    delta_hidden: Option<wgpu::BindGroup>,
    /// Simple: gradient_weights and gradient_bias; tiled: the four gradient kernels.
    gradient: wgpu::BindGroup,
}

/// What `momentum_update` or `adam_update` binds besides params and grads.
struct UpdateBuffers {
    /// Adam (else momentum).
    adam: bool,
    /// OptimUniform.
    hyper: wgpu::Buffer,
    /// Per-parameter decay, (P); held beside the group that binds it.
    _decay: wgpu::Buffer,
    /// Momentum `v (P)`, Adam `m (P)` then `v (P)`.
    state: wgpu::Buffer,
    group: wgpu::BindGroup,
}

/// The parts of a step, as recorded into command encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Every layer's activations; with `loss` the loss too (tiled: and the
    /// output delta).
    Forward { loss: bool },
    /// The deltas, starting with `delta_output` unless the tiled forward wrote
    /// the output delta, and the gradients: into grads, or with `fused`
    /// applied to the parameters at once (tiled).
    Backward { delta_output: bool, fused: bool },
    /// The optimizer's update of every parameter from grads.
    Update,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Forward { .. } => "forward",
            Stage::Backward { .. } => "backward",
            Stage::Update => "update",
        }
    }
}

/// One dispatch of a stage; `layer` is the dense layer it works on, if one.
struct Dispatch<'a> {
    kernel: &'a Kernel,
    group: &'a wgpu::BindGroup,
    grid: Grid,
    layer: Option<usize>,
}

/// Timestamp queries of a profiled step: two per dispatch, and its labels.
struct Profile {
    queries: wgpu::QuerySet,
    labels: Vec<String>,
}

/// [`Backend`] on a wgpu device, in f32.
///
/// With [`KernelSet::Tiled`] (the default) and plain SGD, `step` on a batch
/// that fits one micro-batch applies the update inside the gradient pass and
/// leaves `grads` alone: `read_gradients` returns the gradients of the last `backward`.
/// Activations and deltas of a batch split into micro-batches are not kept.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    tiled: Option<TiledKernels>,
    net: Network,
    capacity: usize,
    /// Samples per micro-batch: the rows of every per-sample buffer.
    chunk: usize,
    /// Samples in the loaded batch.
    batch: usize,
    /// Samples now in the device's per-sample buffers (<= chunk).
    rows: usize,
    /// K slices of each layer's tiled gradient for `rows`.
    splits: Vec<u32>,
    /// Floats in `scratch`.
    scratch_floats: u64,
    metric: Metric,
    lr: Option<f32>,
    /// A batch larger than `chunk`, kept to upload chunk by chunk: x, y.
    host: Option<(Vec<f32>, Vec<f32>)>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// acts[l]: (chunk, sizes[l]); acts[0] is the input batch.
    acts: Vec<wgpu::Buffer>,
    /// deltas[l]: (chunk, sizes[l]), l >= 1.
    deltas: Vec<wgpu::Buffer>,
    /// (chunk, outputs)
    y: wgpu::Buffer,
    acc: wgpu::Buffer,
    /// Where `acc` is read back, kept: `--nan-check` reads it every step.
    acc_staging: wgpu::Buffer,
    /// One Dims per dense layer.
    dims: Vec<wgpu::Buffer>,
    sgd: wgpu::Buffer,
    groups: Vec<LayerGroups>,
    /// A softmax output only: softmax_forward on the output activations.
    softmax: Option<wgpu::BindGroup>,
    delta_output: wgpu::BindGroup,
    /// Simple: loss_reduce; tiled: delta_output_loss.
    loss: wgpu::BindGroup,
    /// Tiled only: loss_finish.
    loss_finish: Option<wgpu::BindGroup>,
    sgd_group: wgpu::BindGroup,
    optim: Optimizer,
    /// Updates applied since the optimizer was set.
    t: u64,
    /// The buffers of a stateful update; `None` for plain SGD.
    update: Option<UpdateBuffers>,
    /// Commands recorded since the last submit.
    pending: Option<wgpu::CommandEncoder>,
    /// Submissions not yet known to be finished, oldest first.
    in_flight: VecDeque<wgpu::SubmissionIndex>,
}

impl GpuBackend {
    /// Buffers, pipelines and bind groups for `net` and batches of up to
    /// `capacity` samples, made once, running the kernel set and tile sizes
    /// for the adapter ([`KernelSet::for_adapter`], [`TileConfig::for_adapter`]).
    /// Parameters start at zero.
    pub fn new(ctx: Arc<GpuContext>, net: &Network, capacity: usize) -> Result<Self> {
        let options = GpuOptions::for_adapter(&ctx, net, capacity)?;
        Self::with_options(ctx, net, capacity, options)
    }

    /// As [`GpuBackend::new`], running the given kernel set.
    pub fn with_kernel_set(
        ctx: Arc<GpuContext>,
        net: &Network,
        capacity: usize,
        kernels: KernelSet,
    ) -> Result<Self> {
        let options = GpuOptions {
            kernels,
            ..GpuOptions::default()
        };
        Self::with_options(ctx, net, capacity, options)
    }

    /// As [`GpuBackend::new`], built as `options` says.
    pub fn with_options(
        ctx: Arc<GpuContext>,
        net: &Network,
        capacity: usize,
        options: GpuOptions,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        // A device already lost or spoiled fails here, not at the first step.
        ctx.check_errors()?;
        let chunk = micro_batch_rows(net, capacity, &ctx.limits, options.max_chunk)?;
        if chunk < capacity && options.kernels == KernelSet::Simple {
            let why = match options.max_chunk {
                Some(c) if c == chunk => "max_chunk".to_string(),
                _ => format!("its {}", rows_limit(net, &ctx.limits)?.1),
            };
            return Err(Error::Gpu(format!(
                "a batch of {capacity} needs micro-batches of {chunk} on this device ({why}), which only the tiled kernels run; use a smaller batch (--batch {chunk} fits)"
            )));
        }
        let dev = &ctx.device;
        let limit = ctx
            .limits
            .max_storage_buffer_binding_size
            .min(ctx.limits.max_buffer_size);
        let storage =
            |label: &str, floats: usize, extra| storage_buffer(&ctx, label, floats, extra);
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let none = wgpu::BufferUsages::empty();
        let params = storage("params", net.param_count(), copy_dst)?;
        let grads = storage("grads", net.param_count(), copy_dst)?;
        let per_sample = |what: &str, l: usize, n: usize, extra| {
            storage(&format!("{what} {l}"), chunk * n, extra)
        };
        let sizes = net.sizes();
        let acts = (0..sizes.len())
            .map(|l| {
                per_sample(
                    "activations",
                    l,
                    sizes[l],
                    if l == 0 { copy_dst } else { none },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let deltas = (0..sizes.len())
            .map(|l| per_sample("deltas", l, if l == 0 { 0 } else { sizes[l] }, none))
            .collect::<Result<Vec<_>>>()?;
        let y = storage("targets", chunk * net.outputs(), copy_dst)?;
        let groups_max = loss_groups(chunk as u32, net.outputs() as u32) as usize;
        let partials = storage("loss partials", 2 * groups_max, none)?;
        let tiled = match options.kernels {
            KernelSet::Simple => None,
            KernelSet::Tiled => {
                let tiles = options
                    .tiles
                    .unwrap_or_else(|| TileConfig::for_adapter(&ctx.info, &ctx.limits));
                Some(TiledKernels::new(dev, &ctx.limits, tiles)?)
            }
        };
        // Split-K slice sums: as many as the longest K (chunk rows) asks for.
        let budget = SCRATCH_BUDGET.min(limit / 4);
        let scratch_floats = match &tiled {
            None => 1,
            Some(t) => net
                .layers()
                .iter()
                .map(|ly| {
                    let (o, i) = (ly.n_out as u32, ly.n_in as u32);
                    let s = k_splits(o, i, chunk as u32, &t.tiles, budget);
                    if s > 1 {
                        s as u64 * o as u64 * (i as u64 + 1)
                    } else {
                        1
                    }
                })
                .max()
                .unwrap_or(1),
        };
        let scratch = storage("split-K sums", scratch_floats as usize, none)?;
        let acc = create_buffer_init(
            dev,
            &wgpu::util::BufferInitDescriptor {
                label: Some("loss totals"),
                contents: bytemuck::bytes_of(&Acc::default()),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | copy_dst,
            },
        )?;
        let acc_staging = readback::staging(&ctx, std::mem::size_of::<Acc>() as u64)?;
        let layers = net.layers();
        let dims: Vec<wgpu::Buffer> = (0..layers.len())
            .map(|l| {
                create_buffer_init(
                    dev,
                    &wgpu::util::BufferInitDescriptor {
                        label: Some("dims"),
                        contents: bytemuck::bytes_of(&layer_dims(net, l, chunk, Metric::None, 1)),
                        usage: wgpu::BufferUsages::UNIFORM | copy_dst,
                    },
                )
            })
            .collect::<Result<_>>()?;
        let sgd = create_buffer_init(
            dev,
            &wgpu::util::BufferInitDescriptor {
                label: Some("sgd"),
                contents: bytemuck::bytes_of(&SgdUniform::default()),
                usage: wgpu::BufferUsages::UNIFORM | copy_dst,
            },
        )?;
        let kernels = Kernels::new(dev)?;
        let last = layers.len();
        let mut groups = Vec::with_capacity(last);
        for l in 0..last {
            let forward = [&dims[l], &params, &acts[l], &acts[l + 1]];
            let hidden = (l + 1 < last).then(|| {
                [
                    &dims[l],
                    &params,
                    &deltas[l + 2],
                    &acts[l + 1],
                    &deltas[l + 1],
                ]
            });
            groups.push(match &tiled {
                None => LayerGroups {
                    forward: kernels.forward_dense.bind(dev, &forward)?,
                    delta_hidden: hidden
                        .map(|b| kernels.delta_hidden.bind(dev, &b))
                        .transpose()?,
                    gradient: kernels
                        .gradient_weights
                        .bind(dev, &[&dims[l], &deltas[l + 1], &acts[l], &grads])?,
                },
                Some(t) => LayerGroups {
                    forward: t.forward_dense.bind(dev, &forward)?,
                    delta_hidden: hidden.map(|b| t.delta_hidden.bind(dev, &b)).transpose()?,
                    gradient: t.gradient_dense.bind(
                        dev,
                        &[
                            &dims[l],
                            &sgd,
                            &deltas[l + 1],
                            &acts[l],
                            &params,
                            &grads,
                            &scratch,
                        ],
                    )?,
                },
            });
        }
        let top = &dims[last - 1];
        let softmax = (net.output_activation() == Activation::Softmax)
            .then(|| kernels.softmax_forward.bind(dev, &[top, &acts[last]]))
            .transpose()?;
        let delta_output = kernels
            .delta_output
            .bind(dev, &[top, &acts[last], &y, &deltas[last]])?;
        let (loss, loss_finish) = match &tiled {
            None => (
                kernels
                    .loss_reduce
                    .bind(dev, &[top, &acts[last], &y, &acc])?,
                None,
            ),
            Some(t) => (
                t.delta_output_loss
                    .bind(dev, &[top, &acts[last], &y, &deltas[last], &partials])?,
                Some(t.loss_finish.bind(dev, &[top, &partials, &acc])?),
            ),
        };
        let sgd_group = kernels.sgd_update.bind(dev, &[&sgd, &params, &grads])?;
        let mut backend = GpuBackend {
            ctx,
            kernels,
            tiled,
            net: net.clone(),
            capacity,
            chunk,
            batch: 0,
            rows: chunk,
            splits: vec![1; last],
            scratch_floats,
            metric: Metric::None,
            lr: None,
            host: None,
            params,
            grads,
            acts,
            deltas,
            y,
            acc,
            acc_staging,
            dims,
            sgd,
            groups,
            softmax,
            delta_output,
            loss,
            loss_finish,
            sgd_group,
            optim: Optimizer::default(),
            t: 0,
            update: None,
            pending: None,
            in_flight: VecDeque::new(),
        };
        // The largest grids, those of a full micro-batch, must fit the device.
        backend.set_rows(chunk);
        for stage in [
            Stage::Forward { loss: true },
            Stage::Backward {
                delta_output: true,
                fused: false,
            },
            Stage::Update,
        ] {
            backend.plan(stage, &mut |_| Ok(()))?;
        }
        // Validation errors from creation surface here rather than at the first step.
        readback::finish(&backend.ctx)?;
        Ok(backend)
    }

    /// The device this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    /// The kernel set it runs.
    pub fn kernel_set(&self) -> KernelSet {
        match self.tiled {
            Some(_) => KernelSet::Tiled,
            None => KernelSet::Simple,
        }
    }

    /// The tile sizes of its tiled kernels (`None` for [`KernelSet::Simple`]).
    pub fn tiles(&self) -> Option<TileConfig> {
        self.tiled.as_ref().map(|t| t.tiles)
    }

    /// Samples per micro-batch: larger batches are split into chunks of this many.
    pub fn micro_batch(&self) -> usize {
        self.chunk
    }

    /// One training step, as [`Backend::step`], with every dispatch in its own
    /// compute pass between timestamp queries: returns `(kernel, milliseconds)`
    /// per dispatch in order, the kernel named by its entry point and layer, or
    /// `None` where the device has no timestamp queries. The batch must fit
    /// one micro-batch.
    pub fn profile_step(&mut self, lr: f32) -> Result<Option<Vec<(String, f64)>>> {
        if !self
            .ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return Ok(None);
        }
        self.need_batch()?;
        if self.host.is_some() {
            return Err(Error::Invalid(format!(
                "profile_step times one submission; this batch of {} runs as micro-batches of {}",
                self.batch, self.chunk
            )));
        }
        self.prepare_update(lr);
        let stages = self.step_stages();
        let mut count = 0u32;
        for &stage in stages {
            self.plan(stage, &mut |_| {
                count += 1;
                Ok(())
            })?;
        }
        let dev = &self.ctx.device;
        let queries = creating(dev, "the query set of profile_step", || {
            dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile_step"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * count,
            })
        })?;
        let mut profile = Profile {
            queries,
            labels: Vec::with_capacity(count as usize),
        };
        let mut enc = self.encoder_take();
        for &stage in stages {
            self.record_into(&mut enc, stage, Some(&mut profile))?;
        }
        let ticks = create_buffer(
            &self.ctx.device,
            &wgpu::BufferDescriptor {
                label: Some("profile_step ticks"),
                size: 16 * count as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            },
        )?;
        enc.resolve_query_set(&profile.queries, 0..2 * count, &ticks, 0);
        self.pending = Some(enc);
        self.flush()?;
        let ticks: Vec<u64> = readback::read(&self.ctx, &ticks, 0, 2 * count as usize)?;
        self.in_flight.clear();
        let ns = self.ctx.queue.get_timestamp_period() as f64;
        Ok(Some(
            profile
                .labels
                .into_iter()
                .zip(ticks.chunks_exact(2))
                .map(|(label, t)| (label, t[1].saturating_sub(t[0]) as f64 * ns / 1e6))
                .collect(),
        ))
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Make `rows` the samples in the per-sample buffers: the split-K slices
    /// and every layer's Dims follow.
    fn set_rows(&mut self, rows: usize) {
        self.rows = rows;
        if let Some(t) = &self.tiled {
            for (s, ly) in self.splits.iter_mut().zip(self.net.layers()) {
                let (o, i) = (ly.n_out as u32, ly.n_in as u32);
                *s = k_splits(o, i, rows as u32, &t.tiles, self.scratch_floats);
            }
        }
        self.write_dims();
    }

    /// Rewrite every layer's Dims (rows, metric or splits changed).
    fn write_dims(&self) {
        for (l, buf) in self.dims.iter().enumerate() {
            let d = layer_dims(&self.net, l, self.rows, self.metric, self.splits[l]);
            self.ctx.queue.write_buffer(buf, 0, bytemuck::bytes_of(&d));
        }
    }

    /// Rewrite the SGD uniform: learning rate, 1/B of the whole batch, and
    /// whether micro-batches accumulate. The write lands before the next
    /// submit, after the previous one's.
    fn write_sgd(&self) {
        let u = SgdUniform {
            count: self.net.param_count() as u32,
            lr: self.lr.unwrap_or(0.0),
            scale: 1.0 / self.batch.max(1) as f32,
            accumulate: u32::from(self.host.is_some()),
        };
        self.ctx
            .queue
            .write_buffer(&self.sgd, 0, bytemuck::bytes_of(&u));
    }

    fn write_lr(&mut self, lr: f32) {
        if self.lr != Some(lr) {
            self.lr = Some(lr);
            self.write_sgd();
        }
    }

    /// Count one update and write what it reads: the SGD learning rate, or
    /// the optimizer's terms for update `t`.
    fn prepare_update(&mut self, lr: f32) {
        self.t += 1;
        self.write_lr(lr);
        if let Some(u) = &self.update {
            let h = self.optim.terms::<f32>(lr, self.t);
            let uniform = OptimUniform::new(self.net.param_count(), &h);
            self.ctx
                .queue
                .write_buffer(&u.hyper, 0, bytemuck::bytes_of(&uniform));
        }
    }

    /// The stages of a step: tiled and in one submission, the update fused
    /// into the gradient pass (plain SGD) or run after it (other optimizers);
    /// split into micro-batches, the gradients accumulated then one update.
    /// (Constant lists: a step allocates nothing on the host.)
    fn step_stages(&self) -> &'static [Stage] {
        const FORWARD: Stage = Stage::Forward { loss: true };
        const BACKWARD: Stage = Stage::Backward {
            delta_output: false,
            fused: false,
        };
        const FUSED: Stage = Stage::Backward {
            delta_output: false,
            fused: true,
        };
        const SIMPLE_BACKWARD: Stage = Stage::Backward {
            delta_output: true,
            fused: false,
        };
        match (&self.tiled, &self.host) {
            (None, _) => &[FORWARD, SIMPLE_BACKWARD, Stage::Update],
            (Some(_), None) if self.update.is_none() => &[FORWARD, FUSED],
            (Some(_), None) => &[FORWARD, BACKWARD, Stage::Update],
            (Some(_), Some(_)) => &[FORWARD, BACKWARD],
        }
    }

    /// Every dispatch of `stage` for the rows in the buffers, in order, handed to `f`.
    fn plan<'a>(
        &'a self,
        stage: Stage,
        f: &mut dyn FnMut(Dispatch<'a>) -> Result<()>,
    ) -> Result<()> {
        let (rows, max) = (self.rows as u32, self.max_dim());
        let layers = self.net.layers();
        let last = layers.len();
        let simple = &self.kernels;
        let one = |kernel, group, n: usize, layer| -> Result<Dispatch<'a>> {
            Ok(Dispatch {
                kernel,
                group,
                grid: grid_1d(n as u64, max)?,
                layer,
            })
        };
        let rows_by = |n: usize| self.rows * n;
        match (stage, &self.tiled) {
            (Stage::Update, _) => {
                let (kernel, group) = match &self.update {
                    None => (&simple.sgd_update, &self.sgd_group),
                    Some(u) if u.adam => (&simple.adam_update, &u.group),
                    Some(u) => (&simple.momentum_update, &u.group),
                };
                f(one(kernel, group, self.net.param_count(), None)?)?
            }
            (Stage::Forward { loss }, None) => {
                for (l, ly) in layers.iter().enumerate() {
                    let g = &self.groups[l].forward;
                    f(one(&simple.forward_dense, g, rows_by(ly.n_out), Some(l))?)?;
                }
                if let Some(g) = &self.softmax {
                    f(one(&simple.softmax_forward, g, self.rows, Some(last - 1))?)?;
                }
                if loss {
                    f(Dispatch {
                        kernel: &simple.loss_reduce,
                        group: &self.loss,
                        grid: (1, 1, 1),
                        layer: None,
                    })?;
                }
            }
            (Stage::Backward { fused: true, .. }, None) => {
                return Err(Error::Invalid(
                    "the simple kernels have no fused update".into(),
                ))
            }
            (Stage::Backward { .. }, None) => {
                let n = rows_by(self.net.outputs());
                f(one(&simple.delta_output, &self.delta_output, n, None)?)?;
                for l in (0..last - 1).rev() {
                    if let Some(g) = &self.groups[l].delta_hidden {
                        let n = rows_by(layers[l].n_out);
                        f(one(&simple.delta_hidden, g, n, Some(l))?)?;
                    }
                }
                for (l, ly) in layers.iter().enumerate() {
                    let g = &self.groups[l].gradient;
                    f(one(
                        &simple.gradient_weights,
                        g,
                        ly.n_out * ly.n_in,
                        Some(l),
                    )?)?;
                    f(one(&simple.gradient_bias, g, ly.n_out, Some(l))?)?;
                }
            }
            (Stage::Forward { loss }, Some(t)) => {
                for (l, ly) in layers.iter().enumerate() {
                    f(Dispatch {
                        kernel: &t.forward_dense,
                        group: &self.groups[l].forward,
                        grid: grid_tiled(rows, ly.n_out as u32, 1, &t.tiles, max)?,
                        layer: Some(l),
                    })?;
                }
                if let Some(g) = &self.softmax {
                    f(one(&simple.softmax_forward, g, self.rows, Some(last - 1))?)?;
                }
                if let (true, Some(finish)) = (loss, &self.loss_finish) {
                    let no = self.net.outputs() as u32;
                    let what = "the loss's sample groups";
                    f(Dispatch {
                        kernel: &t.delta_output_loss,
                        group: &self.loss,
                        grid: grid(loss_groups(rows, no) as u64, max, what)?,
                        layer: None,
                    })?;
                    f(Dispatch {
                        kernel: &t.loss_finish,
                        group: finish,
                        grid: (1, 1, 1),
                        layer: None,
                    })?;
                }
            }
            (
                Stage::Backward {
                    delta_output,
                    fused,
                },
                Some(t),
            ) => {
                if delta_output {
                    let n = rows_by(self.net.outputs());
                    f(one(&simple.delta_output, &self.delta_output, n, None)?)?;
                }
                let (product, reduce) = match fused {
                    true => (&t.gradient_sgd, &t.gradient_sgd_reduce),
                    false => (&t.gradient_dense, &t.gradient_dense_reduce),
                };
                // Layer l's gradient pass may update W_l, so the delta below
                // it, which reads W_l, goes first.
                for l in (0..last).rev() {
                    if let Some(g) = l
                        .checked_sub(1)
                        .and_then(|h| self.groups[h].delta_hidden.as_ref())
                    {
                        f(Dispatch {
                            kernel: &t.delta_hidden,
                            group: g,
                            grid: grid_tiled(rows, layers[l - 1].n_out as u32, 1, &t.tiles, max)?,
                            layer: Some(l - 1),
                        })?;
                    }
                    let (ly, group) = (layers[l], &self.groups[l].gradient);
                    let (o, i, s) = (ly.n_out as u32, ly.n_in as u32, self.splits[l]);
                    f(Dispatch {
                        kernel: product,
                        group,
                        grid: grid_tiled(o, i, s, &t.tiles, max)?,
                        layer: Some(l),
                    })?;
                    if s > 1 {
                        f(one(reduce, group, ly.n_out * (ly.n_in + 1), Some(l))?)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Record `stage` into `enc`: one compute pass, or with `profile` one
    /// pass per dispatch between two timestamp queries.
    fn record_into(
        &self,
        enc: &mut wgpu::CommandEncoder,
        stage: Stage,
        profile: Option<&mut Profile>,
    ) -> Result<()> {
        let Some(profile) = profile else {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(stage.label()),
                timestamp_writes: None,
            });
            return self.plan(stage, &mut |d| {
                dispatch(&mut pass, d.kernel, d.group, d.grid);
                Ok(())
            });
        };
        self.plan(stage, &mut |d| {
            let i = 2 * profile.labels.len() as u32;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.kernel.spec.entry),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &profile.queries,
                    beginning_of_pass_write_index: Some(i),
                    end_of_pass_write_index: Some(i + 1),
                }),
            });
            dispatch(&mut pass, d.kernel, d.group, d.grid);
            profile.labels.push(match d.layer {
                Some(l) => format!("{} layer {l}", d.kernel.spec.entry),
                None => d.kernel.spec.entry.to_string(),
            });
            Ok(())
        })
    }

    /// Record `stage` into this step's encoder. A half-recorded step is
    /// dropped, not submitted.
    fn record(&mut self, stage: Stage) -> Result<()> {
        let mut enc = self.encoder_take();
        self.record_into(&mut enc, stage, None)?;
        self.pending = Some(enc);
        Ok(())
    }

    /// Record `stages` for the loaded batch: straight into this step's
    /// encoder, or for a batch kept on the host, chunk by chunk in order, each
    /// chunk uploaded and submitted before the next.
    fn run(&mut self, stages: &[Stage]) -> Result<()> {
        let Some((x, y)) = self.host.take() else {
            return stages.iter().try_for_each(|&s| self.record(s));
        };
        let (ni, no) = (self.net.inputs(), self.net.outputs());
        let mut done = Ok(());
        for lo in (0..self.batch).step_by(self.chunk) {
            let hi = (lo + self.chunk).min(self.batch);
            if hi - lo != self.rows {
                self.set_rows(hi - lo);
            }
            let q = &self.ctx.queue;
            q.write_buffer(&self.acts[0], 0, bytemuck::cast_slice(&x[lo * ni..hi * ni]));
            q.write_buffer(&self.y, 0, bytemuck::cast_slice(&y[lo * no..hi * no]));
            done = stages
                .iter()
                .try_for_each(|&s| self.record(s))
                .and_then(|_| self.flush());
            if done.is_err() {
                break;
            }
        }
        self.host = Some((x, y));
        done
    }

    /// Zero the gradients before micro-batches add into them.
    fn clear_grads(&mut self) {
        let mut enc = self.encoder_take();
        enc.clear_buffer(&self.grads, 0, None);
        self.pending = Some(enc);
    }

    /// The open encoder for this step (made on first use), taken out so the
    /// bind groups can be borrowed while recording; put it back in `pending`.
    fn encoder_take(&mut self) -> wgpu::CommandEncoder {
        self.pending.take().unwrap_or_else(|| {
            self.ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("train step"),
                })
        })
    }

    /// Submit what has been recorded, if anything, without waiting for it;
    /// but with more than [`MAX_IN_FLIGHT`] submissions unfinished, wait for
    /// the oldest first.
    /// A GPU error recorded since (a failed submission, a lost device)
    /// fails this and every later call rather than letting work pile up.
    fn flush(&mut self) -> Result<()> {
        self.ctx.check_errors()?;
        if let Some(enc) = self.pending.take() {
            self.in_flight
                .push_back(self.ctx.queue.submit([enc.finish()]));
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                readback::wait_for(&self.ctx, oldest)?;
            }
        }
        Ok(())
    }

    fn need_batch(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    /// Activations and deltas of a batch are on the device only when it fits one micro-batch.
    fn need_whole_batch(&self, what: &str) -> Result<()> {
        if self.host.is_some() {
            return Err(Error::Invalid(format!(
                "the {what} of a batch of {} are not kept: it runs as micro-batches of {}",
                self.batch, self.chunk
            )));
        }
        Ok(())
    }

    fn read_floats(&mut self, buf_index: Which, count: usize) -> Result<Vec<f32>> {
        self.flush()?;
        let buf = match buf_index {
            Which::Params => &self.params,
            Which::Grads => &self.grads,
            Which::Act(l) => &self.acts[l],
            Which::Delta(l) => &self.deltas[l],
            Which::State => match &self.update {
                Some(u) => &u.state,
                None => return Ok(Vec::new()),
            },
        };
        let out = readback::read(&self.ctx, buf, 0, count);
        // A read waits for every submission.
        self.in_flight.clear();
        out
    }
}

#[derive(Clone, Copy)]
enum Which {
    Params,
    Grads,
    Act(usize),
    Delta(usize),
    State,
}

/// A storage buffer of `floats` f32 (at least one), also a copy source and
/// `extra`; an error where it exceeds the device's binding or buffer limit.
fn storage_buffer(
    ctx: &GpuContext,
    label: &str,
    floats: usize,
    extra: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    let limit = ctx
        .limits
        .max_storage_buffer_binding_size
        .min(ctx.limits.max_buffer_size);
    let bytes = (floats.max(1) * 4) as u64;
    if bytes > limit {
        return Err(Error::Gpu(format!(
            "{label} needs {bytes} bytes, over this device's limit of {limit} (max_storage_buffer_binding_size / max_buffer_size); use smaller layers"
        )));
    }
    create_buffer(
        &ctx.device,
        &wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra,
            mapped_at_creation: false,
        },
    )
}

/// Dims of dense layer `l` for `rows` samples and `splits` K slices of its gradient.
fn layer_dims(net: &Network, l: usize, rows: usize, metric: Metric, splits: u32) -> Dims {
    let layers = net.layers();
    let ly = layers[l];
    let next = layers.get(l + 1);
    Dims {
        batch: rows as u32,
        n_in: ly.n_in as u32,
        n_out: ly.n_out as u32,
        w_off: ly.w_off as u32,
        b_off: ly.b_off as u32,
        n_next: next.map_or(0, |n| n.n_out as u32),
        w_next_off: next.map_or(0, |n| n.w_off as u32),
        metric: metric as u32,
        splits,
        act: ly.act as u32,
        loss: net.loss() as u32,
        _pad: 0,
    }
}

impl Backend for GpuBackend {
    type Scalar = f32;

    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn set_params(&mut self, p: &Params<f32>) -> Result<()> {
        if p.network() != &self.net {
            return Err(Error::Shape(format!(
                "parameters for {} given to a {} backend",
                p.network().describe(),
                self.net.describe()
            )));
        }
        // Queue writes land before the next submit, so recorded work must go first.
        self.flush()?;
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&p.data));
        Ok(())
    }

    fn params(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Params, self.net.param_count())?;
        Params::from_vec(&self.net, data)
    }

    fn set_metric(&mut self, metric: Metric) -> Result<()> {
        if metric != self.metric {
            self.flush()?;
            self.metric = metric;
            self.write_dims();
        }
        Ok(())
    }

    fn load_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let batch = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.flush()?;
        if batch > self.chunk {
            // Uploaded chunk by chunk when the batch runs; the host copies
            // are reused from batch to batch.
            let (hx, hy) = self.host.get_or_insert_with(Default::default);
            hx.clear();
            hx.extend_from_slice(x);
            hy.clear();
            hy.extend_from_slice(y);
        } else {
            self.host = None;
            if batch != self.rows {
                self.set_rows(batch);
            }
            let q = &self.ctx.queue;
            q.write_buffer(&self.acts[0], 0, bytemuck::cast_slice(x));
            q.write_buffer(&self.y, 0, bytemuck::cast_slice(y));
        }
        self.batch = batch;
        // 1/B and accumulation follow the batch.
        self.write_sgd();
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.need_batch()?;
        self.run(&[Stage::Forward { loss: true }])
    }

    fn backward(&mut self) -> Result<()> {
        self.need_batch()?;
        let backward = Stage::Backward {
            delta_output: true,
            fused: false,
        };
        if self.host.is_none() {
            return self.run(&[backward]);
        }
        // Each chunk's activations again (the loss is not counted twice).
        self.clear_grads();
        self.run(&[Stage::Forward { loss: false }, backward])
    }

    fn update(&mut self, lr: f32) -> Result<()> {
        self.prepare_update(lr);
        self.record(Stage::Update)?;
        self.flush()
    }

    fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
        opt.validate()?;
        // Recorded work runs with the old buffers.
        self.flush()?;
        let p = self.net.param_count();
        self.update = match opt.update_kernel() {
            None => None,
            Some(kind) => {
                let ctx = &self.ctx;
                let copy_dst = wgpu::BufferUsages::COPY_DST;
                // SGD with decay keeps a (P) scratch v that it never reads
                // back. New buffers start at zero (wgpu clears them).
                let floats = opt.state_len(p).max(p);
                let state = storage_buffer(ctx, "optimizer state", floats, copy_dst)?;
                let decay = storage_buffer(ctx, "decay", p, copy_dst)?;
                let d = opt.decay::<f32>(&self.net);
                ctx.queue.write_buffer(&decay, 0, bytemuck::cast_slice(&d));
                let hyper = create_buffer_init(
                    &ctx.device,
                    &wgpu::util::BufferInitDescriptor {
                        label: Some("optim"),
                        contents: bytemuck::bytes_of(&OptimUniform::default()),
                        usage: wgpu::BufferUsages::UNIFORM | copy_dst,
                    },
                )?;
                let group = self.kernels.momentum_update.bind(
                    &ctx.device,
                    &[&hyper, &self.params, &self.grads, &decay, &state],
                )?;
                Some(UpdateBuffers {
                    adam: kind == crate::optim::OptimizerKind::Adam,
                    hyper,
                    _decay: decay,
                    state,
                    group,
                })
            }
        };
        self.optim = *opt;
        self.t = 0;
        Ok(())
    }

    fn optimizer_state(&mut self) -> Result<(u64, Vec<f32>)> {
        let n = self.optim.state_len(self.net.param_count());
        if n == 0 {
            return Ok((self.t, Vec::new()));
        }
        Ok((self.t, self.read_floats(Which::State, n)?))
    }

    fn set_optimizer_state(&mut self, t: u64, state: &[f32]) -> Result<()> {
        check_state_len(&self.optim, self.net.param_count(), state.len())?;
        self.flush()?;
        if let Some(u) = &self.update {
            self.ctx
                .queue
                .write_buffer(&u.state, 0, bytemuck::cast_slice(state));
        }
        self.t = t;
        Ok(())
    }

    /// Tiled: forward with the output delta and loss fused, then the deltas
    /// with each layer's update fused into its gradient pass (other
    /// optimizers: the gradients, then their update); one submission (one per
    /// micro-batch, then the update, for a split batch).
    fn step(&mut self, lr: f32) -> Result<()> {
        self.need_batch()?;
        self.prepare_update(lr);
        let stages = self.step_stages();
        if self.host.is_some() {
            self.clear_grads();
        }
        self.run(stages)?;
        if self.host.is_some() {
            self.record(Stage::Update)?;
        }
        self.flush()
    }

    fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.in_flight.clear();
        readback::finish(&self.ctx)
    }

    fn take_totals(&mut self) -> Result<Totals> {
        let t = self.peek_totals()?;
        self.ctx
            .queue
            .write_buffer(&self.acc, 0, bytemuck::bytes_of(&Acc::default()));
        Ok(t)
    }

    fn peek_totals(&mut self) -> Result<Totals> {
        self.flush()?;
        let acc: Vec<Acc> = readback::read_via(&self.ctx, &self.acc, 0, &self.acc_staging, 1)?;
        self.in_flight.clear();
        let a = acc.first().copied().unwrap_or_default();
        Ok(Totals {
            loss_sum: a.loss_sum as f64,
            loss_fn: self.net.loss(),
            samples: a.samples as u64,
            correct: a.correct as u64,
        })
    }

    fn read_activations(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 0)?;
        self.need_whole_batch("activations")?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Act(l), n)
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 1)?;
        self.need_whole_batch("deltas")?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Delta(l), n)
    }

    fn read_gradients(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Grads, self.net.param_count())?;
        Params::from_vec(&self.net, data)
    }
}
