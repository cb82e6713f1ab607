//! The training loop, written once against [`Backend`]: epochs, shuffled
//! mini-batches, per-epoch metrics, and a final evaluation pass.
//!
//! An epoch's loss and accuracy are the running figures of its forward passes
//! (as PyTorch loops usually report them); the loss is reduced on the device
//! and read back once per epoch. [`evaluate`] scores fixed parameters.

use crate::backend::{Backend, Metric, Totals};
use crate::data::Dataset;
use crate::error::{Error, Result, Setting};
use num_traits::NumCast;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per step (the last batch of an epoch may be smaller).
    pub batch: usize,
    /// The base learning rate, before the schedule.
    pub lr: f32,
    /// Seeds the initial parameters and the shuffling.
    pub seed: u64,
    /// Shuffle the samples every epoch.
    pub shuffle: bool,
    /// How the learning rate changes from epoch to epoch
    /// ([`Schedule::OneCycle`]: from step to step).
    pub schedule: Schedule,
    /// Steps of linear warmup at the start of the run, before and composed
    /// with the schedule ([`TrainConfig::lr_at`]); 0 for none.
    pub warmup: usize,
    /// Check the running loss after every step (`--nan-check`), not only at
    /// the end of each epoch: a divergence stops at the step it happens. On a
    /// GPU each check waits for the step and reads back a few bytes.
    pub nan_check: bool,
}

/// A learning-rate schedule: the rate of epoch `e` (1-based) of `E`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Schedule {
    /// `lr` throughout.
    #[default]
    Constant,
    /// `lr · gamma^⌊(e − 1) / every⌋`: multiplied by `gamma` every `every` epochs.
    Step {
        /// Epochs between decays.
        every: usize,
        /// Factor of each decay.
        gamma: f32,
    },
    /// `lr · ½(1 + cos(π (e − 1) / E))`: from `lr` down towards 0.
    Cosine,
    /// One cycle (Smith's), step by step: a linear warmup from 0 to `lr`
    /// over [`TrainConfig::warmup`] steps (30% of the run's steps when that
    /// is 0), then half a cosine from `lr` down towards 0 over the rest.
    OneCycle,
}

impl Schedule {
    /// The learning rate of epoch `epoch` (1-based) of `epochs` (one-cycle:
    /// `base`; its curve is per step, [`TrainConfig::lr_at`]).
    pub fn lr(&self, base: f32, epoch: usize, epochs: usize) -> f32 {
        let e = epoch.saturating_sub(1);
        match *self {
            Schedule::Constant | Schedule::OneCycle => base,
            Schedule::Step { every, gamma } => {
                base * gamma.powi((e / every.max(1)).min(i32::MAX as usize) as i32)
            }
            Schedule::Cosine => {
                let frac = e as f64 / epochs.max(1) as f64;
                (base as f64 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())) as f32
            }
        }
    }

    /// `constant`, `step:EVERY:GAMMA`, `cosine` or `onecycle`, as checkpoints store it.
    pub fn spec(&self) -> String {
        match self {
            Schedule::Constant => "constant".into(),
            Schedule::OneCycle => "onecycle".into(),
            Schedule::Step { every, gamma } => {
                format!("step:{every}:{}", crate::checkpoint::shortest(*gamma))
            }
            Schedule::Cosine => "cosine".into(),
        }
    }

    /// Reads [`Schedule::spec`]'s form.
    pub fn parse(s: &str) -> Result<Schedule> {
        let bad = || {
            Error::setting(
                Setting::Schedule,
                s,
                "is not constant, step:EVERY:GAMMA, cosine or onecycle",
            )
        };
        let mut parts = s.split(':');
        let sched = match parts.next() {
            Some("constant") => Schedule::Constant,
            Some("onecycle") => Schedule::OneCycle,
            Some("cosine") => Schedule::Cosine,
            Some("step") => {
                let every = parts.next().map_or(Ok(10), str::parse).map_err(|_| bad())?;
                let gamma = parts
                    .next()
                    .map_or(Ok(0.1), str::parse)
                    .map_err(|_| bad())?;
                Schedule::Step { every, gamma }
            }
            _ => return Err(bad()),
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        sched.validate()?;
        Ok(sched)
    }

    /// Refuse a step schedule with `every` 0 or a `gamma` outside (0, 1].
    pub fn validate(&self) -> Result<()> {
        if let Schedule::Step { every, gamma } = *self {
            if every == 0 {
                return Err(Error::setting(
                    Setting::ScheduleStep,
                    every,
                    "must be at least 1",
                ));
            }
            if !(gamma > 0.0 && gamma <= 1.0) {
                return Err(Error::setting(
                    Setting::ScheduleGamma,
                    gamma,
                    "must be in (0, 1]",
                ));
            }
        }
        Ok(())
    }
}

