//! [`Trainer`]: the one training pipeline, for the command line and library
//! users alike. It owns a backend (chosen by [`Device`]: a real GPU when there
//! is one, else the fast CPU backend, or one you give it), the training
//! settings, the initial parameters, the run's history and its checkpoint
//! state; it trains (reporting every step and epoch to a callback that can
//! see the backend), validates, saves every N epochs, logs to experiment
//! trackers ([`crate::metrics`]), evaluates and predicts.
//! `shadertrain train`, `eval` and `predict` are this type plus flag parsing
//! and rendering.
//!
//! ```
//! use shadertrain::{Dataset, Network, Trainer};
//! # fn main() -> shadertrain::Result<()> {
//! let data = Dataset::xor();
//! let mut t = Trainer::cpu(&Network::parse("2,4,1")?, 4)?.epochs(2000).batch(4).lr(5.0);
//! t.fit(&data)?;
//! let (totals, metric) = t.evaluate(&data)?;
//! assert_eq!(totals.accuracy(metric), Some(1.0));
//! # Ok(())
//! # }
//! ```

use crate::backend::{Backend, Metric, Totals};
use crate::checkpoint::{Checkpoint, DataFingerprint, TrainState, ValidationSet};
use crate::cpu::FastCpuBackend;
use crate::data::{Dataset, Standardizer};
use crate::early_stop::{EarlyStop, EarlyStopState};
use crate::error::{Error, Result, Setting};
use crate::gpu::{GpuBackend, GpuContext, GpuOptions};
use crate::metrics::{MetricsSink, RunRecord, StepRecord, DEFAULT_LOG_EVERY};
use crate::network::{Network, Params};
use crate::optim::Optimizer;
use crate::train::{
    evaluate, evaluate_and_predict, steps_per_epoch, train_from, EpochStats, Progress, Schedule,
    Start, TrainConfig,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where to train.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Device {
    /// A real GPU if there is one, else the fast CPU backend on `threads`. A
    /// software adapter (device type `Cpu`, such as Mesa's lavapipe) counts
    /// as none: it is about a hundred times slower than the CPU backend.
    Auto {
        /// CPU threads if it falls back to the CPU; 0 for one per core.
        threads: usize,
    },
    /// The fast CPU backend on this many threads (0: one per core).
    Cpu {
        /// Threads; 0 for one per core.
        threads: usize,
    },
    /// A GPU: the one `adapter` names (an index as [`crate::gpu::list_adapters`]
    /// orders them, or part of a name), or the best one; software adapters
    /// included. An error when there is none.
    Gpu {
        /// The adapter's index or part of its name; `None` for the best.
        adapter: Option<String>,
    },
    /// Data-parallel over these devices, one worker thread each
    /// ([`crate::parallel`]): a GPU listed twice opens two devices on it,
    /// each from its own wgpu instance. All GPUs or all CPUs: their updates
    /// round alike only on one kind.
    Parallel(Vec<Device>),
    /// One device running every batch as `parts` micro-batches in shard
    /// order: the reference that [`Device::Parallel`] over `parts` devices
    /// equals bit for bit.
    MicroBatches {
        /// The device.
        device: Box<Device>,
        /// P, the shards of each batch.
        parts: usize,
    },
    /// This process as one rank of an MPI job (the `mpi` feature), training
    /// on this device: the ranks of `MPI_COMM_WORLD` are the workers, rank
    /// `k` taking shard `k` ([`crate::parallel`]).
    Mpi(Box<Device>),
}

/// What a [`Device`] comes to on this machine.
pub enum Resolved {
    /// The CPU on `threads` (0: one per core), and why, if `Auto` chose it.
    Cpu {
        /// Threads; 0 for one per core.
        threads: usize,
        /// Why [`Device::Auto`] chose the CPU.
        fallback: Option<Fallback>,
    },
    /// An opened GPU.
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// Finds the device: opens the GPU it names, or decides for the CPU (for
    /// several devices, the first).
    pub fn resolve(&self) -> Result<Resolved> {
        let cpu = |threads, why| Resolved::Cpu {
            threads,
            fallback: Some(why),
        };
        Ok(match self {
            Device::Cpu { threads } => Resolved::Cpu {
                threads: *threads,
                fallback: None,
            },
            Device::Gpu { adapter: Some(sel) } => Resolved::Gpu(GpuContext::with_adapter(sel)?),
            Device::Gpu { adapter: None } => Resolved::Gpu(GpuContext::new()?),
            Device::Auto { threads } => match GpuContext::new() {
                Ok(ctx) if ctx.info.device_type != wgpu::DeviceType::Cpu => Resolved::Gpu(ctx),
                Ok(ctx) => cpu(*threads, Fallback::SoftwareGpu(ctx.describe())),
                Err(e) => cpu(*threads, Fallback::NoGpu(e.to_string())),
            },
            Device::Parallel(list) => match list.first() {
                Some(d) => return d.resolve(),
                None => return Err(crate::parallel::no_devices()),
            },
            Device::MicroBatches { device, .. } | Device::Mpi(device) => return device.resolve(),
        })
    }

    /// Opens the backend for `net` and batches up to `capacity`, a GPU
    /// built with `gpu` where given (else [`GpuOptions::default`]); its
    /// kind, and why `Auto` chose the CPU. Several workers run one kernel
    /// plan, resolved once and handed to each ([`crate::parallel`]).
    pub(crate) fn open_with(
        &self,
        net: &Network,
        capacity: usize,
        gpu: Option<&GpuOptions>,
    ) -> Result<(crate::parallel::WorkerBackend, Kind, Option<Fallback>)> {
        if let Device::Parallel(_) | Device::MicroBatches { .. } | Device::Mpi(_) = self {
            return crate::parallel::open(self, net, capacity, gpu);
        }
        self.resolve()?.open(net, capacity, gpu)
    }
}

impl Resolved {
    /// Its backend for `net` and batches of up to `capacity`; a GPU built
    /// with `gpu` where given (a CPU ignores it).
    pub(crate) fn open(
        self,
        net: &Network,
        capacity: usize,
        gpu: Option<&GpuOptions>,
    ) -> Result<(crate::parallel::WorkerBackend, Kind, Option<Fallback>)> {
        Ok(match self {
            Resolved::Cpu { threads, fallback } => (
                Box::new(FastCpuBackend::new(net, capacity, threads)?),
                Kind::Cpu,
                fallback,
            ),
            Resolved::Gpu(ctx) => (
                match gpu {
                    Some(o) => Box::new(GpuBackend::with_options(ctx, net, capacity, o.clone())?),
                    None => Box::new(GpuBackend::new(ctx, net, capacity)?),
                },
                Kind::Gpu,
                None,
            ),
        })
    }
}

/// Why [`Device::Auto`] chose the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fallback {
    /// No GPU adapter could be opened; the reason.
    NoGpu(String),
    /// The only adapter is a software one (named), slower than the CPU backend.
    SoftwareGpu(String),
}

