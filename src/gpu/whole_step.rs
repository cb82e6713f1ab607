//! A whole training step of a tiny network in one dispatch of one workgroup
//! (`shaders/whole_step.wgsl`; twin: the CPU backend's `step`, and the
//! fused tiled step it mirrors). For a network like W0 (2-2-2 at batch 1) a
//! step of the fused tiled kernels is ~5 dispatches of a handful of
//! multiply-adds each: their launches are the whole cost, and one launch
//! does the same work.
//!
//! It runs where the fused tiled step would (`gpu/schedule.rs`: tiled
//! kernels, plain SGD without clipping, a batch in one micro-batch) and the
//! network fits ([`fits`]): at most [`MAX_LAYERS`] dense layers, no
//! dropout, and little enough work for one workgroup ([`MAX_WORK`],
//! [`MAX_WIDTH`]). Its bounds are the host's: every index is a row below
//! `dims.rows` times a width of a layer's Dims, so the safety conditions
//! of the other kernels ([`super::kernels`]) cover it unchecked.

use super::buffers::Buffers;
use super::context::GpuContext;
use super::kernels::{BatchUniform, Dims, StepUniform};
use super::kernels::{Kernel, KernelKind, KernelSpec, Slot, TileConfig};
use crate::error::Result;
use crate::network::Network;

/// The most dense layers the kernel has bindings for.
pub const MAX_LAYERS: usize = 3;

/// The most multiply-adds of one product pass over the batch, `rows ·
/// Σ (n_in + 1)·n_out`, that one workgroup takes on: a guess at where ~5
/// launches stop costing more than spreading the work over workgroups
/// (a launch is a few µs; 64 lanes do ~10⁵ multiply-adds in one).
pub const MAX_WORK: usize = 16_384;

/// The widest layer (inputs included) it takes: each invocation's inner
/// loops run over a width.
pub const MAX_WIDTH: usize = 256;

/// Storage buffers it binds: params, x, y, acc, and two per level.
const STORAGE_BINDINGS: u32 = 4 + 2 * MAX_LAYERS as u32;

const DIMS: Slot = Slot::Uniform(std::mem::size_of::<Dims>() as u64);
const BATCH: Slot = Slot::Uniform(std::mem::size_of::<BatchUniform>() as u64);
const STEP: Slot = Slot::Uniform(std::mem::size_of::<StepUniform>() as u64);
const SOURCE: &str = concat!(
    include_str!("../../shaders/common.wgsl"),
    "\n",
    include_str!("../../shaders/reduce.wgsl"),
    "\n",
    include_str!("../../shaders/totals.wgsl"),
    "\n",
    include_str!("../../shaders/loss_row.wgsl"),
    "\n",
    include_str!("../../shaders/softmax_row.wgsl"),
    "\n",
    include_str!("../../shaders/finish_row.wgsl"),
    "\n",
    include_str!("../../shaders/whole_step.wgsl")
);

/// The step of a network of 1, 2 or 3 dense layers (`whole_step_L`): dims
/// of the output layer and the two below it, per_batch, per_step, params,
/// x, y, acc, then each level's activations and deltas from the top.
pub const WHOLE_STEP: [KernelSpec; MAX_LAYERS] = [
    spec("whole_step_1"),
    spec("whole_step_2"),
    spec("whole_step_3"),
];

const fn spec(entry: &'static str) -> KernelSpec {
    KernelSpec {
        entry,
        file: "whole_step.wgsl",
        source: SOURCE,
        bindings: &[
            DIMS,
            DIMS,
            DIMS,
            BATCH,
            STEP,
            Slot::ReadWrite,
            Slot::Read,
            Slot::Read,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
            Slot::ReadWrite,
        ],
        kind: KernelKind::ElementWise,
    }
}

/// Whether a step of `net` at up to `rows` rows fits the kernel on a
/// device with `limits` (see the module docs).
pub fn fits(net: &Network, rows: usize, limits: &wgpu::Limits) -> bool {
    let layers = net.layers();
    let work: usize = layers.iter().map(|l| (l.n_in + 1) * l.n_out).sum();
    let widest = net.sizes().iter().copied().max().unwrap_or(0);
    (1..=MAX_LAYERS).contains(&layers.len())
        && !net.has_dropout()
        && widest <= MAX_WIDTH
        && rows.saturating_mul(work) <= MAX_WORK
        && limits.max_storage_buffers_per_shader_stage >= STORAGE_BINDINGS
}

/// The compiled step and its bind group over a backend's buffers.
pub(super) struct WholeStep {
    pub kernel: Kernel,
    pub group: wgpu::BindGroup,
}

impl WholeStep {
    /// The step for `net` over `buf`, `checked` or not; `None` where it
    /// does not [`fit`](fits) `buf.capacity` rows.
    pub fn new(
        ctx: &GpuContext,
        net: &Network,
        buf: &Buffers,
        checked: bool,
    ) -> Result<Option<WholeStep>> {
        let (device, limits) = (&ctx.device, &ctx.limits);
        if !fits(net, buf.capacity, limits) {
            return Ok(None);
        }
        let n = net.layers().len();
        let spec = WHOLE_STEP[n - 1];
        let cache = ctx.pipeline_cache();
        let kernel = Kernel::build(device, cache, spec, &TileConfig::SMALL, checked)?;
        // Level j (from the top) is dense layer n − 1 − j; past the bottom,
        // the output layer's Dims and deltas[0] (a 1-float placeholder, never read).
        let level = |j: usize| n.checked_sub(1 + j);
        let dims = |j| &buf.dims[level(j).unwrap_or(n - 1)];
        let acts = |j| level(j).map_or(&buf.deltas[0], |l| &buf.acts[l + 1]);
        let deltas = |j| level(j).map_or(&buf.deltas[0], |l| &buf.deltas[l + 1]);
        let group = kernel.bind(
            device,
            &[
                dims(0),
                dims(1),
                dims(2),
                &buf.per_batch,
                &buf.per_step,
                &buf.params,
                &buf.acts[0],
                &buf.y,
                &buf.acc,
                acts(0),
                deltas(0),
                acts(1),
                deltas(1),
                acts(2),
                deltas(2),
            ],
        )?;
        Ok(Some(WholeStep { kernel, group }))
    }
}
