//! The backend's device memory, made once at construction: the persistent
//! buffers ([`Buffers`]) and every bind group over them ([`Groups`]). A
//! stateful optimizer adds its own ([`UpdateBuffers`]) when it is set.
//!
//! Three uniforms carry what the kernels read besides the shapes, each
//! written only when it changes: `hyper` ([`OptimUniform`]) when the
//! optimizer is set, `per_batch` ([`BatchUniform`]) by `load_batch`, and
//! `per_step` ([`StepUniform`]) once by each step. Each layer's [`Dims`]
//! follows the rows staged in the per-sample buffers.

use super::context::{create_buffer, create_buffer_init, GpuContext};
use super::kernels::{
    loss_groups, tile_blocks, Acc, BatchUniform, Dims, Kernel, Kernels, OptimUniform, StepUniform,
    TiledKernels,
};
use super::layout::DeviceLayout;
use super::options::binding_bytes;
use super::plan::Product;
use super::readback;
use crate::backend::Metric;
use crate::error::Result;
use crate::network::{Activation, Network};
use crate::optim::{Optimizer, OptimizerKind};

/// The persistent buffers of a backend for `net`.
pub(super) struct Buffers {
    /// The most rows every per-sample buffer holds, fixed at construction:
    /// the backend's capacity, or fewer where the device's limits (or
    /// `max_chunk`) make larger batches run as micro-batches.
    pub capacity: usize,
    /// Where params, grads and the optimizer state keep each layer.
    pub layout: DeviceLayout,
    /// (D) in the padded [`DeviceLayout`]: per layer `w (n_out, w_ld)`
    /// then `b (n_out)`, each on a vec4.
    pub params: wgpu::Buffer,
    /// (D), as params; the padding stays zero (no kernel writes it).
    pub grads: wgpu::Buffer,
    /// acts[l]: (capacity, sizes[l]); acts[0] is the input batch.
    pub acts: Vec<wgpu::Buffer>,
    /// deltas[l]: (capacity, sizes[l]), l >= 1; deltas[0] is a 1-float placeholder.
    pub deltas: Vec<wgpu::Buffer>,
    /// Targets: (capacity, outputs).
    pub y: wgpu::Buffer,
    /// The running loss totals, one [`Acc`].
    pub acc: wgpu::Buffer,
    /// Where `acc` is read back, kept: `--nan-check` reads it every step.
    pub acc_staging: wgpu::Buffer,
    /// One [`Dims`] per dense layer.
    pub dims: Vec<wgpu::Buffer>,
    /// [`OptimUniform`]: the parameter count and the optimizer's constants.
    pub hyper: wgpu::Buffer,
    /// [`BatchUniform`]: 1/rows of the loaded batch, and whether micro-batches accumulate.
    pub per_batch: wgpu::Buffer,
    /// [`StepUniform`]: the learning rate and bias corrections of this step.
    pub per_step: wgpu::Buffer,
    /// Per-workgroup loss sums of `delta_output_loss` (tiled).
    partials: wgpu::Buffer,
    /// Split-K slice sums, (splits, n_out, n_in + 1) of the layer in hand (tiled).
    scratch: wgpu::Buffer,
    /// The last-workgroup counters (tiled), zero between dispatches.
    counters: wgpu::Buffer,
}

impl Buffers {
    /// Every persistent buffer for `net` with per-sample buffers of
    /// `capacity` rows; `tiled` sizes the split-K scratch.
    pub fn new(
        ctx: &GpuContext,
        net: &Network,
        capacity: usize,
        tiled: Option<&TiledKernels>,
    ) -> Result<Buffers> {
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let none = wgpu::BufferUsages::empty();
        let layout = DeviceLayout::new(net);
        let p = layout.len();
        let params = storage_buffer(ctx, "params", p, copy_dst)?;
        let grads = storage_buffer(ctx, "grads", p, copy_dst)?;
        let (acts, deltas) = per_sample(ctx, net, capacity)?;
        let y = storage_buffer(ctx, "targets", capacity * net.outputs(), copy_dst)?;
        let partials = storage_buffer(
            ctx,
            "loss partials",
            2 * partials(net, capacity, tiled),
            none,
        )?;
        let counters = storage_buffer(ctx, "block counters", counters(net, tiled), none)?;
        let scratch_floats = scratch_floats(ctx, net, capacity, tiled);
        let scratch = storage_buffer(ctx, "split-K sums", scratch_floats as usize, none)?;
        let acc = totals(ctx)?;
        let acc_staging = readback::staging(ctx, std::mem::size_of::<Acc>() as u64)?;
        let dims = (0..net.layers().len())
            .map(|l| {
                let d = layer_dims(net, &layout, l, capacity, Metric::None, 1);
                d.check()?;
                uniform(ctx, "dims", &d)
            })
            .collect::<Result<_>>()?;
        // Plain SGD's constants until an optimizer is set: count is what sgd_update reads.
        let constants = OptimUniform::new(p, &Optimizer::default().terms(0.0, 0));
        Ok(Buffers {
            capacity,
            layout,
            params,
            grads,
            acts,
            deltas,
            y,
            acc,
            acc_staging,
            dims,
            hyper: uniform(ctx, "optim", &constants)?,
            per_batch: uniform(ctx, "per batch", &BatchUniform::default())?,
            per_step: uniform(ctx, "per step", &StepUniform::default())?,
            partials,
            scratch,
            counters,
        })
    }

