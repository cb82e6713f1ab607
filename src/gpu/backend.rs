//! [`GpuBackend`]: [`Backend`] on a wgpu device. It owns the persistent
//! buffers and bind groups (`gpu/buffers.rs`), records each step's
//! dispatches (`gpu/schedule.rs`) into one command encoder, and submits
//! once per step; nothing is read back inside a step.
//!
//! Two kernel sets ([`KernelSet`]): the simple kernels (one invocation per
//! output, the GPU reference twins) and the tiled ones, where `step` runs the
//! fused fast path (the update inside the gradient pass for plain SGD). Other
//! optimizers ([`crate::optim`], chosen by [`Backend::set_optimizer`]) store
//! the gradients and add one update dispatch in the same submission; their
//! state lives in one buffer, `v (P)` or `m (P)` then `v (P)`, and the update
//! count `t` stays on the host, which writes the step's bias corrections
//! `1 − β^t` with its learning rate once per step.
//!
//! Batches larger than the per-sample buffers hold (one storage binding, or
//! [`GpuOptions::max_chunk`]) run as fixed-order micro-batches: each is
//! uploaded and submitted in turn, its gradients added into `grads`, and one
//! update follows. At most [`MAX_IN_FLIGHT`] submissions are left unfinished,
//! so a loop that never reads back cannot queue without bound.
//!
//! Row counts: `capacity`, the largest batch `load_batch`
//! accepts; `buf.capacity`, the most rows the per-sample buffers hold (the
//! same unless the batch must run as micro-batches); `rows`, the rows of the
//! loaded batch; and `dims_rows`, the rows staged in the buffers now, which
//! every layer's Dims describes.
//!
//! ```no_run
//! use shadertrain::backend::Backend;
//! use shadertrain::gpu::{GpuBackend, GpuContext, KernelSet};
//! use shadertrain::network::Network;
//! let net = Network::parse("2,16,1")?;
//! let mut gpu = GpuBackend::with_kernel_set(GpuContext::new()?, &net, 4, KernelSet::Tiled)?;
//! gpu.set_params(&net.init(1))?;
//! gpu.load_batch(&[0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], &[0.0, 1.0, 1.0, 0.0])?;
//! gpu.step(2.0)?;
//! println!("loss {}", gpu.take_totals()?.loss());
//! # Ok::<(), shadertrain::Error>(())
//! ```

use super::buffers::{Buffers, Groups, UpdateBuffers};
use super::clip::Clipper;
use super::context::{create_buffer, creating, GpuContext};
use super::dropout::Dropout;
use super::kernels::{
    dispatch, Acc, BatchUniform, Kernels, OptimUniform, StepUniform, TiledKernels,
};
use super::options::{buffer_capacity, GpuOptions, KernelSet};
use super::plan::{KernelPlan, Product, Source};
use super::readback;
use super::schedule::{step_stages, Schedule, Stage, BACKWARD_ALONE};
use super::whole_step::WholeStep;
use crate::backend::{check_batch, check_layer};
use crate::backend::{Backend, Metric, Totals};
use crate::error::{Error, Result};
use crate::network::{Network, Params};
use crate::optim::{check_state_len, Optimizer};
use std::collections::VecDeque;
use std::sync::Arc;

/// Submissions a backend leaves unfinished before it waits for the oldest.
pub const MAX_IN_FLIGHT: usize = 3;

