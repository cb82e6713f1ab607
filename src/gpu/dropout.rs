//! Dropout on the GPU (`shaders/dropout.wgsl`; twin:
//! [`crate::cpu::dropout_apply`]): one small element-wise dispatch after a
//! dropout layer's forward product (on its outputs) and one after its hidden
//! delta (on its deltas), in training steps only. The mask is a hash of the
//! seed, the update, the row's index in the whole batch, the layer and the
//! unit ([`crate::cpu::DropoutKey`]), so it is the CPU's bit for bit and
//! does not depend on how a batch is split into micro-batches.
//!
//! A layer whose derivative is taken from its output (sigmoid, tanh:
//! [`crate::network::Layer::keeps_undropped`]) runs `dropout_keep` instead,
//! which copies the outputs to its own `undropped (capacity, n)` buffer
//! before masking them, and its hidden delta in a training step binds that
//! buffer for `f'` in place of the activations.

use super::buffers::{delta_hidden_buffers, storage_buffer, uniform, Buffers};
use super::context::GpuContext;
use super::kernels::{grid_1d, Kernel, KernelKind, KernelSpec, Slot, TileConfig};
use super::readback;
use crate::cpu::DropoutKey;
use crate::error::Result;
use crate::network::Network;
use bytemuck::{Pod, Zeroable};

/// Mirrors `struct Drop` in `shaders/dropout.wgsl`: one per dropout layer,
/// written by each training step (and each micro-batch).
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct DropUniform {
    /// Rows staged now.
    pub rows: u32,
    /// The layer's width.
    pub n: u32,
    /// The staged rows' first row in the whole batch.
    pub row0: u32,
    /// `round(p·2²⁴)`.
    pub keep_at: u32,
    /// `1 / (1 − p)`.
    pub scale: f32,
    /// Dense layer index.
    pub layer: u32,
    /// The seed's low 32 bits.
    pub seed_lo: u32,
    /// The seed's high 32 bits.
    pub seed_hi: u32,
    /// The update the step applies (low 32 bits).
    pub t: u32,
    /// Uniforms are 16-byte aligned.
    pub _pad: [u32; 3],
}

impl DropUniform {
    /// `key` over `rows` rows of width `n` starting at batch row `row0`.
    pub fn new(key: &DropoutKey, rows: usize, n: usize, row0: usize) -> Self {
        DropUniform {
            rows: rows as u32,
            n: n as u32,
            row0: row0 as u32,
            keep_at: key.keep_at,
            scale: key.scale,
            layer: key.layer,
            seed_lo: key.seed as u32,
            seed_hi: (key.seed >> 32) as u32,
            t: key.t as u32,
            _pad: [0; 3],
        }
    }
}

/// `v = keep ? v / (1 − p) : 0` over (rows, n): drop, values.
pub const DROPOUT_APPLY: KernelSpec = KernelSpec {
    entry: "dropout_apply",
    file: "dropout.wgsl",
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        "\n",
        include_str!("../../shaders/dropout.wgsl")
    ),
    bindings: &[
        Slot::Uniform(std::mem::size_of::<DropUniform>() as u64),
        Slot::ReadWrite,
    ],
    kind: KernelKind::ElementWise,
};