    /// Rewrite every layer's Dims for `rows` staged rows, `metric` and each
    /// layer's split-K slices. The writes land before the next submit.
    pub fn write_dims(
        &self,
        ctx: &GpuContext,
        net: &Network,
        rows: usize,
        metric: Metric,
        splits: &[u32],
    ) {
        assert!(
            rows <= self.capacity,
            "{rows} rows staged in buffers of {}",
            self.capacity
        );
        for (l, buf) in self.dims.iter().enumerate() {
            let d = layer_dims(net, &self.layout, l, rows, metric, splits[l]);
            // Safety condition 2 of unchecked modules (gpu::kernels docs):
            // buffers of fewer than 2^30 floats make this hold.
            d.check().expect("layer Dims within the kernels' bounds");
            ctx.queue.write_buffer(buf, 0, bytemuck::bytes_of(&d));
        }
    }
}

/// The activations and deltas of every layer, `capacity` rows each:
/// acts[0] (the input) takes uploads, deltas[0] is never used.
fn per_sample(
    ctx: &GpuContext,
    net: &Network,
    capacity: usize,
) -> Result<(Vec<wgpu::Buffer>, Vec<wgpu::Buffer>)> {
    let sizes = net.sizes();
    let buffer = |what: &str, l: usize, n: usize, extra| {
        storage_buffer(ctx, &format!("{what} {l}"), capacity * n, extra)
    };
    let acts = (0..sizes.len())
        .map(|l| {
            let upload = match l {
                0 => wgpu::BufferUsages::COPY_DST,
                _ => wgpu::BufferUsages::empty(),
            };
            buffer("activations", l, sizes[l], upload)
        })
        .collect::<Result<Vec<_>>>()?;
    let deltas = (0..sizes.len())
        .map(|l| {
            let n = if l == 0 { 0 } else { sizes[l] };
            buffer("deltas", l, n, wgpu::BufferUsages::empty())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((acts, deltas))
}

/// Loss partials of a batch of `capacity` rows: one per sample group of
/// `delta_output_loss`, or per row block of `forward_output_loss_tiled`.
fn partials(net: &Network, capacity: usize, tiled: Option<&TiledKernels>) -> usize {
    let groups = loss_groups(capacity as u32, net.outputs() as u32) as usize;
    let top = net.layers().len().saturating_sub(1);
    let bm = |t: &TiledKernels| t.tiles(Product::Forward, top).bm() as usize;
    let blocks = tiled.map_or(0, |t| capacity.div_ceil(bm(t)));
    groups.max(blocks)
}

/// Counters of the last-workgroup pattern (u32, zero between dispatches): one
/// per output block of the largest gradient product (the output kernel uses
/// the first).
fn counters(net: &Network, tiled: Option<&TiledKernels>) -> usize {
    let Some(t) = tiled else { return 1 };
    net.layers()
        .iter()
        .enumerate()
        .map(|(l, ly)| {
            let tiles = t.tiles(Product::Gradient, l);
            tile_blocks(ly.n_out as u32, ly.n_in as u32, tiles) as usize
        })
        .max()
        .unwrap_or(1)
        .max(1)
}

/// Floats of split-K slice sums: as many as the layer with the most slices
/// at `capacity` rows asks for ([`super::plan::gradient_splits`], within the scratch
/// budget and one binding, and never fewer rows asking for more); 1
/// without tiled kernels or splits.
fn scratch_floats(
    ctx: &GpuContext,
    net: &Network,
    capacity: usize,
    tiled: Option<&TiledKernels>,
) -> u64 {
    let Some(t) = tiled else { return 1 };
    let device = ctx.info.device_type;
    let slices = t.plan().gradient_slices(net, capacity, device, &ctx.limits);
    net.layers()
        .iter()
        .zip(slices)
        .map(|(ly, s)| match s {
            1 => 1,
            s => s as u64 * ly.n_out as u64 * (ly.n_in as u64 + 1),
        })
        .max()
        .unwrap_or(1)
}

/// The running loss totals, zero, as a storage buffer the host reads and resets.
fn totals(ctx: &GpuContext) -> Result<wgpu::Buffer> {
    create_buffer_init(
        &ctx.device,
        &wgpu::util::BufferInitDescriptor {
            label: Some("loss totals"),
            contents: bytemuck::bytes_of(&Acc::default()),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
        },
    )
}

/// A uniform buffer holding `value`, rewritable.
pub(super) fn uniform<T: bytemuck::Pod>(
    ctx: &GpuContext,
    label: &str,
    value: &T,
) -> Result<wgpu::Buffer> {
    create_buffer_init(
        &ctx.device,
        &wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        },
    )
}

/// A storage buffer of `floats` f32 (at least one), also a copy source and
/// `extra`; an error where it exceeds the device's binding or buffer limit.
/// Its size is rounded up to 16 bytes, so that a kernel may read it as
/// `array<vec4<f32>>` up to its last float (gradient_tiled.wgsl; the
/// limit is a multiple of 16, [`binding_bytes`]).
pub(super) fn storage_buffer(
    ctx: &GpuContext,
    label: &str,
    floats: usize,
    extra: wgpu::BufferUsages,
) -> Result<wgpu::Buffer> {
    let limit = binding_bytes(&ctx.limits);
    let bytes = (floats.max(1) * 4).next_multiple_of(16) as u64;
    if bytes > limit {
        return Err(crate::Error::Gpu(format!(
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

/// Dims of dense layer `l` for `rows` staged rows and `splits` K slices of
/// its gradient, with the offsets and strides of the device layout.
fn layer_dims(
    net: &Network,
    layout: &DeviceLayout,
    l: usize,
    rows: usize,
    metric: Metric,
    splits: u32,
) -> Dims {
    let ly = net.layers()[l];
    let dl = layout.layers()[l];
    let next = layout.layers().get(l + 1);
    Dims {
        rows: rows as u32,
        n_in: ly.n_in as u32,
        n_out: ly.n_out as u32,
        w_off: dl.w_off as u32,
        b_off: dl.b_off as u32,
        n_next: next.map_or(0, |n| n.n_out as u32),
        w_next_off: next.map_or(0, |n| n.w_off as u32),
        metric: metric as u32,
        splits,
        act: ly.act as u32,
        loss: net.loss() as u32,
        w_ld: dl.w_ld as u32,
        w_next_ld: next.map_or(0, |n| n.w_ld as u32),
        _pad: [0; 3],
    }
}

/// Bind groups of one dense layer `l` (between sizes `l` and `l + 1`), for
/// the kernel set's kernels.
pub(super) struct LayerGroups {
    pub forward: wgpu::BindGroup,
    /// Hidden layers only: computes deltas[l + 1] from deltas[l + 2].
    pub delta_hidden: Option<wgpu::BindGroup>,
    /// Simple: gradient_weights and gradient_bias; tiled: both gradient kernels.
    pub gradient: wgpu::BindGroup,
}

/// Every bind group a step dispatches, made once over [`Buffers`].
pub(super) struct Groups {
    /// One per dense layer.
    pub layers: Vec<LayerGroups>,
    /// A softmax output only: softmax_forward on the output activations.
    pub softmax: Option<wgpu::BindGroup>,
    pub delta_output: wgpu::BindGroup,
    /// Simple: loss_reduce; tiled: delta_output_loss.
    pub loss: wgpu::BindGroup,
    /// Tiled only: loss_finish.
    pub loss_finish: Option<wgpu::BindGroup>,
    /// Tiled, where one block holds a whole output row:
    /// forward_output_loss_tiled (the output layer, its delta and the loss).
    pub output_loss: Option<wgpu::BindGroup>,
    /// sgd_update over params and grads.
    pub sgd: wgpu::BindGroup,
}

impl Groups {
    /// The bind groups of `kernels` (and `tiled`, when it runs) over `b`.
    pub fn new(
        dev: &wgpu::Device,
        net: &Network,
        kernels: &Kernels,
        tiled: Option<&TiledKernels>,
        b: &Buffers,
    ) -> Result<Groups> {
        let last = net.layers().len();
        let layers = (0..last)
            .map(|l| layer_groups(dev, l, last, kernels, tiled, b))
            .collect::<Result<_>>()?;
        let (top, out) = (&b.dims[last - 1], &b.acts[last]);
        let softmax = (net.output_activation() == Activation::Softmax)
            .then(|| kernels.softmax_forward.bind(dev, &[top, out]))
            .transpose()?;
        let delta_output = kernels
            .delta_output
            .bind(dev, &[top, out, &b.y, &b.deltas[last]])?;
        let (loss, loss_finish) = match tiled {
            None => (
                kernels.loss_reduce.bind(dev, &[top, out, &b.y, &b.acc])?,
                None,
            ),
            Some(t) => (
                t.delta_output_loss
                    .bind(dev, &[top, out, &b.y, &b.deltas[last], &b.partials])?,
                Some(t.loss_finish.bind(dev, &[top, &b.partials, &b.acc])?),
            ),
        };
        let output_loss = match tiled.and_then(|t| t.output_loss(last - 1, net.outputs())) {
            Some((k, _)) => Some(k.bind(
                dev,
                &[
                    top,
                    &b.params,
                    &b.acts[last - 1],
                    out,
                    &b.y,
                    &b.deltas[last],
                    &b.partials,
                    &b.acc,
                    &b.counters,
                ],
            )?),
            _ => None,
        };
        let sgd = kernels
            .sgd_update
            .bind(dev, &[&b.hyper, &b.per_step, &b.params, &b.grads])?;
        Ok(Groups {
            layers,
            softmax,
            delta_output,
            loss,
            loss_finish,
            output_loss,
            sgd,
        })
    }
}

/// The bind groups of dense layer `l` of `last`.
fn layer_groups(
    dev: &wgpu::Device,
    l: usize,
    last: usize,
    kernels: &Kernels,
    tiled: Option<&TiledKernels>,
    b: &Buffers,
) -> Result<LayerGroups> {
    let (forward, delta_hidden, gradient) = match tiled {
        None => (
            &kernels.forward_dense,
            &kernels.delta_hidden,
            &kernels.gradient_weights,
        ),
        // Every configuration's kernels share these layouts.
        Some(t) => {
            let k = |p| t.set(p, l);
            let g = &k(Product::Gradient).gradient_dense;
            (
                &k(Product::Forward).forward_dense,
                &k(Product::Delta).delta_hidden,
                g,
            )
        }
    };
    let dims = &b.dims[l];
    let (delta, a_prev, a) = (&b.deltas[l + 1], &b.acts[l], &b.acts[l + 1]);
    let hidden = (l + 1 < last).then(|| delta_hidden_buffers(b, l, a));
    let gradient_buffers: &[&wgpu::Buffer] = match tiled {
        None => &[dims, delta, a_prev, &b.grads],
        Some(_) => &[
            dims,
            &b.per_batch,
            &b.per_step,
            delta,
            a_prev,
            &b.params,
            &b.grads,
            &b.scratch,
            &b.counters,
        ],
    };
    Ok(LayerGroups {
        forward: forward.bind(dev, &[dims, &b.params, a_prev, a])?,
        delta_hidden: hidden.map(|g| delta_hidden.bind(dev, &g)).transpose()?,
        gradient: gradient.bind(dev, gradient_buffers)?,
    })
}

/// What `delta_hidden` (simple or tiled) binds for hidden layer `l`:
/// deltas[l + 1] from deltas[l + 2] through W_{l + 1}, with `f'` taken from
/// `a` (acts[l + 1], or dropout's copy of it from before the mask).
pub(super) fn delta_hidden_buffers<'b>(
    b: &'b Buffers,
    l: usize,
    a: &'b wgpu::Buffer,
) -> [&'b wgpu::Buffer; 5] {
    [&b.dims[l], &b.params, &b.deltas[l + 2], a, &b.deltas[l + 1]]
}

/// What `momentum_update` or `adam_update` binds besides params and grads.
pub(super) struct UpdateBuffers {
    /// Adam (else momentum).
    pub adam: bool,
    /// Per-parameter decay, (D), zero on the padding; held beside the group
    /// that binds it.
    _decay: wgpu::Buffer,
    /// Momentum `v (D)`, Adam `m (D)` then `v (D)`, each in the device
    /// layout (zero on the padding, as the gradients there are).
    pub state: wgpu::Buffer,
    pub group: wgpu::BindGroup,
}

impl UpdateBuffers {
    /// The state, decay and bind group `opt`'s update kernel needs (`kernel`
    /// takes the layout of both), or `None` for plain SGD. New buffers start
    /// at zero (wgpu clears them).
    pub fn new(
        ctx: &GpuContext,
        net: &Network,
        opt: &Optimizer,
        kernel: &Kernel,
        b: &Buffers,
    ) -> Result<Option<UpdateBuffers>> {
        let Some(kind) = opt.update_kernel() else {
            return Ok(None);
        };
        let p = b.layout.len();
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        // SGD with decay keeps a (D) scratch v that it never reads back.
        let state = storage_buffer(ctx, "optimizer state", opt.state_len(p).max(p), copy_dst)?;
        let decay = storage_buffer(ctx, "decay", p, copy_dst)?;
        let d = b.layout.to_device(&opt.decay::<f32>(net));
        ctx.queue.write_buffer(&decay, 0, bytemuck::cast_slice(&d));
        let group = kernel.bind(
            &ctx.device,
            &[&b.hyper, &b.per_step, &b.params, &b.grads, &decay, &state],
        )?;
        Ok(Some(UpdateBuffers {
            adam: kind == OptimizerKind::Adam,
            _decay: decay,
            state,
            group,
        }))
    }
}
