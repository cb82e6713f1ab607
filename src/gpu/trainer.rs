//! The GPU trainer: persistent buffers and bind groups, made once; one
//! training step encodes every layer's forward, backward and update into a
//! single command encoder and submits once. Nothing is read back inside a step.

use super::context::GpuContext;
use super::kernels::{dispatch_1d, Acc, Dims, Kernels, SgdUniform};
use super::readback;
use crate::backend::{Backend, Metric, Totals};
use crate::cpu::{check_batch, check_layer};
use crate::network::{Network, Params};
use crate::{Error, Result};
use std::sync::Arc;
use wgpu::util::DeviceExt;

/// Bind groups of one dense layer `l` (between sizes `l` and `l + 1`).
struct LayerGroups {
    forward: wgpu::BindGroup,
    /// Hidden layers only: computes deltas[l + 1] from deltas[l + 2].
    delta_hidden: Option<wgpu::BindGroup>,
    gradient: wgpu::BindGroup,
}

/// [`Backend`] on a wgpu device, in f32.
pub struct GpuBackend {
    ctx: Arc<GpuContext>,
    kernels: Kernels,
    net: Network,
    capacity: usize,
    batch: usize,
    metric: Metric,
    lr: Option<f32>,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    /// acts[l]: (capacity, sizes[l]); acts[0] is the input batch.
    acts: Vec<wgpu::Buffer>,
    /// deltas[l]: (capacity, sizes[l]), l >= 1.
    deltas: Vec<wgpu::Buffer>,
    /// (capacity, outputs)
    y: wgpu::Buffer,
    acc: wgpu::Buffer,
    /// One Dims per dense layer.
    dims: Vec<wgpu::Buffer>,
    sgd: wgpu::Buffer,
    groups: Vec<LayerGroups>,
    delta_output: wgpu::BindGroup,
    loss: wgpu::BindGroup,
    sgd_group: wgpu::BindGroup,
    /// Commands recorded since the last submit.
    pending: Option<wgpu::CommandEncoder>,
}