/// [`Backend`] on a wgpu device, in f32.
///
/// With [`KernelSet::Tiled`] (the default) and plain SGD, `step` on a batch
/// that fits one micro-batch applies the update inside the gradient pass and
/// leaves `grads` alone: `read_gradients` returns the gradients of the last `backward`.
/// Activations and deltas of a batch split into micro-batches are not kept.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    tiled: Option<TiledKernels>,
    /// What it runs: the tiled kernels' plan, or the simple set's.
    plan: KernelPlan,
    net: Network,
    /// The largest batch `load_batch` accepts ([`Backend::capacity`]); one
    /// over `buf.capacity` rows runs as micro-batches of that many.
    capacity: usize,
    /// Rows of the loaded batch; 0 before the first.
    rows: usize,
    /// Rows the Dims and `splits` are written for: those staged in the
    /// per-sample buffers (`rows`, or one micro-batch's).
    dims_rows: usize,
    /// K slices of each layer's tiled gradient at `dims_rows` rows.
    splits: Vec<u32>,
    metric: Metric,
    /// A batch over `buf.capacity`, kept to upload micro-batch by micro-batch: x, y.
    host: Option<(Vec<f32>, Vec<f32>)>,
    buf: Buffers,
    groups: Groups,
    optim: Optimizer,
    /// Updates applied since the optimizer was set.
    t: u64,
    /// The buffers of a stateful update; `None` for plain SGD.
    update: Option<UpdateBuffers>,
    /// Gradient clipping at the head of the update, if the optimizer clips.
    clip: Option<Clipper>,
    /// Dropout's kernel and buffers, if the network drops.
    dropout: Option<Dropout>,
    /// The step in one dispatch, where the options ask and the network fits.
    whole: Option<WholeStep>,
    /// Seeds the dropout masks.
    dropout_seed: u64,
    /// Recording a training pass (dropout on): the update whose masks it
    /// draws, and the staged batch's first row in the step's whole batch
    /// (a data-parallel shard's offset; 0 for a whole step).
    training: Option<(u64, usize)>,
    /// Commands recorded since the last submit.
    pending: Option<wgpu::CommandEncoder>,
    /// Submissions not yet known to be finished, oldest first.
    in_flight: VecDeque<wgpu::SubmissionIndex>,
}

/// Timestamp queries of a profiled step: two per dispatch, and its labels.
struct Profile {
    queries: wgpu::QuerySet,
    /// Where the queries are resolved: (2·count) u64 ticks.
    ticks: wgpu::Buffer,
    /// Dispatches profiled.
    count: u32,
    labels: Vec<String>,
}

/// A buffer `read_floats` reads.
#[derive(Clone, Copy)]
enum Which {
    Params,
    Grads,
    Act(usize),
    Delta(usize),
    State,
}

impl GpuBackend {
    /// Buffers, pipelines and bind groups for `net` and batches of up to
    /// `capacity` samples, made once, running [`GpuOptions::default`]: the
    /// tiled kernels, each product's configuration from the tuning cache or
    /// the heuristic.
    /// Parameters start at zero.
    pub fn new(ctx: Arc<GpuContext>, net: &Network, capacity: usize) -> Result<Self> {
        let options = GpuOptions::default();
        Self::with_options(ctx, net, capacity, options)
    }

    /// As [`GpuBackend::new`], running the given kernel set (the tuning
    /// cache's configurations, never its choice of set).
    pub fn with_kernel_set(
        ctx: Arc<GpuContext>,
        net: &Network,
        capacity: usize,
        kernels: KernelSet,
    ) -> Result<Self> {
        let options = GpuOptions {
            kernels,
            tune_kernel_set: false,
            ..GpuOptions::default()
        };
        Self::with_options(ctx, net, capacity, options)
    }

    /// As [`GpuBackend::new`], built as `options` says.
    pub fn with_options(
        ctx: Arc<GpuContext>,
        net: &Network,
        capacity: usize,
        options: GpuOptions,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        // A device already lost or spoiled fails here, not at the first step.
        ctx.check_errors()?;
        let held = buffer_capacity(&ctx, net, capacity, &options)?;
        let (plan, tiled) = compile(&ctx, net, (capacity, held), &options)?;
        let buf = Buffers::new(&ctx, net, held, tiled.as_ref())?;
        let kernels = Kernels::new(&ctx, options.checked)?;
        let groups = Groups::new(&ctx.device, net, &kernels, tiled.as_ref(), &buf)?;
        // Every configuration's hidden-delta kernel shares one layout.
        let delta_hidden = tiled
            .as_ref()
            .map_or(&kernels.delta_hidden, |t| t.product(Product::Delta, 0).0);
        let dropout = Dropout::new(&ctx, net, &buf, delta_hidden)?;
        let whole = match (&tiled, options.whole_step) {
            (Some(_), true) => WholeStep::new(&ctx, net, &buf, options.checked)?,
            _ => None,
        };
        let mut backend = GpuBackend {
            ctx,
            kernels,
            tiled,
            plan,
            net: net.clone(),
            capacity,
            rows: 0,
            dims_rows: held,
            splits: vec![1; net.layers().len()],
            metric: Metric::None,
            host: None,
            buf,
            groups,
            optim: Optimizer::default(),
            t: 0,
            update: None,
            clip: None,
            dropout,
            whole,
            dropout_seed: 0,
            training: None,
            pending: None,
            in_flight: VecDeque::new(),
        };
        backend.check_largest_grids()?;
        // Validation errors from creation surface here rather than at the first step.
        readback::finish(&backend.ctx)?;
        // What the driver compiled is kept for the next run.
        backend.ctx.save_pipelines();
        Ok(backend)
    }

