//! The CPU reference: a readable twin of every WGSL kernel, with the same name,
//! generic over `f32` (for training) and `f64` (for the tests' reference).
//!
//! Each function states its shapes; all matrices are row-major. The GPU
//! kernels in `shaders/` compute exactly these formulas, and the tests compare
//! the two on random data.
//!
//! ```
//! use shadertrain::cpu::forward_dense;
//! use shadertrain::network::Activation;
//! // one sample, 2 inputs, 1 neuron: sigmoid(0.5*1 + 0.25*2 + 0) = sigmoid(1)
//! let mut a = [0.0f64];
//! forward_dense(&[1.0, 2.0], &[0.5, 0.25], &[0.0], &mut a, 1, 2, 1, Activation::Sigmoid);
//! assert!((a[0] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-15);
//! ```

mod fast;

use crate::backend::{argmax, check_batch, check_layer, Backend, Metric, Totals};
use crate::error::{Error, Result, Setting};
use crate::network::{Activation, Loss, Network, Params, Real, CE_CLAMP};
use crate::optim::{check_state_len, Optimizer, OptimizerKind, UpdateTerms};

/// The most threads the fast CPU path starts (`--threads`): far past any
/// core count, low enough that a typo cannot spawn a million threads.
pub const MAX_THREADS: usize = 1024;

/// `σ(z) = 1 / (1 + e^−z)`.
pub fn sigmoid<T: Real>(z: T) -> T {
    T::one() / (T::one() + (-z).exp())
}

/// `f(z)` of one element (`activate` in common.wgsl). Softmax is row-wise
/// ([`softmax_forward`]), so here it is the identity.
#[inline(always)]
pub fn activate<T: Real>(act: Activation, z: T) -> T {
    match act {
        Activation::Sigmoid => sigmoid(z),
        Activation::Relu => z.max(T::zero()),
        Activation::Tanh => z.tanh(),
        Activation::Linear | Activation::Softmax => z,
    }
}

/// `f'(z)` written through `a = f(z)` (`activation_derivative` in
/// common.wgsl): sigmoid `a(1 − a)`, tanh `1 − a²`, relu `[a > 0]`, linear 1.
/// Softmax gives 1: it only ever feeds cross-entropy, whose delta `A − Y`
/// already includes it.
#[inline(always)]
pub fn activation_derivative<T: Real>(act: Activation, a: T) -> T {
    match act {
        Activation::Sigmoid => a * (T::one() - a),
        Activation::Relu => {
            if a > T::zero() {
                T::one()
            } else {
                T::zero()
            }
        }
        Activation::Tanh => T::one() - a * a,
        Activation::Linear | Activation::Softmax => T::one(),
    }
}

/// Forward pass of one dense layer: `A = f(A_prev·Wᵀ + b)`; a softmax layer
/// finishes with [`softmax_forward`] (on the GPU a second kernel).
// a_prev: (batch, n_in); w: (n_out, n_in); b: (n_out); a: (batch, n_out)
#[allow(clippy::too_many_arguments)]
pub fn forward_dense<T: Real>(
    a_prev: &[T],
    w: &[T],
    b: &[T],
    a: &mut [T],
    batch: usize,
    n_in: usize,
    n_out: usize,
    act: Activation,
) {
    for n in 0..batch {
        let x = &a_prev[n * n_in..(n + 1) * n_in];
        for o in 0..n_out {
            let row = &w[o * n_in..(o + 1) * n_in];
            let z = x.iter().zip(row).fold(b[o], |s, (&xi, &wi)| s + xi * wi);
            a[n * n_out + o] = activate(act, z);
        }
    }
    if act == Activation::Softmax {
        softmax_forward(a, batch, n_out);
    }
}

/// Softmax of every row in place: `a_k = e^(z_k − m) / Σ_j e^(z_j − m)`,
/// `m = max_j z_j`, so no exponent overflows; sums in index order.
// a: (batch, n), logits in, probabilities out
pub fn softmax_forward<T: Real>(a: &mut [T], batch: usize, n: usize) {
    for row in a[..batch * n].chunks_mut(n.max(1)) {
        softmax_row(row, T::exp);
    }
}