impl Default for TrainConfig {
    /// 10 epochs of batch 32 at lr 0.1, seed 42, shuffled, constant rate, no warmup.
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch: 32,
            lr: 0.1,
            seed: 42,
            shuffle: true,
            schedule: Schedule::Constant,
            warmup: 0,
            nan_check: false,
        }
    }
}

impl TrainConfig {
    /// Warmup steps in force for a run of `total` steps: [`TrainConfig::warmup`],
    /// or for one-cycle without it, 30% of the run.
    pub fn warmup_steps(&self, total: u64) -> u64 {
        match (self.schedule, self.warmup) {
            (Schedule::OneCycle, 0) => (total * 3).div_ceil(10),
            (_, w) => w as u64,
        }
    }

    /// The learning rate of step `step` (1-based) of epoch `epoch`, at
    /// `steps` per epoch: the schedule's rate, times the warmup ramp
    /// `s / W` at global step `s <= W` (from `lr/W` at the first step to the
    /// full rate at step `W`). One-cycle follows the ramp with half a cosine
    /// over the remaining steps. A function of the global step only, so a
    /// resumed run (same batch) takes the same rates as a straight one.
    pub fn lr_at(&self, epoch: usize, step: usize, steps: usize) -> f32 {
        let s = (epoch.saturating_sub(1) as u64)
            .saturating_mul(steps as u64)
            .saturating_add(step as u64);
        let total = (self.epochs as u64).saturating_mul(steps as u64).max(1);
        let w = self.warmup_steps(total);
        let base = match self.schedule {
            Schedule::OneCycle if s > w => {
                let frac = (s - w - 1) as f64 / (total.saturating_sub(w)).max(1) as f64;
                (self.lr as f64 * 0.5 * (1.0 + (std::f64::consts::PI * frac).cos())) as f32
            }
            sched => sched.lr(self.lr, epoch, self.epochs),
        };
        if s < w {
            (base as f64 * s as f64 / w as f64) as f32
        } else {
            base
        }
    }

    /// Refuse values that cannot train. Zero epochs is valid: a run that
    /// only writes its initial weights ([`crate::Trainer::fit`]).
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::setting(Setting::Batch, 0, "must be at least 1"));
        }
        self.schedule.validate()?;
        if !self.lr.is_finite() || self.lr <= 0.0 {
            return Err(Error::setting(
                Setting::LearningRate,
                self.lr,
                "must be a positive finite number",
            ));
        }
        Ok(())
    }
}

/// The samples per step that training uses: the requested batch, at most
/// the backend's `capacity` and the data's `rows`, and at least 1. The one
/// place this rule is written; size a backend with
/// `batch_size(requested, usize::MAX, rows)`.
pub fn batch_size(requested: usize, capacity: usize, rows: usize) -> usize {
    requested.min(capacity).min(rows).max(1)
}

/// What one epoch measured.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochStats {
    /// 1-based.
    pub epoch: usize,
    /// Mean per-sample loss over the epoch's forward passes.
    pub loss: f64,
    /// Fraction correct over the epoch, `None` for regression.
    pub accuracy: Option<f64>,
    /// Wall-clock seconds of the epoch's training, including the read-back of its loss.
    pub seconds: f64,
    /// Training samples per second in this epoch.
    pub samples_per_s: f64,
    /// Mean loss on the validation set after the epoch, if there is one.
    pub val_loss: Option<f64>,
    /// Fraction correct on the validation set, if there is one and it is classification.
    pub val_accuracy: Option<f64>,
    /// Updates of the epoch whose gradients clipping scaled down
    /// ([`crate::optim::Optimizer::clip_norm`]); 0 without clipping.
    #[serde(default)]
    pub clipped: u64,
}

/// Progress reported while training.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A step was submitted (`step` of `steps` in the epoch).
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// The learning rate the step used ([`TrainConfig::lr_at`]).
        lr: f32,
    },
    /// An epoch finished.
    Epoch(&'a EpochStats),
}