    /// Stage a full micro-batch's shape and plan every stage once, so grids
    /// the device cannot dispatch fail at construction.
    fn check_largest_grids(&mut self) -> Result<()> {
        self.set_dims_rows(self.buf.capacity);
        let stages = [Stage::Forward { loss: true }, BACKWARD_ALONE, Stage::Update];
        stages
            .into_iter()
            .try_for_each(|stage| self.schedule().plan(stage, &mut |_| Ok(())))
    }

    /// Every padding float of the device layout ([`super::layout`]) in
    /// params, grads and each part of the optimizer state, in that order:
    /// zero after any steps, which the tests check. Test scaffolding.
    #[doc(hidden)]
    pub fn device_padding(&mut self) -> Result<Vec<f32>> {
        let (n, pad) = (self.buf.layout.len(), self.buf.layout.padding());
        let mut out = Vec::new();
        for which in [Which::Params, Which::Grads] {
            let data = self.read_floats(which, n)?;
            out.extend(pad.iter().map(|&i| data[i]));
        }
        let parts = self.optim.state_len(1);
        if parts > 0 {
            let state = self.read_floats(Which::State, parts * n)?;
            for part in state.chunks(n) {
                out.extend(pad.iter().map(|&i| part[i]));
            }
        }
        Ok(out)
    }

    /// Dispatches one `step` of the loaded batch records (per micro-batch
    /// for a split batch, plus its update); the full batch's before one is loaded.
    pub fn dispatches_per_step(&self) -> Result<usize> {
        let mut n = 0;
        for &stage in self.step_stages() {
            self.schedule().plan(stage, &mut |_| {
                n += 1;
                Ok(())
            })?;
        }
        Ok(n)
    }

    /// Whether its modules were built with naga's runtime checks
    /// ([`GpuOptions::checked`]).
    pub fn checked(&self) -> bool {
        self.kernels.forward_dense.checked
    }