/// Softmax of one row of logits in place with the given `exp` (the fast path
/// passes its f32 one): max-subtracted, summed in order, scaled by `1 / Σ`
/// as `softmax_forward` in softmax.wgsl does.
// row: (n)
#[inline(always)]
pub(crate) fn softmax_row<T: Real>(row: &mut [T], exp: impl Fn(T) -> T) {
    let m = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
    let mut sum = T::zero();
    for z in row.iter_mut() {
        *z = exp(*z - m);
        sum = sum + *z;
    }
    let inv = T::one() / sum;
    for z in row.iter_mut() {
        *z = *z * inv;
    }
}

/// Output delta: MSE `δ = (A − Y) ⊙ f'(A)`; softmax with cross-entropy `δ = A − Y`.
// a, y, delta: (batch, n) — flat, the same length
pub fn delta_output<T: Real>(a: &[T], y: &[T], delta: &mut [T], act: Activation, loss: Loss) {
    for ((d, &ai), &yi) in delta.iter_mut().zip(a).zip(y) {
        *d = match loss {
            Loss::Mse => (ai - yi) * activation_derivative(act, ai),
            Loss::CrossEntropy => ai - yi,
        };
    }
}

/// One output's share of a sample's loss (`loss_term` in reduce.wgsl): MSE
/// `½ (a − y)²`, cross-entropy `−y ln max(a, CE_CLAMP)`.
#[inline(always)]
pub fn loss_term<T: Real>(loss: Loss, a: T, y: T) -> T {
    match loss {
        Loss::Mse => {
            let d = a - y;
            T::from(0.5).unwrap_or_else(T::one) * d * d
        }
        Loss::CrossEntropy => {
            let floor = T::from(CE_CLAMP).unwrap_or_else(T::min_positive_value);
            -y * a.max(floor).ln()
        }
    }
}

/// Hidden delta: `δ_j = (Σ_k W_next[k, j] δ_next_k) ⊙ f'(A_j)`.
// w_next: (n_next, n); delta_next: (batch, n_next); a, delta: (batch, n)
#[allow(clippy::too_many_arguments)]
pub fn delta_hidden<T: Real>(
    w_next: &[T],
    delta_next: &[T],
    a: &[T],
    delta: &mut [T],
    batch: usize,
    n: usize,
    n_next: usize,
    act: Activation,
) {
    for s in 0..batch {
        let dn = &delta_next[s * n_next..(s + 1) * n_next];
        for j in 0..n {
            let back = dn
                .iter()
                .enumerate()
                .fold(T::zero(), |acc, (k, &d)| acc + w_next[k * n + j] * d);
            delta[s * n + j] = back * activation_derivative(act, a[s * n + j]);
        }
    }
}

/// Weight gradient averaged over the batch: `∂L/∂W[o, i] = (1/B) Σ_s δ[s, o] · A_prev[s, i]`.
// delta: (batch, n_out); a_prev: (batch, n_in); gw: (n_out, n_in)
pub fn gradient_weights<T: Real>(
    delta: &[T],
    a_prev: &[T],
    gw: &mut [T],
    batch: usize,
    n_in: usize,
    n_out: usize,
) {
    let inv = T::one() / T::from(batch).unwrap_or_else(T::one);
    for o in 0..n_out {
        for i in 0..n_in {
            let sum = (0..batch).fold(T::zero(), |acc, s| {
                acc + delta[s * n_out + o] * a_prev[s * n_in + i]
            });
            gw[o * n_in + i] = sum * inv;
        }
    }
}

/// Bias gradient averaged over the batch: `∂L/∂b[o] = (1/B) Σ_s δ[s, o]`.
// delta: (batch, n_out); gb: (n_out)
pub fn gradient_bias<T: Real>(delta: &[T], gb: &mut [T], batch: usize, n_out: usize) {
    let inv = T::one() / T::from(batch).unwrap_or_else(T::one);
    for (o, g) in gb.iter_mut().enumerate().take(n_out) {
        let sum = (0..batch).fold(T::zero(), |acc, s| acc + delta[s * n_out + o]);
        *g = sum * inv;
    }
}

