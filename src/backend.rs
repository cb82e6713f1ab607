//! The [`Backend`] trait: what the training loop needs from a device.
//!
//! The CPU reference ([`crate::cpu::CpuBackend`]), the fast CPU backend
//! ([`crate::cpu::FastCpuBackend`]) and the GPU trainer
//! ([`crate::gpu::GpuBackend`]) all implement it, so the loop in
//! [`crate::train`] is written once. A step is `load_batch`, `forward`,
//! `backward`, `update`; on the GPU those record into one command encoder that
//! `update` submits, and nothing is read back until a `read_*` or
//! [`Backend::take_totals`] call asks for it.

use crate::data::Task;
use crate::error::{Error, Result};
use crate::network::{Loss, Network, Params, Real};
use crate::optim::Optimizer;

/// How a forward pass scores its predictions, besides the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Metric {
    /// Regression: loss only.
    None = 0,
    /// One output neuron: correct when `(a > 0.5) == (y > 0.5)`.
    Threshold = 1,
    /// Several outputs: correct when `argmax(a) == argmax(y)` (first maximum wins).
    Argmax = 2,
}

impl Metric {
    /// The metric that fits a task on a network with `outputs` neurons.
    pub fn for_task(task: Task, outputs: usize) -> Metric {
        match task {
            Task::Regression => Metric::None,
            Task::Classification { .. } if outputs == 1 => Metric::Threshold,
            Task::Classification { .. } => Metric::Argmax,
        }
    }
}

/// Loss and accuracy accumulated over forward passes since the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Σ over samples of the per-sample loss: `½ Σ_k (a_k − y_k)²` under
    /// [`Loss::Mse`], `−Σ_k y_k ln a_k` under [`Loss::CrossEntropy`].
    pub loss_sum: f64,
    /// Which loss `loss_sum` sums (the network's, [`Network::loss`]).
    pub loss_fn: Loss,
    /// Samples seen.
    pub samples: u64,
    /// Samples predicted correctly (0 under [`Metric::None`]).
    pub correct: u64,
    /// Updates whose gradients clipping scaled down
    /// ([`crate::optim::Optimizer::clip_norm`]); 0 without clipping.
    pub clipped: u64,
}

impl Totals {
    /// Mean loss per sample (of [`Totals::loss_fn`]).
    pub fn loss(&self) -> f64 {
        if self.samples == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.samples as f64
        }
    }

    /// Fraction correct, or `None` for regression.
    pub fn accuracy(&self, metric: Metric) -> Option<f64> {
        (metric != Metric::None && self.samples > 0)
            .then(|| self.correct as f64 / self.samples as f64)
    }
}

/// A device that trains a [`Network`] with mini-batch gradient descent and
/// an [`Optimizer`] (plain SGD unless [`Backend::set_optimizer`] says otherwise).
///
/// Layer indices: activations `0..=L` (0 is the input batch), deltas `1..=L`,
/// where `L = network.layers().len()`.
pub trait Backend {
    /// The float type of the parameters and data.
    type Scalar: Real;

    /// A one-line description: the device or adapter and the precision.
    fn describe(&self) -> String;

    /// The network being trained.
    fn network(&self) -> &Network;

    /// The largest batch [`Backend::load_batch`] accepts.
    fn capacity(&self) -> usize;

    /// Replace every parameter.
    fn set_params(&mut self, p: &Params<Self::Scalar>) -> Result<()>;

    /// Read every parameter back.
    fn params(&mut self) -> Result<Params<Self::Scalar>>;

    /// Choose how forward passes score predictions.
    fn set_metric(&mut self, metric: Metric) -> Result<()>;

    /// Stage a batch: `x (batch, inputs)`, `y (batch, outputs)`, `1 <= batch <= capacity`.
    fn load_batch(&mut self, x: &[Self::Scalar], y: &[Self::Scalar]) -> Result<()>;

    /// Forward pass of the staged batch; adds its loss and score to the totals.
    fn forward(&mut self) -> Result<()>;

    /// Deltas of every layer and the gradients, averaged over the batch,
    /// from the weights as they were before any update.
    fn backward(&mut self) -> Result<()>;

    /// The optimizer's update of every weight and bias from the gradients
    /// (plain SGD: `p −= lr · ∂L/∂p`); counts one update.
    fn update(&mut self, lr: f32) -> Result<()>;

    /// Replace the gradients that [`Backend::update`] applies, `g` in the
    /// parameter layout: a data-parallel run uploads the sum of its shards'
    /// gradients ([`crate::parallel`]) and then updates as usual.
    fn set_gradients(&mut self, g: &Params<Self::Scalar>) -> Result<()>;

    /// Train with `opt` from now on; its state starts at zero and the update
    /// count `t` at 0. An invalid `opt` is an error ([`Optimizer::validate`]).
    fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()>;

    /// The update count `t` and the optimizer's state, in the parameter
    /// layout: nothing for SGD, `v (P)` for momentum, `m (P)` then `v (P)` for Adam.
    fn optimizer_state(&mut self) -> Result<(u64, Vec<Self::Scalar>)>;

