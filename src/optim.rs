//! Optimizers: how a step turns the gradients into a parameter update.
//!
//! Every backend applies the same maths over the flat parameter buffer
//! (`P = network.param_count()` values), with `g = ∂L/∂p` averaged over the
//! batch and the learning rate `lr` passed to each step, so a schedule can
//! change it between steps:
//!
//! - **SGD**: `p ← p − lr·g`.
//! - **Momentum** (PyTorch's form, no dampening): `v ← μ·v + g`, `p ← p − lr·v`.
//! - **Adam**, with bias correction at update `t` (counted from 1):
//!   `m ← β1·m + (1 − β1)·g`, `v ← β2·v + (1 − β2)·g²`,
//!   `m̂ = m / (1 − β1^t)`, `v̂ = v / (1 − β2^t)`, `p ← p − lr·m̂ / (√v̂ + ε)`.
//!
//! **Weight decay** `λ` applies to weights, never to biases:
//! - SGD and momentum: L2, added to the gradient, `g ← g + λ·p`, before the
//!   update above (as PyTorch's `weight_decay` does);
//! - Adam: decoupled (AdamW), `p ← p − lr·(m̂ / (√v̂ + ε) + λ·p)`, with the
//!   `p` from before the step.
//!
//! **Gradient clipping** by global norm (`clip_norm = Some(c)`), before any
//! of the above: with `‖g‖` the L2 norm over every gradient of the step,
//! `g ← g · min(1, c / (‖g‖ + 10⁻⁶))` (PyTorch's `clip_grad_norm_`). Each
//! backend computes `‖g‖` on the device that trains, in a fixed order (the
//! GPU: per-workgroup sums, then one workgroup adds them; no float atomics),
//! and counts the updates it scaled down ([`crate::backend::Totals::clipped`]).
//!
//! SGD with `λ = 0` and no clipping keeps its fused update (the gradient never stored). SGD
//! with `λ > 0` runs the momentum update with `μ = 0`, whose `v` is then just
//! the decayed gradient; it keeps no state between steps.
//!
//! ```
//! use shadertrain::optim::{Optimizer, OptimizerKind};
//! let adam = Optimizer { kind: OptimizerKind::parse("adam")?, ..Optimizer::default() };
//! adam.validate()?;
//! assert_eq!(adam.state_len(10), 20); // m then v
//! assert_eq!(Optimizer::default().name(), "sgd");
//! # Ok::<(), shadertrain::Error>(())
//! ```

use crate::error::{Error, Result, Setting};
use crate::network::{Network, Real};

/// Which update rule a backend applies (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OptimizerKind {
    /// Plain SGD, `p ← p − lr·g`.
    #[default]
    Sgd,
    /// SGD with momentum, `v ← μ·v + g`, `p ← p − lr·v`.
    Momentum,
    /// Adam with bias correction (AdamW-style weight decay).
    Adam,
}

impl OptimizerKind {
    /// Every kind, in `--optimizer` order.
    pub const ALL: [OptimizerKind; 3] = [
        OptimizerKind::Sgd,
        OptimizerKind::Momentum,
        OptimizerKind::Adam,
    ];

    /// The name `--optimizer` uses: `sgd`, `momentum` or `adam`.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Momentum => "momentum",
            OptimizerKind::Adam => "adam",
        }
    }

    /// The kind called `name` (see [`OptimizerKind::name`]).
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                Error::setting(
                    Setting::Optimizer,
                    name,
                    "unknown optimizer (expected sgd, momentum or adam)",
                )
            })
    }
}

/// An optimizer and its hyper-parameters; the learning rate is per step.
/// `Default` is plain SGD with PyTorch's defaults for the rest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizer {
    /// The update rule.
    pub kind: OptimizerKind,
    /// Momentum `μ` ([`OptimizerKind::Momentum`]), in `[0, 1)`; 0.9.
    pub momentum: f32,
    /// Adam's `β1`, in `[0, 1)`; 0.9.
    pub beta1: f32,
    /// Adam's `β2`, in `[0, 1)`; 0.999.
    pub beta2: f32,
    /// Adam's `ε`, `> 0`; 1e-8.
    pub eps: f32,
    /// Weight decay `λ >= 0` of the weights (not the biases); 0.
    pub weight_decay: f32,
    /// Clip the gradients to this global L2 norm (finite, `> 0`) before the
    /// update; `None` (the default) never clips.
    pub clip_norm: Option<f32>,
}

impl Default for Optimizer {
    fn default() -> Self {
        Optimizer {
            kind: OptimizerKind::Sgd,
            momentum: 0.9,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_norm: None,
        }
    }
}

impl Optimizer {
    /// An optimizer of `kind` with the default hyper-parameters.
    pub fn new(kind: OptimizerKind) -> Self {
        Optimizer {
            kind,
            ..Optimizer::default()
        }
    }