/// Which kind of backend a [`Trainer`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A CPU backend.
    Cpu,
    /// A GPU backend.
    Gpu,
}

impl Kind {
    /// `cpu` or `gpu`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cpu => "cpu",
            Kind::Gpu => "gpu",
        }
    }
}

/// Trains one network on one backend; settings are chained builder-style.
pub struct Trainer {
    backend: Box<dyn Backend<Scalar = f32>>,
    kind: Kind,
    fallback: Option<Fallback>,
    cfg: TrainConfig,
    /// Parameters not yet set: the first use draws them from the seed.
    fresh: bool,
    optimizer: Optimizer,
    standardizer: Option<Standardizer>,
    /// Every epoch so far, resumed ones first.
    history: Vec<EpochStats>,
    /// The data the parameters were trained on.
    trained_on: Option<TrainedOn>,
    /// Where to write checkpoints, and every how many epochs (else at the end only).
    save: Option<(PathBuf, Option<usize>)>,
    /// Where step and epoch records go ([`Trainer::log_to`]).
    sinks: Vec<Box<dyn MetricsSink>>,
    /// The sinks (a prefix) that have had their [`RunRecord`].
    announced: usize,
    /// Steps between step records.
    log_every: usize,
    /// Set from outside (a signal handler) to end the run after the current step.
    stop: Option<Arc<AtomicBool>>,
    /// Whether the last [`Trainer::fit_observed`] ended early for `stop`.
    stopped: bool,
    /// Steps of the first epoch not yet recorded that the parameters already
    /// took (a run stopped mid-epoch, or a checkpoint written by one).
    partial: Partial,
    /// Early stopping's rule and state, if on.
    early: Option<EarlyStopState>,
}

/// Steps into an epoch that the history does not record yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Partial {
    /// None: the parameters are those at the end of the last recorded epoch.
    #[default]
    None,
    /// This many steps, at the run's batch.
    Steps(usize),
    /// From a checkpoint: the optimiser's update count `t`, to be matched
    /// against the steps its epochs took at its `batch` on `samples` rows.
    Updates {
        t: u64,
        batch: usize,
        samples: usize,
    },
}