    /// Restore what [`Backend::optimizer_state`] returned, for the optimizer
    /// now set; a state of the wrong length is an error.
    fn set_optimizer_state(&mut self, t: u64, state: &[Self::Scalar]) -> Result<()>;

    /// Seed the dropout masks of training steps ([`crate::cpu::DropoutKey`]:
    /// the mask of a unit is a hash of this seed, the update count, the row
    /// in the batch, the layer and the unit). `forward` alone never drops;
    /// `step` does, on a network with dropout. A backend that cannot drop
    /// refuses a network with dropout here.
    fn set_dropout_seed(&mut self, seed: u64) -> Result<()> {
        let _ = seed;
        refuse_dropout(self.network(), &self.describe())
    }

    /// The forward and backward passes of a training step, without its
    /// update: dropout on, with the masks of update `t + 1`, the staged rows
    /// being rows `row0..` of the step's whole batch (which keys their
    /// masks). A data-parallel worker runs this on its shard, then applies
    /// the combined gradient ([`Backend::set_gradients`], [`Backend::update`]),
    /// so its masks are those of the one-device step. A backend that cannot
    /// drop refuses a network with dropout.
    fn train_pass(&mut self, row0: usize) -> Result<()> {
        let _ = row0;
        refuse_dropout(self.network(), &self.describe())?;
        self.forward()?;
        self.backward()
    }

    /// One training step on the staged batch (with dropout, if the network has it).
    fn step(&mut self, lr: f32) -> Result<()> {
        self.forward()?;
        self.backward()?;
        self.update(lr)
    }

    /// Wait until every recorded command has finished on the device (a no-op
    /// on the CPU). Timed regions end with this.
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }

    /// The totals since the last call, which resets them.
    fn take_totals(&mut self) -> Result<Totals>;

    /// The totals since the last [`Backend::take_totals`], without resetting
    /// them: `--nan-check` reads the running loss after every step. On a GPU
    /// this waits for the submitted work and reads back one small buffer.
    fn peek_totals(&mut self) -> Result<Totals>;

    /// Activations of layer `l` for the staged batch, `(batch, sizes[l])`.
    fn read_activations(&mut self, l: usize) -> Result<Vec<Self::Scalar>>;

    /// Deltas of layer `l >= 1`, `(batch, sizes[l])`.
    fn read_deltas(&mut self, l: usize) -> Result<Vec<Self::Scalar>>;

    /// Gradients from the last backward pass, in the parameter layout.
    fn read_gradients(&mut self) -> Result<Params<Self::Scalar>>;

    /// Whether it runs on a GPU (a [`crate::gpu::GpuBackend`]).
    fn on_gpu(&self) -> bool {
        false
    }

    /// The GPU kernels it runs: every tiled product's configuration and
    /// where it came from ([`crate::gpu::KernelReport`]); `None` where no
    /// tiled kernels run.
    fn kernels(&self) -> Option<crate::gpu::KernelReport> {
        None
    }

    /// The GPU kernels' configuration of every product, as
    /// `--kernel-config` takes it and checkpoints record it
    /// ([`crate::gpu::KernelPlan`]; `simple` for the simple kernel set);
    /// `None` where no GPU kernels run.
    fn kernel_config(&self) -> Option<String> {
        self.kernels().map(|k| k.kernel_config)
    }
}

/// The refusal of a network with dropout by a backend (`describe`) that
/// does not implement it.
fn refuse_dropout(net: &Network, describe: &str) -> Result<()> {
    if net.has_dropout() {
        return Err(Error::Invalid(format!(
            "{describe} does not implement dropout"
        )));
    }
    Ok(())
}

/// Index of the first largest element.
pub fn argmax<T: Real>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// Checks shared by both backends: `x (batch, inputs)`, `y (batch, outputs)`, `1 <= batch <= capacity`.
/// Returns the batch size.
pub fn check_batch(net: &Network, capacity: usize, x_len: usize, y_len: usize) -> Result<usize> {
    let (ni, no) = (net.inputs(), net.outputs());
    if x_len == 0 || !x_len.is_multiple_of(ni) {
        return Err(Error::Shape(format!(
            "input batch of {x_len} values is not a whole number of rows of width {ni}"
        )));
    }
    let batch = x_len / ni;
    if y_len != batch * no {
        return Err(Error::Shape(format!(
            "{batch} input rows need {} target values (width {no}), got {y_len}",
            batch * no
        )));
    }
    if batch > capacity {
        return Err(Error::Shape(format!(
            "batch of {batch} exceeds this backend's capacity of {capacity}"
        )));
    }
    Ok(batch)
}

/// Checks that `p` belongs to `net` (parameters or gradients given to a backend).
pub fn check_params<T: Real>(net: &Network, p: &Params<T>) -> Result<()> {
    if p.network() != net {
        return Err(Error::Shape(format!(
            "parameters for {} given to a {} backend",
            p.network().describe(),
            net.describe()
        )));
    }
    Ok(())
}

/// Checks an activation or delta layer index: `lo..=L`.
pub fn check_layer(net: &Network, l: usize, lo: usize) -> Result<()> {
    let last = net.layers().len();
    if l < lo || l > last {
        return Err(Error::Invalid(format!(
            "layer {l} is out of range {lo}..={last}"
        )));
    }
    Ok(())
}
