//! Shader modules, hand-written bind-group layouts and pipelines.
//!
//! Each kernel is described once, "like a C header", by a [`KernelSpec`]: its
//! WGSL source, its entry point and the kind of every binding in order. The
//! host builds bind-group layouts from that table, and a naga test (no GPU
//! needed) checks every shader's declared bindings and uniform sizes against
//! the same table, so pipeline and bind group agree by construction.

use crate::{Error, Result};
use bytemuck::{Pod, Zeroable};

/// Shape constants of one layer, mirrored by `struct Dims` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Dims {
    /// Samples in the batch.
    pub batch: u32,
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
}

/// SGD hyper-parameters, mirrored by `struct Sgd` in `shaders/sgd.wgsl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Pod, Zeroable)]
pub struct SgdUniform {
    /// Parameters to update.
    pub count: u32,
    /// Learning rate.
    pub lr: f32,
    /// Uniforms are 16-byte aligned.
    pub _pad: [u32; 2],
}

/// The running loss totals, mirrored by `struct Acc` in `shaders/loss.wgsl`.
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
}

/// Workgroup size of the element-wise kernels (`WG` in common.wgsl).
pub const WG: u32 = 64;

macro_rules! shader {
    ($file:literal) => {
        concat!(
            include_str!("../../shaders/common.wgsl"),
            "\n",
            include_str!(concat!("../../shaders/", $file))
        )
    };
}

const DIMS: Slot = Slot::Uniform(std::mem::size_of::<Dims>() as u64);

/// `A = σ(A_prev·Wᵀ + b)`: dims, params, a_prev, a.
pub const FORWARD_DENSE: KernelSpec = KernelSpec {
    entry: "forward_dense",
    file: "forward.wgsl",
    source: shader!("forward.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
};
/// `δ = (A − Y) ⊙ A(1 − A)`: dims, a, y, delta.
pub const DELTA_OUTPUT: KernelSpec = KernelSpec {
    entry: "delta_output",
    file: "delta_output.wgsl",
    source: shader!("delta_output.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
};
/// `δ = (δ_next·W_next) ⊙ A(1 − A)`: dims, params, delta_next, a, delta.
pub const DELTA_HIDDEN: KernelSpec = KernelSpec {
    entry: "delta_hidden",
    file: "delta_hidden.wgsl",
    source: shader!("delta_hidden.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::Read, Slot::ReadWrite],
};
const GRADIENT_BINDINGS: &[Slot] = &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite];
/// `∂L/∂W = δᵀA_prev / B`: dims, delta, a_prev, grads.
pub const GRADIENT_WEIGHTS: KernelSpec = KernelSpec {
    entry: "gradient_weights",
    file: "gradient.wgsl",
    source: shader!("gradient.wgsl"),
    bindings: GRADIENT_BINDINGS,
};
/// `∂L/∂b = Σ_s δ / B`: dims, delta, a_prev (unused), grads.
pub const GRADIENT_BIAS: KernelSpec = KernelSpec {
    entry: "gradient_bias",
    file: "gradient.wgsl",
    source: shader!("gradient.wgsl"),
    bindings: GRADIENT_BINDINGS,
};
/// `p −= lr·g`: hyper, params, grads.
pub const SGD_UPDATE: KernelSpec = KernelSpec {
    entry: "sgd_update",
    file: "sgd.wgsl",
    source: shader!("sgd.wgsl"),
    bindings: &[
        Slot::Uniform(std::mem::size_of::<SgdUniform>() as u64),
        Slot::ReadWrite,
        Slot::Read,
    ],
};
/// Batch loss and score added to the totals: dims, a, y, acc.
pub const LOSS_REDUCE: KernelSpec = KernelSpec {
    entry: "loss_reduce",
    file: "loss.wgsl",
    source: shader!("loss.wgsl"),
    bindings: &[DIMS, Slot::Read, Slot::Read, Slot::ReadWrite],
};

/// Every kernel, for the naga test and for building pipelines.
pub const ALL: &[KernelSpec] = &[
    FORWARD_DENSE,
    DELTA_OUTPUT,
    DELTA_HIDDEN,
    GRADIENT_WEIGHTS,
    GRADIENT_BIAS,
    SGD_UPDATE,
    LOSS_REDUCE,
];

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
    /// Compile `spec` on `device`.
    pub fn new(device: &wgpu::Device, spec: KernelSpec) -> Kernel {
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
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(spec.entry),
            entries: &entries,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(spec.file),
            source: wgpu::ShaderSource::Wgsl(spec.source.into()),
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(spec.entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(spec.entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(spec.entry),
            compilation_options: Default::default(),
            cache: None,
        });
        Kernel {
            spec,
            pipeline,
            layout,
        }
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
        Ok(device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(self.spec.entry),
            layout: &self.layout,
            entries: &entries,
        }))
    }
}

/// Every pipeline, compiled once per device.
pub struct Kernels {
    /// See [`FORWARD_DENSE`].
    pub forward_dense: Kernel,
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
    /// See [`LOSS_REDUCE`].
    pub loss_reduce: Kernel,
}

impl Kernels {
    /// Compile every kernel on `device`.
    pub fn new(device: &wgpu::Device) -> Kernels {
        Kernels {
            forward_dense: Kernel::new(device, FORWARD_DENSE),
            delta_output: Kernel::new(device, DELTA_OUTPUT),
            delta_hidden: Kernel::new(device, DELTA_HIDDEN),
            gradient_weights: Kernel::new(device, GRADIENT_WEIGHTS),
            gradient_bias: Kernel::new(device, GRADIENT_BIAS),
            sgd_update: Kernel::new(device, SGD_UPDATE),
            loss_reduce: Kernel::new(device, LOSS_REDUCE),
        }
    }
}

/// Workgroup grid for `n` independent elements of [`WG`] invocations each,
/// folded into two dimensions so that neither exceeds `max_per_dim`
/// (`linear_index` in common.wgsl unfolds it).
pub fn grid_1d(n: u64, max_per_dim: u32) -> Result<(u32, u32)> {
    let groups = n.div_ceil(WG as u64).max(1);
    let max = max_per_dim.max(1) as u64;
    let x = groups.min(max);
    let y = groups.div_ceil(x);
    if y > max {
        return Err(Error::Gpu(format!(
            "{n} elements need {groups} workgroups, more than {max}×{max} (max_compute_workgroups_per_dimension); use a smaller batch"
        )));
    }
    Ok((x as u32, y as u32))
}

/// Record one dispatch of `kernel` over `n` elements into `pass`.
pub fn dispatch_1d(
    pass: &mut wgpu::ComputePass<'_>,
    kernel: &Kernel,
    group: &wgpu::BindGroup,
    n: u64,
    max_per_dim: u32,
) -> Result<()> {
    let (x, y) = grid_1d(n, max_per_dim)?;
    pass.set_pipeline(&kernel.pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, 1);
    Ok(())
}
