//! The library's one error type. Every failure a user can cause (bad flags,
//! malformed data, shapes that don't fit, a missing GPU) becomes an [`Error`]
//! with a one-line message; nothing a user controls may panic.

use std::path::Path;

/// A setting of a run, as the library names it. Errors about a value carry
/// the setting it belongs to, so each front end can name it in its own
/// words: the library says "learning rate", the command line `--lr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// The network's layer sizes and activations.
    Layers,
    /// Passes over the data.
    Epochs,
    /// Samples per step.
    Batch,
    /// The base learning rate.
    LearningRate,
    /// The seed of the initial weights, the shuffling and the validation split.
    Seed,
    /// The optimiser kind.
    Optimizer,
    /// Momentum's μ.
    Momentum,
    /// Adam's β1.
    Beta1,
    /// Adam's β2.
    Beta2,
    /// Adam's ε.
    Eps,
    /// Weight decay λ.
    WeightDecay,
    /// The learning-rate schedule.
    Schedule,
    /// Epochs between the step schedule's decays.
    ScheduleStep,
    /// The step schedule's factor.
    ScheduleGamma,
    /// The fraction of the data held out for validation.
    ValSplit,
    /// Input standardisation.
    Normalize,
    /// CPU threads.
    Threads,
    /// Timed steps of a benchmark.
    Steps,
    /// The file a plot is drawn into.
    Plot,
    /// The GPU adapter.
    Adapter,
    /// Epochs between periodic checkpoints.
    SaveEvery,
    /// The dataset.
    Data,
    /// A CSV file's target column.
    Target,
    /// The directory TensorBoard event files are written to.
    LogDir,
    /// The JSON Lines file of step and epoch records.
    MetricsLog,
    /// Steps between step records.
    LogEvery,
    /// The devices of a data-parallel run.
    Devices,
    /// The shards a single device runs as micro-batches.
    MicroBatches,
    /// How the processes of a distributed run talk (MPI).
    Distributed,
    /// A configuration of the GPU's tiled kernels.
    KernelConfig,
    /// The global gradient norm clipping scales down to.
    ClipNorm,
    /// Steps of learning-rate warmup.
    Warmup,
    /// Epochs without improvement before early stopping.
    EarlyStop,
    /// The improvement early stopping counts.
    MinDelta,
    /// A layer's dropout probability.
    Dropout,
}

impl Setting {
    /// The library's name for it, as [`Error`]'s `Display` uses it.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Layers => "layers",
            Setting::Epochs => "epochs",
            Setting::Batch => "batch size",
            Setting::LearningRate => "learning rate",
            Setting::Seed => "seed",
            Setting::Optimizer => "optimizer",
            Setting::Momentum => "momentum",
            Setting::Beta1 => "beta1",
            Setting::Beta2 => "beta2",
            Setting::Eps => "eps",
            Setting::WeightDecay => "weight decay",
            Setting::Schedule => "learning-rate schedule",
            Setting::ScheduleStep => "schedule step",
            Setting::ScheduleGamma => "schedule gamma",
            Setting::ValSplit => "validation fraction",
            Setting::Normalize => "input standardisation",
            Setting::Threads => "threads",
            Setting::Steps => "steps",
            Setting::Plot => "plot file",
            Setting::Adapter => "adapter",
            Setting::SaveEvery => "checkpoint interval",
            Setting::Data => "data",
            Setting::Target => "target column",
            Setting::LogDir => "log directory",
            Setting::MetricsLog => "metrics log",
            Setting::LogEvery => "step-record interval",
            Setting::Devices => "devices",
            Setting::MicroBatches => "micro-batches",
            Setting::Distributed => "distribution",
            Setting::KernelConfig => "kernel configuration",
            Setting::ClipNorm => "gradient clipping norm",
            Setting::Warmup => "warmup steps",
            Setting::EarlyStop => "early-stopping patience",
            Setting::MinDelta => "early-stopping minimum improvement",
            Setting::Dropout => "dropout",
        }
    }
}

