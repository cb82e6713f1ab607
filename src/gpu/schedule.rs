//! What one training step dispatches, in order: read this file to know what
//! runs on the device. Nothing here records or submits; [`Schedule::plan`]
//! hands each [`Dispatch`] of a [`Stage`] to a callback (the backend records
//! it, or only counts it).
//!
//! A step is three stages ([`step_stages`]):
//! 1. **Forward**: per layer `a[l + 1] = f(a[l]·Wᵀ + b)` (in a training
//!    step, then `dropout_apply` on a dropout layer's outputs, or
//!    `dropout_keep`, which keeps a sigmoid or tanh layer's), softmax on the
//!    output row if the network has one, then the loss into the totals
//!    (tiled: fused with the output delta; where one block holds a whole
//!    output row, the output layer, softmax, delta and loss are one dispatch,
//!    `forward_output_loss_tiled`).
//! 2. **Backward**: the output delta (unless the forward wrote it), the hidden
//!    deltas from the top down (each dropout layer's followed by
//!    `dropout_apply`, the same mask; `f'` from the kept outputs where
//!    kept), and every layer's gradient. Tiled, layer by
//!    layer from the top: the delta below (from the old `W`), then the
//!    gradient, with plain SGD applied in the same pass (split K: the last
//!    slice of each block adds the slices, in the same dispatch).
//! 3. **Update**: with gradient clipping, first its three dispatches over the
//!    gradients (`clip_partial`, `clip_finish`, `clip_apply`: the global
//!    norm in a fixed order, then the scale); then one dispatch over the flat
//!    parameter buffer (`sgd_update`, `momentum_update` or `adam_update`);
//!    absent where the tiled gradient pass applied SGD itself, and after the
//!    last micro-batch of a split batch.
//!
//! A tiny network's fused step (plain SGD, one micro-batch) is one stage
//! instead, [`Stage::Whole`]: `whole_step_L`, one workgroup computing all of
//! the above in the same order (`gpu/whole_step.rs`).

use super::buffers::{Groups, UpdateBuffers};
use super::clip::Clipper;
use super::dropout::Dropout;
use super::kernels::{
    grid, grid_1d, grid_tiled, loss_groups, Grid, Kernel, Kernels, TileConfig, TiledKernels,
};
use super::plan::Product;
use super::whole_step::WholeStep;
use crate::error::{Error, Result};
use crate::network::Network;

/// The parts of a step, as recorded into command encoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Every layer's activations; with `loss` the loss too (tiled: and the
    /// output delta).
    Forward { loss: bool },
    /// The deltas, starting with `delta_output` unless the tiled forward wrote
    /// the output delta, and the gradients: into grads, or with `fused`
    /// applied to the parameters at once (tiled).
    Backward { delta_output: bool, fused: bool },
    /// The optimizer's update of every parameter from grads.
    Update,
    /// Forward, loss, deltas and the SGD update in one dispatch (tiny nets).
    Whole,
}

impl Stage {
    /// The compute pass's label.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Forward { .. } => "forward",
            Stage::Backward { .. } => "backward",
            Stage::Update => "update",
            Stage::Whole => "step",
        }
    }
}

const FORWARD: Stage = Stage::Forward { loss: true };
/// Tiled: the forward already wrote the output delta.
const BACKWARD: Stage = Stage::Backward {
    delta_output: false,
    fused: false,
};
const FUSED: Stage = Stage::Backward {
    delta_output: false,
    fused: true,
};
/// `backward` on its own, and the simple kernels' step.
pub(super) const BACKWARD_ALONE: Stage = Stage::Backward {
    delta_output: true,
    fused: false,
};

/// The stages of a step: `tiled` and in one submission, the update fused into
/// the gradient pass (plain SGD; with `whole`, the whole step in one
/// dispatch) or run after it (a `stateful` optimizer); `split` into
/// micro-batches, the gradients accumulated, with the one update recorded by
/// the caller after the last. (Constant lists: a step allocates nothing on
/// the host.)
pub(super) fn step_stages(
    tiled: bool,
    split: bool,
    stateful: bool,
    whole: bool,
) -> &'static [Stage] {
    match (tiled, split) {
        (false, _) => &[FORWARD, BACKWARD_ALONE, Stage::Update],
        (true, false) if !stateful && whole => &[Stage::Whole],
        (true, false) if !stateful => &[FORWARD, FUSED],
        (true, false) => &[FORWARD, BACKWARD, Stage::Update],
        (true, true) => &[FORWARD, BACKWARD],
    }
}