impl GpuBackend {
    /// Buffers, pipelines and bind groups for `net` and batches of up to
    /// `capacity` samples, made once. Parameters start at zero.
    pub fn new(ctx: Arc<GpuContext>, net: &Network, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        let dev = &ctx.device;
        let max_binding = ctx.limits.max_storage_buffer_binding_size;
        let max_buffer = ctx.limits.max_buffer_size;
        let storage = |label: &str,
                       floats: usize,
                       extra: wgpu::BufferUsages|
         -> Result<wgpu::Buffer> {
            let bytes = (floats.max(1) * 4) as u64;
            if bytes > max_binding.min(max_buffer) {
                return Err(Error::Gpu(format!(
                    "{label} needs {bytes} bytes, over this device's limit of {} (max_storage_buffer_binding_size / max_buffer_size); use a smaller batch",
                    max_binding.min(max_buffer)
                )));
            }
            Ok(dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | extra,
                mapped_at_creation: false,
            }))
        };
        let copy_dst = wgpu::BufferUsages::COPY_DST;
        let none = wgpu::BufferUsages::empty();
        let params = storage("params", net.param_count(), copy_dst)?;
        let grads = storage("grads", net.param_count(), none)?;
        let acts = net
            .sizes()
            .iter()
            .enumerate()
            .map(|(l, &n)| {
                storage(
                    &format!("activations {l}"),
                    capacity * n,
                    if l == 0 { copy_dst } else { none },
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let deltas = net
            .sizes()
            .iter()
            .enumerate()
            .map(|(l, &n)| {
                storage(
                    &format!("deltas {l}"),
                    if l == 0 { 1 } else { capacity * n },
                    none,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let y = storage("targets", capacity * net.outputs(), copy_dst)?;
        let acc = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("loss totals"),
            contents: bytemuck::bytes_of(&Acc::default()),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | copy_dst,
        });
        let layers = net.layers();
        let dims: Vec<wgpu::Buffer> = (0..layers.len())
            .map(|l| {
                dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                    label: Some("dims"),
                    contents: bytemuck::bytes_of(&layer_dims(net, l, capacity, Metric::None)),
                    usage: wgpu::BufferUsages::UNIFORM | copy_dst,
                })
            })
            .collect();
        let sgd = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("sgd"),
            contents: bytemuck::bytes_of(&SgdUniform {
                count: net.param_count() as u32,
                lr: 0.0,
                _pad: [0; 2],
            }),
            usage: wgpu::BufferUsages::UNIFORM | copy_dst,
        });
        let kernels = Kernels::new(dev);
        let last = layers.len();
        let mut groups = Vec::with_capacity(last);
        for l in 0..last {
            groups.push(LayerGroups {
                forward: kernels
                    .forward_dense
                    .bind(dev, &[&dims[l], &params, &acts[l], &acts[l + 1]])?,
                delta_hidden: if l + 1 < last {
                    Some(kernels.delta_hidden.bind(
                        dev,
                        &[
                            &dims[l],
                            &params,
                            &deltas[l + 2],
                            &acts[l + 1],
                            &deltas[l + 1],
                        ],
                    )?)
                } else {
                    None
                },
                gradient: kernels
                    .gradient_weights
                    .bind(dev, &[&dims[l], &deltas[l + 1], &acts[l], &grads])?,
            });
        }
        let delta_output = kernels
            .delta_output
            .bind(dev, &[&dims[last - 1], &acts[last], &y, &deltas[last]])?;
        let loss = kernels
            .loss_reduce
            .bind(dev, &[&dims[last - 1], &acts[last], &y, &acc])?;
        let sgd_group = kernels.sgd_update.bind(dev, &[&sgd, &params, &grads])?;
        // Validation errors from creation surface here rather than at the first step.
        readback::finish(&ctx)?;
        Ok(GpuBackend {
            ctx,
            kernels,
            net: net.clone(),
            capacity,
            batch: 0,
            metric: Metric::None,
            lr: None,
            params,
            grads,
            acts,
            deltas,
            y,
            acc,
            dims,
            sgd,
            groups,
            delta_output,
            loss,
            sgd_group,
            pending: None,
        })
    }

    /// The device this backend runs on.
    pub fn context(&self) -> &Arc<GpuContext> {
        &self.ctx
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Rewrite every layer's Dims (batch size or metric changed).
    fn write_dims(&self) {
        for (l, buf) in self.dims.iter().enumerate() {
            let d = layer_dims(&self.net, l, self.batch, self.metric);
            self.ctx.queue.write_buffer(buf, 0, bytemuck::bytes_of(&d));
        }
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

    /// Submit what has been recorded, if anything. Does not wait.
    fn flush(&mut self) {
        if let Some(enc) = self.pending.take() {
            self.ctx.queue.submit([enc.finish()]);
        }
    }

    fn need_batch(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    fn read_floats(&mut self, buf_index: Which, count: usize) -> Result<Vec<f32>> {
        self.flush();
        let buf = match buf_index {
            Which::Params => &self.params,
            Which::Grads => &self.grads,
            Which::Act(l) => &self.acts[l],
            Which::Delta(l) => &self.deltas[l],
        };
        readback::read(&self.ctx, buf, 0, count)
    }
}

#[derive(Clone, Copy)]
enum Which {
    Params,
    Grads,
    Act(usize),
    Delta(usize),
}

/// Dims of dense layer `l` for a batch of `batch`.
fn layer_dims(net: &Network, l: usize, batch: usize, metric: Metric) -> Dims {
    let layers = net.layers();
    let ly = layers[l];
    let next = layers.get(l + 1);
    Dims {
        batch: batch as u32,
        n_in: ly.n_in as u32,
        n_out: ly.n_out as u32,
        w_off: ly.w_off as u32,
        b_off: ly.b_off as u32,
        n_next: next.map_or(0, |n| n.n_out as u32),
        w_next_off: next.map_or(0, |n| n.w_off as u32),
        metric: metric as u32,
    }
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
        self.flush();
        self.ctx
            .queue
            .write_buffer(&self.params, 0, bytemuck::cast_slice(&p.data));
        Ok(())
    }

    fn params(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Params, self.net.param_count())?;
        Params::from_vec(&self.net, data)
    }

    fn set_metric(&mut self, metric: Metric) -> Result<()> {
        if metric != self.metric {
            self.flush();
            self.metric = metric;
            self.write_dims();
        }
        Ok(())
    }

    fn load_batch(&mut self, x: &[f32], y: &[f32]) -> Result<()> {
        let batch = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.flush();
        if batch != self.batch {
            self.batch = batch;
            self.write_dims();
        }
        let q = &self.ctx.queue;
        q.write_buffer(&self.acts[0], 0, bytemuck::cast_slice(x));
        q.write_buffer(&self.y, 0, bytemuck::cast_slice(y));
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.need_batch()?;
        let (b, max) = (self.batch as u64, self.max_dim());
        let mut enc = self.encoder_take();
        let layers = self.net.layers();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("forward"),
                timestamp_writes: None,
            });
            for (l, ly) in layers.iter().enumerate() {
                dispatch_1d(
                    &mut pass,
                    &self.kernels.forward_dense,
                    &self.groups[l].forward,
                    b * ly.n_out as u64,
                    max,
                )?;
            }
            pass.set_pipeline(&self.kernels.loss_reduce.pipeline);
            pass.set_bind_group(0, &self.loss, &[]);
            pass.dispatch_workgroups(1, 1, 1);
        }
        self.pending = Some(enc);
        Ok(())
    }

    fn backward(&mut self) -> Result<()> {
        self.need_batch()?;
        let (b, max) = (self.batch as u64, self.max_dim());
        let mut enc = self.encoder_take();
        let layers = self.net.layers();
        let last = layers.len();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("backward"),
                timestamp_writes: None,
            });
            let k = &self.kernels;
            dispatch_1d(
                &mut pass,
                &k.delta_output,
                &self.delta_output,
                b * layers[last - 1].n_out as u64,
                max,
            )?;
            for l in (0..last - 1).rev() {
                if let Some(g) = &self.groups[l].delta_hidden {
                    dispatch_1d(
                        &mut pass,
                        &k.delta_hidden,
                        g,
                        b * layers[l].n_out as u64,
                        max,
                    )?;
                }
            }
            for (l, ly) in layers.iter().enumerate() {
                let g = &self.groups[l].gradient;
                dispatch_1d(
                    &mut pass,
                    &k.gradient_weights,
                    g,
                    (ly.n_out * ly.n_in) as u64,
                    max,
                )?;
                dispatch_1d(&mut pass, &k.gradient_bias, g, ly.n_out as u64, max)?;
            }
        }
        self.pending = Some(enc);
        Ok(())
    }

    fn update(&mut self, lr: f32) -> Result<()> {
        if self.lr != Some(lr) {
            // The write lands before this step's submit, after the previous one's.
            let u = SgdUniform {
                count: self.net.param_count() as u32,
                lr,
                _pad: [0; 2],
            };
            self.ctx
                .queue
                .write_buffer(&self.sgd, 0, bytemuck::bytes_of(&u));
            self.lr = Some(lr);
        }
        let max = self.max_dim();
        let mut enc = self.encoder_take();
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("update"),
                timestamp_writes: None,
            });
            dispatch_1d(
                &mut pass,
                &self.kernels.sgd_update,
                &self.sgd_group,
                self.net.param_count() as u64,
                max,
            )?;
        }
        self.pending = Some(enc);
        self.flush();
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.flush();
        readback::finish(&self.ctx)
    }

    fn take_totals(&mut self) -> Result<Totals> {
        self.flush();
        let acc: Vec<Acc> = readback::read(&self.ctx, &self.acc, 0, 1)?;
        self.ctx
            .queue
            .write_buffer(&self.acc, 0, bytemuck::bytes_of(&Acc::default()));
        let a = acc.first().copied().unwrap_or_default();
        Ok(Totals {
            loss_sum: a.loss_sum as f64,
            samples: a.samples as u64,
            correct: a.correct as u64,
        })
    }

    fn read_activations(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 0)?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Act(l), n)
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<f32>> {
        check_layer(&self.net, l, 1)?;
        let n = self.batch * self.net.sizes()[l];
        self.read_floats(Which::Delta(l), n)
    }

    fn read_gradients(&mut self) -> Result<Params<f32>> {
        let data = self.read_floats(Which::Grads, self.net.param_count())?;
        Params::from_vec(&self.net, data)
    }
}