/// SGD over the whole flat buffer: `p −= lr · g`.
// params, grads: (param_count)
pub fn sgd_update<T: Real>(params: &mut [T], grads: &[T], lr: T) {
    for (p, &g) in params.iter_mut().zip(grads) {
        *p = *p - lr * g;
    }
}

/// Momentum over the whole flat buffer (twin of `momentum_update` in
/// optim.wgsl), with L2 decay `λ = decay[i]` added to the gradient:
/// `g ← g + λ·p`, `v ← μ·v + g`, `p ← p − lr·v`.
// params, grads, velocity, decay: (param_count)
pub fn momentum_update<T: Real>(
    params: &mut [T],
    grads: &[T],
    velocity: &mut [T],
    decay: &[T],
    h: &UpdateTerms<T>,
) {
    for (((p, &g), v), &wd) in params.iter_mut().zip(grads).zip(velocity).zip(decay) {
        let g = g + wd * *p;
        *v = h.momentum * *v + g;
        *p = *p - h.lr * *v;
    }
}

/// Adam over the whole flat buffer (twin of `adam_update` in optim.wgsl),
/// with decoupled decay `λ = decay[i]`: `m ← β1·m + (1 − β1)·g`,
/// `v ← β2·v + (1 − β2)·g²`, `p ← p − lr·((m / bc1) / (√(v / bc2) + ε) + λ·p)`.
// params, grads, decay: (param_count); state: m (param_count) then v (param_count)
pub fn adam_update<T: Real>(
    params: &mut [T],
    grads: &[T],
    state: &mut [T],
    decay: &[T],
    h: &UpdateTerms<T>,
) {
    let (m, v) = state.split_at_mut(params.len());
    let (c1, c2) = (T::one() - h.beta1, T::one() - h.beta2);
    for ((((p, &g), m), v), &wd) in params.iter_mut().zip(grads).zip(m).zip(v).zip(decay) {
        *m = h.beta1 * *m + c1 * g;
        *v = h.beta2 * *v + c2 * (g * g);
        let step = (*m / h.bc1) / ((*v / h.bc2).sqrt() + h.eps);
        *p = *p - h.lr * (step + wd * *p);
    }
}

/// Loss and score of one batch: returns `(Σ_s Σ_k loss_term(a, y), correct)`.
// a, y: (batch, n)
pub fn loss_reduce<T: Real>(
    a: &[T],
    y: &[T],
    batch: usize,
    n: usize,
    metric: Metric,
    loss_fn: Loss,
) -> (T, u64) {
    let mut loss = T::zero();
    let mut correct = 0u64;
    for s in 0..batch {
        let (ar, yr) = (&a[s * n..(s + 1) * n], &y[s * n..(s + 1) * n]);
        let sample = ar
            .iter()
            .zip(yr)
            .fold(T::zero(), |s, (&ai, &yi)| s + loss_term(loss_fn, ai, yi));
        loss = loss + sample;
        correct += score(metric, ar, yr) as u64;
    }
    (loss, correct)
}

/// Whether one sample's outputs `a (n)` score correct against `y (n)`.
pub fn score<T: Real>(metric: Metric, a: &[T], y: &[T]) -> bool {
    let h = T::from(0.5).unwrap_or_else(T::one);
    match metric {
        Metric::None => false,
        Metric::Threshold => (a[0] > h) == (y[0] > h),
        Metric::Argmax => argmax(a) == argmax(y),
    }
}

