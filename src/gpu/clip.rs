//! Gradient clipping by global L2 norm on the device that trains
//! (`shaders/clip.wgsl`; twin: [`crate::cpu::clip_gradients`]): three small
//! dispatches at the head of the update stage, reading and scaling the flat
//! gradient buffer in place, so every optimiser's update kernel (and a
//! data-parallel backend that uploads summed gradients, then updates) sees
//! clipped gradients. The norm is reduced in a fixed order (per-workgroup
//! tree sums, then one workgroup adds them; no float atomics): the same
//! gradients give the same bits every time.
//!
//! The device also counts the updates it clipped ([`ClipStats::fired`]);
//! the host reads that with the loss totals and resets it with them.

use super::buffers::{storage_buffer, uniform};
use super::context::GpuContext;
use super::kernels::{grid, grid_1d, Kernel, KernelKind, KernelSpec, Slot, TileConfig, LOSS_WG};
use super::readback;
use crate::error::Result;
use bytemuck::{Pod, Zeroable};

/// Mirrors `struct Clip` in `shaders/clip.wgsl`: written when the optimiser is set.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct ClipUniform {
    /// Gradients: the floats of the device layout (its padding is zero).
    pub count: u32,
    /// Workgroups of `clip_partial` ([`clip_groups`]).
    pub groups: u32,
    /// The norm clipping scales down to.
    pub max_norm: f32,
    /// Uniforms are 16-byte aligned.
    pub _pad: u32,
}

/// Mirrors `struct ClipStats` in `shaders/clip.wgsl`.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct ClipStats {
    /// `‖g‖` of the last update, before clipping.
    pub norm: f32,
    /// Its factor, `min(1, max_norm / (‖g‖ + 1e-6))`.
    pub scale: f32,
    /// Updates clipped since the last reset.
    pub fired: u32,
    /// Updates since the last reset.
    pub updates: u32,
}

/// Invocations per workgroup of `clip_partial` and `clip_finish` (`CLIP_WG`
/// in clip.wgsl), also the most partial sums there are.
pub const CLIP_WG: u32 = LOSS_WG;

/// Workgroups of `clip_partial` for `count` gradients: one per `CLIP_WG`,
/// at most `CLIP_WG` (each then strides over the rest), at least 1.
pub fn clip_groups(count: usize) -> u32 {
    (count.div_ceil(CLIP_WG as usize)).clamp(1, CLIP_WG as usize) as u32
}

const CLIP: Slot = Slot::Uniform(std::mem::size_of::<ClipUniform>() as u64);
const SOURCE: &str = concat!(
    include_str!("../../shaders/common.wgsl"),
    "\n",
    include_str!("../../shaders/clip.wgsl")
);

/// Per-workgroup sums of `g²`: clip, grads, partials, stats.
pub const CLIP_PARTIAL: KernelSpec = KernelSpec {
    entry: "clip_partial",
    file: "clip.wgsl",
    source: SOURCE,
    bindings: &[CLIP, Slot::ReadWrite, Slot::ReadWrite, Slot::ReadWrite],
    kind: KernelKind::Reduce,
};
/// One workgroup: the partials added, `‖g‖`, the factor, the counts.
pub const CLIP_FINISH: KernelSpec = KernelSpec {
    entry: "clip_finish",
    ..CLIP_PARTIAL
};
/// `g *= scale` where `scale < 1`: one invocation per gradient.
pub const CLIP_APPLY: KernelSpec = KernelSpec {
    entry: "clip_apply",
    kind: KernelKind::ElementWise,
    ..CLIP_PARTIAL
};

/// The clipping pipelines, its buffers and its bind group, for one
/// gradient buffer of `count` floats; made when a clipping optimiser is set.
pub(super) struct Clipper {
    pub partial: Kernel,
    pub finish: Kernel,
    pub apply: Kernel,
    pub group: wgpu::BindGroup,
    /// [`ClipStats`], zeroed by [`Clipper::reset`].
    stats: wgpu::Buffer,
    count: usize,
    groups: u32,
}

impl Clipper {
    /// Clipping of `grads` (`count` floats) to `max_norm`.
    pub fn new(
        ctx: &GpuContext,
        grads: &wgpu::Buffer,
        count: usize,
        max_norm: f32,
    ) -> Result<Clipper> {
        let dev = &ctx.device;
        let partial = Kernel::new(dev, CLIP_PARTIAL, &TileConfig::SMALL)?;
        // Built checked, as `Kernel::new` builds them: these are not hot.
        let shared = |spec| {
            Kernel::with_layout(
                dev,
                None,
                spec,
                &TileConfig::SMALL,
                true,
                None,
                partial.layout.clone(),
            )
        };
        let (finish, apply) = (shared(CLIP_FINISH)?, shared(CLIP_APPLY)?);
        let groups = clip_groups(count);
        let u = ClipUniform {
            count: count as u32,
            groups,
            max_norm,
            _pad: 0,
        };
        let uniform = uniform(ctx, "clip", &u)?;
        let partials = storage_buffer(
            ctx,
            "clip partials",
            groups as usize,
            wgpu::BufferUsages::empty(),
        )?;
        let stats = storage_buffer(ctx, "clip stats", 4, wgpu::BufferUsages::COPY_DST)?;
        let group = partial.bind(dev, &[&uniform, grads, &partials, &stats])?;
        Ok(Clipper {
            partial,
            finish,
            apply,
            group,
            stats,
            count,
            groups,
        })
    }

    /// The three dispatches, in order: `(kernel, grid)`.
    pub fn plan(&self, max_dim: u32) -> Result<[(&Kernel, super::kernels::Grid); 3]> {
        Ok([
            (
                &self.partial,
                grid(self.groups as u64, max_dim, || "clip_partial".into())?,
            ),
            (&self.finish, (1, 1, 1)),
            (&self.apply, grid_1d(self.count as u64, max_dim)?),
        ])
    }

    /// The stats as they stand (waits for every submission).
    pub fn stats(&self, ctx: &GpuContext) -> Result<ClipStats> {
        let s: Vec<ClipStats> = readback::read(ctx, &self.stats, 0, 1)?;
        Ok(s.first().copied().unwrap_or_default())
    }

    /// Zero the counts; the write lands before the next submission.
    pub fn reset(&self, ctx: &GpuContext) {
        let zero = ClipStats::default();
        ctx.queue
            .write_buffer(&self.stats, 0, bytemuck::bytes_of(&zero));
    }
}

/// The three clipping kernels alone on `grads (P)`, as a training step runs
/// them: the clipped gradients and the stats (one update counted). For the
/// twin tests; not part of the documented API.
#[doc(hidden)]
pub fn clip_on_device(
    ctx: &GpuContext,
    grads: &[f32],
    max_norm: f32,
) -> Result<(Vec<f32>, ClipStats)> {
    let buf = storage_buffer(ctx, "grads", grads.len(), wgpu::BufferUsages::COPY_DST)?;
    ctx.queue.write_buffer(&buf, 0, bytemuck::cast_slice(grads));
    let c = Clipper::new(ctx, &buf, grads.len(), max_norm)?;
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("clip"),
        });
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("clip"),
            timestamp_writes: None,
        });
        for (kernel, grid) in c.plan(ctx.limits.max_compute_workgroups_per_dimension)? {
            super::kernels::dispatch(&mut pass, kernel, &c.group, grid);
        }
    }
    ctx.queue.submit([enc.finish()]);
    let out = readback::read(ctx, &buf, 0, grads.len())?;
    Ok((out, c.stats(ctx)?))
}