    /// Its device's pipeline cache ([`super::pipeline_cache`]): `read`
    /// (pipelines from an earlier run handed to the driver), `written`
    /// (kept on disk for the next), `memory` (no cache directory) or `off`
    /// (the device lacks `PIPELINE_CACHE`, or `SHADERTRAIN_PIPELINE_CACHE=off`).
    pub fn pipeline_cache(&self) -> &'static str {
        use super::pipeline_cache::Loaded;
        match self.ctx.pipelines() {
            None => "off",
            Some(p) if p.path().is_none() => "memory",
            Some(p) if p.loaded() == Loaded::Read => "read",
            Some(_) => "written",
        }
    }

    /// The kernel set it runs.
    pub fn kernel_set(&self) -> KernelSet {
        match self.tiled {
            Some(_) => KernelSet::Tiled,
            None => KernelSet::Simple,
        }
    }

    /// What it runs and where that came from: the configuration of each
    /// tiled product, or the simple set ([`KernelPlan::simple`]).
    pub fn kernel_plan(&self) -> &KernelPlan {
        &self.plan
    }

    /// K slices of each layer's tiled gradient at the rows staged now (1
    /// for none, and for the simple set).
    pub fn gradient_splits(&self) -> &[u32] {
        &self.splits
    }

    /// Samples per micro-batch, the rows its per-sample buffers hold: larger
    /// batches are split into micro-batches of this many.
    pub fn micro_batch(&self) -> usize {
        self.buf.capacity
    }

    /// One training step, as [`Backend::step`], with every dispatch in its own
    /// compute pass between timestamp queries: returns `(kernel, milliseconds)`
    /// per dispatch in order, the kernel named by its entry point and layer, or
    /// `None` where the device has no timestamp queries. The batch must fit
    /// one micro-batch.
    pub fn profile_step(&mut self, lr: f32) -> Result<Option<Vec<(String, f64)>>> {
        let features = self.ctx.device.features();
        if !features.contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Ok(None);
        }
        self.one_submission("profile_step")?;
        self.write_step(lr);
        let stages = self.step_stages();
        let mut profile = self.profile_for(stages)?;
        let count = profile.count;
        let mut enc = self.encoder_take();
        for &stage in stages {
            self.record_into(&mut enc, stage, Some(&mut profile))?;
        }
        enc.resolve_query_set(&profile.queries, 0..2 * count, &profile.ticks, 0);
        self.pending = Some(enc);
        self.flush()?;
        let ticks: Vec<u64> = readback::read(&self.ctx, &profile.ticks, 0, 2 * count as usize)?;
        self.in_flight.clear();
        let ns = self.ctx.queue.get_timestamp_period() as f64;
        Ok(Some(
            profile
                .labels
                .into_iter()
                .zip(ticks.chunks_exact(2))
                .map(|(label, t)| (label, t[1].saturating_sub(t[0]) as f64 * ns / 1e6))
                .collect(),
        ))
    }

    /// One training step, each dispatch timed: by [`GpuBackend::profile_step`]
    /// where the device has timestamp queries, else each dispatch submitted
    /// on its own and timed by the wall clock until the device finishes it.
    /// Returns `(kernel layer l, milliseconds)` per dispatch in order.
    pub fn time_dispatches(&mut self, lr: f32) -> Result<Vec<(String, f64)>> {
        match self.profile_step(lr)? {
            Some(p) => Ok(p),
            None => self.time_dispatches_by_clock(lr),
        }
    }

    /// One training step, each dispatch submitted on its own and timed by
    /// the wall clock until the device finishes it (timestamps or not).
    /// Returns `(kernel layer l, milliseconds)` per dispatch in order.
    pub fn time_dispatches_by_clock(&mut self, lr: f32) -> Result<Vec<(String, f64)>> {
        self.one_submission("time_dispatches")?;
        self.write_step(lr);
        self.flush()?;
        readback::finish(&self.ctx)?;
        self.in_flight.clear();
        let ctx = &self.ctx;
        let mut out = Vec::new();
        for &stage in self.step_stages() {
            self.schedule().plan(stage, &mut |d| {
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = enc.begin_compute_pass(&Default::default());
                    dispatch(&mut pass, d.kernel, d.group, d.grid);
                }
                let start = std::time::Instant::now();
                let index = ctx.queue.submit([enc.finish()]);
                readback::wait_for(ctx, index)?;
                out.push((d.label(), start.elapsed().as_secs_f64() * 1e3));
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// A loaded batch that runs as one submission, which `what` times.
    fn one_submission(&self, what: &str) -> Result<()> {
        self.need_batch()?;
        if self.host.is_some() {
            return Err(Error::Invalid(format!(
                "{what} times one submission; this batch of {} runs as micro-batches of {}",
                self.rows, self.buf.capacity
            )));
        }
        Ok(())
    }

    /// Two timestamp queries for every dispatch of `stages`, a buffer to
    /// resolve them into, and room for that many labels.
    fn profile_for(&self, stages: &[Stage]) -> Result<Profile> {
        let mut count = 0u32;
        for &stage in stages {
            self.schedule().plan(stage, &mut |_| {
                count += 1;
                Ok(())
            })?;
        }
        let dev = &self.ctx.device;
        let queries = creating(dev, "the query set of profile_step", || {
            dev.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile_step"),
                ty: wgpu::QueryType::Timestamp,
                count: 2 * count,
            })
        })?;
        let ticks = create_buffer(
            dev,
            &wgpu::BufferDescriptor {
                label: Some("profile_step ticks"),
                size: 16 * count as u64,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            },
        )?;
        Ok(Profile {
            queries,
            ticks,
            count,
            labels: Vec::with_capacity(count as usize),
        })
    }

    /// What the next dispatches depend on, for the rows staged now.
    fn schedule(&self) -> Schedule<'_> {
        Schedule {
            kernels: &self.kernels,
            tiled: self.tiled.as_ref(),
            groups: &self.groups,
            update: self.update.as_ref(),
            clip: self.clip.as_ref(),
            dropout: self.dropout.as_ref().filter(|_| self.training.is_some()),
            whole: self.whole.as_ref(),
            net: &self.net,
            params: self.buf.layout.len(),
            rows: self.dims_rows,
            splits: &self.splits,
            max_dim: self.ctx.limits.max_compute_workgroups_per_dimension,
        }
    }

    /// The stages of a step for the loaded batch and optimizer.
    fn step_stages(&self) -> &'static [Stage] {
        // Clipping needs the gradients stored, like a stateful optimizer.
        step_stages(
            self.tiled.is_some(),
            self.host.is_some(),
            self.update.is_some() || self.clip.is_some(),
            self.whole.is_some(),
        )
    }

    /// Make `rows` the rows staged in the per-sample buffers: the split-K
    /// slices and every layer's Dims follow.
    fn set_dims_rows(&mut self, rows: usize) {
        self.dims_rows = rows;
        if self.tiled.is_some() {
            let (device, limits) = (self.ctx.info.device_type, &self.ctx.limits);
            let slices = self.plan.gradient_slices(&self.net, rows, device, limits);
            for (s, k) in self.splits.iter_mut().zip(slices) {
                *s = k;
            }
        }
        self.write_dims();
    }

    /// Rewrite every layer's Dims (staged rows, metric or splits changed).
    fn write_dims(&self) {
        let (net, metric) = (&self.net, self.metric);
        (self.buf).write_dims(&self.ctx, net, self.dims_rows, metric, &self.splits);
    }

    /// Count one update and write what only it changes, once: the learning
    /// rate and the bias corrections for update `t`. The write lands before
    /// the next submit, after the previous one's.
    fn write_step(&mut self, lr: f32) {
        self.t += 1;
        let terms = self.optim.terms::<f32>(lr, self.t);
        let u = StepUniform::new(&terms);
        (self.ctx.queue).write_buffer(&self.buf.per_step, 0, bytemuck::bytes_of(&u));
    }

    /// Record `stage` into `enc`: one compute pass, or with `profile` one
    /// pass per dispatch between two timestamp queries.
    fn record_into(
        &self,
        enc: &mut wgpu::CommandEncoder,
        stage: Stage,
        profile: Option<&mut Profile>,
    ) -> Result<()> {
        let Some(profile) = profile else {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(stage.label()),
                timestamp_writes: None,
            });
            return self.schedule().plan(stage, &mut |d| {
                dispatch(&mut pass, d.kernel, d.group, d.grid);
                Ok(())
            });
        };
        self.schedule().plan(stage, &mut |d| {
            let i = 2 * profile.labels.len() as u32;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(d.kernel.spec.entry),
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &profile.queries,
                    beginning_of_pass_write_index: Some(i),
                    end_of_pass_write_index: Some(i + 1),
                }),
            });
            dispatch(&mut pass, d.kernel, d.group, d.grid);
            profile.labels.push(d.label());
            Ok(())
        })
    }

    /// Record `stage` into this step's encoder. A half-recorded step is
    /// dropped, not submitted.
    fn record(&mut self, stage: Stage) -> Result<()> {
        let mut enc = self.encoder_take();
        self.record_into(&mut enc, stage, None)?;
        self.pending = Some(enc);
        Ok(())
    }

    /// Record `stages` for the loaded batch: straight into this step's
    /// encoder, or for a batch kept on the host, micro-batch by micro-batch
    /// in order, each uploaded and submitted before the next.
    fn run(&mut self, stages: &[Stage]) -> Result<()> {
        let Some((x, y)) = self.host.take() else {
            return stages.iter().try_for_each(|&s| self.record(s));
        };
        let (ni, no) = (self.net.inputs(), self.net.outputs());
        let mut done = Ok(());
        for lo in (0..self.rows).step_by(self.buf.capacity) {
            let hi = (lo + self.buf.capacity).min(self.rows);
            if hi - lo != self.dims_rows {
                self.set_dims_rows(hi - lo);
            }
            self.upload(&x[lo * ni..hi * ni], &y[lo * no..hi * no]);
            self.write_dropout(lo);
            done = stages
                .iter()
                .try_for_each(|&s| self.record(s))
                .and_then(|_| self.flush());
            if done.is_err() {
                break;
            }
        }
        self.host = Some((x, y));
        done
    }

    /// In a training step, the dropout uniforms for the staged rows, which
    /// start at row `row0` of the batch; lands before the next submit.
    fn write_dropout(&self, row0: usize) {
        if let (Some(d), Some((t, first))) = (&self.dropout, self.training) {
            d.write(
                &self.ctx,
                self.dropout_seed,
                t,
                self.dims_rows,
                first + row0,
            );
        }
    }

    /// Write rows of inputs and targets into the per-sample buffers.
    fn upload(&self, x: &[f32], y: &[f32]) {
        let q = &self.ctx.queue;
        q.write_buffer(&self.buf.acts[0], 0, bytemuck::cast_slice(x));
        q.write_buffer(&self.buf.y, 0, bytemuck::cast_slice(y));
    }

    /// Zero the gradients before micro-batches add into them.
    fn clear_grads(&mut self) {
        let mut enc = self.encoder_take();
        enc.clear_buffer(&self.buf.grads, 0, None);
        self.pending = Some(enc);
    }

    /// The open encoder for this step (made on first use), taken out so the
    /// bind groups can be borrowed while recording; put it back in `pending`.
    fn encoder_take(&mut self) -> wgpu::CommandEncoder {
        self.pending.take().unwrap_or_else(|| {
            self.ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                    label: Some("train step"),
                })
        })
    }

    /// Submit what has been recorded, if anything, without waiting for it;
    /// but with more than [`MAX_IN_FLIGHT`] submissions unfinished, wait for
    /// the oldest first.
    /// A GPU error recorded since (a failed submission, a lost device)
    /// fails this and every later call rather than letting work pile up.
    fn flush(&mut self) -> Result<()> {
        self.ctx.check_errors()?;
        if let Some(enc) = self.pending.take() {
            self.in_flight
                .push_back(self.ctx.queue.submit([enc.finish()]));
        }
        while self.in_flight.len() > MAX_IN_FLIGHT {
            if let Some(oldest) = self.in_flight.pop_front() {
                readback::wait_for(&self.ctx, oldest)?;
            }
        }
        Ok(())
    }

    fn need_batch(&self) -> Result<()> {
        if self.rows == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    /// Activations and deltas of a batch are on the device only when it fits one micro-batch.
    fn need_whole_batch(&self, what: &str) -> Result<()> {
        if self.host.is_some() {
            return Err(Error::Invalid(format!(
                "the {what} of a batch of {} are not kept: it runs as micro-batches of {}",
                self.rows, self.buf.capacity
            )));
        }
        Ok(())
    }

    /// Wait for every submission, then read `count` floats of `which`.
    fn read_floats(&mut self, which: Which, count: usize) -> Result<Vec<f32>> {
        self.flush()?;
        let buf = match which {
            Which::Params => &self.buf.params,
            Which::Grads => &self.buf.grads,
            Which::Act(l) => &self.buf.acts[l],
            Which::Delta(l) => &self.buf.deltas[l],
            Which::State => match &self.update {
                Some(u) => &u.state,
                None => return Ok(Vec::new()),
            },
        };
        let out = readback::read(&self.ctx, buf, 0, count);
        // A read waits for every submission.
        self.in_flight.clear();
        out
    }
}