/// `dropout_apply` that first copies each value to `undropped`: drop,
/// values, undropped (rows, n).
pub const DROPOUT_KEEP: KernelSpec = KernelSpec {
    entry: "dropout_keep",
    file: "dropout_keep.wgsl",
    source: concat!(
        include_str!("../../shaders/common.wgsl"),
        "\n",
        include_str!("../../shaders/dropout.wgsl"),
        "\n",
        include_str!("../../shaders/dropout_keep.wgsl")
    ),
    bindings: &[
        Slot::Uniform(std::mem::size_of::<DropUniform>() as u64),
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    kind: KernelKind::ElementWise,
};

/// A layer's copy of its outputs from before the mask, and the hidden
/// delta's bind group that reads `f'` from it.
struct Undropped {
    _buffer: wgpu::Buffer,
    delta_hidden: wgpu::BindGroup,
}

/// One dropout layer's uniform and its two bind groups.
struct DropLayer {
    l: usize,
    n: usize,
    p: f32,
    uniform: wgpu::Buffer,
    /// Over its outputs: `dropout_apply`, or `dropout_keep` with `undropped`.
    acts: wgpu::BindGroup,
    deltas: wgpu::BindGroup,
    undropped: Option<Undropped>,
}

/// The dropout kernels and every dropout layer's buffers; made with the
/// backend when its network has dropout.
pub(super) struct Dropout {
    apply: Kernel,
    keep: Kernel,
    layers: Vec<DropLayer>,
}

impl Dropout {
    /// `None` for a network without dropout. `delta_hidden` is the kernel
    /// set's hidden-delta kernel (simple or tiled), bound here over the
    /// undropped outputs of the layers that keep them.
    pub fn new(
        ctx: &GpuContext,
        net: &Network,
        buf: &Buffers,
        delta_hidden: &Kernel,
    ) -> Result<Option<Dropout>> {
        if !net.has_dropout() {
            return Ok(None);
        }
        let dev = &ctx.device;
        let apply = Kernel::new(dev, DROPOUT_APPLY, &TileConfig::SMALL)?;
        let keep = Kernel::new(dev, DROPOUT_KEEP, &TileConfig::SMALL)?;
        let mut layers = Vec::new();
        for (l, ly) in net.layers().iter().enumerate() {
            if ly.dropout <= 0.0 {
                continue;
            }
            let u = uniform(ctx, "dropout", &DropUniform::default())?;
            let (acts, undropped) = if ly.keeps_undropped() {
                let none = wgpu::BufferUsages::empty();
                let b = storage_buffer(ctx, "undropped outputs", buf.capacity * ly.n_out, none)?;
                let group = delta_hidden.bind(dev, &delta_hidden_buffers(buf, l, &b))?;
                let acts = keep.bind(dev, &[&u, &buf.acts[l + 1], &b])?;
                let undropped = Undropped {
                    _buffer: b,
                    delta_hidden: group,
                };
                (acts, Some(undropped))
            } else {
                (apply.bind(dev, &[&u, &buf.acts[l + 1]])?, None)
            };
            layers.push(DropLayer {
                l,
                n: ly.n_out,
                p: ly.dropout,
                acts,
                deltas: apply.bind(dev, &[&u, &buf.deltas[l + 1]])?,
                undropped,
                uniform: u,
            });
        }
        Ok(Some(Dropout {
            apply,
            keep,
            layers,
        }))
    }

    /// Every layer's uniform for update `t` of a run seeded `seed`, with
    /// `rows` rows staged from batch row `row0`; lands before the next submit.
    pub fn write(&self, ctx: &GpuContext, seed: u64, t: u64, rows: usize, row0: usize) {
        for d in &self.layers {
            let key = DropoutKey::new(seed, t, d.l, d.p);
            let u = DropUniform::new(&key, rows, d.n, row0);
            ctx.queue
                .write_buffer(&d.uniform, 0, bytemuck::bytes_of(&u));
        }
    }

    /// The kernel and bind group over layer `l`'s outputs (`deltas`: its
    /// deltas) and its width, if it drops.
    pub fn group(&self, l: usize, deltas: bool) -> Option<(&Kernel, &wgpu::BindGroup, usize)> {
        let d = self.layers.iter().find(|d| d.l == l)?;
        Some(match (deltas, &d.undropped) {
            (true, _) => (&self.apply, &d.deltas, d.n),
            (false, None) => (&self.apply, &d.acts, d.n),
            (false, Some(_)) => (&self.keep, &d.acts, d.n),
        })
    }

    /// Hidden layer `l`'s delta bind group reading `f'` from its undropped
    /// outputs, if it keeps them.
    pub fn delta_hidden(&self, l: usize) -> Option<&wgpu::BindGroup> {
        let d = self.layers.iter().find(|d| d.l == l)?;
        d.undropped.as_ref().map(|u| &u.delta_hidden)
    }
}

/// `dropout_apply` alone on `values (rows, n)`, rows `row0..` of the batch;
/// with `keep`, `dropout_keep`, which also returns the values from before
/// the mask (else that is empty). For the twin tests; not part of the
/// documented API.
#[doc(hidden)]
pub fn dropout_on_device(
    ctx: &GpuContext,
    values: &[f32],
    rows: usize,
    n: usize,
    row0: usize,
    key: &DropoutKey,
    keep: bool,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let dev = &ctx.device;
    let spec = if keep { DROPOUT_KEEP } else { DROPOUT_APPLY };
    let kernel = Kernel::new(dev, spec, &TileConfig::SMALL)?;
    let copy = wgpu::BufferUsages::COPY_DST;
    let buf = storage_buffer(ctx, "values", values.len(), copy)?;
    ctx.queue
        .write_buffer(&buf, 0, bytemuck::cast_slice(values));
    // Poisoned, so an element never written shows.
    let undropped = storage_buffer(ctx, "undropped", values.len(), copy)?;
    let poison = vec![f32::NAN; values.len()];
    ctx.queue
        .write_buffer(&undropped, 0, bytemuck::cast_slice(&poison));
    let u = uniform(ctx, "dropout", &DropUniform::new(key, rows, n, row0))?;
    let group = match keep {
        true => kernel.bind(dev, &[&u, &buf, &undropped])?,
        false => kernel.bind(dev, &[&u, &buf])?,
    };
    let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("dropout"),
    });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("dropout"),
            timestamp_writes: None,
        });
        let grid = grid_1d(
            (rows * n) as u64,
            ctx.limits.max_compute_workgroups_per_dimension,
        )?;
        super::kernels::dispatch(&mut pass, &kernel, &group, grid);
    }
    ctx.queue.submit([enc.finish()]);
    let masked = readback::read(ctx, &buf, 0, values.len())?;
    let kept = match keep {
        true => readback::read(ctx, &undropped, 0, values.len())?,
        false => Vec::new(),
    };
    Ok((masked, kept))
}
