//! Run one kernel on host slices: the GPU side of the kernel-twin tests.
//!
//! Each method takes the same arguments as its CPU twin in [`crate::cpu`] and
//! returns what the kernel wrote; a `_tiled` method runs the tiled kernel of
//! the same maths with the runner's [`TileConfig`]. Outputs start poisoned
//! with NaN, so an element the kernel never wrote shows up, and parameters sit
//! behind a NaN prefix, so a wrong offset shows up too. Buffers are made per
//! call: this is for tests, not for training.
//!
//! Test scaffolding: public so that tests and benches can use it, hidden from
//! the documented API.

use super::context::GpuContext;
use super::kernels::{
    checked_by_env, dispatch, grid, grid_1d, grid_tiled, loss_groups, tile_blocks, Acc,
    BatchUniform, Dims, Grid, Kernel, KernelConfig, Kernels, OptimUniform, StepUniform, TileConfig,
    TiledKernels,
};
use super::plan::Product;
use super::readback;
use crate::backend::Metric;
use crate::error::{Error, Result};
use crate::network::{Activation, Loss};
use crate::optim::{OptimizerKind, UpdateTerms};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// NaN values placed before a layer's parameters, so `w_off`/`b_off` are
/// non-zero; a whole `vec4`, so that W's rows start on one where their
/// stride is a multiple of 4 and the tiled products read W as `vec4`s (a
/// read of the wrong 4 would take a NaN; misaligned offsets are checked
/// through whole training steps, tests/twins.rs).
const PREFIX: usize = 4;

/// One layer's parameters as the runner binds them: `[NaN; PREFIX]`, the
/// rows of W `ld` floats apart with NaN padding after each, then b.
struct LayerParams {
    data: Vec<f32>,
    w_off: usize,
    b_off: usize,
    /// W's row stride (`w_ld` of the Dims).
    ld: usize,
    /// W's rows and columns.
    rows: usize,
    cols: usize,
}

impl LayerParams {
    /// `w (rows, cols)` then `b`, rows `ld` apart.
    fn new(w: &[f32], b: &[f32], cols: usize, ld: usize) -> Self {
        let rows = w.len().checked_div(cols).unwrap_or(0);
        assert!(
            ld >= cols && rows * cols == w.len(),
            "W rows fit their stride"
        );
        let mut data = vec![f32::NAN; PREFIX + rows * ld];
        for (r, row) in w.chunks(cols.max(1)).take(rows).enumerate() {
            let at = PREFIX + r * ld;
            data[at..at + cols].copy_from_slice(row);
        }
        let b_off = data.len();
        data.extend_from_slice(b);
        LayerParams {
            data,
            w_off: PREFIX,
            b_off,
            ld,
            rows,
            cols,
        }
    }

    /// `w` then `b` back from `data` (this layout, read from the device):
    /// an error where a kernel wrote into W's padding, which stays NaN.
    fn unpack(&self, data: &[f32], b_len: usize) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.rows * self.cols + b_len);
        for r in 0..self.rows {
            let at = self.w_off + r * self.ld;
            out.extend_from_slice(&data[at..at + self.cols]);
            if let Some(c) = data[at + self.cols..at + self.ld]
                .iter()
                .position(|v| !v.is_nan())
            {
                return Err(Error::Gpu(format!(
                    "the kernel wrote {} into the padding of W's row {r} (column {})",
                    data[at + self.cols + c],
                    self.cols + c
                )));
            }
        }
        out.extend_from_slice(&data[self.b_off..self.b_off + b_len]);
        Ok(out)
    }
}

/// Compiled kernels and a device, to run kernels one at a time. Test
/// scaffolding, not part of the documented API.
#[doc(hidden)]
#[derive(Clone)]
pub struct KernelRunner {
    ctx: Arc<GpuContext>,
    /// Shared by the runner's padded copies ([`KernelRunner::with_padded_rows`]).
    kernels: Arc<Kernels>,
    /// `None` only where the adapter's tile sizes fail their own check.
    tiled: Option<Arc<TiledKernels>>,
    /// `Some(align)`: W's rows padded with NaN to a stride of
    /// `round_up(n_in + 1, align)` ([`KernelRunner::with_padded_rows`]).
    pad_rows: Option<usize>,
}

