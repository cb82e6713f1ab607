//! Shader modules, hand-written bind-group layouts and pipelines.
//!
//! Each kernel is described once, "like a C header", by a [`KernelSpec`]: its
//! WGSL source, its entry point and the kind of every binding in order. The
//! host builds bind-group layouts from that table, and a naga test (no GPU
//! needed) checks every shader's declared bindings and uniform sizes against
//! the same table, so pipeline and bind group agree by construction.
//!
//! # Unchecked modules and their safety conditions
//!
//! By default every module is built with
//! [`wgpu::Device::create_shader_module_trusted`] and
//! [`wgpu::ShaderRuntimeChecks::unchecked`]: naga then adds no clamp to an
//! index, no bound to a loop and no guard to an integer division (on
//! lavapipe the checks cost the tiled W1 step a third of its time). Setting
//! `SHADERTRAIN_CHECKED=1` ([`checked_by_env`]), or
//! [`GpuOptions::checked`](super::GpuOptions::checked), builds checked
//! modules instead; both kinds compute bitwise the same results (the twin
//! tests run both). Unchecked modules are sound because these conditions
//! hold, each asserted on the host where it says:
//! 1. **Private and workgroup arrays**: a tiled kernel's register blocks hold
//!    `MAX_T` rows or columns and its staged blocks `BK·(BM + 1)` and
//!    `BK·(BN + 1)` words; every index is below those bounds when
//!    `1 ≤ tm, tn ≤ MAX_T`, `bk ≥ 1` and `wg_x, wg_y ≥ 1`, and the sizes do
//!    not wrap in u32 ([`TileConfig::safety`], asserted before a tiled
//!    module is made). A generated core has no private arrays (its register
//!    block is named variables) and stages `BK·(BM/4 + 1)` and `BK·(BN/4 + 1)`
//!    `vec4`s indexed by constants plus an offset below `BM/4`, `BN/4`
//!    ([`super::codegen::check`]). The loss kernels' arrays are `LOSS_WG` long and
//!    indexed by `local_invocation_index < LOSS_WG` (the workgroup size);
//!    the output kernel's per-invocation partials are `WG_X·WG_Y` long,
//!    indexed the same way.
//! 2. **Loops end**: every loop counts up by a step of at least 1 (`BK`, the
//!    workgroup's invocations, 1) to a bound below `u32::MAX − step`, or
//!    halves a power of two; every shape and offset the host writes into a
//!    [`Dims`] is below 2³⁰ because each buffer holds fewer than 2³⁰ floats
//!    ([`Dims::check`], asserted whenever a `Dims` is written).
//! 3. **Divisions**: every divisor is a pipeline constant of at least 1, a
//!    layer width (`n_in`, `n_out` ≥ 1 by [`Network`](crate::Network)'s
//!    rules), `n_in + 1`, a grid size or a power of two.
//! 4. **Storage buffers**: each index is below the length of the buffer bound
//!    there, given a `Dims` that describes those buffers (rows at most their
//!    capacity, layer offsets and W's row strides `w_ld ≥ n_in` from the
//!    device layout, [`super::layout`], whose params buffer holds every
//!    layer's `n_out` rows of `w_ld`). The tiled products read
//!    their operands (activations, deltas, params) as `vec4`s: every
//!    storage buffer is rounded up to 16 bytes (`storage_buffer`; the
//!    runner pads with NaN), so a scalar's `vec4` `i / 4` is in range; a
//!    generated core reads the 4 elements from `i` as one `vec4` only where
//!    `i` is a multiple of 4 (the kernel file's `a_vec4`/`b_vec4`: row
//!    stride and offset multiples of 4; the group's first row, column or k
//!    a multiple of 4 since `tm`, `tn` and `bk` are) and `i + 3` is inside
//!    the matrix and the K slice ([`super::codegen`]); wgpu also enables the
//!    driver's own robust buffer access where the adapter has it. The
//!    last-workgroup counters are indexed by a block number below the
//!    product's blocks, and the buffer holds one per block of the largest
//!    gradient at the built tiles; the output kernel's partials by a block
//!    below `⌈rows / BM⌉`, and the buffer holds `⌈capacity / BM⌉` of them.

use super::context::{creating, GpuContext};
use super::plan::{KernelPlan, Product, ProductId, Source};
use crate::error::{Error, Result, Setting};
use bytemuck::{Pod, Zeroable};

/// Shape constants of one layer, mirrored by `struct Dims` in
/// `shaders/common.wgsl`; rewritten when the staged rows, metric or split-K
/// slices change. Public for the kernel runner and tests; not part of the
/// documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Dims {
    /// Samples staged in the per-sample buffers (at most their capacity).
    pub rows: u32,
    /// Inputs to the layer.
    pub n_in: u32,
    /// Neurons in the layer.
    pub n_out: u32,
    /// Offset of `W (n_out, n_in)` in params and grads.
    pub w_off: u32,
    /// Offset of `b (n_out)` in params and grads.
    pub b_off: u32,
    /// Neurons in the next layer (0 for the output layer).
    pub n_next: u32,
    /// Offset of the next layer's weights.
    pub w_next_off: u32,
    /// [`crate::backend::Metric`] as a number.
    pub metric: u32,
    /// K slices of the tiled gradient product (split K); 1 for none.
    pub splits: u32,
    /// This layer's [`crate::network::Activation`] as a number.
    pub act: u32,
    /// The network's [`crate::network::Loss`] as a number.
    pub loss: u32,
    /// Floats from one row of W to the next in params and grads, at least
    /// `n_in` (the backend's device layout: `n_in` rounded up to 4).
    pub w_ld: u32,
    /// The same for the next layer's weights, at least `n_out` where there
    /// is a next layer (0 for the output layer).
    pub w_next_ld: u32,
    /// Uniforms are 16-byte aligned.
    pub _pad: [u32; 3],
}

/// Bound on every shape, offset and slice count in a [`Dims`] (safety
/// condition 2 of unchecked modules: no loop counter or index wraps).
pub const DIMS_BOUND: u32 = 1 << 30;

impl Dims {
    /// Safety conditions 2 and 3 of unchecked modules (module docs): every
    /// field below [`DIMS_BOUND`], `n_out` and `splits` at least 1. The
    /// host asserts this on every `Dims` it writes; a failure is a bug in
    /// the host, not a bad input (buffers hold fewer than 2³⁰ floats).
    pub fn check(&self) -> Result<()> {
        let fields = [
            ("rows", self.rows),
            ("n_in", self.n_in),
            ("n_out", self.n_out),
            ("w_off", self.w_off),
            ("b_off", self.b_off),
            ("n_next", self.n_next),
            ("w_next_off", self.w_next_off),
            ("splits", self.splits),
            ("w_ld", self.w_ld),
            ("w_next_ld", self.w_next_ld),
        ];
        if let Some((name, v)) = fields.iter().find(|(_, v)| *v >= DIMS_BOUND) {
            return Err(Error::Gpu(format!(
                "layer shape {name} = {v} is over the kernels' bound of {DIMS_BOUND}"
            )));
        }
        // n_in may be 0 for the kernels that never read it (the runner's
        // loss and softmax); every layer's Dims has it from the network.
        if self.n_out == 0 || self.splits == 0 {
            return Err(Error::Gpu(format!(
                "layer shape {self:?} has no output or no K slice"
            )));
        }
        // Rows of W must not overlap: a stride shorter than the row would
        // make a kernel read (and write) the next row's weights.
        if self.w_ld < self.n_in || (self.n_next > 0 && self.w_next_ld < self.n_out) {
            return Err(Error::Gpu(format!(
                "layer shape {self:?} has a W row stride shorter than its row"
            )));
        }
        Ok(())
    }
}

