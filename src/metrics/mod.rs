//! Metrics for experiment trackers, written as a run goes: TensorBoard event
//! files ([`TensorBoard`]) and JSON Lines ([`JsonLines`], for MLflow, W&B and
//! scripts). Both are [`MetricsSink`]s, which a [`crate::Trainer`] holds
//! ([`crate::Trainer::log_to`]) and feeds from inside its one training loop,
//! so the command line and a library user get the same records:
//!
//! - a [`RunRecord`] once, when a sink first sees a run start: the backend,
//!   adapter, network and settings, and on a GPU which kernel configuration
//!   each product ran and where it came from (tuned, cache, heuristic, given);
//! - a [`StepRecord`] every [`crate::Trainer::log_every`] steps and at the
//!   last step of every epoch: the epoch's running mean loss so far (the
//!   backend's [`crate::Backend::peek_totals`]) and the learning rate;
//! - every epoch's [`EpochStats`].
//!
//! A step record costs a read-back: on a GPU, [`crate::Backend::peek_totals`]
//! waits for the step to finish and copies a few bytes back, which stalls the
//! pipeline of queued steps. Hence the interval ([`DEFAULT_LOG_EVERY`] steps
//! by default); with no sink, nothing is read back at all.
//!
//! Files stay valid whatever happens: records are written whole, the sinks
//! are flushed after every epoch and when a run ends, and a run that fails
//! (diverges, is refused, hits a full disk) leaves its files holding every
//! record up to the failure, which is when the curve is most wanted. Only a
//! process killed mid-write can leave a truncated last record, which
//! TensorBoard's reader takes for one not yet written and ignores.
//!
//! ```
//! use shadertrain::metrics::JsonLines;
//! use shadertrain::{Dataset, Network, Trainer};
//! # fn main() -> shadertrain::Result<()> {
//! # let dir = std::env::temp_dir().join(format!("st-doc-metrics-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir).unwrap();
//! let mut t = Trainer::cpu(&Network::parse("2,4,1")?, 4)?
//!     .epochs(3)
//!     .log_to(JsonLines::create(dir.join("run.jsonl"))?)
//!     .log_every(1)?;
//! t.fit(&Dataset::xor())?;
//! let lines = std::fs::read_to_string(dir.join("run.jsonl")).unwrap();
//! assert_eq!(lines.lines().count(), 1 + 3 + 3); // the run; a step (of one) and an epoch, 3 times
//! assert!(lines.starts_with(r#"{"kind":"run","backend":"cpu""#));
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok(())
//! # }
//! ```

mod jsonl;
mod tensorboard;

pub use jsonl::JsonLines;
pub use tensorboard::{TensorBoard, FILE_VERSION};

use crate::error::Result;
use crate::train::EpochStats;

/// Steps between step records unless [`crate::Trainer::log_every`] says
/// otherwise: a read-back every 10 steps costs a GPU little.
pub const DEFAULT_LOG_EVERY: usize = 10;

/// One step's figures, as the sinks record them.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based step within the epoch.
    pub step: usize,
    /// 1-based step of the whole run, `(epoch − 1) · steps + step`, counting
    /// resumed epochs too (at this run's steps per epoch): a resumed run's
    /// records continue the curve.
    pub global_step: u64,
    /// The running mean per-sample loss of the epoch so far (every forward
    /// pass since the epoch began, this step's included), not this step's
    /// batch alone. At the last step of an epoch it is the epoch's loss.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f32,
}

/// What a run is, recorded once, before its first step.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunRecord {
    /// `cpu` or `gpu` ([`crate::trainer::Kind`]).
    pub backend: &'static str,
    /// The device(s), as [`crate::Backend::describe`] says.
    pub adapter: String,
    /// The layer sizes, inputs first.
    pub layers: Vec<usize>,
    /// The network with its activations, `2-16:tanh-1:sigmoid`.
    pub network: String,
    /// The first epoch this run trains (past a resumed run's).
    pub first_epoch: usize,
    /// Epochs in total, resumed ones included.
    pub epochs: usize,
    /// Steps already taken (a resumed run's): the first step record is
    /// past this `global_step`.
    pub global_step: u64,
    /// Samples per step.
    pub batch: usize,
    /// The base learning rate.
    pub lr: f32,
    /// The seed of weights and shuffles.
    pub seed: u64,
    /// `sgd`, `momentum` or `adam`.
    pub optimizer: &'static str,
    /// GPU's tiled kernels: the keys `kernel_config` (the plan as
    /// `--kernel-config` takes it), `kernel_configs` (every product's
    /// configuration, shape and source) and `checked`, as `bench --json`
    /// writes them; absent elsewhere.
    #[serde(flatten)]
    pub kernels: Option<crate::gpu::KernelReport>,
}

/// Where a [`crate::Trainer`] sends its records. An error from a sink stops
/// the run (as a failed checkpoint does).
pub trait MetricsSink {
    /// The run about to start, once per sink (a sink kept across several
    /// [`crate::Trainer::fit_observed`] calls hears of the first).
    fn run(&mut self, r: &RunRecord) -> Result<()> {
        let _ = r;
        Ok(())
    }

    /// A step record, every [`crate::Trainer::log_every`] steps and at the
    /// last step of every epoch.
    fn step(&mut self, r: &StepRecord) -> Result<()>;

    /// An epoch finished; flush here so trackers see it.
    fn epoch(&mut self, s: &EpochStats) -> Result<()>;

    /// The run ended, well or not: write out anything buffered.
    fn flush(&mut self) -> Result<()>;
}