/// Everything that can go wrong in shadertrain, each with a one-line message.
/// Variants carry what went wrong as values; [`Error::render`] words a
/// message with the caller's names for the settings.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting has a value it cannot take: `problem` says what was needed.
    #[error("{}", self.render(Setting::name))]
    Setting {
        /// Which setting.
        setting: Setting,
        /// The value given, as written.
        value: String,
        /// What is wrong with it, or what was needed ("must be at least 1").
        problem: String,
    },
    /// An argument is malformed or out of range in a way no single setting owns.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A dataset as a whole is unusable (empty, wrong width, ...).
    #[error("{path}: {msg}")]
    Data {
        /// The file (or dataset) at fault.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// One line of a data file is malformed.
    #[error("{path}: line {line}: {msg}")]
    DataLine {
        /// The file.
        path: String,
        /// The 1-based line.
        line: u64,
        /// What is wrong with it.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Tensors or data do not fit the network's shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// No usable GPU adapter was found.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// Training produced a non-finite loss or parameters.
    #[error("{}", self.render(Setting::name))]
    Diverged {
        /// What became non-finite, and where.
        what: String,
        /// The learning rate in force then.
        lr: f32,
        /// The largest input magnitude, when large enough to be a likely cause.
        inputs: Option<f32>,
        /// The weight decay, when large enough for its learning rate to be
        /// a likely cause (`lr · λ > 2`).
        weight_decay: Option<f32>,
        /// The largest target magnitude, when large enough to be a likely cause.
        targets: Option<f32>,
    },
    /// The machine does not have the memory a request needs.
    #[error("{}", self.render(Setting::name))]
    Memory {
        /// What was asked for and what is available.
        msg: String,
        /// The settings whose smaller values would need less.
        shrink: &'static [Setting],
    },
    /// The GPU refused or failed an operation.
    #[error("GPU error: {0}")]
    Gpu(String),
    /// One worker of a data-parallel run (a thread's device, an MPI rank) failed.
    #[error("{}", self.render(Setting::name))]
    Worker {
        /// Which worker: `worker 2 (its device)`, `rank 1 of 3 (host)`.
        worker: String,
        /// What went wrong there.
        source: Box<Error>,
    },
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// An [`Error::Setting`]: `setting` cannot be `value`, because `problem`.
    pub fn setting(
        setting: Setting,
        value: impl std::fmt::Display,
        problem: impl Into<String>,
    ) -> Self {
        Error::Setting {
            setting,
            value: value.to_string(),
            problem: problem.into(),
        }
    }

    /// An [`Error::Memory`] asking for less of `shrink`.
    pub fn memory(msg: impl Into<String>, shrink: &'static [Setting]) -> Self {
        Error::Memory {
            msg: msg.into(),
            shrink,
        }
    }

    /// The message, with every setting it mentions called `name(setting)`:
    /// `Display` passes [`Setting::name`]; the command line its flags.
    pub fn render(&self, name: impl Fn(Setting) -> &'static str) -> String {
        match self {
            Error::Setting {
                setting,
                value,
                problem,
            } => {
                // Numbers as they are; anything else quoted, so its edges show.
                let shown = match value.parse::<f64>() {
                    Ok(_) => quote(value),
                    Err(_) => format!("'{}'", quote(value)),
                };
                format!("{} {shown}: {problem}", name(*setting))
            }
            Error::Diverged {
                what,
                lr,
                inputs,
                targets,
                weight_decay,
            } => {
                let mut also = String::new();
                if let Some(wd) = weight_decay {
                    also += &format!(
                        ", or the weight decay ({wd}) is too large for it (lr · λ = {} > 2 makes the decay alone grow the weights): try a smaller {}",
                        lr * wd,
                        name(Setting::WeightDecay)
                    );
                }
                if let Some(x) = inputs {
                    also += &format!(
                        ", or the inputs (up to {x:.3e} in magnitude) need scaling: try {}",
                        name(Setting::Normalize)
                    );
                }
                if let Some(y) = targets {
                    also += &format!(", or the targets (up to {y:.3e} in magnitude) need scaling");
                }
                format!(
                    "training diverged: {what}; the learning rate ({lr}) is probably too high: try a smaller {}{also}",
                    name(Setting::LearningRate)
                )
            }
            Error::Memory { msg, shrink } => {
                let names: Vec<&str> = shrink.iter().map(|s| name(*s)).collect();
                match names.as_slice() {
                    [] => format!("not enough memory: {msg}"),
                    [one] => format!("not enough memory: {msg}; use a smaller {one}"),
                    [first @ .., last] => format!(
                        "not enough memory: {msg}; use a smaller {} or smaller {last}",
                        first.join(", smaller ")
                    ),
                }
            }
            Error::Worker { worker, source } => format!("{worker}: {}", source.render(name)),
            other => other.to_string(),
        }
    }
}

/// `text` from a user's file or flag, fit to quote inside a one-line message:
/// control characters escaped (a newline shows as `\n`) and, past `max`
/// characters, cut short with `…`. The CLI also passes every message through
/// it, so no error can span two lines whatever a user's input holds.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Longest quoted cell, name or value in a message, in characters.
pub(crate) const QUOTE_MAX: usize = 40;

/// [`one_line`] for a short quotation (a cell, a name, a value).
pub(crate) fn quote(text: &str) -> String {
    one_line(text, QUOTE_MAX)
}