/// The update's constants, mirrored by `struct Optim` in
/// `shaders/common.wgsl`: written when the network's backend is made and
/// when the optimizer is set, never by a step. Public for the kernel runner
/// and tests; not part of the documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct OptimUniform {
    /// Parameters to update.
    pub count: u32,
    /// Momentum `μ`.
    pub momentum: f32,
    /// Adam's `β1`.
    pub beta1: f32,
    /// Adam's `β2`.
    pub beta2: f32,
    /// Adam's `ε`.
    pub eps: f32,
    /// Uniforms are 16-byte aligned.
    pub _pad: [u32; 3],
}

impl OptimUniform {
    /// The constants for `count` parameters from these terms (their `lr`
    /// and bias corrections go in the [`StepUniform`]).
    pub fn new(count: usize, h: &crate::optim::UpdateTerms<f32>) -> Self {
        OptimUniform {
            count: count as u32,
            momentum: h.momentum,
            beta1: h.beta1,
            beta2: h.beta2,
            eps: h.eps,
            _pad: [0; 3],
        }
    }
}

/// What changes with the loaded batch, mirrored by `struct Batch` in
/// `shaders/common.wgsl`: written by `load_batch` only. Public for the
/// kernel runner and tests; not part of the documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct BatchUniform {
    /// `1 / B` for a loaded batch of `B` rows (the tiled gradient kernels).
    pub scale: f32,
    /// 1: `gradient_dense_tiled` adds to the gradients instead of storing
    /// them (a batch run as micro-batches).
    pub accumulate: u32,
    /// Uniforms are 16-byte aligned.
    pub _pad: [u32; 2],
}

impl BatchUniform {
    /// The uniform for a loaded batch of `rows` rows, accumulated over
    /// micro-batches or not.
    pub fn new(rows: usize, accumulate: bool) -> Self {
        BatchUniform {
            scale: 1.0 / rows as f32,
            accumulate: u32::from(accumulate),
            _pad: [0; 2],
        }
    }
}

/// One update's terms that change from step to step, mirrored by
/// `struct Step` in `shaders/common.wgsl`: written once by each step. Public
/// for the kernel runner and tests; not part of the documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct StepUniform {
    /// Learning rate of this step.
    pub lr: f32,
    /// `1 − β1^t`.
    pub bc1: f32,
    /// `1 − β2^t`.
    pub bc2: f32,
    /// Uniforms are 16-byte aligned.
    pub _pad: u32,
}

impl StepUniform {
    /// The per-step part of these terms.
    pub fn new(h: &crate::optim::UpdateTerms<f32>) -> Self {
        StepUniform {
            lr: h.lr,
            bc1: h.bc1,
            bc2: h.bc2,
            _pad: 0,
        }
    }
}

/// Slots of the loss totals: step `t` adds its loss to slot `t % ACC_SLOTS`
/// (mirrors `ACC_SLOTS` in reduce.wgsl).
pub const ACC_SLOTS: usize = 256;

/// The running loss totals, mirrored by `struct Acc` in `shaders/reduce.wgsl`
/// (the file every loss kernel includes). Each step's loss goes to one of
/// [`ACC_SLOTS`] f32 slots in turn and the host adds the slots in f64
/// ([`Acc::loss`]): a 10,000-step epoch is then ~40 f32 adds per slot, not
/// 10,000 into one sum (which drifts by parts in 1e4). Public for the kernel
/// runner and tests; not part of the documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
pub struct Acc {
    /// Samples seen.
    pub samples: u32,
    /// Samples scored correct.
    pub correct: u32,
    /// Batches seen.
    pub steps: u32,
    /// Storage structs are 16-byte aligned here.
    pub _pad: u32,
    /// Σ of per-sample losses, step `t`'s in slot `t % ACC_SLOTS`.
    pub loss_slots: [f32; ACC_SLOTS],
}

impl Default for Acc {
    fn default() -> Self {
        Acc::zeroed()
    }
}

impl Acc {
    /// The loss total: the slots added in f64.
    pub fn loss(&self) -> f64 {
        self.loss_slots.iter().map(|&v| v as f64).sum()
    }
}

/// The kind of one binding, in binding order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `var<uniform>` of the given size in bytes.
    Uniform(u64),
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// How a kernel's workgroups are shaped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// `WG` invocations per workgroup, one per element.
    ElementWise,
    /// `LOSS_WG` invocations per workgroup (the loss kernels).
    Reduce,
    /// `(WG_X, WG_Y)` invocations, one output block per workgroup; the tile
    /// sizes are pipeline constants from a [`TileConfig`].
    Tiled,
}

/// One kernel: where its code is and what it binds.
#[derive(Debug, Clone, Copy)]
pub struct KernelSpec {
    /// The entry point; its CPU twin in [`crate::cpu`] has the same name.
    pub entry: &'static str,
    /// The file under `shaders/`, for messages.
    pub file: &'static str,
    /// The full WGSL source (common.wgsl prepended).
    pub source: &'static str,
    /// Binding `i` of group 0 is `bindings[i]`.
    pub bindings: &'static [Slot],
    /// Workgroup shape.
    pub kind: KernelKind,
}

/// Workgroup size of the element-wise kernels (`WG` in common.wgsl).
pub const WG: u32 = 64;

/// Invocations per workgroup of the loss kernels (`LOSS_WG` in reduce.wgsl).
pub const LOSS_WG: u32 = 256;