impl Trainer {
    /// On `backend` (of kind [`Kind::Gpu`] where [`Backend::on_gpu`] says so,
    /// else [`Kind::Cpu`]; see [`Trainer::on`]). Defaults: 10 epochs, batches of the backend's
    /// capacity, lr 0.1, seed 42, plain SGD, constant rate; parameters drawn
    /// from the seed at first use unless [`Trainer::set_params`] gives them.
    pub fn new(backend: Box<dyn Backend<Scalar = f32>>) -> Trainer {
        let cfg = TrainConfig {
            batch: backend.capacity(),
            ..TrainConfig::default()
        };
        let kind = if backend.on_gpu() {
            Kind::Gpu
        } else {
            Kind::Cpu
        };
        Trainer {
            backend,
            kind,
            fallback: None,
            cfg,
            fresh: true,
            optimizer: Optimizer::default(),
            standardizer: None,
            history: Vec::new(),
            trained_on: None,
            save: None,
            sinks: Vec::new(),
            announced: 0,
            log_every: DEFAULT_LOG_EVERY,
            stop: None,
            stopped: false,
            partial: Partial::None,
            early: None,
        }
    }

    /// On `device`, with buffers for batches of up to `capacity` samples.
    pub fn on(device: &Device, net: &Network, capacity: usize) -> Result<Trainer> {
        Self::on_with(device, net, capacity, None)
    }

    /// As [`Trainer::on`], a GPU built with `gpu` where given: its kernel
    /// configuration per product ([`GpuOptions::plan`], a checkpoint's
    /// record replayed), tuning mode and cache directory. With several
    /// workers ([`Device::Parallel`], [`Device::MicroBatches`],
    /// [`Device::Mpi`]) every GPU worker runs the one plan these options
    /// resolve on the first GPU worker's adapter (on rank 0's in MPI).
    pub fn on_with(
        device: &Device,
        net: &Network,
        capacity: usize,
        gpu: Option<&GpuOptions>,
    ) -> Result<Trainer> {
        let (backend, kind, fallback) = device.open_with(net, capacity, gpu)?;
        let mut t = Trainer::new(backend);
        t.kind = kind;
        t.fallback = fallback;
        Ok(t)
    }

    /// On the best real GPU, or on the CPU when there is none; batches up to `batch`.
    pub fn auto(net: &Network, batch: usize) -> Result<Trainer> {
        Self::on(&Device::Auto { threads: 0 }, net, batch)
    }

    /// On the fast CPU backend, all cores; batches up to `batch`.
    pub fn cpu(net: &Network, batch: usize) -> Result<Trainer> {
        Self::on(&Device::Cpu { threads: 0 }, net, batch)
    }

    /// The kind of backend it trains on.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Why [`Device::Auto`] chose the CPU, if it did.
    pub fn fallback(&self) -> Option<&Fallback> {
        self.fallback.as_ref()
    }

