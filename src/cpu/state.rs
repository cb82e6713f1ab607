//! What both CPU backends hold, and the code that is the same for both.
//!
//! [`State`] is the network's buffers (parameters, activations, deltas,
//! gradients, targets), the optimiser with its state, and the running totals.
//! [`super::CpuBackend`] and [`super::FastCpuBackend`] each hold one and differ
//! only in how they compute `forward`, `backward` and `step`; every other
//! [`Backend`] method is written once here and delegated by
//! [`shared_backend_methods!`].
//!
//! [`Backend`]: crate::backend::Backend

use super::reference::{adam_update, clip_gradients, momentum_update, sgd_update, DropoutKey};
use crate::backend::{check_batch, check_layer, Metric, Totals};
use crate::error::{Error, Result, Setting};
use crate::network::{Network, Params, Real};
use crate::optim::{check_state_len, Optimizer, OptimizerKind};

/// What the backward pass takes activation `l`'s derivative from, its first
/// `n` values: the outputs from before the mask where the pass `dropped`
/// them and the layer keeps those (`undropped[l]` not empty), else the
/// activations. (Fields of [`State`], so the deltas can be borrowed beside.)
pub(crate) fn derivative_input<'a, T>(
    acts: &'a [Vec<T>],
    undropped: &'a [Vec<T>],
    dropped: bool,
    l: usize,
    n: usize,
) -> &'a [T] {
    match dropped && !undropped[l].is_empty() {
        true => &undropped[l][..n],
        false => &acts[l][..n],
    }
}

/// The buffers, optimiser and totals of a CPU backend.
pub(crate) struct State<T: Real> {
    pub(crate) net: Network,
    pub(crate) capacity: usize,
    /// Rows of the staged batch; 0 until one is loaded.
    pub(crate) batch: usize,
    pub(crate) metric: Metric,
    pub(crate) params: Params<T>,
    pub(crate) grads: Params<T>,
    /// `acts[l]`: `(capacity, sizes[l])`; `acts[0]` is the input batch.
    pub(crate) acts: Vec<Vec<T>>,
    /// `deltas[l]`: `(capacity, sizes[l])`; `deltas[0]` is unused.
    pub(crate) deltas: Vec<Vec<T>>,
    /// `undropped[l]`: `(capacity, sizes[l])` where dense layer `l − 1`
    /// keeps its outputs from before the dropout mask
    /// ([`crate::network::Layer::keeps_undropped`]), for the derivative;
    /// empty elsewhere.
    pub(crate) undropped: Vec<Vec<T>>,
    /// Targets, `(capacity, outputs)`.
    pub(crate) y: Vec<T>,
    pub(crate) totals: Totals,
    pub(crate) optim: Optimizer,
    /// Updates applied since the optimizer was set.
    pub(crate) t: u64,
    /// The optimizer's state (`Optimizer::state_len`); for SGD with decay, (P) scratch.
    state: Vec<T>,
    /// Per-parameter decay, (P) (`Optimizer::decay`); empty for plain SGD.
    decay: Vec<T>,
    /// Seeds the dropout masks ([`crate::backend::Backend::set_dropout_seed`]).
    pub(crate) dropout_seed: u64,
}