/// Reusable host buffers for one batch, converted to the backend's scalar.
struct BatchBuf<T> {
    xf: Vec<f32>,
    yf: Vec<f32>,
    x: Vec<T>,
    y: Vec<T>,
}

impl<T: crate::network::Real> BatchBuf<T> {
    fn new() -> Self {
        BatchBuf {
            xf: Vec::new(),
            yf: Vec::new(),
            x: Vec::new(),
            y: Vec::new(),
        }
    }

    /// Gather rows `idx` of `data` and stage them on `backend`.
    fn load<B: Backend<Scalar = T> + ?Sized>(
        &mut self,
        backend: &mut B,
        data: &Dataset,
        idx: &[usize],
    ) -> Result<()> {
        self.xf.resize(idx.len() * data.inputs, 0.0);
        self.yf.resize(idx.len() * data.outputs, 0.0);
        data.gather(idx, &mut self.xf, &mut self.yf);
        let conv = |src: &[f32], dst: &mut Vec<T>| {
            dst.clear();
            dst.extend(
                src.iter()
                    .map(|&v| <T as NumCast>::from(v).unwrap_or_else(T::nan)),
            );
        };
        conv(&self.xf, &mut self.x);
        conv(&self.yf, &mut self.y);
        backend.load_batch(&self.x, &self.y)
    }
}

/// Train `backend` (whose parameters are already set) on `data`.
/// `on` sees every step and every epoch. Stops with [`Error::Diverged`] at the
/// first epoch whose loss is not finite.
pub fn train<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    cfg: &TrainConfig,
    on: impl FnMut(Progress<'_>),
) -> Result<Vec<EpochStats>> {
    train_validated(backend, data, None, cfg, on)
}

/// [`train`], scoring `val` (if given) with the parameters after each epoch.
pub fn train_validated<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    mut on: impl FnMut(Progress<'_>),
) -> Result<Vec<EpochStats>> {
    train_epochs(backend, data, val, cfg, 1, |_, p| {
        on(p);
        Ok(())
    })
}

/// Epochs `first..=cfg.epochs` of a run, the form that resuming uses: an
/// epoch's shuffle depends only on the seed and its number, so epochs 3..=4
/// after a checkpoint of epoch 2 are the epochs 3..=4 of a straight run.
/// `on` also gets the backend, to save checkpoints at the end of an epoch;
/// an error from it stops the run.
pub fn train_epochs<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    first: usize,
    on: impl FnMut(&mut B, Progress<'_>) -> Result<()>,
) -> Result<Vec<EpochStats>> {
    train_from(
        backend,
        data,
        val,
        cfg,
        Start { first, skip: 0 },
        &|| false,
        on,
    )
}

/// Where [`train_from`] starts: epoch `first`, after its first `skip` steps
/// (those a checkpoint written mid-epoch already took).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Start {
    pub first: usize,
    pub skip: usize,
}