    /// Every setting of [`TrainConfig`] at once.
    pub fn with_config(mut self, cfg: TrainConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Epochs to train (in total, counting resumed ones).
    pub fn epochs(mut self, n: usize) -> Self {
        self.cfg.epochs = n;
        self
    }

    /// Samples per step; steps use at most the backend's capacity and the
    /// data's rows ([`crate::train::batch_size`]).
    pub fn batch(mut self, n: usize) -> Self {
        self.cfg.batch = n;
        self
    }

    /// Learning rate.
    pub fn lr(mut self, lr: f32) -> Self {
        self.cfg.lr = lr;
        self
    }

    /// Warm the learning rate up linearly over the first `steps` steps of the
    /// run ([`TrainConfig::lr_at`]); 0 (the default) for none.
    pub fn warmup(mut self, steps: usize) -> Self {
        self.cfg.warmup = steps;
        self
    }

    /// Stop after `rule.patience` epochs without improvement of the
    /// validation loss, with the parameters of the best epoch
    /// ([`crate::early_stop`]); `None` (the default) trains every epoch.
    /// Needs a validation set in [`Trainer::fit_observed`]. After
    /// [`Trainer::resume`], the same rule keeps the checkpoint's state.
    pub fn early_stopping(mut self, rule: Option<EarlyStop>) -> Result<Self> {
        if let Some(r) = &rule {
            r.validate()?;
        }
        self.early = match (rule, self.early.take()) {
            (Some(r), Some(s)) if s.rule == r => Some(s),
            (Some(r), _) => Some(EarlyStopState::new(r)),
            (None, _) => None,
        };
        Ok(self)
    }

    /// Early stopping's state: the best epoch so far, its validation loss,
    /// and the epoch the run stopped at, if it stopped early.
    pub fn early_stop_state(&self) -> Option<&EarlyStopState> {
        self.early.as_ref()
    }

    /// Clip the gradients to global L2 norm `max_norm` before every update
    /// (`None`: never), keeping the optimiser ([`Optimizer::clip_norm`]);
    /// like [`Trainer::optimizer`], its state starts at zero.
    pub fn clip_norm(self, max_norm: Option<f32>) -> Result<Self> {
        let opt = Optimizer {
            clip_norm: max_norm,
            ..self.optimizer
        };
        self.optimizer(opt)
    }

    /// Check the loss after every step and stop at the first that is not
    /// finite ([`TrainConfig::nan_check`]); off by default.
    pub fn nan_check(mut self, on: bool) -> Self {
        self.cfg.nan_check = on;
        self
    }

    /// The optimiser (SGD by default); its state starts at zero.
    pub fn optimizer(mut self, opt: Optimizer) -> Result<Self> {
        self.backend.set_optimizer(&opt)?;
        self.optimizer = opt;
        Ok(self)
    }

    /// The input standardisation the data was given (fit it on the training
    /// set and apply it to every set yourself); saved with the checkpoint so
    /// `eval` and `predict` apply it too.
    pub fn standardizer(mut self, z: Standardizer) -> Self {
        self.standardizer = Some(z);
        self
    }

    /// The learning-rate schedule (constant by default).
    pub fn schedule(mut self, s: Schedule) -> Self {
        self.cfg.schedule = s;
        self
    }

    /// Seed of the shuffling, the validation split and the initial parameters.
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Write a checkpoint to `path` when training ends and, with `every`,
    /// also after every `every` epochs (an interval of 0 is an error). `path`
    /// is checked at once ([`crate::fsutil::check_output`]): a directory, a
    /// device or a directory that cannot be written is an error here, not
    /// after training.
    pub fn checkpoints(mut self, path: impl Into<PathBuf>, every: Option<usize>) -> Result<Self> {
        if every == Some(0) {
            return Err(Error::setting(Setting::SaveEvery, 0, "must be at least 1"));
        }
        let path = path.into();
        crate::fsutil::check_output(&path)?;
        self.save = Some((path, every));
        Ok(self)
    }

    /// Also send the run's records to `sink` (a [`crate::metrics::TensorBoard`]
    /// event file, a [`crate::metrics::JsonLines`] file, or your own): a
    /// [`StepRecord`] every [`Trainer::log_every`] steps and at the last step
    /// of each epoch, and every epoch's [`EpochStats`]. Sinks are kept across
    /// calls to [`Trainer::fit_observed`] and flushed when each ends, whether
    /// it succeeded or failed; an error from a sink stops the run.
    pub fn log_to(mut self, sink: impl MetricsSink + 'static) -> Self {
        self.sinks.push(Box::new(sink));
        self
    }

    /// Steps between step records ([`DEFAULT_LOG_EVERY`] by default); the
    /// last step of every epoch is always recorded. Each record reads the
    /// running loss back ([`Backend::peek_totals`]), which on a GPU waits for
    /// the step to finish: 1 records every step at the price of the GPU's
    /// queue of steps. An interval of 0 is an error.
    pub fn log_every(mut self, n: usize) -> Result<Self> {
        if n == 0 {
            return Err(Error::setting(Setting::LogEvery, 0, "must be at least 1"));
        }
        self.log_every = n;
        Ok(self)
    }

    /// Ends the run cleanly after the first step that finds `flag` set (a
    /// signal handler sets it): the epochs completed are kept in the history,
    /// the checkpoint asked for is written with the parameters after that
    /// step, and [`Trainer::stopped`] says so. A checkpoint written mid-epoch
    /// records the completed epochs; resuming from it skips the steps of the
    /// interrupted epoch that it already took, so the parameters come out as
    /// a straight run's (the resumed epoch's loss and accuracy cover only its
    /// remaining steps).
    pub fn stop_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop = Some(flag);
        self
    }

