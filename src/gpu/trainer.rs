//! The GPU trainer: persistent buffers and bind groups, made once; one
//! training step encodes every layer's forward, backward and update into a
//! single command encoder and submits once. Nothing is read back inside a step.
//!
//! Two kernel sets ([`KernelSet`]): the simple kernels (one invocation per
//! output, the GPU reference twins) and the tiled ones, where `step` runs the
//! fused fast path: tiled forward, output delta and loss in one parallel pass,
//! then per layer from the top the next-lower delta (from the old weights)
//! followed by the gradient with SGD applied in the same pass.
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

use super::context::GpuContext;
use super::kernels::{
    dispatch, grid, grid_1d, grid_tiled, loss_groups, Acc, Dims, Kernel, Kernels, SgdUniform,
    TileConfig, TiledKernels,
};
use super::readback;
use crate::backend::{Backend, Metric, Totals};
use crate::cpu::{check_batch, check_layer};
use crate::network::{Network, Params};
use crate::{Error, Result};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Which kernels a [`GpuBackend`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// One invocation per output element: the GPU reference twins.
    Simple,
    /// Tiled products, the parallel loss fused with the output delta, and in
    /// `step` the SGD update fused into the gradient pass.
    Tiled,
}

/// How a [`GpuBackend`] is built; `Default` is the fast path for the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuOptions {
    /// The kernels to run.
    pub kernels: KernelSet,
    /// Tile sizes of the tiled kernels; `None` chooses by adapter
    /// ([`TileConfig::for_adapter`]).
    pub tiles: Option<TileConfig>,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            kernels: KernelSet::Tiled,
            tiles: None,
        }
    }
}

/// Bind groups of one dense layer `l` (between sizes `l` and `l + 1`), for
/// the kernel set's kernels.
struct LayerGroups {
    forward: wgpu::BindGroup,
    /// Hidden layers only: computes deltas[l + 1] from deltas[l + 2].
    delta_hidden: Option<wgpu::BindGroup>,
    /// Simple: gradient_weights and gradient_bias; tiled: gradient_dense_tiled.
    gradient: wgpu::BindGroup,
    /// Tiled only: gradient_sgd_tiled.
    gradient_sgd: Option<wgpu::BindGroup>,
}

/// The parts of a step, as recorded into command encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Every layer's activations, then the loss (tiled: and the output delta).
    Forward,
    /// Deltas and gradients into `grads`.
    Backward,
    /// `p −= lr·g` over every parameter.
    Update,
    /// Tiled `step`: deltas, with each layer's update fused into its gradient pass.
    FusedBackward,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Forward => "forward",
            Stage::Backward => "backward",
            Stage::Update => "update",
            Stage::FusedBackward => "backward + update",
        }
    }
}

/// One dispatch of a stage.
struct Dispatch<'a> {
    kernel: &'a Kernel,
    group: &'a wgpu::BindGroup,
    grid: (u32, u32),
}

/// [`Backend`] on a wgpu device, in f32.
///
/// With [`KernelSet::Tiled`] (the default), `step` applies the update inside
/// the gradient pass and leaves `grads` alone: `read_gradients` returns the
/// gradients of the last `backward`.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    tiled: Option<TiledKernels>,
    net: Network,
    capacity: usize,
    batch: usize,
    metric: Metric,
    lr: Option<f32>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// acts[l]: (capacity, sizes[l]); acts[0] is the input batch.
    acts: Vec<wgpu::Buffer>,
    /// deltas[l]: (capacity, sizes[l]), l >= 1.
    deltas: Vec<wgpu::Buffer>,
    /// (capacity, outputs)
    y: wgpu::Buffer,
    acc: wgpu::Buffer,
    /// One Dims per dense layer.
    dims: Vec<wgpu::Buffer>,
    sgd: wgpu::Buffer,
    groups: Vec<LayerGroups>,
    delta_output: wgpu::BindGroup,
    /// Simple: loss_reduce; tiled: delta_output_loss.
    loss: wgpu::BindGroup,
    /// Tiled only: loss_finish.
    loss_finish: Option<wgpu::BindGroup>,
    sgd_group: wgpu::BindGroup,
    /// Commands recorded since the last submit.
    pending: Option<wgpu::CommandEncoder>,
}