impl<T: Real> State<T> {
    /// Buffers for `net` and batches of up to `capacity` samples; parameters
    /// start at zero. Refuses what cannot fit before allocating any of it.
    pub(crate) fn new(net: &Network, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::setting(Setting::Batch, 0, "must be at least 1"));
        }
        let size = std::mem::size_of::<T>();
        let values: usize = net.sizes().iter().sum();
        let kept = |l: &crate::network::Layer| if l.keeps_undropped() { l.n_out } else { 0 };
        let undropped: usize = net.layers().iter().map(kept).sum();
        let p = net.param_count();
        let need = crate::memory::bytes(&[
            (p, 2 * size),
            (capacity, values.saturating_mul(2).saturating_mul(size)),
            (capacity, undropped.saturating_mul(size)),
            (capacity, net.outputs() * size),
        ]);
        let what = format!("the CPU backend for {} at batch {capacity}", net.describe());
        crate::memory::ensure(need, &what, &[Setting::Batch, Setting::Layers])?;
        let per = |n: usize| vec![T::zero(); capacity * n];
        Ok(State {
            net: net.clone(),
            capacity,
            batch: 0,
            metric: Metric::None,
            params: Params::zeros(net),
            grads: Params::zeros(net),
            acts: net.sizes().iter().map(|&n| per(n)).collect(),
            deltas: net.sizes().iter().map(|&n| per(n)).collect(),
            undropped: std::iter::once(Vec::new())
                .chain(net.layers().iter().map(|l| per(kept(l))))
                .collect(),
            y: per(net.outputs()),
            totals: Totals::default(),
            optim: Optimizer::default(),
            t: 0,
            state: Vec::new(),
            decay: Vec::new(),
            dropout_seed: 0,
        })
    }

    /// The dropout mask's key of dense layer `l` while training (`t`: the
    /// update the step applies); `None` in evaluation or without dropout.
    pub(crate) fn dropout_key(&self, t: Option<u64>, l: usize) -> Option<DropoutKey> {
        let p = self.net.layers()[l].dropout;
        let t = t.filter(|_| p > 0.0)?;
        Some(DropoutKey::new(self.dropout_seed, t, l, p))
    }

    pub(crate) fn need_batch(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    /// Adds one batch's loss (summed over its samples) and score to the totals.
    pub(crate) fn add_totals(&mut self, loss: T, correct: u64) {
        self.totals.loss_sum += loss.to_f64().unwrap_or(f64::NAN);
        self.totals.samples += self.batch as u64;
        self.totals.correct += correct;
    }

    /// The optimizer's update of every parameter from `grads` (clipped
    /// first, if the optimizer clips), counted in `t`.
    pub(crate) fn update(&mut self, lr: f32) -> Result<()> {
        self.t += 1;
        if let Some(c) = self.optim.clip_norm {
            let clip = T::from(c).unwrap_or_else(T::nan);
            let (_, fired) = clip_gradients(&mut self.grads.data, clip);
            self.totals.clipped += u64::from(fired);
        }
        let h = self.optim.terms::<T>(lr, self.t);
        let (p, g) = (&mut self.params.data, &self.grads.data);
        match self.optim.update_kernel() {
            None => sgd_update(p, g, h.lr),
            Some(OptimizerKind::Adam) => adam_update(p, g, &mut self.state, &self.decay, &h),
            Some(_) => momentum_update(p, g, &mut self.state, &self.decay, &h),
        }
        Ok(())
    }

    pub(crate) fn set_params(&mut self, p: &Params<T>) -> Result<()> {
        if p.network() != &self.net {
            return Err(Error::Shape(format!(
                "parameters for {} given to a {} backend",
                p.network().describe(),
                self.net.describe()
            )));
        }
        self.params = p.clone();
        Ok(())
    }

    pub(crate) fn load_batch(&mut self, x: &[T], y: &[T]) -> Result<()> {
        self.batch = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.acts[0][..x.len()].copy_from_slice(x);
        self.y[..y.len()].copy_from_slice(y);
        Ok(())
    }

    pub(crate) fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
        opt.validate()?;
        let p = self.net.param_count();
        self.optim = *opt;
        self.t = 0;
        let (state, decay) = match opt.update_kernel() {
            None => (0, false),
            Some(_) => (opt.state_len(p).max(p), true),
        };
        self.state = crate::memory::zeroed(state, "the optimizer's state", &[Setting::Layers])?;
        self.decay = if decay {
            opt.decay(&self.net)
        } else {
            Vec::new()
        };
        Ok(())
    }

    pub(crate) fn optimizer_state(&self) -> Result<(u64, Vec<T>)> {
        let n = self.optim.state_len(self.net.param_count());
        Ok((self.t, self.state[..n].to_vec()))
    }

    pub(crate) fn set_optimizer_state(&mut self, t: u64, state: &[T]) -> Result<()> {
        check_state_len(&self.optim, self.net.param_count(), state.len())?;
        self.state[..state.len()].copy_from_slice(state);
        self.t = t;
        Ok(())
    }

    pub(crate) fn take_totals(&mut self) -> Result<Totals> {
        let t = self.peek_totals();
        self.totals = Totals::default();
        t
    }

    pub(crate) fn peek_totals(&self) -> Result<Totals> {
        Ok(Totals {
            loss_fn: self.net.loss(),
            ..self.totals
        })
    }

    pub(crate) fn read_activations(&self, l: usize) -> Result<Vec<T>> {
        check_layer(&self.net, l, 0)?;
        Ok(self.acts[l][..self.batch * self.net.sizes()[l]].to_vec())
    }

    pub(crate) fn read_deltas(&self, l: usize) -> Result<Vec<T>> {
        check_layer(&self.net, l, 1)?;
        Ok(self.deltas[l][..self.batch * self.net.sizes()[l]].to_vec())
    }
}