    /// Whether the last [`Trainer::fit_observed`] was ended early by the
    /// [`Trainer::stop_when`] flag.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Continues the run saved in `ckpt`: its parameters, optimiser and
    /// state, history, seed, batch, learning rate, schedule and input
    /// standardisation. Training it on other data is refused. Settings
    /// chained after it override the checkpoint's.
    pub fn resume(mut self, ckpt: &Checkpoint) -> Result<Self> {
        ckpt.restore(self.backend.as_mut())?;
        let s = &ckpt.state;
        self.fresh = false;
        self.optimizer = s.optimizer;
        self.history = s.history.clone();
        self.cfg.seed = s.seed;
        self.cfg.batch = s.batch;
        self.cfg.lr = s.lr;
        self.cfg.schedule = s.schedule;
        self.cfg.warmup = s.warmup;
        self.early = s.early_stop.clone();
        self.standardizer = ckpt.standardizer.clone();
        self.trained_on = Some(TrainedOn {
            name: s.data.clone(),
            samples: s.samples,
            fingerprint: s.fingerprint,
            validation: s.validation.clone(),
        });
        self.partial = Partial::Updates {
            t: ckpt.optimizer_state.t,
            batch: s.batch,
            samples: s.samples,
        };
        Ok(self)
    }

    /// Steps of epoch `done + 1` already taken, at `steps` per epoch of
    /// `batch` on `rows`: a mid-epoch checkpoint's, recognised by its
    /// optimiser having updated more often than its recorded epochs need.
    fn steps_taken(&self, done: usize, batch: usize, rows: usize) -> Result<usize> {
        let steps = steps_per_epoch(batch, self.backend.capacity(), rows);
        Ok(match self.partial {
            Partial::None => 0,
            Partial::Steps(n) => n,
            Partial::Updates {
                t,
                batch: b,
                samples,
            } => {
                let per = steps_per_epoch(b, self.backend.capacity(), samples) as u64;
                let extra = t.saturating_sub(per.saturating_mul(done as u64));
                if extra == 0 || extra >= per {
                    0
                } else if b != batch {
                    return Err(Error::setting(
                        Setting::Batch,
                        batch,
                        format!(
                            "the checkpoint was written {extra} steps into epoch {} at batch {b}; resuming it needs the same batch",
                            done + 1
                        ),
                    ));
                } else {
                    (extra as usize).min(steps)
                }
            }
        })
    }

    /// A model to evaluate or predict with: `ckpt`'s parameters and input
    /// standardisation ([`Trainer::standardizer_in_use`]).
    pub fn model(mut self, ckpt: &Checkpoint) -> Result<Self> {
        self.set_params(&ckpt.params)?;
        self.standardizer = ckpt.standardizer.clone();
        Ok(self)
    }

    /// Starts from these parameters instead of the seeded ones.
    pub fn set_params(&mut self, p: &Params<f32>) -> Result<()> {
        self.backend.set_params(p)?;
        self.fresh = false;
        Ok(())
    }

    /// The settings in force.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The optimiser in force.
    pub fn optimizer_in_use(&self) -> &Optimizer {
        &self.optimizer
    }

    /// The input standardisation the model expects, if any.
    pub fn standardizer_in_use(&self) -> Option<&Standardizer> {
        self.standardizer.as_ref()
    }

    /// The backend, to read parameters, activations or the device.
    pub fn backend(&mut self) -> &mut dyn Backend<Scalar = f32> {
        self.backend.as_mut()
    }

    /// What each epoch so far measured, resumed ones first.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// The first epoch the next [`Trainer::fit`] trains (1, or one past a resumed run).
    pub fn first_epoch(&self) -> usize {
        self.history.len() + 1
    }

    /// Sends the sinks that have not had it the [`RunRecord`] of a run on
    /// `data` from step `skip` of epoch `first`.
    fn announce(&mut self, data: &Dataset, first: usize, skip: usize) -> Result<()> {
        if self.announced == self.sinks.len() {
            return Ok(());
        }
        let (b, cfg) = (&self.backend, &self.cfg);
        let steps = steps_per_epoch(cfg.batch, b.capacity(), data.len());
        let r = RunRecord {
            backend: self.kind.name(),
            adapter: b.describe(),
            layers: b.network().sizes().to_vec(),
            network: b.network().describe(),
            first_epoch: first,
            epochs: cfg.epochs,
            global_step: ((first - 1) as u64) * steps as u64 + skip as u64,
            batch: crate::train::batch_size(cfg.batch, b.capacity(), data.len()),
            lr: cfg.lr,
            seed: cfg.seed,
            optimizer: self.optimizer.name(),
            kernels: b.kernels(),
        };
        for s in &mut self.sinks[self.announced..] {
            s.run(&r)?;
        }
        self.announced = self.sinks.len();
        Ok(())
    }

    /// Seeded initial parameters, the first time they are needed.
    fn ensure_params(&mut self) -> Result<()> {
        if self.fresh {
            let net = self.backend.network().clone();
            // The initial parameters, and a read-back for each checkpoint.
            crate::memory::ensure_params(&net, 2)?;
            self.set_params(&net.init(self.cfg.seed))?;
        }
        Ok(())
    }

