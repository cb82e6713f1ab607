//! Shader modules, hand-written bind-group layouts and pipelines.
//!
//! Each kernel is described once, "like a C header", by a [`KernelSpec`]: its
//! WGSL source, its entry point and the kind of every binding in order. The
//! host builds bind-group layouts from that table, and a naga test (no GPU
//! needed) checks every shader's declared bindings and uniform sizes against
//! the same table, so pipeline and bind group agree by construction.

use super::context::creating;
use crate::error::{Error, Result};
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
    /// Uniforms are 16-byte aligned.
    pub _pad: u32,
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

/// The running loss totals, mirrored by `struct Acc` in `shaders/reduce.wgsl`
/// (the file every loss kernel includes). Public for the kernel runner and
/// tests; not part of the documented API.
#[doc(hidden)]
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct Acc {
    /// Σ of per-sample losses.
    pub loss_sum: f32,
    /// Samples seen.
    pub samples: u32,
    /// Samples scored correct.
    pub correct: u32,
    /// Batches seen.
    pub steps: u32,
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
    source: shader!("softmax.wgsl"),
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
    source: shader!("reduce.wgsl", "loss.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
    kind: KernelKind::Reduce,
};

/// Tiled `A = f(A_prev·Wᵀ + b)` (twin: `forward_dense`): dims, params, a_prev, a.
pub const FORWARD_DENSE_TILED: KernelSpec = KernelSpec {
    entry: "forward_dense_tiled",
    file: "forward_tiled.wgsl",
    source: shader!("tiled.wgsl", "forward_tiled.wgsl"),
    bindings: FORWARD_DENSE.bindings,
    kind: KernelKind::Tiled,
};
/// Tiled `δ = (δ_next·W_next) ⊙ f'(A)` (twin: `delta_hidden`): dims,
/// params, delta_next, a, delta.
pub const DELTA_HIDDEN_TILED: KernelSpec = KernelSpec {
    entry: "delta_hidden_tiled",
    file: "delta_hidden_tiled.wgsl",
    source: shader!("tiled.wgsl", "delta_hidden_tiled.wgsl"),
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
];
/// Tiled `∂L/∂W = scale·δᵀA_prev` and `∂L/∂b = scale·Σ_s δ` in one pass, stored
/// or accumulated into grads (twin: `gradient_dense`): dims, per_batch,
/// per_step (unused), delta, a_prev, params (unused), grads, scratch (split K only).
pub const GRADIENT_DENSE_TILED: KernelSpec = KernelSpec {
    entry: "gradient_dense_tiled",
    file: "gradient_tiled.wgsl",
    source: shader!("tiled.wgsl", "gradient_tiled.wgsl"),
    bindings: GRADIENT_TILED_BINDINGS,
    kind: KernelKind::Tiled,
};
/// The same gradients applied at once, `p −= lr·g` (twin: `gradient_sgd`):
/// dims, per_batch, per_step, delta, a_prev, params, grads (unused), scratch.
pub const GRADIENT_SGD_TILED: KernelSpec = KernelSpec {
    entry: "gradient_sgd_tiled",
    ..GRADIENT_DENSE_TILED
};
/// Split K: the slices in scratch added in order, then as
/// [`GRADIENT_DENSE_TILED`]; one invocation per parameter of the layer.
pub const GRADIENT_DENSE_REDUCE: KernelSpec = KernelSpec {
    entry: "gradient_dense_reduce",
    kind: KernelKind::ElementWise,
    ..GRADIENT_DENSE_TILED
};
/// Split K: the slices in scratch added in order, then as [`GRADIENT_SGD_TILED`].
pub const GRADIENT_SGD_REDUCE: KernelSpec = KernelSpec {
    entry: "gradient_sgd_reduce",
    ..GRADIENT_DENSE_REDUCE
};
/// Output delta and per-workgroup loss partials in one parallel pass (twin:
/// `delta_output_loss`): dims, a, y, delta, partials.
pub const DELTA_OUTPUT_LOSS: KernelSpec = KernelSpec {
    entry: "delta_output_loss",
    file: "loss_partial.wgsl",
    source: shader!("reduce.wgsl", "loss_partial.wgsl"),
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
    source: shader!("reduce.wgsl", "loss_finish.wgsl"),
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
    GRADIENT_DENSE_REDUCE,
    GRADIENT_SGD_REDUCE,
    DELTA_OUTPUT_LOSS,
    LOSS_FINISH,
    super::clip::CLIP_PARTIAL,
    super::clip::CLIP_FINISH,
    super::clip::CLIP_APPLY,
    super::dropout::DROPOUT_APPLY,
];

/// Largest `tm` and `tn` (`MAX_T` in tiled.wgsl: the register blocks' size).
pub const MAX_T: u32 = 8;

/// Tile sizes of the tiled kernels, passed as pipeline constants (tiled.wgsl):
/// a workgroup of `wg_x × wg_y` invocations computes a `bm × bn` block of the
/// output (`bm = wg_y·tm`, `bn = wg_x·tn`), `tm × tn` per invocation, stepping
/// through K by `bk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// Whether the kernels can run with these sizes on a device with `limits`.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        let bad = |why: String| {
            Err(Error::Invalid(format!(
                "tile configuration {self:?}: {why}"
            )))
        };
        if !(1..=MAX_T).contains(&self.tm) || !(1..=MAX_T).contains(&self.tn) || self.bk == 0 {
            return bad(format!("tm and tn must be 1..={MAX_T} and bk at least 1"));
        }
        // The bias sums take one invocation per output row of a block.
        if self.wg_x < self.tm {
            return bad("wg_x must be at least tm".into());
        }
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
        if self.workgroup_bytes() > limits.max_compute_workgroup_storage_size {
            return bad(format!(
                "{} bytes of workgroup memory, over this device's {}",
                self.workgroup_bytes(),
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
}

impl Kernel {
    /// Compile `spec` on `device`; a [`KernelKind::Tiled`] kernel with the
    /// tile sizes of `tiles`. A shader or pipeline wgpu rejects is an
    /// [`Error::Gpu`] naming the kernel, with wgpu's message.
    pub fn new(device: &wgpu::Device, spec: KernelSpec, tiles: &TileConfig) -> Result<Kernel> {
        let what = format!("the bind group layout of {}", spec.entry);
        let layout = creating(device, &what, || Self::layout(device, &spec))?;
        Self::with_layout(device, spec, tiles, layout)
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
        spec: KernelSpec,
        tiles: &TileConfig,
        layout: wgpu::BindGroupLayout,
    ) -> Result<Kernel> {
        let module = creating(device, &format!("shader module {}", spec.file), || {
            device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(spec.file),
                source: wgpu::ShaderSource::Wgsl(spec.source.into()),
            })
        })?;
        let what = format!("pipeline {} ({})", spec.entry, spec.file);
        let pipeline_layout = creating(device, &what, || {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some(spec.entry),
                bind_group_layouts: &[Some(&layout)],
                immediate_size: 0,
            })
        })?;
        let constants = tiles.constants();
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
                cache: None,
            })
        })?;
        Ok(Kernel {
            spec,
            pipeline,
            layout,
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
    /// Compile every simple kernel on `device`.
    pub fn new(device: &wgpu::Device) -> Result<Kernels> {
        let k = |spec| Kernel::new(device, spec, &TileConfig::SMALL);
        let momentum_update = k(MOMENTUM_UPDATE)?;
        let adam_update = Kernel::with_layout(
            device,
            ADAM_UPDATE,
            &TileConfig::SMALL,
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

/// The fast pipelines: tiled products and the parallel loss.
pub struct TiledKernels {
    /// The tile sizes they were compiled with.
    pub tiles: TileConfig,
    /// See [`FORWARD_DENSE_TILED`].
    pub forward_dense: Kernel,
    /// See [`DELTA_HIDDEN_TILED`].
    pub delta_hidden: Kernel,
    /// See [`GRADIENT_DENSE_TILED`].
    pub gradient_dense: Kernel,
    /// See [`GRADIENT_SGD_TILED`].
    pub gradient_sgd: Kernel,
    /// See [`GRADIENT_DENSE_REDUCE`].
    pub gradient_dense_reduce: Kernel,
    /// See [`GRADIENT_SGD_REDUCE`].
    pub gradient_sgd_reduce: Kernel,
    /// See [`DELTA_OUTPUT_LOSS`].
    pub delta_output_loss: Kernel,
    /// See [`LOSS_FINISH`].
    pub loss_finish: Kernel,
}

impl TiledKernels {
    /// Compile the fast kernels on `device` with `tiles`, checked against `limits`.
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits, tiles: TileConfig) -> Result<Self> {
        tiles.check(limits)?;
        let k = |spec| Kernel::new(device, spec, &tiles);
        // The four gradient kernels take one bind group per layer.
        let gradient_dense = k(GRADIENT_DENSE_TILED)?;
        let shared =
            |spec| Kernel::with_layout(device, spec, &tiles, gradient_dense.layout.clone());
        Ok(TiledKernels {
            tiles,
            forward_dense: k(FORWARD_DENSE_TILED)?,
            delta_hidden: k(DELTA_HIDDEN_TILED)?,
            gradient_sgd: shared(GRADIENT_SGD_TILED)?,
            gradient_dense_reduce: shared(GRADIENT_DENSE_REDUCE)?,
            gradient_sgd_reduce: shared(GRADIENT_SGD_REDUCE)?,
            gradient_dense,
            delta_output_loss: k(DELTA_OUTPUT_LOSS)?,
            loss_finish: k(LOSS_FINISH)?,
        })
    }
}

/// Invocations sharing one sample row in `delta_output_loss` (mirrors
/// `loss_lanes` in reduce.wgsl): the smallest power of two `>= n`, at most `LOSS_WG`.
pub fn loss_lanes(n: u32) -> u32 {
    n.max(1).next_power_of_two().min(LOSS_WG)
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
/// skip those past the end. `what` names the work for the error.
pub fn grid(groups: u64, max_per_dim: u32, what: &str) -> Result<Grid> {
    let groups = groups.max(1);
    let max = max_per_dim.max(1) as u64;
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::Gpu(format!(
            "{what} need {groups} workgroups, more than {max}×{max} (max_compute_workgroups_per_dimension); use a smaller batch"
        )));
    }
    Ok((x as u32, y as u32, 1))
}

/// Workgroup grid for `n` independent elements of [`WG`] invocations each
/// (`linear_index` in common.wgsl unfolds it).
pub fn grid_1d(n: u64, max_per_dim: u32) -> Result<Grid> {
    grid(n.div_ceil(WG as u64), max_per_dim, &format!("{n} elements"))
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
    let what = format!("a {m}×{n} product");
    let (x, y, _) = grid(tile_blocks(m, n, tiles), max_per_dim, &what)?;
    Ok((x, y, splits.max(1)))
}

/// Workgroups a product with few output blocks is split up to (split K).
const FILL_GROUPS: u64 = 1024;
/// The shallowest K slice worth a workgroup of its own.
const MIN_SLICE: u32 = 256;

/// K slices for the tiled gradient of a layer `n_in → n_out` over `rows`
/// samples: enough for about `FILL_GROUPS` workgroups where the layer has
/// few output blocks, each slice at least `MIN_SLICE` deep, and no more than
/// `max_scratch` floats of slice sums, `splits·n_out·(n_in + 1)`. Never more
/// than `FILL_GROUPS`, so within any device's 65535 workgroups per dimension.
pub fn k_splits(n_out: u32, n_in: u32, rows: u32, tiles: &TileConfig, max_scratch: u64) -> u32 {
    let by_fill = FILL_GROUPS / tile_blocks(n_out, n_in, tiles).max(1);
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
