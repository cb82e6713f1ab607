//! The CPU reference: a readable twin of every WGSL kernel, with the same
//! name, generic over `f32` (for training) and `f64` (for the tests'
//! reference), top to bottom in the order a training step runs them:
//!
//! 1. forward: [`forward_dense`] (product, bias, activation), [`softmax_forward`];
//! 2. loss: [`loss_term`], [`sample_loss`], [`loss_reduce`];
//! 3. output delta: [`delta_output`] (with the loss: [`delta_output_loss`]);
//! 4. hidden deltas: [`delta_hidden`];
//! 5. gradients: [`gradient_weights`], [`gradient_bias`] (together:
//!    [`gradient_dense`]; applied at once: [`gradient_sgd`]);
//!    While training, [`dropout_apply`] masks a hidden layer's outputs after
//!    its forward pass and its deltas after its hidden delta;
//! 6. gradient clipping (before any update): [`clip_gradients`];
//! 7. the optimiser updates: [`sgd_update`], [`momentum_update`], [`adam_update`].
//!
//! Then [`CpuBackend`], which drives them through [`Backend`]. Each function
//! states its shapes; all matrices are row-major. The GPU kernels in
//! `shaders/` compute exactly these formulas, and the tests compare the two
//! on random data.

use super::state::{derivative_input, shared_backend_methods, State};
use crate::backend::{argmax, Backend, Metric};
use crate::error::Result;
use crate::network::{Activation, Loss, Network, Real, CE_CLAMP};
use crate::optim::UpdateTerms;

// ---------------------------------------------------------------------------
// Activations, element by element (common.wgsl)
// ---------------------------------------------------------------------------

/// `σ(z) = 1 / (1 + e^−z)`.
// z: scalar
pub fn sigmoid<T: Real>(z: T) -> T {
    T::one() / (T::one() + (-z).exp())
}

/// `f(z)` of one element (`activate` in common.wgsl). Softmax is row-wise
/// ([`softmax_forward`]), so here it is the identity.
// z: scalar
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
// a: scalar
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

// ---------------------------------------------------------------------------
// 1. Forward: product + bias + activation (forward.wgsl, softmax.wgsl)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 2. Loss and score (loss.wgsl, reduce.wgsl)
// ---------------------------------------------------------------------------

/// One output's share of a sample's loss (`loss_term` in reduce.wgsl): MSE
/// `½ (a − y)²`, cross-entropy `−y ln max(a, CE_CLAMP)`.
// a, y: scalar
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

/// One sample's loss: `Σ_k loss_term(a_k, y_k)`, summed in index order.
// a, y: (n)
#[inline(always)]
pub fn sample_loss<T: Real>(loss: Loss, a: &[T], y: &[T]) -> T {
    a.iter()
        .zip(y)
        .fold(T::zero(), |s, (&ai, &yi)| s + loss_term(loss, ai, yi))
}

/// Whether one sample's outputs `a (n)` score correct against `y (n)`.
// a, y: (n)
pub fn score<T: Real>(metric: Metric, a: &[T], y: &[T]) -> bool {
    let h = T::from(0.5).unwrap_or_else(T::one);
    match metric {
        Metric::None => false,
        Metric::Threshold => (a[0] > h) == (y[0] > h),
        Metric::Argmax => argmax(a) == argmax(y),
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
        loss = loss + sample_loss(loss_fn, ar, yr);
        correct += score(metric, ar, yr) as u64;
    }
    (loss, correct)
}

// ---------------------------------------------------------------------------
// 3. Output delta (delta_output.wgsl; with the loss, loss_partial.wgsl)
// ---------------------------------------------------------------------------

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

/// A training step's output layer in one pass, the twin of
/// `forward_output_loss_tiled`: [`forward_dense`] into `a`, then
/// [`delta_output_loss`] into `delta`; returns its `(loss, correct)`.
// a_prev: (batch, n_in); w: (n_out, n_in); b: (n_out); y, a, delta: (batch, n_out)
#[allow(clippy::too_many_arguments)]
pub fn forward_output_loss<T: Real>(
    a_prev: &[T],
    w: &[T],
    b: &[T],
    y: &[T],
    a: &mut [T],
    delta: &mut [T],
    (batch, n_in, n_out): (usize, usize, usize),
    metric: Metric,
    act: Activation,
    loss: Loss,
) -> (T, u64) {
    forward_dense(a_prev, w, b, a, batch, n_in, n_out, act);
    delta_output_loss(a, y, delta, batch, n_out, metric, act, loss)
}