/// The [`Backend`](crate::backend::Backend) methods both CPU backends share,
/// each handed to the [`State`] at `self.$field` (a path such as `s` or
/// `engine.s`). Expands inside an `impl Backend for …` block, which then adds
/// `describe`, `forward`, `backward` and, where it differs, `step`.
macro_rules! shared_backend_methods {
    ($T:ty, $($field:ident).+) => {
        type Scalar = $T;

        fn network(&self) -> &$crate::network::Network {
            &self.$($field).+.net
        }

        fn capacity(&self) -> usize {
            self.$($field).+.capacity
        }

        fn set_params(&mut self, p: &$crate::network::Params<$T>) -> $crate::Result<()> {
            self.$($field).+.set_params(p)
        }

        fn params(&mut self) -> $crate::Result<$crate::network::Params<$T>> {
            Ok(self.$($field).+.params.clone())
        }

        fn set_metric(&mut self, metric: $crate::backend::Metric) -> $crate::Result<()> {
            self.$($field).+.metric = metric;
            Ok(())
        }

        fn load_batch(&mut self, x: &[$T], y: &[$T]) -> $crate::Result<()> {
            self.$($field).+.load_batch(x, y)
        }

        fn update(&mut self, lr: f32) -> $crate::Result<()> {
            self.$($field).+.update(lr)
        }

        fn set_dropout_seed(&mut self, seed: u64) -> $crate::Result<()> {
            self.$($field).+.dropout_seed = seed;
            Ok(())
        }

        fn set_optimizer(&mut self, opt: &$crate::optim::Optimizer) -> $crate::Result<()> {
            self.$($field).+.set_optimizer(opt)
        }

        fn optimizer_state(&mut self) -> $crate::Result<(u64, Vec<$T>)> {
            self.$($field).+.optimizer_state()
        }

        fn set_optimizer_state(&mut self, t: u64, state: &[$T]) -> $crate::Result<()> {
            self.$($field).+.set_optimizer_state(t, state)
        }

        fn take_totals(&mut self) -> $crate::Result<$crate::backend::Totals> {
            self.$($field).+.take_totals()
        }

        fn peek_totals(&mut self) -> $crate::Result<$crate::backend::Totals> {
            self.$($field).+.peek_totals()
        }

        fn read_activations(&mut self, l: usize) -> $crate::Result<Vec<$T>> {
            self.$($field).+.read_activations(l)
        }

        fn read_deltas(&mut self, l: usize) -> $crate::Result<Vec<$T>> {
            self.$($field).+.read_deltas(l)
        }

        fn read_gradients(&mut self) -> $crate::Result<$crate::network::Params<$T>> {
            Ok(self.$($field).+.grads.clone())
        }

        fn set_gradients(&mut self, g: &$crate::network::Params<$T>) -> $crate::Result<()> {
            $crate::backend::check_params(&self.$($field).+.net, g)?;
            self.$($field).+.grads.data.copy_from_slice(&g.data);
            Ok(())
        }
    };
}
pub(crate) use shared_backend_methods;