/// Whether `SHADERTRAIN_CHECKED` asks for modules built with naga's runtime
/// checks: set to anything but empty, `0` or `false`. Read by
/// [`GpuOptions::default`](super::GpuOptions) and the kernel runner.
pub fn checked_by_env() -> bool {
    std::env::var("SHADERTRAIN_CHECKED").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// common.wgsl, then each named file under `shaders/`.
macro_rules! shader {
    ($($file:literal),+) => {
        concat!(
            include_str!("../../shaders/common.wgsl"),
            $("\n", include_str!(concat!("../../shaders/", $file))),+
        )
    };
}

const DIMS: Slot = Slot::Uniform(std::mem::size_of::<Dims>() as u64);
const OPTIM: Slot = Slot::Uniform(std::mem::size_of::<OptimUniform>() as u64);
const BATCH: Slot = Slot::Uniform(std::mem::size_of::<BatchUniform>() as u64);
const STEP: Slot = Slot::Uniform(std::mem::size_of::<StepUniform>() as u64);

/// `A = f(A_prev·Wᵀ + b)` (softmax: `Z`, then [`SOFTMAX_FORWARD`]): dims, params, a_prev, a.
pub const FORWARD_DENSE: KernelSpec = KernelSpec {
    entry: "forward_dense",
    file: "forward.wgsl",
    source: shader!("forward.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::ElementWise,
};
/// `δ = (A − Y) ⊙ f'(A)`, or `A − Y` for softmax + cross-entropy: dims, a, y, delta.
pub const DELTA_OUTPUT: KernelSpec = KernelSpec {
    entry: "delta_output",
    file: "delta_output.wgsl",
    source: shader!("delta_output.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::ElementWise,
};
/// `δ = (δ_next·W_next) ⊙ f'(A)`: dims, params, delta_next, a, delta.
pub const DELTA_HIDDEN: KernelSpec = KernelSpec {
    entry: "delta_hidden",
    file: "delta_hidden.wgsl",
    source: shader!("delta_hidden.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::ElementWise,
};
/// Softmax of each row of a, in place, after the output layer's product
/// (one invocation per sample; both kernel sets): dims, a.
pub const SOFTMAX_FORWARD: KernelSpec = KernelSpec {
    entry: "softmax_forward",
    file: "softmax.wgsl",
    source: shader!("softmax_row.wgsl", "softmax.wgsl"),
    bindings: &[DIMS, Slot::ReadWrite],
    kind: KernelKind::ElementWise,
};
const GRADIENT_BINDINGS: &[Slot] = &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite];
/// `∂L/∂W = δᵀA_prev / B`: dims, delta, a_prev, grads.
pub const GRADIENT_WEIGHTS: KernelSpec = KernelSpec {
    entry: "gradient_weights",
    file: "gradient.wgsl",
    source: shader!("gradient.wgsl"),
    bindings: GRADIENT_BINDINGS,
    kind: KernelKind::ElementWise,
};
/// `∂L/∂b = Σ_s δ / B`: dims, delta, a_prev (unused), grads.
pub const GRADIENT_BIAS: KernelSpec = KernelSpec {
    entry: "gradient_bias",
    file: "gradient.wgsl",
    source: shader!("gradient.wgsl"),
    bindings: GRADIENT_BINDINGS,
    kind: KernelKind::ElementWise,
};
/// `p −= lr·g`: hyper (count), per_step (lr), params, grads.
pub const SGD_UPDATE: KernelSpec = KernelSpec {
    entry: "sgd_update",
    file: "sgd.wgsl",
    source: shader!("sgd.wgsl"),
    bindings: &[OPTIM, STEP, Slot::ReadWrite, Slot::Read],
    kind: KernelKind::ElementWise,
};
/// `v = μ·v + g + λ·p`, `p −= lr·v` over every parameter: hyper, per_step,
/// params, grads, decay, state `v (P)`.
pub const MOMENTUM_UPDATE: KernelSpec = KernelSpec {
    entry: "momentum_update",
    file: "optim.wgsl",
    source: shader!("optim.wgsl"),
    bindings: &[
        OPTIM,
        STEP,
        Slot::ReadWrite,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
    ],
    kind: KernelKind::ElementWise,
};
/// Adam with bias correction and decoupled decay over every parameter:
/// hyper, per_step, params, grads, decay, state `m (P)` then `v (P)`.
pub const ADAM_UPDATE: KernelSpec = KernelSpec {
    entry: "adam_update",
    ..MOMENTUM_UPDATE
};
/// Batch loss and score added to the totals: dims, a, y, acc.
pub const LOSS_REDUCE: KernelSpec = KernelSpec {
    entry: "loss_reduce",
    file: "loss.wgsl",
    source: shader!("reduce.wgsl", "totals.wgsl", "loss.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::Reduce,
};

/// Tiled `A = f(A_prev·Wᵀ + b)` (twin: `forward_dense`): dims, params, a_prev, a.
pub const FORWARD_DENSE_TILED: KernelSpec = KernelSpec {
    entry: "forward_dense_tiled",
    file: "forward_tiled.wgsl",
    source: shader!(
        "tile_span.wgsl",
        "tiled.wgsl",
        "forward_product.wgsl",
        "forward_tiled.wgsl"
    ),
    bindings: FORWARD_DENSE.bindings,
    kind: KernelKind::Tiled,
};
/// Tiled `δ = (δ_next·W_next) ⊙ f'(A)` (twin: `delta_hidden`): dims,
/// params, delta_next, a, delta.
pub const DELTA_HIDDEN_TILED: KernelSpec = KernelSpec {
    entry: "delta_hidden_tiled",
    file: "delta_hidden_tiled.wgsl",
    source: shader!("tile_span.wgsl", "tiled.wgsl", "delta_hidden_tiled.wgsl"),
    bindings: DELTA_HIDDEN.bindings,
    kind: KernelKind::Tiled,
};
const GRADIENT_TILED_BINDINGS: &[Slot] = &[
    DIMS,
    BATCH,
    STEP,
    Slot::Read,
    Slot::Read,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
    Slot::ReadWrite,
];
/// Tiled `∂L/∂W = scale·δᵀA_prev` and `∂L/∂b = scale·Σ_s δ` in one pass, stored
/// or accumulated into grads (twin: `gradient_dense`): dims, per_batch,
/// per_step (unused), delta, a_prev, params (unused), grads, scratch and
/// counters (split K only: the last slice of a block adds the slices).
pub const GRADIENT_DENSE_TILED: KernelSpec = KernelSpec {
    entry: "gradient_dense_tiled",
    file: "gradient_tiled.wgsl",
    source: shader!(
        "last_group.wgsl",
        "tile_span.wgsl",
        "tiled.wgsl",
        "gradient_tiled.wgsl"
    ),
    bindings: GRADIENT_TILED_BINDINGS,
    kind: KernelKind::Tiled,
};
/// The same gradients applied at once, `p −= lr·g` (twin: `gradient_sgd`):
/// dims, per_batch, per_step, delta, a_prev, params, grads (unused), scratch.
pub const GRADIENT_SGD_TILED: KernelSpec = KernelSpec {
    entry: "gradient_sgd_tiled",
    ..GRADIENT_DENSE_TILED
};
/// A training step's output layer in one dispatch where one block holds whole
/// rows (`n_out ≤ bn`): the tiled forward product, softmax, the output delta
/// and the loss partials, the last block adding them to the totals (twin:
/// `forward_output_loss`): dims, params, a_prev, a, y, delta, partials, acc,
/// counters.
pub const FORWARD_OUTPUT_LOSS_TILED: KernelSpec = KernelSpec {
    entry: "forward_output_loss_tiled",
    file: "output_tiled.wgsl",
    source: shader!(
        "reduce.wgsl",
        "totals.wgsl",
        "loss_row.wgsl",
        "softmax_row.wgsl",
        "finish_row.wgsl",
        "last_group.wgsl",
        "tile_span.wgsl",
        "tiled.wgsl",
        "forward_product.wgsl",
        "output_tiled.wgsl"
    ),
    bindings: &[
        DIMS,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    kind: KernelKind::Tiled,
};
/// Output delta and per-workgroup loss partials in one parallel pass (twin:
/// `delta_output_loss`): dims, a, y, delta, partials.
pub const DELTA_OUTPUT_LOSS: KernelSpec = KernelSpec {
    entry: "delta_output_loss",
    file: "loss_partial.wgsl",
    source: shader!("reduce.wgsl", "loss_row.wgsl", "loss_partial.wgsl"),
    bindings: &[
        DIMS,
        Slot::Read,
        Slot::Read,
        Slot::ReadWrite,
        Slot::ReadWrite,
    ],
    kind: KernelKind::Reduce,
};
/// The partials added in a fixed order to the totals: dims, partials, acc.
pub const LOSS_FINISH: KernelSpec = KernelSpec {
    entry: "loss_finish",
    file: "loss_finish.wgsl",
    source: shader!("reduce.wgsl", "totals.wgsl", "loss_finish.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::Reduce,
};

/// Every kernel, for the naga test. Public for tests; not part of the
/// documented API.
#[doc(hidden)]
pub const ALL: &[KernelSpec] = &[
    FORWARD_DENSE,
    SOFTMAX_FORWARD,
    DELTA_OUTPUT,
    DELTA_HIDDEN,
    GRADIENT_WEIGHTS,
    GRADIENT_BIAS,
    SGD_UPDATE,
    MOMENTUM_UPDATE,
    ADAM_UPDATE,
    LOSS_REDUCE,
    FORWARD_DENSE_TILED,
    DELTA_HIDDEN_TILED,
    GRADIENT_DENSE_TILED,
    GRADIENT_SGD_TILED,
    FORWARD_OUTPUT_LOSS_TILED,
    DELTA_OUTPUT_LOSS,
    LOSS_FINISH,
    super::clip::CLIP_PARTIAL,
    super::clip::CLIP_FINISH,
    super::clip::CLIP_APPLY,
    super::dropout::DROPOUT_APPLY,
    super::dropout::DROPOUT_KEEP,
    super::whole_step::WHOLE_STEP[0],
    super::whole_step::WHOLE_STEP[1],
    super::whole_step::WHOLE_STEP[2],
];

/// Largest `tm` and `tn` (`MAX_T` in tiled.wgsl: the register blocks' size).
pub const MAX_T: u32 = 8;

/// Tile sizes of the tiled kernels, passed as pipeline constants (tiled.wgsl):
/// a workgroup of `wg_x × wg_y` invocations computes a `bm × bn` block of the
/// output (`bm = wg_y·tm`, `bn = wg_x·tn`), `tm × tn` per invocation, stepping
/// through K by `bk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Invocations along N.
    pub wg_x: u32,
    /// Invocations along M.
    pub wg_y: u32,
    /// Outputs per invocation along M, `1..=MAX_T`.
    pub tm: u32,
    /// Outputs per invocation along N, `1..=MAX_T`.
    pub tn: u32,
    /// Depth of one K step.
    pub bk: u32,
}

impl TileConfig {
    /// Discrete GPUs: 128×128 blocks, 8×8 per invocation, 256 invocations, K
    /// steps of 8 (8 KiB of workgroup memory).
    pub const DISCRETE: TileConfig = TileConfig {
        wg_x: 16,
        wg_y: 16,
        tm: 8,
        tn: 8,
        bk: 8,
    };
    /// Integrated and other GPUs: 64×64 blocks, 4×4 per invocation, 256 invocations.
    pub const MEDIUM: TileConfig = TileConfig {
        wg_x: 16,
        wg_y: 16,
        tm: 4,
        tn: 4,
        bk: 8,
    };
    /// CPU adapters (lavapipe), large products, generated core only: 128×128
    /// blocks, 16×16 per invocation, 64 invocations (the fastest measured
    /// at W1 on lavapipe, BENCHMARKS.md).
    pub const CPU_LARGE: TileConfig = TileConfig {
        wg_x: 8,
        wg_y: 8,
        tm: 16,
        tn: 16,
        bk: 8,
    };
    /// CPU adapters (lavapipe): 32×32 blocks, 4×4 per invocation, 64 invocations.
    pub const SMALL: TileConfig = TileConfig {
        wg_x: 8,
        wg_y: 8,
        tm: 4,
        tn: 4,
        bk: 8,
    };

    /// Output rows per workgroup.
    pub fn bm(&self) -> u32 {
        self.wg_y * self.tm
    }

    /// Output columns per workgroup.
    pub fn bn(&self) -> u32 {
        self.wg_x * self.tn
    }

    /// Bytes of workgroup memory (both staged blocks, padded).
    pub fn workgroup_bytes(&self) -> u32 {
        4 * self.bk * (self.bm() + 1 + self.bn() + 1)
    }

    /// The configuration for an adapter: by device type, falling back to
    /// [`TileConfig::SMALL`] where a larger one exceeds its limits.
    pub fn for_adapter(info: &wgpu::AdapterInfo, limits: &wgpu::Limits) -> TileConfig {
        let want = match info.device_type {
            wgpu::DeviceType::DiscreteGpu => TileConfig::DISCRETE,
            wgpu::DeviceType::Cpu => TileConfig::SMALL,
            _ => TileConfig::MEDIUM,
        };
        if want.check(limits).is_ok() {
            want
        } else {
            TileConfig::SMALL
        }
    }

    /// Safety condition 1 of unchecked modules (module docs): every private
    /// and workgroup array index of tiled.wgsl in range. `tm, tn` in
    /// `1..=MAX_T` (the register blocks) and [`TileConfig::bounds`].
    /// Asserted before any tiled.wgsl module is made, checked or not (the
    /// generated cores have their own, [`super::codegen::check`]).
    pub fn safety(&self) -> Result<()> {
        self.bounds(MAX_T)
    }

    /// `tm, tn` in `1..=max_t`, `bk` in `1..=256` and `wg_x, wg_y` in
    /// `1..=1024` (the loops' steps and divisors at least 1, the staged
    /// blocks' sizes well inside u32).
    pub fn bounds(&self, max_t: u32) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Invalid(format!(
                "tile configuration {self:?}: {why}"
            )))
        };
        if !(1..=max_t).contains(&self.tm) || !(1..=max_t).contains(&self.tn) {
            return bad(format!("tm and tn must be 1..={max_t}"));
        }
        if !(1..=256).contains(&self.bk) {
            return bad("bk must be 1..=256".into());
        }
        if !(1..=1024).contains(&self.wg_x) || !(1..=1024).contains(&self.wg_y) {
            return bad("wg_x and wg_y must be 1..=1024".into());
        }
        Ok(())
    }

    /// Whether tiled.wgsl can run with these sizes on a device with
    /// `limits`: [`TileConfig::safety`], one invocation per row of a block
    /// for the bias sums, then the device's limits.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        self.safety()?;
        if self.wg_x < self.tm {
            return Err(Error::Invalid(format!(
                "tile configuration {self:?}: wg_x must be at least tm"
            )));
        }
        self.fits(limits, self.workgroup_bytes())
    }

    /// Whether a workgroup of these sizes using `bytes` of workgroup memory
    /// is within `limits`.
    pub fn fits(&self, limits: &wgpu::Limits, bytes: u32) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Invalid(format!(
                "tile configuration {self:?}: {why}"
            )))
        };
        let threads = self.wg_x * self.wg_y;
        if threads > limits.max_compute_invocations_per_workgroup
            || self.wg_x > limits.max_compute_workgroup_size_x
            || self.wg_y > limits.max_compute_workgroup_size_y
        {
            return bad(format!(
                "{}×{} invocations exceed this device's workgroup limits",
                self.wg_x, self.wg_y
            ));
        }
        if bytes > limits.max_compute_workgroup_storage_size {
            return bad(format!(
                "{bytes} bytes of workgroup memory, over this device's {}",
                limits.max_compute_workgroup_storage_size
            ));
        }
        Ok(())
    }

    /// The pipeline constants of tiled.wgsl.
    pub fn constants(&self) -> [(&'static str, f64); 5] {
        [
            ("WG_X", self.wg_x as f64),
            ("WG_Y", self.wg_y as f64),
            ("TM", self.tm as f64),
            ("TN", self.tn as f64),
            ("BK", self.bk as f64),
        ]
    }
}