/// The plan `options` asks for at `capacity` rows in micro-batches of
/// `held` ([`super::tune::resolve_plan`]), and its tiled kernels unless it
/// runs the simple set. A measured choice of the simple set (the cache's)
/// gives way to its tiled choices where the batch runs as micro-batches,
/// which the simple set cannot, and where the network fits the whole-step
/// kernel, which runs only beside the tiled set and does a plain SGD step in
/// one dispatch (the tuner weighs the simple set against the tiled step).
fn compile(
    ctx: &Arc<GpuContext>,
    net: &Network,
    (capacity, held): (usize, usize),
    options: &GpuOptions,
) -> Result<(KernelPlan, Option<TiledKernels>)> {
    let plan = match options.kernels {
        KernelSet::Simple => (options.plan.clone())
            .filter(|p| p.simple().is_some())
            .unwrap_or_else(|| KernelPlan::simple_set(net, Source::Given)),
        KernelSet::Tiled => super::tune::resolve_plan(ctx, net, held, options)?,
    };
    let plan = match plan.simple() {
        Some(Source::Cache | Source::Tuned)
            if held < capacity
                || (options.whole_step && super::whole_step::fits(net, held, &ctx.limits)) =>
        {
            plan.tiled()
        }
        Some(Source::Given | Source::Heuristic) if options.kernels == KernelSet::Tiled => {
            return Err(Error::Invalid(
                "a plan of the simple kernel set runs with KernelSet::Simple (GpuOptions::with_plan sets it)".into(),
            ))
        }
        _ => plan,
    };
    if plan.simple().is_some() {
        return Ok((plan, None));
    }
    let tiled = TiledKernels::with_plan(ctx, &plan, options.checked)?;
    Ok((plan, Some(tiled)))
}

