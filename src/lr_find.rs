//! The learning-rate range test (Smith 2017; Lightning's `LearningRateFinder`,
//! fastai's `lr_find`): from the initial weights, one training step per
//! learning rate on an exponential sweep from `start` to `end`, recording
//! the loss of each step's batch and its exponentially smoothed, debiased
//! mean (`β = 0.98`); the sweep stops early once the smoothed loss exceeds
//! four times its best, or is not finite. The suggestion is a tenth of the
//! rate of the lowest smoothed loss, the rule fastai calls `minimum`
//! (`lr_min / 10`). The parameters and the
//! optimiser's state are put back afterwards: the sweep changes nothing.
//!
//! ```
//! use shadertrain::{Dataset, Network, Trainer};
//! use shadertrain::lr_find::LrFind;
//! # fn main() -> shadertrain::Result<()> {
//! let data = Dataset::xor();
//! let mut t = Trainer::cpu(&Network::parse("2,8:tanh,1")?, 4)?.batch(4);
//! let sweep = t.lr_find(&data, &LrFind { start: 1e-4, end: 10.0, steps: 60 })?;
//! assert!(sweep.suggested > 1e-4 && sweep.suggested < 10.0);
//! # Ok(())
//! # }
//! ```

use crate::backend::{Backend, Metric};
use crate::data::Dataset;
use crate::error::{Error, Result, Setting};
use num_traits::NumCast;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The sweep: `steps` learning rates from `start` to `end`, geometrically spaced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrFind {
    /// The first rate, `> 0`.
    pub start: f32,
    /// The last rate, `> start`.
    pub end: f32,
    /// Steps (rates), at least 5.
    pub steps: usize,
}

impl Default for LrFind {
    /// 100 steps from 1e-7 to 10, as Lightning's default.
    fn default() -> Self {
        LrFind {
            start: 1e-7,
            end: 10.0,
            steps: 100,
        }
    }
}

impl LrFind {
    /// Refuses a range that is not `0 < start < end` (finite) and fewer than 5 steps.
    pub fn validate(&self) -> Result<()> {
        if !(self.start.is_finite() && self.start > 0.0) {
            return Err(Error::setting(
                Setting::LearningRate,
                self.start,
                "must be a positive finite number to start the sweep",
            ));
        }
        if !(self.end.is_finite() && self.end > self.start) {
            return Err(Error::setting(
                Setting::LearningRate,
                self.end,
                format!("must be finite and above the sweep's start, {}", self.start),
            ));
        }
        if self.steps < 5 {
            return Err(Error::setting(
                Setting::Steps,
                self.steps,
                "must be at least 5 for a sweep",
            ));
        }
        Ok(())
    }

    /// The rate of step `i` (0-based): `start·(end/start)^(i/(steps − 1))`.
    pub fn lr(&self, i: usize) -> f32 {
        let f = i as f64 / (self.steps - 1).max(1) as f64;
        (self.start as f64 * (self.end as f64 / self.start as f64).powf(f)) as f32
    }
}

/// One step of the sweep.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LrPoint {
    /// The rate of the step.
    pub lr: f32,
    /// The loss of its batch (before its update).
    pub loss: f64,
    /// The smoothed, debiased loss up to it.
    pub smoothed: f64,
}

/// What the sweep found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LrSweep {
    /// Every step taken, in order.
    pub points: Vec<LrPoint>,
    /// The suggested rate (see `rule`).
    pub suggested: f32,
    /// How `suggested` was chosen, for people.
    pub rule: &'static str,
    /// The rate with the lowest smoothed loss.
    pub min_loss_lr: f32,
    /// The rate at which the sweep stopped early, the loss having diverged.
    pub diverged_at: Option<f32>,
}

/// Smoothing of the loss, as fastai's.
const BETA: f64 = 0.98;