/// A compiled kernel: its pipeline and bind-group layout.
pub struct Kernel {
    /// What it is.
    pub spec: KernelSpec,
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// Group 0's layout, built from `spec.bindings`.
    pub layout: wgpu::BindGroupLayout,
    /// Built with naga's runtime checks.
    pub checked: bool,
}

impl Kernel {
    /// Compile `spec` on `device` with naga's runtime checks; a
    /// [`KernelKind::Tiled`] kernel with the tile sizes of `tiles`. A shader
    /// or pipeline wgpu rejects is an [`Error::Gpu`] naming the kernel, with
    /// wgpu's message.
    pub fn new(device: &wgpu::Device, spec: KernelSpec, tiles: &TileConfig) -> Result<Kernel> {
        Self::build(device, None, spec, tiles, true)
    }

    /// As [`Kernel::new`], `checked` or not (the module docs give the
    /// conditions under which an unchecked module is sound), through the
    /// device's pipeline `cache` where it has one.
    pub fn build(
        device: &wgpu::Device,
        cache: Option<&wgpu::PipelineCache>,
        spec: KernelSpec,
        tiles: &TileConfig,
        checked: bool,
    ) -> Result<Kernel> {
        let what = format!("the bind group layout of {}", spec.entry);
        let layout = creating(device, &what, || Self::layout(device, &spec))?;
        Self::with_layout(device, cache, spec, tiles, checked, None, layout)
    }