/// [`train_epochs`] from `start`, and stopping after the first step for
/// which `stop()` is true (an interrupt; early stopping, which decides at an
/// epoch's end): the epochs completed are returned, and the parameters are
/// those after that step.
pub(crate) fn train_from<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    val: Option<&Dataset>,
    cfg: &TrainConfig,
    Start { first, skip }: Start,
    stopped: &dyn Fn() -> bool,
    mut on: impl FnMut(&mut B, Progress<'_>) -> Result<()>,
) -> Result<Vec<EpochStats>> {
    cfg.validate()?;
    if first == 0 || first > cfg.epochs {
        return Err(Error::setting(
            Setting::Epochs,
            cfg.epochs,
            format!("nothing to train: epoch {first} is past it (epochs count the total, resumed ones included)"),
        ));
    }
    let net = backend.network().clone();
    data.check_shape(net.inputs(), net.outputs())?;
    if let Some(v) = val {
        v.check_shape(net.inputs(), net.outputs())?;
        if v.is_empty() {
            return Err(Error::Invalid(format!(
                "validation set '{}' has no samples",
                v.name
            )));
        }
    }
    if data.is_empty() {
        return Err(Error::Invalid(format!(
            "dataset '{}' has no samples",
            data.name
        )));
    }
    let batch = batch_size(cfg.batch, backend.capacity(), data.len());
    let metric = Metric::for_task(data.task, net.outputs());
    backend.set_metric(metric)?;
    backend.set_dropout_seed(cfg.seed)?;
    backend.take_totals()?;
    let mut order: Vec<usize> = (0..data.len()).collect();
    let steps = steps_per_epoch(cfg.batch, backend.capacity(), data.len());
    let total = total_steps(cfg.epochs, steps)?;
    if cfg.warmup as u64 > total {
        return Err(Error::setting(
            Setting::Warmup,
            cfg.warmup,
            format!(
                "is longer than the run: {} epochs of {steps} steps take {total}",
                cfg.epochs
            ),
        ));
    }
    let mut buf = BatchBuf::new();
    // Grows with the epochs trained, never with the epochs asked for.
    let mut history = Vec::new();
    for epoch in first..=cfg.epochs {
        let t0 = Instant::now();
        let mut lr = cfg.lr_at(epoch, 1, steps);
        if cfg.shuffle {
            // One stream per epoch, shuffling the identity: an epoch's order
            // depends only on the seed and its number, so resumed runs repeat it.
            let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
            rng.set_stream(epoch as u64);
            for (i, o) in order.iter_mut().enumerate() {
                *o = i;
            }
            order.shuffle(&mut rng);
        }
        let skip = if epoch == first { skip } else { 0 };
        for (step, idx) in order.chunks(batch).enumerate().skip(skip) {
            buf.load(backend, data, idx)?;
            lr = cfg.lr_at(epoch, step + 1, steps);
            backend.step(lr)?;
            if cfg.nan_check {
                let loss = backend.peek_totals()?.loss();
                if !loss.is_finite() {
                    let what = format!(
                        "the loss became {loss} in epoch {epoch} (step {} of {steps})",
                        step + 1
                    );
                    return Err(diverged(&what, lr, data));
                }
            }
            on(
                backend,
                Progress::Step {
                    epoch,
                    step: step + 1,
                    steps,
                    lr,
                },
            )?;
            if stopped() && step + 1 < steps {
                // Mid-epoch: the epoch's figures would cover part of it, so
                // it is not recorded; the parameters are those after this step.
                backend.take_totals()?;
                return finish(backend, history, cfg, data);
            }
        }
        let totals = backend.take_totals()?;
        let seconds = t0.elapsed().as_secs_f64();
        let mut stats = EpochStats {
            epoch,
            loss: totals.loss(),
            accuracy: totals.accuracy(metric),
            seconds,
            samples_per_s: data.len() as f64 / seconds.max(1e-12),
            val_loss: None,
            val_accuracy: None,
            clipped: totals.clipped,
        };
        if !stats.loss.is_finite() {
            let what = format!("the loss became {} in epoch {epoch}", stats.loss);
            return Err(diverged(&what, lr, data));
        }
        if let Some(v) = val {
            let (t, m) = evaluate(backend, v)?;
            stats.val_loss = Some(t.loss());
            stats.val_accuracy = t.accuracy(m);
            // evaluate leaves its metric set; the next epoch scores training data.
            backend.set_metric(metric)?;
        }
        on(backend, Progress::Epoch(&stats))?;
        history.push(stats);
        if stopped() {
            break;
        }
    }
    finish(backend, history, cfg, data)
}

/// Steps in an epoch of `rows` samples at [`batch_size`]`(requested,
/// capacity, rows)` each, the last one possibly smaller.
pub fn steps_per_epoch(requested: usize, capacity: usize, rows: usize) -> usize {
    rows.div_ceil(batch_size(requested, capacity, rows))
}

/// Refuses a run whose step count, `epochs` × `steps` per epoch, does not
/// fit in 64 bits (the step records number steps in a `u64`); returns it.
pub fn total_steps(epochs: usize, steps: usize) -> Result<u64> {
    (epochs as u64).checked_mul(steps as u64).ok_or_else(|| {
        Error::setting(
            Setting::Epochs,
            epochs,
            format!(
                "is too many: at {steps} steps per epoch the run's step count overflows 64 bits"
            ),
        )
    })
}

