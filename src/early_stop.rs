//! Early stopping on the validation loss (Keras' `EarlyStopping` with
//! `restore_best_weights`, Lightning's `EarlyStopping`): after every epoch
//! the validation loss is compared with the best so far; an epoch improves
//! on it when its loss is below `best − min_delta`. After `patience` epochs
//! without improvement the run stops and the parameters go back to those of
//! the best epoch. A run that reaches its last epoch first keeps its last
//! parameters (as Keras does), and reports which epoch was best.
//!
//! [`EarlyStopState`] is all of it that a checkpoint keeps (the best epoch,
//! its loss, its parameters, and the epoch the run stopped at), so a resumed
//! run stops where the straight run would, with the same parameters.
//!
//! ```
//! use shadertrain::early_stop::{EarlyStop, EarlyStopState};
//! let mut s = EarlyStopState::new(EarlyStop { patience: 2, min_delta: 0.0 });
//! for (epoch, loss) in [(1, 0.9), (2, 0.5), (3, 0.6), (4, 0.55)] {
//!     if s.improves(loss) {
//!         s.best = Some((epoch, loss));
//!     }
//! }
//! assert_eq!(s.best, Some((2, 0.5)));
//! assert!(s.should_stop(4));
//! ```

use crate::error::{Error, Result, Setting};
use crate::network::Params;

/// When to stop: after `patience` epochs whose validation loss did not
/// improve on the best by more than `min_delta`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStop {
    /// Epochs without improvement before stopping, at least 1.
    pub patience: usize,
    /// The improvement that counts, `>= 0` (in loss units).
    pub min_delta: f64,
}

impl EarlyStop {
    /// Refuses a patience of 0 and a `min_delta` that is negative or not finite.
    pub fn validate(&self) -> Result<()> {
        if self.patience == 0 {
            return Err(Error::setting(
                Setting::EarlyStop,
                0,
                "must be at least 1 (epochs without improvement before stopping)",
            ));
        }
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(Error::setting(
                Setting::MinDelta,
                self.min_delta,
                "must be a finite number >= 0",
            ));
        }
        Ok(())
    }
}

/// Where early stopping stands in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct EarlyStopState {
    /// The rule.
    pub rule: EarlyStop,
    /// The epoch with the lowest validation loss so far and that loss;
    /// `None` before the first finite one.
    pub best: Option<(usize, f64)>,
    /// The parameters after the best epoch (`None` with `best`).
    pub best_params: Option<Params<f32>>,
    /// The epoch the run stopped after, if it stopped early.
    pub stopped: Option<usize>,
}

impl EarlyStopState {
    /// Nothing seen yet.
    pub fn new(rule: EarlyStop) -> Self {
        EarlyStopState {
            rule,
            best: None,
            best_params: None,
            stopped: None,
        }
    }

    /// Whether an epoch with validation loss `loss` is a new best: finite,
    /// and below the best by more than `min_delta` (the first finite loss is).
    pub fn improves(&self, loss: f64) -> bool {
        loss.is_finite()
            && match self.best {
                None => true,
                Some((_, best)) => loss < best - self.rule.min_delta,
            }
    }

    /// Whether the run stops after `epoch`: `patience` epochs or more since
    /// the best one (since the start when there is none).
    pub fn should_stop(&self, epoch: usize) -> bool {
        let best = self.best.map_or(0, |(e, _)| e);
        epoch.saturating_sub(best) >= self.rule.patience
    }

    /// The best epoch, if any.
    pub fn best_epoch(&self) -> Option<usize> {
        self.best.map(|(e, _)| e)
    }
}