    /// Group 0's layout for `spec`, built from `spec.bindings`.
    fn layout(device: &wgpu::Device, spec: &KernelSpec) -> wgpu::BindGroupLayout {
        let entries: Vec<wgpu::BindGroupLayoutEntry> = spec
            .bindings
            .iter()
            .enumerate()
            .map(|(i, slot)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match slot {
                        Slot::Uniform(_) => wgpu::BufferBindingType::Uniform,
                        Slot::Read => wgpu::BufferBindingType::Storage { read_only: true },
                        Slot::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(spec.entry),
            entries: &entries,
        })
    }

    /// Compile `spec` with an existing layout of the same bindings, so that
    /// kernels of one file share their bind groups.
    pub fn with_layout(
        device: &wgpu::Device,
        cache: Option<&wgpu::PipelineCache>,
        spec: KernelSpec,
        tiles: &TileConfig,
        checked: bool,
        generated: Option<&str>,
        layout: wgpu::BindGroupLayout,
    ) -> Result<Kernel> {
        // Safety condition 1: the tile sizes a module is built with (the
        // other kinds run tiled.wgsl's defaults, or have no tile arrays).
        match (generated, spec.kind) {
            (Some(_), _) => super::codegen::check(tiles)?,
            (None, KernelKind::Tiled) => tiles.safety()?,
            (None, _) => {}
        }
        let source = generated.unwrap_or(spec.source);
        let module = creating(device, &format!("shader module {}", spec.file), || {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(spec.file),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            };
            if checked {
                device.create_shader_module(desc)
            } else {
                // SAFETY: the module docs' conditions 1–4 hold: 1 was
                // asserted just above, 2 by `Dims::check` on every Dims the
                // host writes, 3 and 4 by the shapes the host derives from
                // the network and the buffers it binds.
                unsafe {
                    device
                        .create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked())
                }
            }
        })?;
        let what = format!("pipeline {} ({})", spec.entry, spec.file);
        let pipeline_layout = creating(device, &what, || {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            })
        })?;
        // A generated core has its tile sizes written in; tiled.wgsl takes them as overrides.
        let constants = if generated.is_some() {
            Vec::new()
        } else {
            tiles.constants().to_vec()
        };
        let pipeline = creating(device, &what, || {
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(spec.entry),
                layout: Some(&pipeline_layout),
                module: &module,
                entry_point: Some(spec.entry),
                compilation_options: match spec.kind {
                    KernelKind::Tiled => wgpu::PipelineCompilationOptions {
                        constants: &constants,
                        // Every staged word is written before it is read.
                        zero_initialize_workgroup_memory: false,
                    },
                    _ => Default::default(),
                },
                cache,
            })
        })?;
        Ok(Kernel {
            spec,
            pipeline,
            layout,
            checked,
        })
    }

    /// A bind group over `buffers`, in binding order.
    pub fn bind(
        &self,
        device: &wgpu::Device,
        buffers: &[&wgpu::Buffer],
    ) -> Result<wgpu::BindGroup> {
        if buffers.len() != self.spec.bindings.len() {
            return Err(Error::Gpu(format!(
                "{} takes {} bindings, got {}",
                self.spec.entry,
                self.spec.bindings.len(),
                buffers.len()
            )));
        }
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let what = format!("a bind group for {}", self.spec.entry);
        creating(device, &what, || {
            device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(self.spec.entry),
                layout: &self.layout,
                entries: &entries,
            })
        })
    }
}

/// Every simple pipeline, compiled once per device: the GPU reference twins
/// (and `softmax_forward`, which the tiled set runs too).
pub struct Kernels {
    /// See [`FORWARD_DENSE`].
    pub forward_dense: Kernel,
    /// See [`SOFTMAX_FORWARD`].
    pub softmax_forward: Kernel,
    /// See [`DELTA_OUTPUT`].
    pub delta_output: Kernel,
    /// See [`DELTA_HIDDEN`].
    pub delta_hidden: Kernel,
    /// See [`GRADIENT_WEIGHTS`].
    pub gradient_weights: Kernel,
    /// See [`GRADIENT_BIAS`].
    pub gradient_bias: Kernel,
    /// See [`SGD_UPDATE`].
    pub sgd_update: Kernel,
    /// See [`MOMENTUM_UPDATE`].
    pub momentum_update: Kernel,
    /// See [`ADAM_UPDATE`] (the same layout as `momentum_update`).
    pub adam_update: Kernel,
    /// See [`LOSS_REDUCE`].
    pub loss_reduce: Kernel,
}

impl Kernels {
    /// Compile every simple kernel on `ctx`'s device, `checked` or not.
    pub fn new(ctx: &GpuContext, checked: bool) -> Result<Kernels> {
        let (device, cache) = (&ctx.device, ctx.pipeline_cache());
        let k = |spec| Kernel::build(device, cache, spec, &TileConfig::SMALL, checked);
        let momentum_update = k(MOMENTUM_UPDATE)?;
        let adam_update = Kernel::with_layout(
            device,
            cache,
            ADAM_UPDATE,
            &TileConfig::SMALL,
            checked,
            None,
            momentum_update.layout.clone(),
        )?;
        Ok(Kernels {
            momentum_update,
            adam_update,
            forward_dense: k(FORWARD_DENSE)?,
            softmax_forward: k(SOFTMAX_FORWARD)?,
            delta_output: k(DELTA_OUTPUT)?,
            delta_hidden: k(DELTA_HIDDEN)?,
            gradient_weights: k(GRADIENT_WEIGHTS)?,
            gradient_bias: k(GRADIENT_BIAS)?,
            sgd_update: k(SGD_UPDATE)?,
            loss_reduce: k(LOSS_REDUCE)?,
        })
    }
}