/// One dispatch: the kernel, its buffers in binding order, its grid.
type Step<'a> = (&'a Kernel, &'a [&'a wgpu::Buffer], Grid);

impl KernelRunner {
    /// Compile every kernel on `ctx`'s device, the tiled ones with the tile
    /// sizes for its adapter, checked as `SHADERTRAIN_CHECKED` says.
    pub fn new(ctx: Arc<GpuContext>) -> Result<Self> {
        Self::with_checks(ctx, None, checked_by_env())
    }

    /// Compile every kernel, the tiled ones with `tiles` and the generated
    /// core, checked as `SHADERTRAIN_CHECKED` says.
    pub fn with_tiles(ctx: Arc<GpuContext>, tiles: TileConfig) -> Result<Self> {
        Self::with_checks(ctx, Some(KernelConfig::generated(tiles)), checked_by_env())
    }

    /// Compile every kernel, the tiled ones with `config` (`None`: the
    /// generated core with the adapter's tiles, left out where they fail
    /// their own check), with naga's runtime checks where `checked`.
    pub fn with_checks(
        ctx: Arc<GpuContext>,
        config: Option<KernelConfig>,
        checked: bool,
    ) -> Result<Self> {
        let tiled = match config {
            Some(c) => Some(TiledKernels::new(&ctx, c, checked)?),
            None => {
                let c = KernelConfig::generated(TileConfig::for_adapter(&ctx.info, &ctx.limits));
                // (The adapter's tiles, not the per-network heuristic: the
                // runner serves products of every shape.)
                // A shader wgpu rejects is an error; tiles the device cannot run are none.
                match c.check(&ctx.limits) {
                    Ok(()) => Some(TiledKernels::new(&ctx, c, checked)?),
                    Err(_) => None,
                }
            }
        };
        let kernels = Arc::new(Kernels::new(&ctx, checked)?);
        Ok(KernelRunner {
            ctx,
            kernels,
            tiled: tiled.map(Arc::new),
            pad_rows: None,
        })
    }

    /// A copy of this runner (the same compiled kernels) with W's rows (and W_next's) laid `round_up(n_in + 1,
    /// align)` floats apart, NaN between them: at least one float of
    /// padding, so a product that reads it turns NaN, and a stride that is a
    /// multiple of 4 for `align` 4 (the device layout's, where the products
    /// read W as `vec4`s). The gradient methods also fail where a kernel
    /// wrote into the padding. Without this, rows are `n_in` apart.
    pub fn with_padded_rows(&self, align: usize) -> Self {
        KernelRunner {
            pad_rows: Some(align.max(1)),
            ..self.clone()
        }
    }

    /// `w (rows, cols)` and `b` as this runner lays them out.
    fn layer_params(&self, w: &[f32], b: &[f32], cols: usize) -> LayerParams {
        let ld = self
            .pad_rows
            .map_or(cols, |a| (cols + 1).next_multiple_of(a));
        LayerParams::new(w, b, cols, ld)
    }

    /// Whether its modules were built with naga's runtime checks.
    pub fn checked(&self) -> bool {
        self.kernels.forward_dense.checked
    }