/// One dispatch of a stage; `layer` is the dense layer it works on, if one.
pub(super) struct Dispatch<'a> {
    pub kernel: &'a Kernel,
    pub group: &'a wgpu::BindGroup,
    pub grid: Grid,
    pub layer: Option<usize>,
}

/// What a step's dispatches depend on: the kernels, the bind groups, and the
/// shape of the rows staged now.
pub(super) struct Schedule<'a> {
    pub kernels: &'a Kernels,
    /// `Some` where the tiled set runs.
    pub tiled: Option<&'a TiledKernels>,
    pub groups: &'a Groups,
    /// A stateful optimizer's update; `None` for plain SGD.
    pub update: Option<&'a UpdateBuffers>,
    /// Gradient clipping before the update, if the optimizer clips.
    pub clip: Option<&'a Clipper>,
    /// Dropout, in a training step of a network that has it.
    pub dropout: Option<&'a Dropout>,
    /// The whole-step kernel, where the network fits it.
    pub whole: Option<&'a WholeStep>,
    pub net: &'a Network,
    /// Floats of params and grads (the device layout), what the update runs over.
    pub params: usize,
    /// Rows staged in the per-sample buffers.
    pub rows: usize,
    /// K slices of each layer's tiled gradient at `rows` rows.
    pub splits: &'a [u32],
    /// The device's max_compute_workgroups_per_dimension.
    pub max_dim: u32,
}

impl Dispatch<'_> {
    /// `entry layer l`, or the entry alone: how profiles name it.
    pub fn label(&self) -> String {
        match self.layer {
            Some(l) => format!("{} layer {l}", self.kernel.spec.entry),
            None => self.kernel.spec.entry.to_string(),
        }
    }
}

/// The fused output kernel, its bind group and its tiles.
type Fused<'a> = (&'a Kernel, &'a wgpu::BindGroup, &'a TileConfig);

/// Receives each dispatch in order.
type Sink<'s, 'a> = &'s mut dyn FnMut(Dispatch<'a>) -> Result<()>;

impl<'a> Schedule<'a> {
    /// Every dispatch of `stage`, in order, handed to `f`.
    pub fn plan(&self, stage: Stage, f: Sink<'_, 'a>) -> Result<()> {
        match stage {
            Stage::Forward { loss } => {
                let fused = self.output_loss().filter(|_| loss);
                self.forward(fused, f)?;
                if loss && fused.is_none() {
                    self.loss(f)?;
                }
                Ok(())
            }
            Stage::Backward { fused: true, .. } if self.tiled.is_none() => Err(Error::Invalid(
                "the simple kernels have no fused update".into(),
            )),
            Stage::Backward {
                delta_output,
                fused,
            } => {
                if delta_output {
                    self.output_delta(f)?;
                }
                match self.tiled {
                    None => {
                        self.hidden_deltas(f)?;
                        self.gradients(f)
                    }
                    Some(t) => self.deltas_and_gradients_tiled(t, fused, f),
                }
            }
            Stage::Update => self.update(f),
            Stage::Whole => match self.whole {
                Some(w) => f(Dispatch {
                    kernel: &w.kernel,
                    group: &w.group,
                    grid: (1, 1, 1),
                    layer: None,
                }),
                None => Err(Error::Invalid(
                    "this network has no whole-step kernel".into(),
                )),
            },
        }
    }