/// Bytes of workgroup memory a tiled kernel's epilogue adds to its product's:
/// the last-workgroup flag (last_group.wgsl) of the gradient and output
/// kernels, and the output kernel's per-invocation partials (8 bytes each).
pub fn epilogue_bytes(spec: &KernelSpec, tiles: &TileConfig) -> u32 {
    match spec.file {
        "gradient_tiled.wgsl" => 4,
        "output_tiled.wgsl" => 4 + 8 * tiles.wg_x * tiles.wg_y,
        _ => 0,
    }
}

/// How the tiled products' core is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Core {
    /// Straight-line WGSL generated for the tile sizes ([`super::codegen`]):
    /// `vec4` accumulators and workgroup reads. Needs `tm`, `tn` multiples
    /// of 4 up to 16.
    Generated,
    /// `shaders/tiled.wgsl`: loops over the register block, scalar reads, tile
    /// sizes as pipeline constants (any `tm`, `tn` up to `MAX_T`).
    Loops,
}

/// One configuration of the tiled products: how the core is built, its
/// tile sizes, whether its staging is double-buffered and, for a gradient
/// product, its K slices. Written `gen:WXxWY:TMxTN:kBK` or `loops:…`, then
/// optional fields in any order: `:db`, register double buffering
/// (generated cores only), and `:sN`, N K slices (e.g. `gen:8x8:4x4:k8`,
/// `gen:16x16:8x8:k16:db:s4`, [`KernelConfig::parse`]), as `--kernel-config`
/// takes it and checkpoints and `--metrics` record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KernelConfig {
    /// Generated or tiled.wgsl.
    pub core: Core,
    /// The tile sizes.
    pub tiles: TileConfig,
    /// Register double buffering of the generated core (`:db`): the next K
    /// step's global loads are issued before this step's multiply-adds
    /// ([`super::codegen`]). Bitwise the same results; generated cores only.
    pub double_buffer: bool,
    /// Operands contiguous along K (the forward's A_prev and W, the hidden
    /// delta's δ_next) loaded as transposed `vec4`s in every block (`:v4`),
    /// some invocations idle where a block has fewer 4×4 items than
    /// invocations; without it such blocks load scalars ([`super::codegen`]).
    /// Bitwise the same results; generated cores only.
    pub k_vec4: bool,
    /// K slices of a gradient product (split K), `1..=MAX_SPLITS`: at run
    /// time clamped, silently, to K's whole BK steps and the scratch budget
    /// ([`super::plan::gradient_splits`]); `None` derives them from the
    /// tiles and the device ([`k_splits_to`]). Forward and delta products
    /// have none ([`super::plan::KernelPlan::parse`] refuses them there).
    pub splits: Option<u32>,
}

impl KernelConfig {
    /// The generated core with `tiles`.
    pub const fn generated(tiles: TileConfig) -> KernelConfig {
        KernelConfig {
            core: Core::Generated,
            tiles,
            double_buffer: false,
            k_vec4: false,
            splits: None,
        }
    }

    /// tiled.wgsl's core with `tiles`.
    pub const fn loops(tiles: TileConfig) -> KernelConfig {
        KernelConfig {
            core: Core::Loops,
            tiles,
            double_buffer: false,
            k_vec4: false,
            splits: None,
        }
    }

    /// The same, its staging double-buffered in registers or not.
    pub const fn with_double_buffer(self, double_buffer: bool) -> KernelConfig {
        KernelConfig {
            double_buffer,
            ..self
        }
    }

    /// The same, its along-K operands loaded as transposed `vec4`s in every
    /// block or not.
    pub const fn with_k_vec4(self, k_vec4: bool) -> KernelConfig {
        KernelConfig { k_vec4, ..self }
    }

    /// The core's own conditions ([`super::codegen::check`] or
    /// [`TileConfig::safety`]); tiled.wgsl has no double buffering and no
    /// `vec4` loads.
    fn safety(&self) -> Result<()> {
        match self.core {
            Core::Generated => super::codegen::check(&self.tiles),
            Core::Loops if self.double_buffer => Err(Error::Invalid(
                "double buffering (:db) is a generated core's (gen:…); tiled.wgsl's loops core has none"
                    .into(),
            )),
            Core::Loops if self.k_vec4 => Err(Error::Invalid(
                "vec4 loads along K (:v4) are a generated core's (gen:…); tiled.wgsl's loops core has none"
                    .into(),
            )),
            Core::Loops => self.tiles.safety(),
        }
    }

    /// The configuration its modules are built with: K slices are a
    /// dispatch's, not a module's, so products that differ only in them
    /// share one set of pipelines.
    pub fn modules(self) -> KernelConfig {
        KernelConfig {
            splits: None,
            ..self
        }
    }

    /// The same with `splits` K slices of a gradient product.
    pub fn with_splits(self, splits: Option<u32>) -> KernelConfig {
        KernelConfig { splits, ..self }
    }

    /// Bytes of workgroup memory of its product kernels.
    pub fn workgroup_bytes(&self) -> u32 {
        match self.core {
            Core::Generated => super::codegen::workgroup_bytes(&self.tiles),
            Core::Loops => self.tiles.workgroup_bytes(),
        }
    }

    /// Bytes of workgroup memory of `spec`'s kernel built with this
    /// configuration: the product's, plus what its epilogue keeps
    /// ([`epilogue_bytes`]).
    pub fn kernel_bytes(&self, spec: &KernelSpec) -> u32 {
        self.workgroup_bytes() + epilogue_bytes(spec, &self.tiles)
    }

    /// Whether it can run on a device with `limits`: its core's own check
    /// (tiled.wgsl: [`TileConfig::check`]; generated:
    /// [`super::codegen::check`]), its workgroup within the device's limits
    /// (the gradient kernel's, which has the larger epilogue of the two
    /// kernels every configuration builds).
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        self.safety()?;
        if self.core == Core::Loops {
            self.tiles.check(limits)?;
        }
        let bytes = self.kernel_bytes(&GRADIENT_DENSE_TILED);
        self.tiles.fits(limits, bytes)
    }

    /// Parse the form [`KernelConfig`]'s `Display` writes.
    pub fn parse(text: &str) -> Result<KernelConfig> {
        let bad = || {
            Error::setting(
                Setting::KernelConfig,
                text,
                "expected gen|loops:WXxWY:TMxTN:kBK[:db][:v4][:sN], e.g. gen:8x8:4x4:k8 or gen:8x8:4x4:k8:db:s4",
            )
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [core, wg, t, k, optional @ ..] = parts.as_slice() else {
            return Err(bad());
        };
        // Optional fields, in any order, each at most once.
        let (mut splits, mut double_buffer, mut k_vec4) = (None, false, false);
        for field in optional {
            let twice = |what: &str| {
                let why = format!("`:{field}`: {what} given twice");
                Err(Error::setting(Setting::KernelConfig, text, why))
            };
            if *field == "db" {
                if double_buffer {
                    return twice("double buffering");
                }
                double_buffer = true;
            } else if *field == "v4" {
                if k_vec4 {
                    return twice("vec4 loads along K");
                }
                k_vec4 = true;
            } else if let Some(n) = field.strip_prefix('s') {
                if splits.is_some() {
                    return twice("K slices");
                }
                splits = Some(parse_splits(n).ok_or_else(|| {
                    let why = format!("`:{field}`: K slices are s1..=s{MAX_SPLITS}");
                    Error::setting(Setting::KernelConfig, text, why)
                })?);
            } else {
                return Err(bad());
            }
        }
        let core = match *core {
            "gen" => Core::Generated,
            "loops" => Core::Loops,
            _ => return Err(bad()),
        };
        let pair = |s: &str| -> Option<(u32, u32)> {
            let (a, b) = s.split_once('x')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        };
        let ((wg_x, wg_y), (tm, tn)) = pair(wg).zip(pair(t)).ok_or_else(bad)?;
        let bk = k
            .strip_prefix('k')
            .and_then(|k| k.parse().ok())
            .ok_or_else(bad)?;
        let tiles = TileConfig {
            wg_x,
            wg_y,
            tm,
            tn,
            bk,
        };
        let config = KernelConfig {
            core,
            tiles,
            double_buffer,
            k_vec4,
            splits,
        };
        config
            .safety()
            .map_err(|e| Error::setting(Setting::KernelConfig, text, e.to_string()))?;
        Ok(config)
    }
}