    /// The name of its kind (`sgd`, `momentum`, `adam`).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Checks every hyper-parameter's range, whatever the kind; the error
    /// names the setting.
    pub fn validate(&self) -> Result<()> {
        let unit = |setting: Setting, v: f32| {
            if v.is_finite() && (0.0..1.0).contains(&v) {
                Ok(())
            } else {
                Err(Error::setting(setting, v, "must be in [0, 1)"))
            }
        };
        unit(Setting::Momentum, self.momentum)?;
        unit(Setting::Beta1, self.beta1)?;
        unit(Setting::Beta2, self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::setting(
                Setting::Eps,
                self.eps,
                "must be a finite number above 0",
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::setting(
                Setting::WeightDecay,
                self.weight_decay,
                "must be a finite number >= 0",
            ));
        }
        if let Some(c) = self.clip_norm {
            if !(c.is_finite() && c > 0.0) {
                return Err(Error::setting(
                    Setting::ClipNorm,
                    c,
                    "must be a finite number above 0",
                ));
            }
        }
        Ok(())
    }

    /// Floats of state for `param_count` parameters: SGD 0, momentum `P` (`v`),
    /// Adam `2P` (`m` then `v`), each in the parameter layout.
    pub fn state_len(&self, param_count: usize) -> usize {
        match self.kind {
            OptimizerKind::Sgd => 0,
            OptimizerKind::Momentum => param_count,
            OptimizerKind::Adam => 2 * param_count,
        }
    }

    /// Whether a step is plain SGD with no weight decay and no clipping,
    /// which the backends fuse into the gradient pass.
    pub fn is_plain_sgd(&self) -> bool {
        self.kind == OptimizerKind::Sgd && self.weight_decay == 0.0 && self.clip_norm.is_none()
    }

    /// The update kernel a step runs after the gradients: `None` for the
    /// SGD kernel, else momentum (SGD with decay: momentum at `μ = 0`) or Adam.
    pub fn update_kernel(&self) -> Option<OptimizerKind> {
        match self.kind {
            OptimizerKind::Sgd if self.weight_decay == 0.0 => None,
            OptimizerKind::Sgd | OptimizerKind::Momentum => Some(OptimizerKind::Momentum),
            OptimizerKind::Adam => Some(OptimizerKind::Adam),
        }
    }

    /// The per-parameter decay `λ` for weights and 0 for biases, `(P)`, in
    /// the parameter layout: what the update kernels read.
    pub fn decay<T: Real>(&self, net: &Network) -> Vec<T> {
        let wd = T::from(self.weight_decay).unwrap_or_else(T::zero);
        let mut d = vec![T::zero(); net.param_count()];
        for l in net.layers() {
            d[l.w_off..l.b_off].fill(wd);
        }
        d
    }

    /// The terms of update number `t >= 1` at learning rate `lr`, in `T`:
    /// Adam's `1 − β^t` computed in f64 and rounded once; SGD with decay has
    /// `μ = 0`.
    pub fn terms<T: Real>(&self, lr: f32, t: u64) -> UpdateTerms<T> {
        let cast = |v: f64| T::from(v).unwrap_or_else(T::nan);
        let power = |b: f32| 1.0 - (b as f64).powf(t as f64);
        UpdateTerms {
            lr: cast(lr as f64),
            momentum: match self.kind {
                OptimizerKind::Sgd => T::zero(),
                _ => cast(self.momentum as f64),
            },
            beta1: cast(self.beta1 as f64),
            beta2: cast(self.beta2 as f64),
            eps: cast(self.eps as f64),
            bc1: cast(power(self.beta1)),
            bc2: cast(power(self.beta2)),
        }
    }
}

/// The factor clipping multiplies the gradients by, at global norm `norm`
/// and limit `clip`: `min(1, clip / (norm + 10⁻⁶))` (twin of `clip_finish`
/// in clip.wgsl). Continuous in `norm`, so backends that round the norm a
/// little differently scale almost alike.
pub fn clip_scale<T: Real>(norm: T, clip: T) -> T {
    let eps = T::from(1e-6).unwrap_or_else(T::zero);
    let s = clip / (norm + eps);
    if s < T::one() {
        s
    } else {
        T::one()
    }
}

/// What one update reads besides the buffers: the learning rate, the
/// hyper-parameters and Adam's bias corrections `bc = 1 − β^t`. The GPU
/// splits it by how often it changes: the hyper-parameters in `OptimUniform`
/// (written when the optimiser is set), `lr` and `bc` in `StepUniform`
/// (written once per step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdateTerms<T> {
    /// Learning rate of this step.
    pub lr: T,
    /// Momentum `μ`.
    pub momentum: T,
    /// Adam's `β1`.
    pub beta1: T,
    /// Adam's `β2`.
    pub beta2: T,
    /// Adam's `ε`.
    pub eps: T,
    /// `1 − β1^t`.
    pub bc1: T,
    /// `1 − β2^t`.
    pub bc2: T,
}

/// Checks a state given to `set_optimizer_state`: `len` floats where
/// `opt` keeps `state_len(param_count)`.
pub fn check_state_len(opt: &Optimizer, param_count: usize, len: usize) -> Result<()> {
    let want = opt.state_len(param_count);
    if len != want {
        return Err(Error::Shape(format!(
            "{} optimizer state for {param_count} parameters has {want} values, got {len}",
            opt.name()
        )));
    }
    Ok(())
}