    /// Trains on `data` up to the configured epochs, scoring `val` (if any)
    /// after each, writing checkpoints as [`Trainer::checkpoints`] asked (with
    /// zero epochs, only the initial weights are written);
    /// `on` sees every step and every epoch, and the backend (an error from
    /// it stops the run). Returns this call's epochs.
    pub fn fit_observed(
        &mut self,
        data: &Dataset,
        val: Option<&Dataset>,
        mut on: impl FnMut(&mut dyn Backend<Scalar = f32>, Progress<'_>) -> Result<()>,
    ) -> Result<Vec<EpochStats>> {
        let done = self.history.len();
        if self.cfg.epochs == 0 && done == 0 {
            return self.save_initial(data);
        }
        if done >= self.cfg.epochs {
            return Err(Error::setting(
                Setting::Epochs,
                self.cfg.epochs,
                format!(
                    "the run has already trained {done} epochs; epochs count the total, so ask for more than {done}"
                ),
            ));
        }
        if let Some(es) = &self.early {
            if val.is_none() {
                return Err(Error::setting(
                    Setting::EarlyStop,
                    es.rule.patience,
                    "watches the validation loss, and there is no validation set",
                ));
            }
            if let Some(stop) = es.stopped {
                let best = es.best_epoch().map_or("none".into(), |b| b.to_string());
                return Err(Error::setting(
                    Setting::EarlyStop,
                    es.rule.patience,
                    format!("the run already stopped early after epoch {stop} (best epoch: {best}); it has nothing more to train"),
                ));
            }
        }
        let on_data = TrainedOn::of(data, val);
        if let Some(was) = &self.trained_on {
            was.check(&on_data)?;
        }
        self.ensure_params()?;
        let first = done + 1;
        let skip = self.steps_taken(done, self.cfg.batch, data.len())?;
        self.announce(data, first, skip)?;
        // The step of the unrecorded epoch that the parameters are at.
        let mut partial = skip;
        let mut meta = RunMeta {
            cfg: self.cfg,
            optimizer: self.optimizer,
            standardizer: self.standardizer.clone(),
            data: on_data,
            history: self.history.clone(),
            early: self.early.clone(),
        };
        let mut saved = done;
        // Set by early stopping at the end of an epoch; ends the run there.
        let early_stop = std::cell::Cell::new(false);
        let interrupt = self.stop.clone();
        let stopped =
            || early_stop.get() || interrupt.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
        let save = self.save.clone();
        let sinks = &mut self.sinks;
        let log_every = self.log_every;
        let run = train_from(
            self.backend.as_mut(),
            data,
            val,
            &self.cfg,
            Start { first, skip },
            &stopped,
            |b, p| {
                log(sinks, log_every, b, p)?;
                if let Progress::Step { step, .. } = p {
                    partial = step;
                }
                if let Progress::Epoch(s) = p {
                    partial = 0;
                    if let Some(es) = meta.early.as_mut() {
                        if early_stopping(es, s, b)? {
                            early_stop.set(true);
                        }
                    }
                    meta.history.push(*s);
                    if let Some((path, Some(every))) = &save {
                        if s.epoch.is_multiple_of(*every) {
                            meta.checkpoint(b)?.save(path)?;
                            saved = s.epoch;
                        }
                    }
                }
                on(b, p)
            },
        );
        // Flushed even after a failure: the records up to it stay readable.
        let flushed = self.sinks.iter_mut().try_for_each(|s| s.flush());
        let new = run.map_err(|e| blame_weight_decay(e, self.optimizer.weight_decay))?;
        flushed?;
        self.stopped = self.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst))
            && meta.history.len() < self.cfg.epochs;
        self.partial = if partial > 0 {
            Partial::Steps(partial)
        } else {
            Partial::None
        };
        if let Some((path, _)) = &save {
            if saved != meta.history.len() || partial > 0 {
                meta.checkpoint(self.backend.as_mut())?.save(path)?;
            }
        }
        self.history = meta.history;
        self.early = meta.early;
        self.trained_on = Some(meta.data);
        Ok(new)
    }

    /// Zero epochs: the initial weights, written to the checkpoint when one
    /// was asked for (to reproduce a run elsewhere); nothing to do otherwise.
    fn save_initial(&mut self, data: &Dataset) -> Result<Vec<EpochStats>> {
        let Some((path, _)) = self.save.clone() else {
            return Err(Error::setting(
                Setting::Epochs,
                0,
                "trains nothing; without a checkpoint to write the initial weights to, at least 1 is needed",
            ));
        };
        data.check_shape(
            self.backend.network().inputs(),
            self.backend.network().outputs(),
        )?;
        self.ensure_params()?;
        self.trained_on = Some(TrainedOn::of(data, None));
        self.save(&path)?;
        Ok(Vec::new())
    }

    /// [`Trainer::fit_observed`], `on` seeing each epoch only.
    pub fn fit_with(
        &mut self,
        data: &Dataset,
        val: Option<&Dataset>,
        mut on: impl FnMut(&EpochStats),
    ) -> Result<Vec<EpochStats>> {
        self.fit_observed(data, val, |_, p| {
            if let Progress::Epoch(s) = p {
                on(s);
            }
            Ok(())
        })
    }

    /// [`Trainer::fit_with`] without validation or a callback.
    pub fn fit(&mut self, data: &Dataset) -> Result<Vec<EpochStats>> {
        self.fit_with(data, None, |_| ())
    }

    /// The learning-rate range test ([`crate::lr_find`]) on `data`, in
    /// batches of the configured size, from the current (or the seeded
    /// initial) parameters, which it leaves as they were, as it leaves the
    /// optimiser's state and the history.
    pub fn lr_find(
        &mut self,
        data: &Dataset,
        sweep: &crate::lr_find::LrFind,
    ) -> Result<crate::lr_find::LrSweep> {
        self.ensure_params()?;
        let (batch, seed) = (self.cfg.batch, self.cfg.seed);
        crate::lr_find::lr_find(self.backend.as_mut(), data, batch, seed, sweep)
    }

    /// Loss and score of the current parameters on `data`.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<(Totals, Metric)> {
        self.ensure_params()?;
        evaluate(self.backend.as_mut(), data)
    }

    /// The network's outputs for every row of `data`, `(len, outputs)`.
    pub fn predict(&mut self, data: &Dataset) -> Result<Vec<f32>> {
        Ok(self.evaluate_and_predict(data)?.2)
    }

    /// [`Trainer::evaluate`] and [`Trainer::predict`] in one pass.
    pub fn evaluate_and_predict(&mut self, data: &Dataset) -> Result<(Totals, Metric, Vec<f32>)> {
        self.ensure_params()?;
        evaluate_and_predict(self.backend.as_mut(), data)
    }

    /// The checkpoint of the run as it stands.
    pub fn checkpoint(&mut self) -> Result<Checkpoint> {
        self.ensure_params()?;
        let meta = RunMeta {
            cfg: self.cfg,
            optimizer: self.optimizer,
            standardizer: self.standardizer.clone(),
            data: self.trained_on.clone().unwrap_or_default(),
            history: self.history.clone(),
            early: self.early.clone(),
        };
        meta.checkpoint(self.backend.as_mut())
    }

    /// Writes a checkpoint that `train --resume`, `eval` and `predict` read.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.checkpoint()?.save(path)
    }
}

