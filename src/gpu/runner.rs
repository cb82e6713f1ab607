//! Run one kernel on host slices: the GPU side of the kernel-twin tests.
//!
//! Each method takes the same arguments as its CPU twin in [`crate::cpu`] and
//! returns what the kernel wrote. Outputs start poisoned with NaN, so an
//! element the kernel never wrote shows up, and parameters sit behind a NaN
//! prefix, so a wrong offset shows up too. Buffers are made per call: this is
//! for tests, not for training.

use super::context::GpuContext;
use super::kernels::{dispatch_1d, Acc, Dims, Kernel, Kernels, SgdUniform};
use super::readback;
use crate::backend::Metric;
use crate::Result;
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// NaN values placed before a layer's parameters, so `w_off`/`b_off` are non-zero.
const PREFIX: usize = 3;

/// Compiled kernels and a device, to run kernels one at a time.
pub struct KernelRunner {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
}

impl KernelRunner {
    /// Compile every kernel on `ctx`'s device.
    pub fn new(ctx: Arc<GpuContext>) -> Self {
        let kernels = Kernels::new(&ctx.device);
        KernelRunner { ctx, kernels }
    }

    fn storage(&self, data: &[f32]) -> wgpu::Buffer {
        let data = if data.is_empty() {
            &[f32::NAN][..]
        } else {
            data
        };
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner data"),
                contents: bytemuck::cast_slice(data),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    fn poisoned(&self, len: usize) -> wgpu::Buffer {
        self.storage(&vec![f32::NAN; len.max(1)])
    }

    fn uniform(&self, bytes: &[u8]) -> wgpu::Buffer {
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner uniform"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Dispatch `kernel` over `n` elements with `buffers` bound, then read
    /// `len` values of `out` from element offset `off`.
    fn run<T: bytemuck::Pod>(
        &self,
        kernel: &Kernel,
        buffers: &[&wgpu::Buffer],
        n: u64,
        out: &wgpu::Buffer,
        off: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        let group = kernel.bind(&self.ctx.device, buffers)?;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            dispatch_1d(
                &mut pass,
                kernel,
                &group,
                n,
                self.ctx.limits.max_compute_workgroups_per_dimension,
            )?;
        }
        self.ctx.queue.submit([enc.finish()]);
        readback::read(&self.ctx, out, (off * std::mem::size_of::<T>()) as u64, len)
    }

    /// GPU twin of [`crate::cpu::forward_dense`]; returns `a (batch, n_out)`.
    pub fn forward_dense(
        &self,
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        batch: usize,
        n_in: usize,
        n_out: usize,
    ) -> Result<Vec<f32>> {
        let (params, w_off, b_off) = layer_params(w, b);
        let d = dims(batch, n_in, n_out, w_off, b_off);
        let out = self.poisoned(batch * n_out);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(&params),
            &self.storage(a_prev),
            &out,
        ];
        self.run(
            &self.kernels.forward_dense,
            &bufs,
            (batch * n_out) as u64,
            &out,
            0,
            batch * n_out,
        )
    }