// ---------------------------------------------------------------------------
// 4. Hidden deltas (delta_hidden.wgsl, delta_hidden_tiled.wgsl)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// 5. Gradients (gradient.wgsl, gradient_tiled.wgsl)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Dropout (dropout.wgsl)
// ---------------------------------------------------------------------------

/// One round of a 32-bit integer hash (Wellons' lowbias32; `hash32` in dropout.wgsl).
// x: scalar
pub fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// What decides a dropout mask besides the element: the run's seed, the
/// update the step applies (`t`, from 1; its low 32 bits), and per layer
/// `keep_at` (a unit is kept where its 24-bit hash is `>= keep_at`,
/// `keep_at = round(p·2²⁴)`) and `scale = 1 / (1 − p)` (rounded to f32).
/// Mirrors the dropout uniform of dropout.wgsl.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutKey {
    /// The run's seed.
    pub seed: u64,
    /// The update number of the step (1-based).
    pub t: u64,
    /// Dense layer index.
    pub layer: u32,
    /// `round(p·2²⁴)`.
    pub keep_at: u32,
    /// `1 / (1 − p)`, in f32.
    pub scale: f32,
}

impl DropoutKey {
    /// The key of `layer` with dropout `p` at update `t` of a run seeded `seed`.
    pub fn new(seed: u64, t: u64, layer: usize, p: f32) -> Self {
        DropoutKey {
            seed,
            t,
            layer: layer as u32,
            keep_at: (p as f64 * (1u64 << 24) as f64).round() as u32,
            scale: (1.0 / (1.0 - p as f64)) as f32,
        }
    }

    /// Whether the unit `unit` of batch row `row` is kept: a hash of the
    /// seed, the update, the row, the layer and the unit, so a mask depends
    /// on nothing else (a data-parallel backend reproduces it from the row's
    /// index in the whole batch).
    pub fn keeps(&self, row: u32, unit: u32) -> bool {
        let mut h = hash32(unit);
        h = hash32(h ^ self.layer);
        h = hash32(h ^ row);
        h = hash32(h ^ self.t as u32);
        h = hash32(h ^ self.seed as u32);
        h = hash32(h ^ (self.seed >> 32) as u32);
        (h >> 8) >= self.keep_at
    }
}

/// Inverted dropout of `v (rows, n)`, rows `row0..row0 + rows` of the batch,
/// in place (twin of `dropout_apply`): kept values times `1/(1 − p)`, the
/// others 0. The forward pass applies it to a hidden layer's outputs, the
/// backward pass the same mask to its deltas, whose activation derivative
/// it takes from the outputs before the mask
/// ([`crate::network::Layer::keeps_undropped`]).
// v: (rows, n)
pub fn dropout_apply<T: Real>(v: &mut [T], rows: usize, n: usize, row0: usize, key: &DropoutKey) {
    let scale = T::from(key.scale).unwrap_or_else(T::nan);
    for (r, row) in v[..rows * n].chunks_mut(n).enumerate() {
        for (j, x) in row.iter_mut().enumerate() {
            *x = if key.keeps((row0 + r) as u32, j as u32) {
                *x * scale
            } else {
                T::zero()
            };
        }
    }
}

// ---------------------------------------------------------------------------
// 6. Gradient clipping (clip.wgsl)
// ---------------------------------------------------------------------------

/// The global L2 norm of every gradient, `‖g‖ = √Σ g²` (twin of
/// `clip_partial` then `clip_finish`), summed in f64 in index order.
// grads: (param_count)
pub fn grad_norm<T: Real>(grads: &[T]) -> T {
    let sum: f64 = grads
        .iter()
        .map(|g| {
            let g = g.to_f64().unwrap_or(f64::NAN);
            g * g
        })
        .sum();
    T::from(sum.sqrt()).unwrap_or_else(T::nan)
}

/// Clipping by global norm (twin of clip.wgsl's `clip_partial`,
/// `clip_finish` and `clip_apply`): `g ← g · min(1, clip / (‖g‖ + 10⁻⁶))`.
/// Returns `‖g‖` before clipping and whether it scaled the gradients down.
// grads: (param_count)
pub fn clip_gradients<T: Real>(grads: &mut [T], clip: T) -> (T, bool) {
    let norm = grad_norm(grads);
    let scale = crate::optim::clip_scale(norm, clip);
    let fired = scale < T::one();
    if fired {
        for g in grads.iter_mut() {
            *g = *g * scale;
        }
    }
    (norm, fired)
}

// ---------------------------------------------------------------------------
// 7. Optimiser updates (sgd.wgsl, optim.wgsl)
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// The reference backend
// ---------------------------------------------------------------------------