impl GpuBackend {
    /// Buffers, pipelines and bind groups for `net` and batches of up to
    /// `capacity` samples, made once, running the tiled kernels with the tile
    /// sizes for the adapter. Parameters start at zero.
    pub fn new(ctx: Arc<GpuContext>, net: &Network, capacity: usize) -> Result<Self> {
        Self::with_options(ctx, net, capacity, GpuOptions::default())
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
        let dev = &ctx.device;
        let max_binding = ctx.limits.max_storage_buffer_binding_size;
        let max_buffer = ctx.limits.max_buffer_size;
        let storage = |label: &str,
                       floats: usize,
                       extra: wgpu::BufferUsages|
         -> Result<wgpu::Buffer> {
            let bytes = (floats.max(1) * 4) as u64;
            if bytes > max_binding.min(max_buffer) {
                return Err(Error::Gpu(format!(
                    "{label} needs {bytes} bytes, over this device's limit of {} (max_storage_buffer_binding_size / max_buffer_size); use a smaller batch",
                    max_binding.min(max_buffer)
                )));
            }
            Ok(dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra,
                mapped_at_creation: false,
            }))
        };
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let none = wgpu::BufferUsages::empty();
        let params = storage("params", net.param_count(), copy_dst)?;
        let grads = storage("grads", net.param_count(), none)?;
        let acts = net
            .sizes()
            .iter()
            .enumerate()
            .map(|(l, &n)| {
                storage(
                    &format!("activations {l}"),
                    capacity * n,
                    if l == 0 { copy_dst } else { none },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let deltas = net
            .sizes()
            .iter()
            .enumerate()
            .map(|(l, &n)| {
                storage(
                    &format!("deltas {l}"),
                    if l == 0 { 1 } else { capacity * n },
                    none,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let y = storage("targets", capacity * net.outputs(), copy_dst)?;
        let partials = storage(
            "loss partials",
            2 * loss_groups(capacity as u32, net.outputs() as u32) as usize,
            none,
        )?;
        let acc = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("loss totals"),
            contents: bytemuck::bytes_of(&Acc::default()),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | copy_dst,
        });
        let layers = net.layers();
        let dims: Vec<wgpu::Buffer> = (0..layers.len())
            .map(|l| {
                dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("dims"),
                    contents: bytemuck::bytes_of(&layer_dims(net, l, capacity, Metric::None)),
                    usage: wgpu::BufferUsages::UNIFORM | copy_dst,
                })
            })
            .collect();
        let sgd = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("sgd"),
            contents: bytemuck::bytes_of(&sgd_uniform(net, 0.0, capacity)),
            usage: wgpu::BufferUsages::UNIFORM | copy_dst,
        });
        let kernels = Kernels::new(dev);
        let tiled = match options.kernels {
            KernelSet::Simple => None,
            KernelSet::Tiled => {
                let tiles = options
                    .tiles
                    .unwrap_or_else(|| TileConfig::for_adapter(&ctx.info, &ctx.limits));
                Some(TiledKernels::new(dev, &ctx.limits, tiles)?)
            }
        };
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
                    gradient_sgd: None,
                },
                Some(t) => {
                    let gradient = [&dims[l], &sgd, &deltas[l + 1], &acts[l], &params, &grads];
                    LayerGroups {
                        forward: t.forward_dense.bind(dev, &forward)?,
                        delta_hidden: hidden.map(|b| t.delta_hidden.bind(dev, &b)).transpose()?,
                        gradient: t.gradient_dense.bind(dev, &gradient)?,
                        gradient_sgd: Some(t.gradient_sgd.bind(dev, &gradient)?),
                    }
                }
            });
        }
        let top = &dims[last - 1];
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
        // Validation errors from creation surface here rather than at the first step.
        readback::finish(&ctx)?;
        Ok(GpuBackend {
            ctx,
            kernels,
            tiled,
            net: net.clone(),
            capacity,
            batch: 0,
            metric: Metric::None,
            lr: None,
            params,
            grads,
            acts,
            deltas,
            y,
            acc,
            dims,
            sgd,
            groups,
            delta_output,
            loss,
            loss_finish,
            sgd_group,
            pending: None,
        })
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

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Rewrite every layer's Dims (batch size or metric changed).
    fn write_dims(&self) {
        for (l, buf) in self.dims.iter().enumerate() {
            let d = layer_dims(&self.net, l, self.batch, self.metric);
            self.ctx.queue.write_buffer(buf, 0, bytemuck::bytes_of(&d));
        }
    }

    /// Rewrite the SGD uniform (learning rate and 1/B). The write lands
    /// before this step's submit, after the previous one's.
    fn write_sgd(&self) {
        let u = sgd_uniform(&self.net, self.lr.unwrap_or(0.0), self.batch);
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

    /// Every dispatch of `stage` for the loaded batch, in order, handed to `f`.
    fn plan<'a>(
        &'a self,
        stage: Stage,
        f: &mut dyn FnMut(Dispatch<'a>) -> Result<()>,
    ) -> Result<()> {
        let (b, max) = (self.batch as u32, self.max_dim());
        let layers = self.net.layers();
        let last = layers.len();
        let simple = &self.kernels;
        let one = |kernel, group, n: usize| -> Result<Dispatch<'a>> {
            Ok(Dispatch {
                kernel,
                group,
                grid: grid_1d(n as u64, max)?,
            })
        };
        match (stage, &self.tiled) {
            (Stage::Update, _) => f(one(
                &simple.sgd_update,
                &self.sgd_group,
                self.net.param_count(),
            )?)?,
            (Stage::Forward, None) => {
                for (l, ly) in layers.iter().enumerate() {
                    let n = self.batch * ly.n_out;
                    f(one(&simple.forward_dense, &self.groups[l].forward, n)?)?;
                }
                f(Dispatch {
                    kernel: &simple.loss_reduce,
                    group: &self.loss,
                    grid: (1, 1),
                })?;
            }
            (Stage::Backward, None) => {
                let n = self.batch * self.net.outputs();
                f(one(&simple.delta_output, &self.delta_output, n)?)?;
                for l in (0..last - 1).rev() {
                    if let Some(g) = &self.groups[l].delta_hidden {
                        let n = self.batch * layers[l].n_out;
                        f(one(&simple.delta_hidden, g, n)?)?;
                    }
                }
                for (l, ly) in layers.iter().enumerate() {
                    let g = &self.groups[l].gradient;
                    f(one(&simple.gradient_weights, g, ly.n_out * ly.n_in)?)?;
                    f(one(&simple.gradient_bias, g, ly.n_out)?)?;
                }
            }
            (Stage::FusedBackward, None) => {
                return Err(Error::Invalid(
                    "the simple kernels have no fused update".into(),
                ))
            }
            (Stage::Forward, Some(t)) => {
                for (l, ly) in layers.iter().enumerate() {
                    f(Dispatch {
                        kernel: &t.forward_dense,
                        group: &self.groups[l].forward,
                        grid: grid_tiled(b, ly.n_out as u32, &t.tiles, max)?,
                    })?;
                }
                let no = self.net.outputs() as u32;
                let what = "the loss's sample groups";
                f(Dispatch {
                    kernel: &t.delta_output_loss,
                    group: &self.loss,
                    grid: grid(loss_groups(b, no) as u64, max, what)?,
                })?;
                if let Some(g) = &self.loss_finish {
                    f(Dispatch {
                        kernel: &t.loss_finish,
                        group: g,
                        grid: (1, 1),
                    })?;
                }
            }
            (Stage::Backward | Stage::FusedBackward, Some(t)) => {
                let fused = stage == Stage::FusedBackward;
                if !fused {
                    // Fused, delta_output_loss in the forward stage wrote it.
                    let n = self.batch * self.net.outputs();
                    f(one(&simple.delta_output, &self.delta_output, n)?)?;
                }
                // Layer l's gradient pass may update W_l, so the delta below
                // it, which reads W_l, goes first.
                for l in (0..last).rev() {
                    if l > 0 {
                        if let Some(g) = &self.groups[l - 1].delta_hidden {
                            f(Dispatch {
                                kernel: &t.delta_hidden,
                                group: g,
                                grid: grid_tiled(b, layers[l - 1].n_out as u32, &t.tiles, max)?,
                            })?;
                        }
                    }
                    let ly = layers[l];
                    let lg = &self.groups[l];
                    let (kernel, group) = match (&lg.gradient_sgd, fused) {
                        (Some(g), true) => (&t.gradient_sgd, g),
                        _ => (&t.gradient_dense, &lg.gradient),
                    };
                    f(Dispatch {
                        kernel,
                        group,
                        grid: grid_tiled(ly.n_out as u32, ly.n_in as u32, &t.tiles, max)?,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Record `stage` into this step's encoder as one compute pass.
    fn record(&mut self, stage: Stage) -> Result<()> {
        let mut enc = self.encoder_take();
        let done = {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(stage.label()),
                timestamp_writes: None,
            });
            self.plan(stage, &mut |d| {
                dispatch(&mut pass, d.kernel, d.group, d.grid);
                Ok(())
            })
        };
        // A half-recorded step is dropped, not submitted.
        if done.is_ok() {
            self.pending = Some(enc);
        }
        done
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

    /// Submit what has been recorded, if anything. Does not wait.
    fn flush(&mut self) {
        if let Some(enc) = self.pending.take() {
            self.ctx.queue.submit([enc.finish()]);
        }
    }

    fn need_batch(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    fn read_floats(&mut self, buf_index: Which, count: usize) -> Result<Vec<f32>> {
        self.flush();
        let buf = match buf_index {
            Which::Params => &self.params,
            Which::Grads => &self.grads,
            Which::Act(l) => &self.acts[l],
            Which::Delta(l) => &self.deltas[l],
        };
        readback::read(&self.ctx, buf, 0, count)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Params,
    Grads,
    Act(usize),
    Delta(usize),
}

/// The SGD uniform for a batch of `batch` samples.
fn sgd_uniform(net: &Network, lr: f32, batch: usize) -> SgdUniform {
    SgdUniform {
        count: net.param_count() as u32,
        lr,
        scale: 1.0 / batch.max(1) as f32,
        accumulate: 0,
    }
}

/// Dims of dense layer `l` for a batch of `batch`.
fn layer_dims(net: &Network, l: usize, batch: usize, metric: Metric) -> Dims {
    let layers = net.layers();
    let ly = layers[l];
    let next = layers.get(l + 1);
    Dims {
        batch: batch as u32,
        n_in: ly.n_in as u32,
        n_out: ly.n_out as u32,
        w_off: ly.w_off as u32,
        b_off: ly.b_off as u32,
        n_next: next.map_or(0, |n| n.n_out as u32),
        w_next_off: next.map_or(0, |n| n.w_off as u32),
        metric: metric as u32,
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
        self.flush();
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
            self.flush();
            self.metric = metric;
            self.write_dims();
        }
        Ok(())
    }

    fn load_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let batch = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.flush();
        if batch != self.batch {
            let old = self.batch;
            self.batch = batch;
            // Grids that do not fit the device are refused here, not mid-step.
            for stage in [Stage::Forward, Stage::Backward, Stage::Update] {
                if let Err(e) = self.plan(stage, &mut |_| Ok(())) {
                    self.batch = old;
                    return Err(e);
                }
            }
            self.write_dims();
            // The gradients' 1/B lives in the SGD uniform.
            self.write_sgd();
        }
        let q = &self.ctx.queue;
        q.write_buffer(&self.acts[0], 0, bytemuck::cast_slice(x));
        q.write_buffer(&self.y, 0, bytemuck::cast_slice(y));
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.need_batch()?;
        self.record(Stage::Forward)
    }

    fn backward(&mut self) -> Result<()> {
        self.need_batch()?;
        self.record(Stage::Backward)
    }

    fn update(&mut self, lr: f32) -> Result<()> {
        self.write_lr(lr);
        self.record(Stage::Update)?;
        self.flush();
        Ok(())
    }

    /// Tiled: forward with the output delta and loss fused, then the deltas
    /// with each layer's update fused into its gradient pass; one submission.
    fn step(&mut self, lr: f32) -> Result<()> {
        if self.tiled.is_none() {
            self.forward()?;
            self.backward()?;
            return self.update(lr);
        }
        self.need_batch()?;
        self.write_lr(lr);
        self.record(Stage::Forward)?;
        self.record(Stage::FusedBackward)?;
        self.flush();
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.flush();
        readback::finish(&self.ctx)
    }

    fn take_totals(&mut self) -> Result<Totals> {
        self.flush();
        let acc: Vec<Acc> = readback::read(&self.ctx, &self.acc, 0, 1)?;
        self.ctx
            .queue
            .write_buffer(&self.acc, 0, bytemuck::bytes_of(&Acc::default()));
        let a = acc.first().copied().unwrap_or_default();
        Ok(Totals {
            loss_sum: a.loss_sum as f64,
            samples: a.samples as u64,
            correct: a.correct as u64,
        })
    }

    fn read_activations(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 0)?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Act(l), n)
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 1)?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Delta(l), n)
    }

    fn read_gradients(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Grads, self.net.param_count())?;
        Params::from_vec(&self.net, data)
    }
}