/// Sends `p` to the sinks: every epoch, and the steps that `every` and the
/// end of an epoch select, with the running loss read back for them only.
fn log(
    sinks: &mut [Box<dyn MetricsSink>],
    every: usize,
    b: &mut dyn Backend<Scalar = f32>,
    p: Progress<'_>,
) -> Result<()> {
    if sinks.is_empty() {
        return Ok(());
    }
    match p {
        Progress::Step {
            epoch,
            step,
            steps,
            lr,
        } if step.is_multiple_of(every) || step == steps => {
            let r = StepRecord {
                epoch,
                step,
                global_step: ((epoch - 1) * steps + step) as u64,
                loss: b.peek_totals()?.loss(),
                lr,
            };
            sinks.iter_mut().try_for_each(|s| s.step(&r))
        }
        Progress::Step { .. } => Ok(()),
        Progress::Epoch(e) => sinks.iter_mut().try_for_each(|s| s.epoch(e)),
    }
}

/// A divergence with weight decay `λ` so large for its learning rate
/// (`lr·λ > 2`: the decay step `p −= lr·λ·p` alone then grows every weight)
/// that the decay, not only the rate, is to blame.
fn blame_weight_decay(e: Error, weight_decay: f32) -> Error {
    match e {
        Error::Diverged {
            what,
            lr,
            inputs,
            targets,
            weight_decay: None,
        } if lr * weight_decay > 2.0 => Error::Diverged {
            what,
            lr,
            inputs,
            targets,
            weight_decay: Some(weight_decay),
        },
        e => e,
    }
}

/// What a checkpoint records besides the backend's tensors.
struct RunMeta {
    cfg: TrainConfig,
    optimizer: Optimizer,
    standardizer: Option<Standardizer>,
    /// The training data.
    data: TrainedOn,
    history: Vec<EpochStats>,
    early: Option<EarlyStopState>,
}

