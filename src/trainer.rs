//! [`Trainer`]: the library's front door. It owns a backend (the GPU when
//! there is one, else the fast CPU backend, or one you give it), the training
//! settings and the run's history, and trains, validates, evaluates,
//! predicts and saves with the same code paths the command line uses.
//!
//! ```
//! use shadertrain::{data::Dataset, network::Network, Trainer};
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
use crate::checkpoint::{Checkpoint, TrainState};
use crate::cpu::FastCpuBackend;
use crate::data::{Dataset, Standardizer};
use crate::gpu::{GpuBackend, GpuContext};
use crate::network::Network;
use crate::optim::Optimizer;
use crate::train::{evaluate, predict, train_epochs, EpochStats, Progress, Schedule, TrainConfig};
use crate::Result;
use std::path::Path;

/// Trains one network on one backend; settings are chained builder-style.
pub struct Trainer {
    backend: Box<dyn Backend<Scalar = f32>>,
    cfg: TrainConfig,
    /// Parameters not yet set: the first use draws them from the seed.
    fresh: bool,
    optimizer: Optimizer,
    standardizer: Option<Standardizer>,
    history: Vec<EpochStats>,
    data_name: String,
    data_len: usize,
}

impl Trainer {
    /// On `backend`. Defaults: 10 epochs, batches of the backend's capacity,
    /// lr 0.1, seed 42; parameters drawn from the seed at first use unless
    /// [`Trainer::set_params`] gives them.
    pub fn new(backend: Box<dyn Backend<Scalar = f32>>) -> Result<Trainer> {
        let cfg = TrainConfig {
            epochs: 10,
            batch: backend.capacity(),
            lr: 0.1,
            seed: 42,
            shuffle: true,
            schedule: Default::default(),
            nan_check: false,
        };
        Ok(Trainer {
            backend,
            cfg,
            fresh: true,
            optimizer: Optimizer::default(),
            standardizer: None,
            history: Vec::new(),
            data_name: String::new(),
            data_len: 0,
        })
    }

    /// On the best GPU, or on the CPU when there is none; batches up to `batch`.
    pub fn auto(net: &Network, batch: usize) -> Result<Trainer> {
        let backend: Box<dyn Backend<Scalar = f32>> = match GpuContext::new() {
            Ok(ctx) => Box::new(GpuBackend::new(ctx, net, batch)?),
            Err(_) => Box::new(FastCpuBackend::new(net, batch, 0)?),
        };
        Self::new(backend)
    }

    /// On the fast CPU backend, all cores; batches up to `batch`.
    pub fn cpu(net: &Network, batch: usize) -> Result<Trainer> {
        Self::new(Box::new(FastCpuBackend::new(net, batch, 0)?))
    }

    /// Epochs to train (in total, counting resumed ones).
    pub fn epochs(mut self, n: usize) -> Self {
        self.cfg.epochs = n;
        self
    }

    /// Samples per step, at most the backend's capacity.
    pub fn batch(mut self, n: usize) -> Self {
        self.cfg.batch = n;
        self
    }

    /// Learning rate.
    pub fn lr(mut self, lr: f32) -> Self {
        self.cfg.lr = lr;
        self
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

    /// Continues the run saved in `ckpt`: its parameters, optimiser and
    /// state, history, seed, batch, learning rate and schedule.
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
        self.standardizer = ckpt.standardizer.clone();
        Ok(self)
    }

    /// Seed of the shuffling and of the initial parameters.
    pub fn seed(mut self, seed: u64) -> Self {
        self.cfg.seed = seed;
        self
    }

    /// Starts from these parameters instead of the seeded ones.
    pub fn set_params(&mut self, p: &crate::network::Params<f32>) -> Result<()> {
        self.backend.set_params(p)?;
        self.fresh = false;
        Ok(())
    }

    fn ensure_params(&mut self) -> Result<()> {
        if self.fresh {
            let init = self.backend.network().init(self.cfg.seed);
            self.set_params(&init)?;
        }
        Ok(())
    }

    /// The backend, to read parameters, activations or the device.
    pub fn backend(&mut self) -> &mut dyn Backend<Scalar = f32> {
        self.backend.as_mut()
    }

    /// What each epoch so far measured.
    pub fn history(&self) -> &[EpochStats] {
        &self.history
    }

    /// Trains on `data` up to the configured epochs, scoring `val` (if any)
    /// after each; `on` sees each epoch. Returns this call's epochs.
    pub fn fit_with(
        &mut self,
        data: &Dataset,
        val: Option<&Dataset>,
        mut on: impl FnMut(&EpochStats),
    ) -> Result<Vec<EpochStats>> {
        self.ensure_params()?;
        let first = self.history.len() + 1;
        let cfg = TrainConfig {
            batch: self.cfg.batch.min(self.backend.capacity()),
            ..self.cfg
        };
        let new = train_epochs(self.backend.as_mut(), data, val, &cfg, first, |_, p| {
            if let Progress::Epoch(s) = p {
                on(s);
            }
            Ok(())
        })?;
        self.history.extend_from_slice(&new);
        self.data_name = data.name.clone();
        self.data_len = data.len();
        Ok(new)
    }

    /// [`Trainer::fit_with`] without validation or a callback.
    pub fn fit(&mut self, data: &Dataset) -> Result<Vec<EpochStats>> {
        self.fit_with(data, None, |_| ())
    }

    /// Loss and score of the current parameters on `data`.
    pub fn evaluate(&mut self, data: &Dataset) -> Result<(Totals, Metric)> {
        self.ensure_params()?;
        evaluate(self.backend.as_mut(), data)
    }

    /// The network's outputs for every row of `data`, `(len, outputs)`.
    pub fn predict(&mut self, data: &Dataset) -> Result<Vec<f32>> {
        self.ensure_params()?;
        predict(self.backend.as_mut(), data)
    }

    /// Writes a checkpoint that `train --resume`, `eval` and `predict` read.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.ensure_params()?;
        let state = TrainState {
            epoch: self.history.len(),
            seed: self.cfg.seed,
            batch: self.cfg.batch,
            lr: self.cfg.lr,
            data: self.data_name.clone(),
            samples: self.data_len,
            history: self.history.clone(),
            optimizer: self.optimizer,
            schedule: self.cfg.schedule,
        };
        Checkpoint::capture(self.backend.as_mut(), state, self.standardizer.clone())?.save(path)
    }
}