    /// GPU twin of [`crate::cpu::delta_output`]; returns `delta (batch, n)`.
    pub fn delta_output(&self, a: &[f32], y: &[f32], batch: usize, n: usize) -> Result<Vec<f32>> {
        let d = dims(batch, 0, n, 0, 0);
        let out = self.poisoned(batch * n);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(a),
            &self.storage(y),
            &out,
        ];
        self.run(
            &self.kernels.delta_output,
            &bufs,
            (batch * n) as u64,
            &out,
            0,
            batch * n,
        )
    }

    /// GPU twin of [`crate::cpu::delta_hidden`]; returns `delta (batch, n)`.
    pub fn delta_hidden(
        &self,
        w_next: &[f32],
        delta_next: &[f32],
        a: &[f32],
        batch: usize,
        n: usize,
        n_next: usize,
    ) -> Result<Vec<f32>> {
        let (params, w_off, _) = layer_params(w_next, &[]);
        let mut d = dims(batch, 0, n, 0, 0);
        d.n_next = n_next as u32;
        d.w_next_off = w_off as u32;
        let out = self.poisoned(batch * n);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(&params),
            &self.storage(delta_next),
            &self.storage(a),
            &out,
        ];
        self.run(
            &self.kernels.delta_hidden,
            &bufs,
            (batch * n) as u64,
            &out,
            0,
            batch * n,
        )
    }

    /// GPU twin of [`crate::cpu::gradient_weights`]; returns `gw (n_out, n_in)`.
    pub fn gradient_weights(
        &self,
        delta: &[f32],
        a_prev: &[f32],
        batch: usize,
        n_in: usize,
        n_out: usize,
    ) -> Result<Vec<f32>> {
        let count = n_out * n_in;
        let d = dims(batch, n_in, n_out, PREFIX, PREFIX + count);
        let out = self.poisoned(PREFIX + count + n_out);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(delta),
            &self.storage(a_prev),
            &out,
        ];
        self.run(
            &self.kernels.gradient_weights,
            &bufs,
            count as u64,
            &out,
            PREFIX,
            count,
        )
    }

    /// GPU twin of [`crate::cpu::gradient_bias`]; returns `gb (n_out)`.
    pub fn gradient_bias(&self, delta: &[f32], batch: usize, n_out: usize) -> Result<Vec<f32>> {
        let d = dims(batch, 1, n_out, PREFIX, PREFIX);
        let out = self.poisoned(PREFIX + n_out);
        let unused = self.storage(&[0.5]);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(delta),
            &unused,
            &out,
        ];
        self.run(
            &self.kernels.gradient_bias,
            &bufs,
            n_out as u64,
            &out,
            PREFIX,
            n_out,
        )
    }

    /// GPU twin of [`crate::cpu::sgd_update`]; returns the updated parameters.
    pub fn sgd_update(&self, params: &[f32], grads: &[f32], lr: f32) -> Result<Vec<f32>> {
        let u = SgdUniform {
            count: params.len() as u32,
            lr,
            _pad: [0; 2],
        };
        let p = self.storage(params);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&u)),
            &p,
            &self.storage(grads),
        ];
        self.run(
            &self.kernels.sgd_update,
            &bufs,
            params.len() as u64,
            &p,
            0,
            params.len(),
        )
    }

    /// GPU twin of [`crate::cpu::loss_reduce`]: adds the batch to `start` and
    /// returns the new totals.
    pub fn loss_reduce(
        &self,
        a: &[f32],
        y: &[f32],
        batch: usize,
        n: usize,
        metric: Metric,
        start: Acc,
    ) -> Result<Acc> {
        let mut d = dims(batch, 0, n, 0, 0);
        d.metric = metric as u32;
        let acc = self
            .ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner acc"),
                contents: bytemuck::bytes_of(&start),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            });
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&d)),
            &self.storage(a),
            &self.storage(y),
            &acc,
        ];
        // One element: a single workgroup, which is what loss_reduce needs.
        let out: Vec<Acc> = self.run(&self.kernels.loss_reduce, &bufs, 1, &acc, 0, 1)?;
        Ok(out.first().copied().unwrap_or_default())
    }
}

fn dims(batch: usize, n_in: usize, n_out: usize, w_off: usize, b_off: usize) -> Dims {
    Dims {
        batch: batch as u32,
        n_in: n_in as u32,
        n_out: n_out as u32,
        w_off: w_off as u32,
        b_off: b_off as u32,
        ..Dims::default()
    }
}

/// `[NaN; PREFIX] ++ w ++ b`, with the offsets of `w` and `b`.
fn layer_params(w: &[f32], b: &[f32]) -> (Vec<f32>, usize, usize) {
    let mut p = vec![f32::NAN; PREFIX];
    p.extend_from_slice(w);
    p.extend_from_slice(b);
    (p, PREFIX, PREFIX + w.len())
}