impl std::fmt::Display for KernelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = &self.tiles;
        let core = match self.core {
            Core::Generated => "gen",
            Core::Loops => "loops",
        };
        write!(
            f,
            "{core}:{}x{}:{}x{}:k{}",
            t.wg_x, t.wg_y, t.tm, t.tn, t.bk
        )?;
        if self.double_buffer {
            write!(f, ":db")?;
        }
        if self.k_vec4 {
            write!(f, ":v4")?;
        }
        if let Some(s) = self.splits {
            write!(f, ":s{s}")?;
        }
        Ok(())
    }
}

/// Most K slices a configuration may give (`:sN`): as many as a derived
/// count can reach ([`FILL_GROUPS`]), and within every device's 65535
/// workgroups per dimension (the slices are the grid's z).
pub const MAX_SPLITS: u32 = 1024;

/// The N of `:sN`, if in `1..=MAX_SPLITS`.
fn parse_splits(n: &str) -> Option<u32> {
    n.parse().ok().filter(|s| (1..=MAX_SPLITS).contains(s))
}

/// One configuration's product kernels: one module set per distinct
/// configuration of a [`KernelPlan`], shared by every product that runs it.
pub struct ProductKernels {
    /// The configuration they were built with.
    pub config: KernelConfig,
    /// See [`FORWARD_DENSE_TILED`].
    pub forward_dense: Kernel,
    /// See [`DELTA_HIDDEN_TILED`].
    pub delta_hidden: Kernel,
    /// See [`GRADIENT_DENSE_TILED`].
    pub gradient_dense: Kernel,
    /// See [`GRADIENT_SGD_TILED`].
    pub gradient_sgd: Kernel,
    /// See [`FORWARD_OUTPUT_LOSS_TILED`]: built for the configurations of
    /// the output layer's forward product, where its workgroup memory fits
    /// the device.
    pub forward_output_loss: Option<Kernel>,
}

/// The fast pipelines: tiled products on each product's configuration
/// (a [`KernelPlan`]), and the parallel loss. Every configuration's kernels
/// share one bind-group layout per kernel file, so one bind group per layer
/// serves whichever configuration a product runs.
pub struct TiledKernels {
    plan: KernelPlan,
    /// One per distinct configuration of `plan`.
    sets: Vec<ProductKernels>,
    /// Per layer, per [`Product::index`]: the set its product runs.
    index: Vec<[usize; 3]>,
    /// See [`DELTA_OUTPUT_LOSS`].
    pub delta_output_loss: Kernel,
    /// See [`LOSS_FINISH`].
    pub loss_finish: Kernel,
}

impl TiledKernels {
    /// Compile the fast kernels on `device` with `config` for every
    /// product, checked against `limits`; the modules with naga's runtime
    /// checks where `checked`. Products of any layer may be looked up.
    pub fn new(ctx: &GpuContext, config: KernelConfig, checked: bool) -> Result<Self> {
        // A plan of one layer, looked up for every layer.
        let plan = KernelPlan::repeat(1, config, Source::Given);
        Self::with_plan(ctx, &plan, checked)
    }

    /// Compile the fast kernels on `device`, one set per distinct
    /// configuration of `plan`, each checked against `limits`.
    pub fn with_plan(ctx: &GpuContext, plan: &KernelPlan, checked: bool) -> Result<Self> {
        let (device, limits) = (&ctx.device, &ctx.limits);
        plan.check(limits)?;
        let layout = |spec: &KernelSpec| {
            let what = format!("the bind group layout of {}", spec.entry);
            creating(device, &what, || Kernel::layout(device, spec))
        };
        let layouts = [
            layout(&FORWARD_DENSE_TILED)?,
            layout(&DELTA_HIDDEN_TILED)?,
            layout(&GRADIENT_DENSE_TILED)?,
            layout(&FORWARD_OUTPUT_LOSS_TILED)?,
        ];
        // One module set per configuration apart from K slices.
        let mut configs: Vec<KernelConfig> = Vec::new();
        for c in plan.configs().into_iter().map(KernelConfig::modules) {
            if !configs.contains(&c) {
                configs.push(c);
            }
        }
        // The fused output kernel only where the output layer's forward runs.
        let output = plan.layers().checked_sub(1).map(|last| {
            plan.get(ProductId {
                kind: Product::Forward,
                layer: last,
            })
            .config
            .modules()
        });
        let sets = configs
            .iter()
            .map(|&c| ProductKernels::new(ctx, c, checked, &layouts, output == Some(c)))
            .collect::<Result<Vec<_>>>()?;
        let at = |c: KernelConfig| configs.iter().position(|&x| x == c.modules()).unwrap_or(0);
        let index = (0..plan.layers())
            .map(|layer| Product::ALL.map(|kind| at(plan.get(ProductId { kind, layer }).config)))
            .collect();
        let cache = ctx.pipeline_cache();
        let k = |spec| Kernel::build(device, cache, spec, &TileConfig::SMALL, checked);
        Ok(TiledKernels {
            plan: plan.clone(),
            sets,
            index,
            delta_output_loss: k(DELTA_OUTPUT_LOSS)?,
            loss_finish: k(LOSS_FINISH)?,
        })
    }

    /// The configuration of every product.
    pub fn plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// The kernels product `p` of `layer` runs (a plan of one layer serves
    /// every layer: [`TiledKernels::new`]).
    pub fn set(&self, p: Product, layer: usize) -> &ProductKernels {
        let row = self.index.get(layer).or(self.index.last());
        &self.sets[row.map_or(0, |r| r[p.index()])]
    }

    /// The forward or hidden-delta kernel of `layer`, and its tile sizes
    /// (the gradient's pair of kernels: [`TiledKernels::set`]).
    pub fn product(&self, p: Product, layer: usize) -> (&Kernel, &TileConfig) {
        let s = self.set(p, layer);
        let kernel = match p {
            Product::Forward => &s.forward_dense,
            Product::Delta => &s.delta_hidden,
            Product::Gradient => &s.gradient_dense,
        };
        (kernel, &s.config.tiles)
    }

    /// The fused output kernel ([`FORWARD_OUTPUT_LOSS_TILED`]) of output
    /// layer `last` with `n_out` outputs, and its tiles: where it was built
    /// and one block holds a whole output row; else `None` (the forward
    /// product, `delta_output_loss` and `loss_finish` run instead).
    pub fn output_loss(&self, last: usize, n_out: usize) -> Option<(&Kernel, &TileConfig)> {
        let s = self.set(Product::Forward, last);
        let fits = n_out <= s.config.tiles.bn() as usize;
        s.forward_output_loss
            .as_ref()
            .filter(|_| fits)
            .map(|k| (k, &s.config.tiles))
    }