/// The CPU backend: the reference kernels above, driven through [`Backend`].
pub struct CpuBackend<T: Real = f32> {
    net: Network,
    capacity: usize,
    batch: usize,
    metric: Metric,
    params: Params<T>,
    grads: Params<T>,
    /// acts[l]: (capacity, sizes[l]); acts[0] is the input batch
    acts: Vec<Vec<T>>,
    /// deltas[l]: (capacity, sizes[l]); deltas[0] is unused
    deltas: Vec<Vec<T>>,
    /// targets: (capacity, outputs)
    y: Vec<T>,
    totals: Totals,
    /// The fast path's thread pool; `None` runs the reference twins.
    pool: Option<rayon::ThreadPool>,
    /// Fast path scratch: per-sample loss and score, (capacity).
    row_loss: Vec<(T, bool)>,
    /// Fast path scratch: the bias gradient's column sums, (widest layer).
    col_sums: Vec<T>,
    optim: Optimizer,
    /// Updates applied since the optimizer was set.
    t: u64,
    /// The optimizer's state (`Optimizer::state_len`); for SGD with decay, (P) scratch.
    state: Vec<T>,
    /// Per-parameter decay, (P) (`Optimizer::decay`); empty for plain SGD.
    decay: Vec<T>,
}

impl<T: Real> CpuBackend<T> {
    /// A backend for `net` that takes batches of up to `capacity` samples; parameters start at zero.
    pub fn new(net: &Network, capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::Invalid("batch size must be at least 1".into()));
        }
        // Refuse what cannot fit before allocating any of it.
        let size = std::mem::size_of::<T>();
        let values: usize = net.sizes().iter().sum();
        let p = net.param_count();
        let need = crate::memory::bytes(&[
            (p, 2 * size),
            (capacity, values.saturating_mul(2).saturating_mul(size)),
            (capacity, net.outputs() * size),
        ]);
        let what = format!("the CPU backend for {} at batch {capacity}", net.describe());
        crate::memory::ensure(need, &what, &[Setting::Batch, Setting::Layers])?;
        let per = |n: usize| vec![T::zero(); capacity * n];
        Ok(CpuBackend {
            net: net.clone(),
            capacity,
            batch: 0,
            metric: Metric::None,
            params: Params::zeros(net),
            grads: Params::zeros(net),
            acts: net.sizes().iter().map(|&n| per(n)).collect(),
            deltas: net.sizes().iter().map(|&n| per(n)).collect(),
            y: per(net.outputs()),
            totals: Totals::default(),
            pool: None,
            row_loss: Vec::new(),
            col_sums: Vec::new(),
            optim: Optimizer::default(),
            t: 0,
            state: Vec::new(),
            decay: Vec::new(),
        })
    }

    /// The fast backend: the same maths, with the matrix products done by the
    /// `gemm` crate on `threads` threads (0: one per core) and the element-wise
    /// work fused. This is what `--backend cpu` trains with. More than
    /// [`MAX_THREADS`] threads is refused.
    pub fn fast(net: &Network, capacity: usize, threads: usize) -> Result<Self> {
        if threads > MAX_THREADS {
            return Err(Error::setting(
                Setting::Threads,
                threads,
                format!("is more than {MAX_THREADS}; use 0 for one per core"),
            ));
        }
        let mut b = Self::new(net, capacity)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("shadertrain-cpu-{i}"))
            .build()
            .map_err(|e| Error::Invalid(format!("cannot start {threads} CPU threads: {e}")))?;
        b.pool = Some(pool);
        Ok(b)
    }

    /// Threads of the fast path, or `None` for the reference.
    pub fn threads(&self) -> Option<usize> {
        self.pool.as_ref().map(|p| p.current_num_threads())
    }

    fn need_batch(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::Invalid("no batch loaded".into()));
        }
        Ok(())
    }

    /// The optimizer's update of every parameter from `grads`, counted in `t`.
    fn apply_update(&mut self, lr: f32) {
        self.t += 1;
        let h = self.optim.terms::<T>(lr, self.t);
        let (p, g) = (&mut self.params.data, &self.grads.data);
        match self.optim.update_kernel() {
            None => sgd_update(p, g, h.lr),
            Some(OptimizerKind::Adam) => adam_update(p, g, &mut self.state, &self.decay, &h),
            Some(_) => momentum_update(p, g, &mut self.state, &self.decay, &h),
        }
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    type Scalar = T;

    fn describe(&self) -> String {
        let t = std::any::type_name::<T>();
        match self.threads() {
            Some(n) => format!(
                "cpu ({t}, gemm, {n} thread{})",
                if n == 1 { "" } else { "s" }
            ),
            None => format!("cpu reference ({t})"),
        }
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn set_params(&mut self, p: &Params<T>) -> Result<()> {
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

    fn params(&mut self) -> Result<Params<T>> {
        Ok(self.params.clone())
    }

    fn set_metric(&mut self, metric: Metric) -> Result<()> {
        self.metric = metric;
        Ok(())
    }

    fn load_batch(&mut self, x: &[T], y: &[T]) -> Result<()> {
        self.batch = check_batch(&self.net, self.capacity, x.len(), y.len())?;
        self.acts[0][..x.len()].copy_from_slice(x);
        self.y[..y.len()].copy_from_slice(y);
        Ok(())
    }

    fn forward(&mut self) -> Result<()> {
        self.need_batch()?;
        if self.pool.is_some() {
            self.on_pool(|s, n| {
                s.fast_forward_layers(n);
                s.fast_loss(false, n);
            });
            return Ok(());
        }
        let b = self.batch;
        for (l, ly) in self.net.layers().iter().enumerate() {
            let (prev, rest) = self.acts.split_at_mut(l + 1);
            forward_dense(
                &prev[l][..b * ly.n_in],
                self.params.weights(l),
                self.params.bias(l),
                &mut rest[0][..b * ly.n_out],
                b,
                ly.n_in,
                ly.n_out,
                ly.act,
            );
        }
        let no = self.net.outputs();
        let last = self.acts.len() - 1;
        let (loss, correct) = loss_reduce(
            &self.acts[last][..b * no],
            &self.y[..b * no],
            b,
            no,
            self.metric,
            self.net.loss(),
        );
        self.totals.loss_sum += loss.to_f64().unwrap_or(f64::NAN);
        self.totals.samples += b as u64;
        self.totals.correct += correct;
        Ok(())
    }

    fn backward(&mut self) -> Result<()> {
        self.need_batch()?;
        if self.pool.is_some() {
            self.on_pool(|s, n| s.fast_deltas_and_gradients(true, n));
            return Ok(());
        }
        let b = self.batch;
        let layers = self.net.layers();
        let last = layers.len();
        let no = self.net.outputs();
        delta_output(
            &self.acts[last][..b * no],
            &self.y[..b * no],
            &mut self.deltas[last][..b * no],
            self.net.output_activation(),
            self.net.loss(),
        );
        // Hidden deltas from the top down, with the weights from before the update.
        for l in (1..last).rev() {
            let (n, n_next) = (layers[l - 1].n_out, layers[l].n_out);
            let (lo, hi) = self.deltas.split_at_mut(l + 1);
            delta_hidden(
                self.params.weights(l),
                &hi[0][..b * n_next],
                &self.acts[l][..b * n],
                &mut lo[l][..b * n],
                b,
                n,
                n_next,
                layers[l - 1].act,
            );
        }
        for (l, ly) in layers.iter().enumerate() {
            let d = &self.deltas[l + 1][..b * ly.n_out];
            gradient_weights(
                d,
                &self.acts[l][..b * ly.n_in],
                self.grads.weights_mut(l),
                b,
                ly.n_in,
                ly.n_out,
            );
            gradient_bias(d, self.grads.bias_mut(l), b, ly.n_out);
        }
        Ok(())
    }

    fn update(&mut self, lr: f32) -> Result<()> {
        self.apply_update(lr);
        Ok(())
    }

    fn set_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
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

    fn optimizer_state(&mut self) -> Result<(u64, Vec<T>)> {
        let n = self.optim.state_len(self.net.param_count());
        Ok((self.t, self.state[..n].to_vec()))
    }

    fn set_optimizer_state(&mut self, t: u64, state: &[T]) -> Result<()> {
        check_state_len(&self.optim, self.net.param_count(), state.len())?;
        self.state[..state.len()].copy_from_slice(state);
        self.t = t;
        Ok(())
    }

    fn step(&mut self, lr: f32) -> Result<()> {
        if self.pool.is_none() {
            self.forward()?;
            self.backward()?;
            return self.update(lr);
        }
        self.need_batch()?;
        if !self.optim.is_plain_sgd() {
            // Gradients into grads by the fast backward, then one update loop.
            self.on_pool(|s, n| {
                s.fast_forward_layers(n);
                s.fast_loss(true, n);
                s.fast_deltas_and_gradients(false, n);
            });
            self.apply_update(lr);
            return Ok(());
        }
        self.t += 1;
        let lr = T::from(lr).unwrap_or_else(T::nan);
        self.on_pool(|s, n| {
            s.fast_forward_layers(n);
            s.fast_loss(true, n);
            // Top down: the delta below layer l uses W_l before its update.
            for l in (0..s.net.layers().len()).rev() {
                if l > 0 {
                    s.fast_delta_hidden(l, n);
                }
                s.fast_gradient_sgd(l, lr, n);
            }
        });
        Ok(())
    }

    fn take_totals(&mut self) -> Result<Totals> {
        let t = self.peek_totals();
        self.totals = Totals::default();
        t
    }

    fn peek_totals(&mut self) -> Result<Totals> {
        Ok(Totals {
            loss_fn: self.net.loss(),
            ..self.totals
        })
    }

    fn read_activations(&mut self, l: usize) -> Result<Vec<T>> {
        check_layer(&self.net, l, 0)?;
        Ok(self.acts[l][..self.batch * self.net.sizes()[l]].to_vec())
    }

    fn read_deltas(&mut self, l: usize) -> Result<Vec<T>> {
        check_layer(&self.net, l, 1)?;
        Ok(self.deltas[l][..self.batch * self.net.sizes()[l]].to_vec())
    }

    fn read_gradients(&mut self) -> Result<Params<T>> {
        Ok(self.grads.clone())
    }
}

/// Weight and bias gradients of one layer together, the twin of
/// `gradient_dense_tiled`: `gw = (1/B) δᵀ·A_prev`, `gb = (1/B) Σ_s δ`.
// delta: (batch, n_out); a_prev: (batch, n_in); gw: (n_out, n_in); gb: (n_out)
pub fn gradient_dense<T: Real>(
    delta: &[T],
    a_prev: &[T],
    gw: &mut [T],
    gb: &mut [T],
    batch: usize,
    n_in: usize,
    n_out: usize,
) {
    gradient_weights(delta, a_prev, gw, batch, n_in, n_out);
    gradient_bias(delta, gb, batch, n_out);
}

/// The gradients applied at once, the twin of `gradient_sgd_tiled`:
/// `W −= lr·(1/B) δᵀ·A_prev`, `b −= lr·(1/B) Σ_s δ`.
// delta: (batch, n_out); a_prev: (batch, n_in); w: (n_out, n_in); b: (n_out)
#[allow(clippy::too_many_arguments)]
pub fn gradient_sgd<T: Real>(
    delta: &[T],
    a_prev: &[T],
    w: &mut [T],
    b: &mut [T],
    lr: T,
    batch: usize,
    n_in: usize,
    n_out: usize,
) {
    let mut gw = vec![T::zero(); n_out * n_in];
    let mut gb = vec![T::zero(); n_out];
    gradient_dense(delta, a_prev, &mut gw, &mut gb, batch, n_in, n_out);
    sgd_update(w, &gw, lr);
    sgd_update(b, &gb, lr);
}

/// Output delta and the batch's loss in one pass, the twin of
/// `delta_output_loss` (with `loss_finish`): writes [`delta_output`]'s `δ`
/// and returns [`loss_reduce`]'s `(loss, correct)`.
// a, y, delta: (batch, n)
#[allow(clippy::too_many_arguments)]
pub fn delta_output_loss<T: Real>(
    a: &[T],
    y: &[T],
    delta: &mut [T],
    batch: usize,
    n: usize,
    metric: Metric,
    act: Activation,
    loss: Loss,
) -> (T, u64) {
    delta_output(a, y, delta, act, loss);
    loss_reduce(a, y, batch, n, metric, loss)
}