/// Early stopping's step after epoch `s`: a new best keeps its parameters;
/// the end of the patience puts the best back on `b` and says stop.
fn early_stopping(
    es: &mut EarlyStopState,
    s: &EpochStats,
    b: &mut dyn Backend<Scalar = f32>,
) -> Result<bool> {
    let loss = s.val_loss.unwrap_or(f64::NAN);
    if es.improves(loss) {
        es.best = Some((s.epoch, loss));
        es.best_params = Some(b.params()?);
    }
    if !es.should_stop(s.epoch) {
        return Ok(false);
    }
    es.stopped = Some(s.epoch);
    if let Some(p) = &es.best_params {
        b.set_params(p)?;
    }
    Ok(true)
}

impl RunMeta {
    fn checkpoint(&self, backend: &mut dyn Backend<Scalar = f32>) -> Result<Checkpoint> {
        let state = TrainState {
            epoch: self.history.len(),
            seed: self.cfg.seed,
            batch: self.cfg.batch,
            lr: self.cfg.lr,
            data: self.data.name.clone(),
            samples: self.data.samples,
            fingerprint: self.data.fingerprint,
            validation: self.data.validation.clone(),
            history: self.history.clone(),
            optimizer: self.optimizer,
            schedule: self.cfg.schedule,
            warmup: self.cfg.warmup,
            early_stop: self.early.clone(),
            kernel_config: backend.kernel_config(),
        };
        Checkpoint::capture(backend, state, self.standardizer.clone())
    }
}

/// The data a run was trained on, as a checkpoint records it.
#[derive(Debug, Clone, Default)]
struct TrainedOn {
    name: String,
    samples: usize,
    /// `None` from a version 1 checkpoint: only the row count is compared.
    fingerprint: Option<DataFingerprint>,
    /// The validation set, if the run had one.
    validation: Option<ValidationSet>,
}

impl TrainedOn {
    fn of(data: &Dataset, val: Option<&Dataset>) -> TrainedOn {
        TrainedOn {
            name: data.name.clone(),
            samples: data.len(),
            fingerprint: Some(DataFingerprint::of(data)),
            validation: val.map(ValidationSet::of),
        }
    }

    /// Refuses to score this run on `now`'s validation set when it was
    /// scored on another (validation decides what early stopping keeps);
    /// going on without one is allowed.
    fn check_validation(&self, now: &TrainedOn) -> Result<()> {
        let (Some(was), Some(v)) = (&self.validation, &now.validation) else {
            return Ok(());
        };
        let differs = match v {
            v if v.samples != was.samples => format!("'{}' ({} samples)", v.name, v.samples),
            v if v.fingerprint != was.fingerprint => format!(
                "'{}', the same {} samples but other values (fingerprint {:016x}/{:016x}, the checkpoint's {:016x}/{:016x})",
                v.name,
                v.samples,
                v.fingerprint.inputs,
                v.fingerprint.targets,
                was.fingerprint.inputs,
                was.fingerprint.targets
            ),
            _ => return Ok(()),
        };
        Err(Error::Data {
            path: v.name.clone(),
            msg: format!(
                "the validation set is {differs}, but the resumed run was validated on '{}' ({} samples); resuming needs the same validation set",
                was.name, was.samples
            ),
        })
    }

    /// Refuses to continue this run on `now`, other data, in one line
    /// naming what differs.
    fn check(&self, now: &TrainedOn) -> Result<()> {
        let (name, samples) = (&self.name, self.samples);
        let differs = if samples != now.samples {
            Some(format!("{} samples", now.samples))
        } else {
            match (self.fingerprint, now.fingerprint) {
                (Some(a), Some(b)) if a != b => {
                    let what = match (a.inputs != b.inputs, a.targets != b.targets) {
                        (true, true) => "inputs and targets",
                        (true, false) => "inputs",
                        _ => "targets",
                    };
                    Some(format!(
                        "the same {samples} samples but other {what} (fingerprint {:016x}/{:016x}, the checkpoint's {:016x}/{:016x})",
                        b.inputs, b.targets, a.inputs, a.targets
                    ))
                }
                _ => None,
            }
        };
        match differs {
            Some(d) => Err(Error::Data {
                path: now.name.clone(),
                msg: format!(
                    "{d}, but the resumed run was trained on '{name}' ({samples} samples); resuming needs the same data, validation split and normalisation"
                ),
            }),
            None => self.check_validation(now),
        }
    }
}
