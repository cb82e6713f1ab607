//! Dropout on the GPU (`shaders/dropout.wgsl`; twin:
//! [`crate::cpu::dropout_apply`]): one small element-wise dispatch after a
//! dropout layer's forward product (on its outputs) and one after its hidden
//! delta (on its deltas), in training steps only. The mask is a hash of the
//! seed, the update, the row's index in the whole batch, the layer and the
//! unit ([`crate::cpu::DropoutKey`]), so it is the CPU's bit for bit and
//! does not depend on how a batch is split into micro-batches.

use super::buffers::{uniform, Buffers};
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

/// One dropout layer's uniform and its two bind groups.
struct DropLayer {
    l: usize,
    n: usize,
    p: f32,
    uniform: wgpu::Buffer,
    acts: wgpu::BindGroup,
    deltas: wgpu::BindGroup,
}

/// The dropout kernel and every dropout layer's buffers; made with the
/// backend when its network has dropout.
pub(super) struct Dropout {
    pub kernel: Kernel,
    layers: Vec<DropLayer>,
}

impl Dropout {
    /// `None` for a network without dropout.
    pub fn new(ctx: &GpuContext, net: &Network, buf: &Buffers) -> Result<Option<Dropout>> {
        if !net.has_dropout() {
            return Ok(None);
        }
        let kernel = Kernel::new(&ctx.device, DROPOUT_APPLY, &TileConfig::SMALL)?;
        let mut layers = Vec::new();
        for (l, ly) in net.layers().iter().enumerate() {
            if ly.dropout <= 0.0 {
                continue;
            }
            let u = uniform(ctx, "dropout", &DropUniform::default())?;
            layers.push(DropLayer {
                l,
                n: ly.n_out,
                p: ly.dropout,
                acts: kernel.bind(&ctx.device, &[&u, &buf.acts[l + 1]])?,
                deltas: kernel.bind(&ctx.device, &[&u, &buf.deltas[l + 1]])?,
                uniform: u,
            });
        }
        Ok(Some(Dropout { kernel, layers }))
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

    /// The bind group over layer `l`'s outputs (`deltas`: its deltas) and
    /// its width, if it drops.
    pub fn group(&self, l: usize, deltas: bool) -> Option<(&wgpu::BindGroup, usize)> {
        let d = self.layers.iter().find(|d| d.l == l)?;
        Some((if deltas { &d.deltas } else { &d.acts }, d.n))
    }
}

/// `dropout_apply` alone on `values (rows, n)`, rows `row0..` of the batch.
/// For the twin tests; not part of the documented API.
#[doc(hidden)]
pub fn dropout_on_device(
    ctx: &GpuContext,
    values: &[f32],
    rows: usize,
    n: usize,
    row0: usize,
    key: &DropoutKey,
) -> Result<Vec<f32>> {
    let dev = &ctx.device;
    let kernel = Kernel::new(dev, DROPOUT_APPLY, &TileConfig::SMALL)?;
    let buf =
        super::buffers::storage_buffer(ctx, "values", values.len(), wgpu::BufferUsages::COPY_DST)?;
    ctx.queue
        .write_buffer(&buf, 0, bytemuck::cast_slice(values));
    let u = uniform(ctx, "dropout", &DropUniform::new(key, rows, n, row0))?;
    let group = kernel.bind(dev, &[&u, &buf])?;
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
    readback::read(ctx, &buf, 0, values.len())
}