impl Backend for GpuBackend {
    type Scalar = f32;

    fn describe(&self) -> String {
        self.ctx.describe()
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn set_params(&mut self, p: &Params<f32>) -> Result<()> {
        if p.network() != &self.net {
            return Err(Error::Shape(format!(
                "parameters for {} given to a {} backend",
                p.network().describe(),
                self.net.describe()
            )));
        }
        // Queue writes land before the next submit, so recorded work must go first.
        self.flush()?;
        let data = self.buf.layout.to_device(&p.data);
        (self.ctx.queue).write_buffer(&self.buf.params, 0, bytemuck::cast_slice(&data));
        Ok(())
    }

    fn params(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Params, self.buf.layout.len())?;
        Params::from_vec(&self.net, self.buf.layout.to_flat(&data))
    }

    fn set_metric(&mut self, metric: Metric) -> Result<()> {
        if metric != self.metric {
            self.flush()?;
            self.metric = metric;
            self.write_dims();
        }
        Ok(())
    }

    /// Stage the batch: on the device when it fits the buffers, else kept on
    /// the host for `run` to upload. Writes the per-batch uniform only.
    fn load_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let rows = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.flush()?;
        if rows > self.buf.capacity {
            // The host copies are reused from batch to batch.
            let (hx, hy) = self.host.get_or_insert_with(Default::default);
            hx.clear();
            hx.extend_from_slice(x);
            hy.clear();
            hy.extend_from_slice(y);
        } else {
            self.host = None;
            if rows != self.dims_rows {
                self.set_dims_rows(rows);
            }
            self.upload(x, y);
        }
        self.rows = rows;
        // 1/B of the whole batch; micro-batches accumulate.
        let u = BatchUniform::new(rows, self.host.is_some());
        (self.ctx.queue).write_buffer(&self.buf.per_batch, 0, bytemuck::bytes_of(&u));
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.need_batch()?;
        self.run(&[Stage::Forward { loss: true }])
    }

    fn backward(&mut self) -> Result<()> {
        self.need_batch()?;
        if self.host.is_none() {
            return self.run(&[BACKWARD_ALONE]);
        }
        // Each micro-batch's activations again (the loss is not counted twice).
        self.clear_grads();
        self.run(&[Stage::Forward { loss: false }, BACKWARD_ALONE])
    }

    fn update(&mut self, lr: f32) -> Result<()> {
        self.write_step(lr);
        self.record(Stage::Update)?;
        self.flush()
    }

    fn set_gradients(&mut self, g: &Params<f32>) -> Result<()> {
        crate::backend::check_params(&self.net, g)?;
        // Queue writes land before the next submit, so recorded work must go first.
        self.flush()?;
        let data = self.buf.layout.to_device(&g.data);
        (self.ctx.queue).write_buffer(&self.buf.grads, 0, bytemuck::cast_slice(&data));
        Ok(())
    }

    fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
        opt.validate()?;
        // Recorded work runs with the old buffers.
        self.flush()?;
        let kernel = &self.kernels.momentum_update;
        self.update = UpdateBuffers::new(&self.ctx, &self.net, opt, kernel, &self.buf)?;
        self.clip = match opt.clip_norm {
            Some(c) => Some(Clipper::new(
                &self.ctx,
                &self.buf.grads,
                self.buf.layout.len(),
                c,
            )?),
            None => None,
        };
        // The constants; lr and the bias corrections are written per step.
        let constants = OptimUniform::new(self.buf.layout.len(), &opt.terms(0.0, 0));
        (self.ctx.queue).write_buffer(&self.buf.hyper, 0, bytemuck::bytes_of(&constants));
        self.optim = *opt;
        self.t = 0;
        Ok(())
    }

    fn optimizer_state(&mut self) -> Result<(u64, Vec<f32>)> {
        // State as parameter-shaped pieces: momentum v, Adam m then v.
        let layout = &self.buf.layout;
        let parts = self.optim.state_len(1);
        if parts == 0 {
            return Ok((self.t, Vec::new()));
        }
        let n = self.optim.state_len(layout.len());
        let state = self.read_floats(Which::State, n)?;
        Ok((self.t, self.buf.layout.to_flat_parts(&state, parts)))
    }

    fn set_optimizer_state(&mut self, t: u64, state: &[f32]) -> Result<()> {
        check_state_len(&self.optim, self.net.param_count(), state.len())?;
        self.flush()?;
        if let Some(u) = &self.update {
            let parts = self.optim.state_len(1);
            let state = self.buf.layout.to_device_parts(state, parts);
            (self.ctx.queue).write_buffer(&u.state, 0, bytemuck::cast_slice(&state));
        }
        self.t = t;
        Ok(())
    }

    /// Tiled: forward with the output delta and loss fused, then the deltas
    /// with each layer's update fused into its gradient pass (other
    /// optimizers: the gradients, then their update); one submission (one per
    /// micro-batch, then the update, for a split batch).
    fn step(&mut self, lr: f32) -> Result<()> {
        self.need_batch()?;
        self.write_step(lr);
        let stages = self.step_stages();
        if self.host.is_some() {
            self.clear_grads();
        }
        self.training = Some((self.t, 0));
        self.write_dropout(0);
        let ran = self.run(stages);
        self.training = None;
        ran?;
        if self.host.is_some() {
            self.record(Stage::Update)?;
        }
        self.flush()
    }

    /// A step's stages without the update: the forward (loss counted), then
    /// the deltas and gradients into grads, accumulated over micro-batches.
    fn train_pass(&mut self, row0: usize) -> Result<()> {
        self.need_batch()?;
        let stages = step_stages(self.tiled.is_some(), true, true, false);
        let n = stages.iter().take_while(|&&s| s != Stage::Update).count();
        if self.host.is_some() {
            self.clear_grads();
        }
        self.training = Some((self.t + 1, row0));
        self.write_dropout(0);
        let ran = self.run(&stages[..n]);
        self.training = None;
        ran?;
        self.flush()
    }

    fn set_dropout_seed(&mut self, seed: u64) -> Result<()> {
        self.dropout_seed = seed;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.flush()?;
        self.in_flight.clear();
        readback::finish(&self.ctx)
    }

    fn take_totals(&mut self) -> Result<Totals> {
        let t = self.peek_totals()?;
        let zero = Acc::default();
        (self.ctx.queue).write_buffer(&self.buf.acc, 0, bytemuck::bytes_of(&zero));
        if let Some(c) = &self.clip {
            c.reset(&self.ctx);
        }
        Ok(t)
    }

    fn peek_totals(&mut self) -> Result<Totals> {
        self.flush()?;
        let (acc, staging) = (&self.buf.acc, &self.buf.acc_staging);
        let acc: Vec<Acc> = readback::read_via(&self.ctx, acc, 0, staging, 1)?;
        self.in_flight.clear();
        let a = acc.first().copied().unwrap_or_default();
        let clipped = match &self.clip {
            Some(c) => c.stats(&self.ctx)?.fired as u64,
            None => 0,
        };
        Ok(Totals {
            loss_sum: a.loss(),
            loss_fn: self.net.loss(),
            samples: a.samples as u64,
            correct: a.correct as u64,
            clipped,
        })
    }

    fn read_activations(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 0)?;
        self.need_whole_batch("activations")?;
        let n = self.rows * self.net.sizes()[l];
        self.read_floats(Which::Act(l), n)
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 1)?;
        self.need_whole_batch("deltas")?;
        let n = self.rows * self.net.sizes()[l];
        self.read_floats(Which::Delta(l), n)
    }

    fn read_gradients(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Grads, self.buf.layout.len())?;
        Params::from_vec(&self.net, self.buf.layout.to_flat(&data))
    }

    fn on_gpu(&self) -> bool {
        true
    }

    fn kernels(&self) -> Option<super::KernelReport> {
        let plan = self.kernel_plan();
        let (rows, checked) = (self.micro_batch(), self.checked());
        let whole = self.whole.is_some();
        Some(super::KernelReport::new(
            &self.net, plan, rows, checked, whole,
        ))
    }
}