    /// The output layer's kernel and bind group that also compute the softmax,
    /// delta and loss, where it runs: tiled, one block holding a whole output
    /// row, no dropout on the output layer.
    fn output_loss(&self) -> Option<Fused<'a>> {
        let top = self.net.layers().len() - 1;
        let dropped = self.dropout.is_some_and(|d| d.group(top, false).is_some());
        let (kernel, tiles) = self.tiled?.output_loss(top, self.net.outputs())?;
        let group = self.groups.output_loss.as_ref()?;
        (!dropped).then_some((kernel, group, tiles))
    }

    /// Per layer the product, bias and activation, then softmax on the
    /// output rows; with `fused`, the output layer's kernel that does its
    /// softmax, delta and loss too. a[l]: (rows, sizes[l]); one invocation
    /// (simple) or one output block (tiled) per element of a[l + 1].
    fn forward(&self, fused: Option<Fused<'a>>, f: Sink<'_, 'a>) -> Result<()> {
        let layers = self.net.layers();
        for (l, ly) in layers.iter().enumerate() {
            let group = &self.groups.layers[l].forward;
            if let Some((kernel, group, tiles)) = fused {
                if l + 1 == layers.len() {
                    return f(Dispatch {
                        kernel,
                        group,
                        grid: self.tiled_grid(tiles, self.rows, ly.n_out, 1)?,
                        layer: Some(l),
                    });
                }
            }
            f(match self.tiled {
                None => self.elementwise(
                    &self.kernels.forward_dense,
                    group,
                    self.rows * ly.n_out,
                    Some(l),
                )?,
                Some(t) => {
                    let (kernel, tiles) = t.product(Product::Forward, l);
                    Dispatch {
                        kernel,
                        group,
                        grid: self.tiled_grid(tiles, self.rows, ly.n_out, 1)?,
                        layer: Some(l),
                    }
                }
            })?;
            self.drop(l, false, f)?;
        }
        if let Some(g) = &self.groups.softmax {
            let last = Some(layers.len() - 1);
            f(self.elementwise(&self.kernels.softmax_forward, g, self.rows, last)?)?;
        }
        Ok(())
    }

    /// The batch's loss and score added to the totals. Simple: one workgroup
    /// (loss_reduce). Tiled: the output delta with per-group partial sums over
    /// the rows, then one workgroup adds the partials (loss_finish).
    fn loss(&self, f: Sink<'_, 'a>) -> Result<()> {
        let single = (1, 1, 1);
        let Some(t) = self.tiled else {
            return f(Dispatch {
                kernel: &self.kernels.loss_reduce,
                group: &self.groups.loss,
                grid: single,
                layer: None,
            });
        };
        let Some(finish) = &self.groups.loss_finish else {
            return Ok(());
        };
        let groups = loss_groups(self.rows as u32, self.net.outputs() as u32);
        f(Dispatch {
            kernel: &t.delta_output_loss,
            group: &self.groups.loss,
            grid: grid(groups as u64, self.max_dim, || {
                "the loss's sample groups".into()
            })?,
            layer: None,
        })?;
        f(Dispatch {
            kernel: &t.loss_finish,
            group: finish,
            grid: single,
            layer: None,
        })
    }

    /// `δ = (a − y) ⊙ f'(a)` (softmax + cross-entropy: `a − y`): (rows, outputs).
    fn output_delta(&self, f: Sink<'_, 'a>) -> Result<()> {
        let n = self.rows * self.net.outputs();
        let g = &self.groups.delta_output;
        f(self.elementwise(&self.kernels.delta_output, g, n, None)?)
    }

    /// Simple: the hidden deltas from the top down, `δ[l + 1]` from `δ[l + 2]`.
    fn hidden_deltas(&self, f: Sink<'_, 'a>) -> Result<()> {
        let layers = self.net.layers();
        for l in (0..layers.len() - 1).rev() {
            if let Some(g) = self.delta_hidden_group(l) {
                let n = self.rows * layers[l].n_out;
                f(self.elementwise(&self.kernels.delta_hidden, g, n, Some(l))?)?;
                self.drop(l, true, f)?;
            }
        }
        Ok(())
    }

    /// Simple: every layer's `∂L/∂W (n_out, n_in)` then `∂L/∂b (n_out)` into grads.
    fn gradients(&self, f: Sink<'_, 'a>) -> Result<()> {
        let k = self.kernels;
        for (l, ly) in self.net.layers().iter().enumerate() {
            let g = &self.groups.layers[l].gradient;
            f(self.elementwise(&k.gradient_weights, g, ly.n_out * ly.n_in, Some(l))?)?;
            f(self.elementwise(&k.gradient_bias, g, ly.n_out, Some(l))?)?;
        }
        Ok(())
    }

    /// Tiled, from the top layer down: the delta of the layer below, then
    /// this layer's gradient (`fused`: applied to params at once), its K
    /// slices (where split) added by the last slice of each block. Layer l's
    /// gradient pass may update W_l, so the delta below it, which reads W_l,
    /// goes first.
    fn deltas_and_gradients_tiled(
        &self,
        t: &'a TiledKernels,
        fused: bool,
        f: Sink<'_, 'a>,
    ) -> Result<()> {
        let layers = self.net.layers();
        for l in (0..layers.len()).rev() {
            if let Some(h) = l.checked_sub(1) {
                if let Some(g) = self.delta_hidden_group(h) {
                    let (kernel, tiles) = t.product(Product::Delta, h);
                    f(Dispatch {
                        kernel,
                        group: g,
                        grid: self.tiled_grid(tiles, self.rows, layers[h].n_out, 1)?,
                        layer: Some(h),
                    })?;
                    self.drop(h, true, f)?;
                }
            }
            // g_W: (n_out, n_in) over K = rows, in `s` slices.
            let (ly, group, s) = (layers[l], &self.groups.layers[l].gradient, self.splits[l]);
            let k = t.set(Product::Gradient, l);
            let product = match fused {
                true => &k.gradient_sgd,
                false => &k.gradient_dense,
            };
            f(Dispatch {
                kernel: product,
                group,
                grid: self.tiled_grid(&k.config.tiles, ly.n_out, ly.n_in, s)?,
                layer: Some(l),
            })?;
        }
        Ok(())
    }

    /// Clipping, if on, then the optimizer's update over every parameter: (P) invocations.
    fn update(&self, f: Sink<'_, 'a>) -> Result<()> {
        if let Some(c) = self.clip {
            for (kernel, grid) in c.plan(self.max_dim)? {
                f(Dispatch {
                    kernel,
                    group: &c.group,
                    grid,
                    layer: None,
                })?;
            }
        }
        let k = self.kernels;
        let (kernel, group) = match self.update {
            None => (&k.sgd_update, &self.groups.sgd),
            Some(u) if u.adam => (&k.adam_update, &u.group),
            Some(u) => (&k.momentum_update, &u.group),
        };
        f(self.elementwise(kernel, group, self.params, None)?)
    }

    /// In a training step, dropout on layer `l`'s outputs (`deltas`: its
    /// deltas), if it drops: (rows, n_out) invocations.
    fn drop(&self, l: usize, deltas: bool, f: Sink<'_, 'a>) -> Result<()> {
        let Some(d) = self.dropout else {
            return Ok(());
        };
        match d.group(l, deltas) {
            Some((kernel, group, n)) => {
                f(self.elementwise(kernel, group, self.rows * n, Some(l))?)
            }
            None => Ok(()),
        }
    }

    /// Hidden layer `l`'s delta bind group: in a training step where the
    /// layer keeps its outputs from before dropout, the one reading `f'`
    /// from those.
    fn delta_hidden_group(&self, l: usize) -> Option<&'a wgpu::BindGroup> {
        let undropped = self.dropout.and_then(|d| d.delta_hidden(l));
        undropped.or(self.groups.layers[l].delta_hidden.as_ref())
    }

    /// One invocation per element of `n`.
    fn elementwise(
        &self,
        kernel: &'a Kernel,
        group: &'a wgpu::BindGroup,
        n: usize,
        layer: Option<usize>,
    ) -> Result<Dispatch<'a>> {
        Ok(Dispatch {
            kernel,
            group,
            grid: grid_1d(n as u64, self.max_dim)?,
            layer,
        })
    }

    /// One workgroup per output block of an `m × n` product, K in `splits` slices.
    fn tiled_grid(&self, tiles: &TileConfig, m: usize, n: usize, splits: u32) -> Result<Grid> {
        grid_tiled(m as u32, n as u32, splits, tiles, self.max_dim)
    }
}