    /// The tiled kernels, or why there are none.
    fn tiled(&self) -> Result<&TiledKernels> {
        self.tiled
            .as_deref()
            .ok_or_else(|| Error::Gpu("the tiled kernels do not fit this device".into()))
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    fn grid_1d(&self, n: usize) -> Result<Grid> {
        grid_1d(n as u64, self.max_dim())
    }

    fn grid_tiled(&self, m: usize, n: usize, splits: u32) -> Result<Grid> {
        let tiles = self.tiled()?.tiles(Product::Forward, 0);
        grid_tiled(m as u32, n as u32, splits, tiles, self.max_dim())
    }

    /// `data` in a storage buffer, NaN after it up to a whole `vec4` (as
    /// the backend's buffers are rounded up; no kernel reads that padding).
    fn storage(&self, data: &[f32]) -> wgpu::Buffer {
        let mut data = data.to_vec();
        data.resize(data.len().max(1).next_multiple_of(4), f32::NAN);
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner data"),
                contents: bytemuck::cast_slice(&data),
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    fn poisoned(&self, len: usize) -> wgpu::Buffer {
        self.storage(&vec![f32::NAN; len.max(1)])
    }

    /// A Dims uniform, asserted first (safety condition 2 of unchecked modules).
    fn dims_uniform(&self, d: &Dims) -> Result<wgpu::Buffer> {
        d.check()?;
        Ok(self.uniform(bytemuck::bytes_of(d)))
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

    /// Record `steps` in order into one pass and submit, then read `len`
    /// values of `out` from element offset `off`.
    fn run<T: bytemuck::Pod>(
        &self,
        steps: &[Step<'_>],
        out: &wgpu::Buffer,
        off: usize,
        len: usize,
    ) -> Result<Vec<T>> {
        let groups = steps
            .iter()
            .map(|(kernel, buffers, _)| kernel.bind(&self.ctx.device, buffers))
            .collect::<Result<Vec<_>>>()?;
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for ((kernel, _, grid), group) in steps.iter().zip(&groups) {
                dispatch(&mut pass, kernel, group, *grid);
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        readback::read(&self.ctx, out, (off * std::mem::size_of::<T>()) as u64, len)
    }

    /// GPU twin of [`crate::cpu::forward_dense`]; returns `a (batch, n_out)`.
    /// A softmax layer runs `softmax_forward` after the product, as training does.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_dense(
        &self,
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        batch: usize,
        n_in: usize,
        n_out: usize,
        act: Activation,
    ) -> Result<Vec<f32>> {
        let grid = self.grid_1d(batch * n_out)?;
        let k = &self.kernels.forward_dense;
        self.forward(k, grid, a_prev, w, b, (batch, n_in, n_out), act)
    }

    /// `forward_dense_tiled`, twin of [`crate::cpu::forward_dense`] (softmax
    /// as for [`KernelRunner::forward_dense`]).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_dense_tiled(
        &self,
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        batch: usize,
        n_in: usize,
        n_out: usize,
        act: Activation,
    ) -> Result<Vec<f32>> {
        let grid = self.grid_tiled(batch, n_out, 1)?;
        let k = &self.tiled()?.set(Product::Forward, 0).forward_dense;
        self.forward(k, grid, a_prev, w, b, (batch, n_in, n_out), act)
    }

    /// `shape` is `(batch, n_in, n_out)`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        kernel: &Kernel,
        grid: Grid,
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        (batch, n_in, n_out): (usize, usize, usize),
        act: Activation,
    ) -> Result<Vec<f32>> {
        let lp = self.layer_params(w, b, n_in);
        let mut d = dims(batch, n_in, n_out, lp.w_off, lp.b_off);
        (d.act, d.w_ld) = (act as u32, lp.ld as u32);
        let out = self.poisoned(batch * n_out);
        let dims = self.dims_uniform(&d)?;
        let bufs = [&dims, &self.storage(&lp.data), &self.storage(a_prev), &out];
        let rows = [&dims, &out];
        let mut steps = vec![(kernel, &bufs[..], grid)];
        if act == Activation::Softmax {
            steps.push((
                &self.kernels.softmax_forward,
                &rows[..],
                self.grid_1d(batch)?,
            ));
        }
        self.run(&steps, &out, 0, batch * n_out)
    }

    /// GPU twin of [`crate::cpu::softmax_forward`]: returns the softmax of
    /// every row of `z (batch, n)`.
    pub fn softmax_forward(&self, z: &[f32], batch: usize, n: usize) -> Result<Vec<f32>> {
        let d = dims(batch, 0, n, 0, 0);
        let a = self.storage(z);
        let bufs = [&self.dims_uniform(&d)?, &a];
        let grid = self.grid_1d(batch)?;
        let k = &self.kernels.softmax_forward;
        self.run(&[(k, &bufs, grid)], &a, 0, batch * n)
    }

    /// GPU twin of [`crate::cpu::delta_output`]; returns `delta (batch, n)`.
    pub fn delta_output(
        &self,
        a: &[f32],
        y: &[f32],
        batch: usize,
        n: usize,
        act: Activation,
        loss: Loss,
    ) -> Result<Vec<f32>> {
        let mut d = dims(batch, 0, n, 0, 0);
        (d.act, d.loss) = (act as u32, loss as u32);
        let out = self.poisoned(batch * n);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.storage(a),
            &self.storage(y),
            &out,
        ];
        let grid = self.grid_1d(batch * n)?;
        self.run(
            &[(&self.kernels.delta_output, &bufs, grid)],
            &out,
            0,
            batch * n,
        )
    }

    /// GPU twin of [`crate::cpu::delta_hidden`]; returns `delta (batch, n)`.
    #[allow(clippy::too_many_arguments)]
    pub fn delta_hidden(
        &self,
        w_next: &[f32],
        delta_next: &[f32],
        a: &[f32],
        batch: usize,
        n: usize,
        n_next: usize,
        act: Activation,
    ) -> Result<Vec<f32>> {
        let grid = self.grid_1d(batch * n)?;
        let k = &self.kernels.delta_hidden;
        self.hidden(k, grid, w_next, delta_next, a, (batch, n, n_next), act)
    }

    /// `delta_hidden_tiled`, twin of [`crate::cpu::delta_hidden`].
    #[allow(clippy::too_many_arguments)]
    pub fn delta_hidden_tiled(
        &self,
        w_next: &[f32],
        delta_next: &[f32],
        a: &[f32],
        batch: usize,
        n: usize,
        n_next: usize,
        act: Activation,
    ) -> Result<Vec<f32>> {
        let grid = self.grid_tiled(batch, n, 1)?;
        let k = &self.tiled()?.set(Product::Delta, 0).delta_hidden;
        self.hidden(k, grid, w_next, delta_next, a, (batch, n, n_next), act)
    }

    /// `shape` is `(batch, n, n_next)`.
    #[allow(clippy::too_many_arguments)]
    fn hidden(
        &self,
        kernel: &Kernel,
        grid: Grid,
        w_next: &[f32],
        delta_next: &[f32],
        a: &[f32],
        (batch, n, n_next): (usize, usize, usize),
        act: Activation,
    ) -> Result<Vec<f32>> {
        let lp = self.layer_params(w_next, &[], n);
        let mut d = dims(batch, 0, n, 0, 0);
        d.act = act as u32;
        d.n_next = n_next as u32;
        (d.w_next_off, d.w_next_ld) = (lp.w_off as u32, lp.ld as u32);
        let out = self.poisoned(batch * n);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.storage(&lp.data),
            &self.storage(delta_next),
            &self.storage(a),
            &out,
        ];
        self.run(&[(kernel, &bufs, grid)], &out, 0, batch * n)
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
        let lp = self.layer_params(&vec![f32::NAN; count], &[], n_in);
        let mut d = dims(batch, n_in, n_out, lp.w_off, lp.b_off);
        d.w_ld = lp.ld as u32;
        let out = self.storage(&lp.data);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.storage(delta),
            &self.storage(a_prev),
            &out,
        ];
        let grid = self.grid_1d(count)?;
        let k = &self.kernels.gradient_weights;
        let data = self.run(&[(k, &bufs, grid)], &out, 0, lp.data.len())?;
        lp.unpack(&data, 0)
    }

    /// GPU twin of [`crate::cpu::gradient_bias`]; returns `gb (n_out)`.
    pub fn gradient_bias(&self, delta: &[f32], batch: usize, n_out: usize) -> Result<Vec<f32>> {
        let d = dims(batch, 1, n_out, PREFIX, PREFIX);
        let out = self.poisoned(PREFIX + n_out);
        let unused = self.storage(&[0.5]);
        let bufs = [&self.dims_uniform(&d)?, &self.storage(delta), &unused, &out];
        let grid = self.grid_1d(n_out)?;
        self.run(
            &[(&self.kernels.gradient_bias, &bufs, grid)],
            &out,
            PREFIX,
            n_out,
        )
    }

    /// `gradient_dense_tiled`, twin of [`crate::cpu::gradient_dense`]: returns
    /// `gw (n_out, n_in)` followed by `gb (n_out)`, the layer's parameter
    /// layout. With `onto` (the same layout) the kernel accumulates, and the
    /// result is `onto + g`. With `splits > 1`, K is cut into that many slices
    /// and the last slice of each block adds them.
    #[allow(clippy::too_many_arguments)]
    pub fn gradient_dense_tiled(
        &self,
        delta: &[f32],
        a_prev: &[f32],
        batch: usize,
        n_in: usize,
        n_out: usize,
        onto: Option<&[f32]>,
        splits: u32,
    ) -> Result<Vec<f32>> {
        let count = n_out * n_in;
        let lp = match onto {
            Some(start) => self.layer_params(&start[..count], &start[count..], n_in),
            None => self.layer_params(&vec![f32::NAN; count], &vec![f32::NAN; n_out], n_in),
        };
        let grads = self.storage(&lp.data);
        let params = self.poisoned(lp.data.len());
        let per_batch = BatchUniform::new(batch, onto.is_some());
        let per_step = StepUniform {
            lr: f32::NAN,
            ..StepUniform::default()
        };
        let t = self.tiled()?;
        let kernel = &t.set(Product::Gradient, 0).gradient_dense;
        let shape = (batch, n_in, n_out, splits);
        let uniforms = (per_batch, per_step);
        self.gradient(kernel, delta, a_prev, shape, uniforms, &lp, &params, &grads)?;
        lp.unpack(&readback::read(&self.ctx, &grads, 0, lp.data.len())?, n_out)
    }

    /// `gradient_sgd_tiled`, twin of [`crate::cpu::gradient_sgd`]: returns the
    /// layer's updated `w (n_out, n_in)` followed by `b (n_out)`. `splits` as
    /// for [`KernelRunner::gradient_dense_tiled`].
    #[allow(clippy::too_many_arguments)]
    pub fn gradient_sgd_tiled(
        &self,
        delta: &[f32],
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        lr: f32,
        batch: usize,
        n_in: usize,
        n_out: usize,
        splits: u32,
    ) -> Result<Vec<f32>> {
        let lp = self.layer_params(w, b, n_in);
        let params = self.storage(&lp.data);
        let grads = self.poisoned(lp.data.len());
        let per_batch = BatchUniform::new(batch, false);
        let per_step = StepUniform {
            lr,
            ..StepUniform::default()
        };
        let t = self.tiled()?;
        let kernel = &t.set(Product::Gradient, 0).gradient_sgd;
        let shape = (batch, n_in, n_out, splits);
        let uniforms = (per_batch, per_step);
        self.gradient(kernel, delta, a_prev, shape, uniforms, &lp, &params, &grads)?;
        lp.unpack(
            &readback::read(&self.ctx, &params, 0, lp.data.len())?,
            n_out,
        )
    }

    /// Run a tiled gradient kernel, K in `splits` slices; `shape` is
    /// `(batch, n_in, n_out, splits)`.
    #[allow(clippy::too_many_arguments)]
    fn gradient(
        &self,
        product: &Kernel,
        delta: &[f32],
        a_prev: &[f32],
        (batch, n_in, n_out, splits): (usize, usize, usize, u32),
        (per_batch, per_step): (BatchUniform, StepUniform),
        lp: &LayerParams,
        params: &wgpu::Buffer,
        grads: &wgpu::Buffer,
    ) -> Result<()> {
        let mut d = dims(batch, n_in, n_out, lp.w_off, lp.b_off);
        (d.splits, d.w_ld) = (splits, lp.ld as u32);
        let sums = n_out * (n_in + 1);
        let blocks = tile_blocks(
            n_out as u32,
            n_in as u32,
            self.tiled()?.tiles(Product::Gradient, 0),
        ) as usize;
        let counters = self.counters(blocks);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.uniform(bytemuck::bytes_of(&per_batch)),
            &self.uniform(bytemuck::bytes_of(&per_step)),
            &self.storage(delta),
            &self.storage(a_prev),
            params,
            grads,
            &self.poisoned(splits as usize * sums),
            &counters,
        ];
        let grid = self.grid_tiled(n_out, n_in, splits)?;
        self.run::<f32>(&[(product, &bufs[..], grid)], grads, 0, 0)?;
        self.counters_reset(&counters, blocks)
    }

    /// `n` counters of the last-workgroup pattern, zero.
    fn counters(&self, n: usize) -> wgpu::Buffer {
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner counters"),
                contents: bytemuck::cast_slice(&vec![0u32; n.max(1)]),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// An error unless the kernel left all `n` counters at zero, as the next
    /// dispatch needs them.
    fn counters_reset(&self, counters: &wgpu::Buffer, n: usize) -> Result<()> {
        let left: Vec<u32> = readback::read(&self.ctx, counters, 0, n.max(1))?;
        match left.iter().position(|&c| c != 0) {
            None => Ok(()),
            Some(i) => Err(Error::Gpu(format!(
                "counter {i} of {n} left at {} after the dispatch",
                left[i]
            ))),
        }
    }

    /// GPU twin of [`crate::cpu::sgd_update`]; returns the updated parameters.
    pub fn sgd_update(&self, params: &[f32], grads: &[f32], lr: f32) -> Result<Vec<f32>> {
        let hyper = OptimUniform {
            count: params.len() as u32,
            ..OptimUniform::default()
        };
        let per_step = StepUniform {
            lr,
            ..StepUniform::default()
        };
        let p = self.storage(params);
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&hyper)),
            &self.uniform(bytemuck::bytes_of(&per_step)),
            &p,
            &self.storage(grads),
        ];
        let grid = self.grid_1d(params.len())?;
        self.run(
            &[(&self.kernels.sgd_update, &bufs, grid)],
            &p,
            0,
            params.len(),
        )
    }

    /// `momentum_update` or `adam_update` (`kind`), GPU twin of
    /// [`crate::cpu::momentum_update`] and [`crate::cpu::adam_update`]:
    /// returns the updated parameters and state (momentum `v (P)`, Adam `m`
    /// then `v`, `2P`).
    pub fn optimizer_update(
        &self,
        kind: OptimizerKind,
        params: &[f32],
        grads: &[f32],
        state: &[f32],
        decay: &[f32],
        h: &UpdateTerms<f32>,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let kernel = match kind {
            OptimizerKind::Adam => &self.kernels.adam_update,
            OptimizerKind::Momentum => &self.kernels.momentum_update,
            OptimizerKind::Sgd => {
                return Err(Error::Invalid(
                    "SGD's kernel is sgd_update; with decay it is momentum_update".into(),
                ))
            }
        };
        let n = params.len();
        let (p, st) = (self.storage(params), self.storage(state));
        let bufs = [
            &self.uniform(bytemuck::bytes_of(&OptimUniform::new(n, h))),
            &self.uniform(bytemuck::bytes_of(&StepUniform::new(h))),
            &p,
            &self.storage(grads),
            &self.storage(decay),
            &st,
        ];
        let out = self.run(&[(kernel, &bufs, self.grid_1d(n)?)], &p, 0, n)?;
        Ok((out, readback::read(&self.ctx, &st, 0, state.len())?))
    }

    /// The running totals, starting at `start`, as a storage buffer.
    fn totals(&self, start: Acc) -> wgpu::Buffer {
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("runner acc"),
                contents: bytemuck::bytes_of(&start),
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            })
    }

    /// GPU twin of [`crate::cpu::loss_reduce`]: adds the batch to `start` and
    /// returns the new totals.
    #[allow(clippy::too_many_arguments)]
    pub fn loss_reduce(
        &self,
        a: &[f32],
        y: &[f32],
        batch: usize,
        n: usize,
        metric: Metric,
        loss: Loss,
        start: Acc,
    ) -> Result<Acc> {
        let mut d = dims(batch, 0, n, 0, 0);
        (d.metric, d.loss) = (metric as u32, loss as u32);
        let acc = self.totals(start);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.storage(a),
            &self.storage(y),
            &acc,
        ];
        // A single workgroup, which is what loss_reduce needs.
        let out: Vec<Acc> =
            self.run(&[(&self.kernels.loss_reduce, &bufs, (1, 1, 1))], &acc, 0, 1)?;
        Ok(out.first().copied().unwrap_or_default())
    }

    /// `delta_output_loss` then `loss_finish`, twin of
    /// [`crate::cpu::delta_output_loss`]: returns `delta (batch, n)` and the
    /// totals `start` plus this batch.
    #[allow(clippy::too_many_arguments)]
    pub fn delta_output_loss(
        &self,
        a: &[f32],
        y: &[f32],
        batch: usize,
        n: usize,
        metric: Metric,
        act: Activation,
        loss: Loss,
        start: Acc,
    ) -> Result<(Vec<f32>, Acc)> {
        let mut d = dims(batch, 0, n, 0, 0);
        (d.metric, d.act, d.loss) = (metric as u32, act as u32, loss as u32);
        let acc = self.totals(start);
        let delta = self.poisoned(batch * n);
        let groups = loss_groups(batch as u32, n as u32);
        // Poisoned too: a partial never written makes the loss NaN.
        let partials = self.poisoned(2 * groups as usize);
        let dims = self.dims_uniform(&d)?;
        let first = [&dims, &self.storage(a), &self.storage(y), &delta, &partials];
        let second = [&dims, &partials, &acc];
        let t = self.tiled()?;
        let grid = grid(groups as u64, self.max_dim(), || "loss groups".into())?;
        let steps: [Step<'_>; 2] = [
            (&t.delta_output_loss, &first, grid),
            (&t.loss_finish, &second, (1, 1, 1)),
        ];
        let out: Vec<Acc> = self.run(&steps, &acc, 0, 1)?;
        let delta = readback::read(&self.ctx, &delta, 0, batch * n)?;
        Ok((delta, out.first().copied().unwrap_or_default()))
    }

    /// `forward_output_loss_tiled`, twin of [`crate::cpu::forward_output_loss`]:
    /// the output layer `w (n_out, n_in)`, `b (n_out)` on `a_prev (batch,
    /// n_in)` against `y (batch, n_out)`. Returns `a` and `delta` (batch,
    /// n_out) and the totals `start` plus this batch. An error where the
    /// kernel is not built or one block does not hold a whole row (`n_out`
    /// over the tiles' `bn`), or if it left its counter nonzero.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_output_loss_tiled(
        &self,
        a_prev: &[f32],
        w: &[f32],
        b: &[f32],
        y: &[f32],
        (batch, n_in, n_out): (usize, usize, usize),
        metric: Metric,
        act: Activation,
        loss: Loss,
        start: Acc,
    ) -> Result<(Vec<f32>, Vec<f32>, Acc)> {
        let t = self.tiled()?.set(Product::Forward, 0);
        let kernel = t.forward_output_loss.as_ref().ok_or_else(|| {
            Error::Gpu("forward_output_loss_tiled does not fit this device".into())
        })?;
        if n_out > t.config.tiles.bn() as usize {
            return Err(Error::Invalid(format!(
                "forward_output_loss_tiled needs n_out ≤ {} (one block per row), got {n_out}",
                t.config.tiles.bn()
            )));
        }
        let lp = self.layer_params(w, b, n_in);
        let mut d = dims(batch, n_in, n_out, lp.w_off, lp.b_off);
        (d.metric, d.act, d.loss) = (metric as u32, act as u32, loss as u32);
        d.w_ld = lp.ld as u32;
        let acc = self.totals(start);
        let (a, delta) = (self.poisoned(batch * n_out), self.poisoned(batch * n_out));
        let partials = self.poisoned(2 * batch.div_ceil(t.config.tiles.bm() as usize));
        let counters = self.counters(1);
        let bufs = [
            &self.dims_uniform(&d)?,
            &self.storage(&lp.data),
            &self.storage(a_prev),
            &a,
            &self.storage(y),
            &delta,
            &partials,
            &acc,
            &counters,
        ];
        let grid = self.grid_tiled(batch, n_out, 1)?;
        let out: Vec<Acc> = self.run(&[(kernel, &bufs[..], grid)], &acc, 0, 1)?;
        self.counters_reset(&counters, 1)?;
        Ok((
            readback::read(&self.ctx, &a, 0, batch * n_out)?,
            readback::read(&self.ctx, &delta, 0, batch * n_out)?,
            out.first().copied().unwrap_or_default(),
        ))
    }
}

fn dims(batch: usize, n_in: usize, n_out: usize, w_off: usize, b_off: usize) -> Dims {
    Dims {
        rows: batch as u32,
        n_in: n_in as u32,
        n_out: n_out as u32,
        w_off: w_off as u32,
        b_off: b_off as u32,
        splits: 1,
        w_ld: n_in as u32,
        ..Dims::default()
    }
}