/// The sweep on `backend` from its current parameters, batches of `batch`
/// rows of `data` (shuffled by `seed`, cycling), with the parameters and
/// optimiser state restored afterwards (also after an error).
pub fn lr_find<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    batch: usize,
    seed: u64,
    sweep: &LrFind,
) -> Result<LrSweep> {
    sweep.validate()?;
    let net = backend.network().clone();
    data.check_shape(net.inputs(), net.outputs())?;
    if data.is_empty() {
        return Err(Error::Invalid(format!(
            "dataset '{}' has no samples",
            data.name
        )));
    }
    let params = backend.params()?;
    let (t, state) = backend.optimizer_state()?;
    let run = sweep_steps(backend, data, batch, seed, sweep);
    backend.set_params(&params)?;
    backend.set_optimizer_state(t, &state)?;
    backend.take_totals()?;
    let points = run?;
    Ok(suggest(points, sweep))
}

fn sweep_steps<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    batch: usize,
    seed: u64,
    sweep: &LrFind,
) -> Result<Vec<LrPoint>> {
    let net = backend.network().clone();
    let batch = crate::train::batch_size(batch, backend.capacity(), data.len());
    backend.set_metric(Metric::for_task(data.task, net.outputs()))?;
    backend.set_dropout_seed(seed)?;
    backend.take_totals()?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    order.shuffle(&mut rng);
    let (mut xf, mut yf) = (Vec::new(), Vec::new());
    let mut points: Vec<LrPoint> = Vec::with_capacity(sweep.steps);
    let (mut avg, mut best) = (0.0f64, f64::INFINITY);
    let mut chunks = order.chunks(batch).cycle();
    for i in 0..sweep.steps {
        let idx = chunks.next().unwrap_or(&[]);
        xf.resize(idx.len() * data.inputs, 0.0);
        yf.resize(idx.len() * data.outputs, 0.0);
        data.gather(idx, &mut xf, &mut yf);
        let conv = |v: &[f32]| -> Vec<B::Scalar> {
            v.iter()
                .map(|&x| {
                    <B::Scalar as NumCast>::from(x)
                        .unwrap_or_else(<B::Scalar as num_traits::Float>::nan)
                })
                .collect()
        };
        backend.load_batch(&conv(&xf), &conv(&yf))?;
        let lr = sweep.lr(i);
        backend.step(lr)?;
        let loss = backend.take_totals()?.loss();
        avg = BETA * avg + (1.0 - BETA) * loss;
        let smoothed = avg / (1.0 - BETA.powi(i as i32 + 1));
        points.push(LrPoint { lr, loss, smoothed });
        if !smoothed.is_finite() || smoothed > 4.0 * best {
            break;
        }
        best = best.min(smoothed);
    }
    Ok(points)
}

/// A tenth of the rate at the lowest smoothed loss (fastai's `lr_min / 10`),
/// skipping the first tenth of the sweep, whose smoothed mean still rests on
/// few batches (fastai's `skip_start`). The steepest descent of the smoothed
/// loss, Lightning's rule, was tried first: at the sweep's small rates the
/// loss barely moves, and its noise made the steepest slope land there
/// (2.4e-6 on the built-in spirals, whose working rate is 0.1).
fn suggest(points: Vec<LrPoint>, sweep: &LrFind) -> LrSweep {
    let last = points.last().copied();
    let diverged = last
        .filter(|p| points.len() < sweep.steps || !p.smoothed.is_finite())
        .map(|p| p.lr);
    let finite: Vec<&LrPoint> = points.iter().filter(|p| p.smoothed.is_finite()).collect();
    let n = finite.len();
    let skip = (sweep.steps / 10).max(1);
    let min = finite
        .iter()
        .enumerate()
        .skip(skip.min(n.saturating_sub(1)))
        .min_by(|a, b| a.1.smoothed.total_cmp(&b.1.smoothed))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let min_loss_lr = finite.get(min).map_or(sweep.start, |p| p.lr);
    LrSweep {
        points,
        suggested: min_loss_lr / 10.0,
        rule: "a tenth of the rate of the lowest smoothed loss",
        min_loss_lr,
        diverged_at: diverged,
    }
}