/// The CPU reference backend: the twins above, driven through [`Backend`]
/// one plain loop at a time. Generic over `f32` and `f64`; the tests check
/// the GPU and [`super::FastCpuBackend`] against it.
pub struct CpuBackend<T: Real = f32> {
    s: State<T>,
}

impl<T: Real> CpuBackend<T> {
    /// A backend for `net` that takes batches of up to `capacity` samples; parameters start at zero.
    pub fn new(net: &Network, capacity: usize) -> Result<Self> {
        Ok(CpuBackend {
            s: State::new(net, capacity)?,
        })
    }
}

impl<T: Real> Backend for CpuBackend<T> {
    shared_backend_methods!(T, s);

    fn describe(&self) -> String {
        format!("cpu reference ({})", std::any::type_name::<T>())
    }

    fn forward(&mut self) -> Result<()> {
        self.forward_pass(None, 0)
    }

    fn backward(&mut self) -> Result<()> {
        self.backward_pass(None, 0)
    }

    fn train_pass(&mut self, row0: usize) -> Result<()> {
        let t = Some(self.s.t + 1);
        self.forward_pass(t, row0)?;
        self.backward_pass(t, row0)
    }

    /// Forward, backward with dropout (if the network has any), update.
    fn step(&mut self, lr: f32) -> Result<()> {
        self.train_pass(0)?;
        self.s.update(lr)
    }
}

impl<T: Real> CpuBackend<T> {
    /// The forward pass; while training (`t`: the update the step applies),
    /// with each dropout layer's mask on its outputs, the staged rows being
    /// rows `row0..` of the step's batch.
    fn forward_pass(&mut self, t: Option<u64>, row0: usize) -> Result<()> {
        let s = &mut self.s;
        s.need_batch()?;
        let b = s.batch;
        for (l, ly) in s.net.layers().iter().enumerate() {
            let (prev, rest) = s.acts.split_at_mut(l + 1);
            forward_dense(
                &prev[l][..b * ly.n_in],
                s.params.weights(l),
                s.params.bias(l),
                &mut rest[0][..b * ly.n_out],
                b,
                ly.n_in,
                ly.n_out,
                ly.act,
            );
            if let Some(key) = s.dropout_key(t, l) {
                let out = &mut s.acts[l + 1][..b * ly.n_out];
                if let Some(keep) = s.undropped[l + 1].get_mut(..out.len()) {
                    keep.copy_from_slice(out);
                }
                dropout_apply(out, b, ly.n_out, row0, &key);
            }
        }
        let no = s.net.outputs();
        let last = s.acts.len() - 1;
        let (loss, correct) = loss_reduce(
            &s.acts[last][..b * no],
            &s.y[..b * no],
            b,
            no,
            s.metric,
            s.net.loss(),
        );
        s.add_totals(loss, correct);
        Ok(())
    }

    /// The backward pass; while training, each dropout layer's mask on its
    /// deltas, and its derivative from the outputs before the mask.
    fn backward_pass(&mut self, t: Option<u64>, row0: usize) -> Result<()> {
        let s = &mut self.s;
        s.need_batch()?;
        let b = s.batch;
        let layers = s.net.layers();
        let last = layers.len();
        let no = s.net.outputs();
        delta_output(
            &s.acts[last][..b * no],
            &s.y[..b * no],
            &mut s.deltas[last][..b * no],
            s.net.output_activation(),
            s.net.loss(),
        );
        // Hidden deltas from the top down, with the weights from before the update.
        for l in (1..last).rev() {
            let (n, n_next) = (layers[l - 1].n_out, layers[l].n_out);
            let dropped = s.dropout_key(t, l - 1).is_some();
            let (lo, hi) = s.deltas.split_at_mut(l + 1);
            delta_hidden(
                s.params.weights(l),
                &hi[0][..b * n_next],
                derivative_input(&s.acts, &s.undropped, dropped, l, b * n),
                &mut lo[l][..b * n],
                b,
                n,
                n_next,
                layers[l - 1].act,
            );
            if let Some(key) = s.dropout_key(t, l - 1) {
                dropout_apply(&mut s.deltas[l], b, n, row0, &key);
            }
        }
        for (l, ly) in layers.iter().enumerate() {
            let d = &s.deltas[l + 1][..b * ly.n_out];
            gradient_weights(
                d,
                &s.acts[l][..b * ly.n_in],
                s.grads.weights_mut(l),
                b,
                ly.n_in,
                ly.n_out,
            );
            gradient_bias(d, s.grads.bias_mut(l), b, ly.n_out);
        }
        Ok(())
    }
}