    /// The tile sizes product `p` of `layer` runs with.
    pub fn tiles(&self, p: Product, layer: usize) -> &TileConfig {
        &self.set(p, layer).config.tiles
    }
}

impl ProductKernels {
    /// Compile one configuration's product kernels on `layouts` (forward,
    /// delta, gradient: shared by every configuration).
    fn new(
        ctx: &GpuContext,
        config: KernelConfig,
        checked: bool,
        layouts: &[wgpu::BindGroupLayout; 4],
        output: bool,
    ) -> Result<Self> {
        let (device, limits) = (&ctx.device, &ctx.limits);
        let tiles = config.tiles;
        // The products' sources: generated per configuration, or tiled.wgsl's.
        let build = |spec: KernelSpec, layout: &wgpu::BindGroupLayout| -> Result<Kernel> {
            let src = match config.core {
                Core::Generated => Some(super::codegen::source(&spec, &config)?),
                Core::Loops => None,
            };
            Kernel::with_layout(
                device,
                ctx.pipeline_cache(),
                spec,
                &tiles,
                checked,
                src.as_deref(),
                layout.clone(),
            )
        };
        // Both gradient kernels take one bind group per layer.
        let g = &layouts[2];
        let output_fits = output
            && tiles
                .fits(limits, config.kernel_bytes(&FORWARD_OUTPUT_LOSS_TILED))
                .is_ok();
        Ok(ProductKernels {
            config,
            forward_dense: build(FORWARD_DENSE_TILED, &layouts[0])?,
            delta_hidden: build(DELTA_HIDDEN_TILED, &layouts[1])?,
            gradient_dense: build(GRADIENT_DENSE_TILED, g)?,
            gradient_sgd: build(GRADIENT_SGD_TILED, g)?,
            forward_output_loss: output_fits
                .then(|| build(FORWARD_OUTPUT_LOSS_TILED, &layouts[3]))
                .transpose()?,
        })
    }
}

/// Most invocations sharing one sample row in `delta_output_loss`
/// (`LOSS_LANES` in reduce.wgsl): wider rows take several elements per lane.
pub const LOSS_LANES: u32 = 32;

/// Invocations sharing one sample row in `delta_output_loss` (mirrors
/// `loss_lanes` in reduce.wgsl): the smallest power of two `>= n`, at most
/// [`LOSS_LANES`].
pub fn loss_lanes(n: u32) -> u32 {
    n.max(1).next_power_of_two().min(LOSS_LANES)
}

/// Workgroups of `delta_output_loss`, and partials it writes, for `rows`
/// samples of `n` outputs (mirrors `loss_groups` in reduce.wgsl).
pub fn loss_groups(rows: u32, n: u32) -> u32 {
    rows.div_ceil(LOSS_WG / loss_lanes(n))
}

/// A dispatch's workgroup counts, `(x, y, z)`.
pub type Grid = (u32, u32, u32);

/// `groups` workgroups folded into a 2-D grid so that neither dimension
/// exceeds `max_per_dim`; the shaders number them `wid.y·nwg.x + wid.x` and
/// skip those past the end. `what` names the work for the error (made only
/// then: a step computes its grids without allocating).
pub fn grid(groups: u64, max_per_dim: u32, what: impl FnOnce() -> String) -> Result<Grid> {
    let groups = groups.max(1);
    let max = max_per_dim.max(1) as u64;
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::Gpu(format!(
            "{} need {groups} workgroups, more than {max}×{max} (max_compute_workgroups_per_dimension); use a smaller batch",
            what()
        )));
    }
    Ok((x as u32, y as u32, 1))
}

/// Workgroup grid for `n` independent elements of [`WG`] invocations each
/// (`linear_index` in common.wgsl unfolds it).
pub fn grid_1d(n: u64, max_per_dim: u32) -> Result<Grid> {
    grid(n.div_ceil(WG as u64), max_per_dim, || {
        format!("{n} elements")
    })
}

/// Output blocks of a tiled `m × n` product.
pub fn tile_blocks(m: u32, n: u32, tiles: &TileConfig) -> u64 {
    m.div_ceil(tiles.bm()) as u64 * n.div_ceil(tiles.bn()) as u64
}

/// Workgroup grid of a tiled kernel computing an `m × n` output with K cut
/// into `splits` slices (the z dimension).
pub fn grid_tiled(
    m: u32,
    n: u32,
    splits: u32,
    tiles: &TileConfig,
    max_per_dim: u32,
) -> Result<Grid> {
    let what = || format!("a {m}×{n} product");
    let (x, y, _) = grid(tile_blocks(m, n, tiles), max_per_dim, what)?;
    Ok((x, y, splits.max(1)))
}

/// Workgroups a product with few output blocks is split up to (split K).
pub const FILL_GROUPS: u64 = 1024;
/// The shallowest K slice worth a workgroup of its own.
const MIN_SLICE: u32 = 256;

/// K slices for the tiled gradient of a layer `n_in → n_out` over `rows`
/// samples on a GPU (`FILL_GROUPS` workgroups to fill): see [`k_splits_to`].
pub fn k_splits(n_out: u32, n_in: u32, rows: u32, tiles: &TileConfig, max_scratch: u64) -> u32 {
    k_splits_to(n_out, n_in, rows, tiles, max_scratch, FILL_GROUPS)
}

/// Workgroups the split gradient should reach on an adapter of type
/// `device`: `FILL_GROUPS` on a GPU; on a CPU adapter (lavapipe), which
/// runs one workgroup per thread at a time, twice its threads (the host's
/// cores, at least 4). Splitting past that only adds slice sums: W1's
/// 256×784 gradient at batch 1024 on 2-core lavapipe took 44.7 ms in 4
/// slices and 40.8 in one.
pub fn split_fill(device: wgpu::DeviceType) -> u64 {
    match device {
        wgpu::DeviceType::Cpu => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (2 * cores as u64).max(4)
        }
        _ => FILL_GROUPS,
    }
}

/// K slices for the tiled gradient of a layer `n_in → n_out` over `rows`
/// samples: enough for about `fill` workgroups where the layer has
/// few output blocks, each slice at least `MIN_SLICE` deep, and no more than
/// `max_scratch` floats of slice sums, `splits·n_out·(n_in + 1)`. Never more
/// than `fill` (at most `FILL_GROUPS`), so within any device's 65535 workgroups per dimension.
pub fn k_splits_to(
    n_out: u32,
    n_in: u32,
    rows: u32,
    tiles: &TileConfig,
    max_scratch: u64,
    fill: u64,
) -> u32 {
    let by_fill = fill.min(FILL_GROUPS) / tile_blocks(n_out, n_in, tiles).max(1);
    let by_depth = (rows / MIN_SLICE) as u64;
    let by_scratch = max_scratch / (n_out as u64 * (n_in as u64 + 1));
    by_fill.min(by_depth).min(by_scratch).max(1) as u32
}

/// Record one dispatch of `kernel` on a `grid` of workgroups into `pass`.
pub fn dispatch(
    pass: &mut wgpu::ComputePass<'_>,
    kernel: &Kernel,
    group: &wgpu::BindGroup,
    (x, y, z): Grid,
) {
    pass.set_pipeline(&kernel.pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, z);
}