/// The end of a run, complete or stopped: its parameters must be finite.
fn finish<B: Backend + ?Sized>(
    backend: &mut B,
    history: Vec<EpochStats>,
    cfg: &TrainConfig,
    data: &Dataset,
) -> Result<Vec<EpochStats>> {
    // An epoch's loss is measured before each update, so the last update can
    // still have overflowed: the run ends with finite parameters or an error.
    if !backend
        .params()?
        .data
        .iter()
        .all(|v| num_traits::Float::is_finite(*v))
    {
        let what = format!(
            "the parameters became non-finite in the last update of epoch {}",
            cfg.epochs
        );
        let lr = cfg.schedule.lr(cfg.lr, cfg.epochs, cfg.epochs);
        return Err(diverged(&what, lr, data));
    }
    Ok(history)
}

/// Inputs or targets larger than this in magnitude make a divergence likely
/// to come from unscaled data rather than only from the learning rate.
const LARGE_INPUT: f32 = 1e3;

/// The [`Error::Diverged`] for `what` went wrong, with the
/// likely cause: the learning rate, and unscaled inputs when they are large.
/// The largest values are read block by block, so a memory-mapped set is
/// searched too, without being copied whole.
fn diverged(what: &str, lr: f32, data: &Dataset) -> Error {
    let largest = |m: f32, v: &[f32]| v.iter().fold(m, |m, v| m.max(v.abs()));
    let (mut x, mut y) = (0f32, 0f32);
    data.for_each_block(|bx, by| {
        x = largest(x, bx);
        y = largest(y, by);
    });
    let large = |v: f32| Some(v).filter(|&v| v > LARGE_INPUT);
    Error::Diverged {
        what: what.to_string(),
        lr,
        inputs: large(x),
        weight_decay: None,
        targets: large(y),
    }
}

/// Loss and score of the backend's current parameters on `data`, in batches
/// of the backend's capacity. Leaves the parameters unchanged.
pub fn evaluate<B: Backend + ?Sized>(backend: &mut B, data: &Dataset) -> Result<(Totals, Metric)> {
    forward_all(backend, data, |_| Ok(()))
}

/// The network's outputs for every row of `data`, `(len, outputs)`, in
/// batches of the backend's capacity. Leaves the parameters unchanged.
pub fn predict<B: Backend<Scalar = f32> + ?Sized>(
    backend: &mut B,
    data: &Dataset,
) -> Result<Vec<f32>> {
    Ok(evaluate_and_predict(backend, data)?.2)
}

/// [`evaluate`] and [`predict`] in one pass over the data.
pub fn evaluate_and_predict<B: Backend<Scalar = f32> + ?Sized>(
    backend: &mut B,
    data: &Dataset,
) -> Result<(Totals, Metric, Vec<f32>)> {
    let last = backend.network().layers().len();
    let mut out = Vec::with_capacity(data.len() * data.outputs);
    let (totals, metric) = forward_all(backend, data, |b| {
        out.extend(b.read_activations(last)?);
        Ok(())
    })?;
    Ok((totals, metric, out))
}

/// Forward passes over all of `data` in batches of the backend's capacity,
/// `after` running once per batch; returns the totals, which it resets.
fn forward_all<B: Backend + ?Sized>(
    backend: &mut B,
    data: &Dataset,
    mut after: impl FnMut(&mut B) -> Result<()>,
) -> Result<(Totals, Metric)> {
    let net = backend.network().clone();
    data.check_shape(net.inputs(), net.outputs())?;
    let metric = Metric::for_task(data.task, net.outputs());
    backend.set_metric(metric)?;
    backend.take_totals()?;
    let order: Vec<usize> = (0..data.len()).collect();
    let mut buf = BatchBuf::new();
    for idx in order.chunks(backend.capacity()) {
        buf.load(backend, data, idx)?;
        backend.forward()?;
        after(backend)?;
    }
    Ok((backend.take_totals()?, metric))
}

/// The class a row of outputs predicts: the argmax, or for a single output
/// a 0.5 threshold (class 1 above it).
pub fn class_of(row: &[f32]) -> usize {
    if row.len() == 1 {
        (row[0] > 0.5) as usize
    } else {
        crate::backend::argmax(row)
    }
}

/// `confusion[true class][predicted class]` counts of `outputs`
/// ([`predict`]'s, `(len, outputs)`) against `data`'s targets.
pub fn confusion_matrix(outputs: &[f32], data: &Dataset) -> Vec<Vec<u64>> {
    let no = data.outputs.max(1);
    let k = no.max(2);
    let mut c = vec![vec![0u64; k]; k];
    for (p, y) in outputs.chunks(no).zip(data.targets().chunks(no)) {
        c[class_of(y)][class_of(p)] += 1;
    }
    c
}
