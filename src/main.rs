//! The `shadertrain` command line: `train`, `bench`, `example` and `devices`.
//! Every failure prints one line, `error: ...`, and exits non-zero.

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shadertrain::backend::Backend;
use shadertrain::bench::{self, Workload};
use shadertrain::checkpoint::{Checkpoint, TrainState};
use shadertrain::cpu::{CpuBackend, FastCpuBackend};
use shadertrain::data::Standardizer;
use shadertrain::data::{Dataset, Width};
use shadertrain::fsutil::write_atomic;
use shadertrain::gpu::{list_adapters, GpuBackend, GpuContext, GpuOptions, KernelSet, TileConfig};
use shadertrain::network::Loss;
use shadertrain::network::Network;
use shadertrain::optim::{Optimizer, OptimizerKind};
use shadertrain::train::{
    class_of, confusion_matrix, evaluate, train_epochs, EpochStats, Progress, Schedule, TrainConfig,
};
use shadertrain::{example, Error, Result};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "shadertrain",
    version,
    about = "Train MLPs with WGSL compute shaders on any GPU wgpu reaches, checked against a CPU reference"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// The best GPU, or the CPU with a notice when there is none.
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU; an error when there is none.
    Gpu,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a network (default: two interleaved spirals).
    Train(Box<TrainArgs>),
    /// Time the training step on the CPU, the GPU or both, side by side.
    Bench(BenchArgs),
    /// Score a saved model on a dataset: loss, accuracy, confusion matrix.
    Eval(ModelArgs),
    /// Write a saved model's outputs for every row of a dataset as CSV.
    Predict {
        #[command(flatten)]
        m: ModelArgs,
        /// Where to write the CSV (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// One SGD step of the classic 2-2-2 worked example, every value printed.
    Example {
        #[arg(long, value_enum, default_value = "auto")]
        backend: BackendArg,
        /// The GPU to use: its index in `shadertrain devices`, or part of its name.
        #[arg(long)]
        adapter: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List every adapter wgpu can see, with the limits that matter.
    Devices {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// A built-in set (spirals, xor, example), a CSV file with a header row,
    /// a directory holding MNIST-format IDX files (train-images-idx3-ubyte[.gz], …),
    /// or an IDX images file and its labels file as IMAGES,LABELS.
    #[arg(long, default_value = "spirals")]
    data: String,
    /// CSV target column (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Layer sizes, inputs first, e.g. 2,32,32,2 (default: per dataset; required for CSV).
    #[arg(long)]
    layers: Option<String>,
    /// Passes over the data (default: per dataset).
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Samples per step (default: per dataset).
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Learning rate (default: per dataset).
    #[arg(long, allow_negative_numbers = true)]
    lr: Option<f32>,
    /// Seed for the initial weights, the shuffling, the validation split and
    /// the built-in data [default: 42, or the checkpoint's with --resume].
    #[arg(long, allow_negative_numbers = true)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Write a checkpoint (safetensors: weights, architecture, training state) here when training ends.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also write the --save checkpoint every N epochs.
    #[arg(long, allow_negative_numbers = true, requires = "save")]
    save_every: Option<usize>,
    /// Continue the run saved in this checkpoint; --epochs counts the total.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// mse or ce; follows from the output layer (ce after softmax, else mse),
    /// and a value that disagrees is refused.
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
    /// sgd, momentum or adam [default: sgd, or the checkpoint's].
    #[arg(long)]
    optimizer: Option<String>,
    /// Momentum's μ [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f32>,
    /// Adam's β1 [default: 0.9].
    #[arg(long, allow_negative_numbers = true)]
    beta1: Option<f32>,
    /// Adam's β2 [default: 0.999].
    #[arg(long, allow_negative_numbers = true)]
    beta2: Option<f32>,
    /// Adam's ε [default: 1e-8].
    #[arg(long, allow_negative_numbers = true)]
    eps: Option<f32>,
    /// Weight decay λ on weights, not biases (L2 for sgd/momentum, decoupled for adam) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f32>,
    /// constant, step (× --lr-gamma every --lr-step epochs) or cosine [default: constant].
    #[arg(long)]
    lr_schedule: Option<String>,
    /// Epochs between decays of the step schedule [default: 10].
    #[arg(long, allow_negative_numbers = true)]
    lr_step: Option<usize>,
    /// Factor of each decay of the step schedule [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    lr_gamma: Option<f32>,
    /// Write per-epoch metrics as JSON to this file.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Draw the loss and accuracy curves (training and validation) into this .png or .svg.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Check the loss after every step, not only after each epoch, and stop
    /// at the first step where it is not finite (on a GPU: one small read-back per step).
    #[arg(long)]
    nan_check: bool,
    /// CPU threads (0: one per core).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    threads: usize,
    /// Hold out this fraction of the data (seeded) for validation after every epoch.
    #[arg(long, conflicts_with = "val")]
    val_split: Option<f64>,
    /// A separate validation set (CSV file or IDX directory), scored after every epoch.
    #[arg(long)]
    val: Option<String>,
    /// Standardise every input column with the training set's mean and standard deviation.
    #[arg(long)]
    normalize: bool,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long)]
    model: PathBuf,
    /// A built-in set, a CSV file (for predict: with or without the target
    /// column) or an IDX directory.
    #[arg(long)]
    data: String,
    /// CSV target column (default: the last).
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Samples per forward pass.
    #[arg(long, allow_negative_numbers = true, default_value_t = 1024)]
    batch: usize,
    /// CPU threads (0: one per core).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    threads: usize,
    /// Print JSON (eval).
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LossArg {
    /// Mean squared error, `½ Σ (a − y)²`.
    Mse,
    /// Cross-entropy, `−Σ y log a`, after a softmax output.
    Ce,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchBackend {
    Cpu,
    Gpu,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelsArg {
    /// The faster set for the adapter: simple on CPU adapters (lavapipe), else tiled.
    Auto,
    /// Tiled products, fused loss and update.
    Tiled,
    /// One invocation per output: the GPU reference twins.
    Simple,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TilesArg {
    /// 32×32 blocks, 4×4 per invocation (CPU adapters).
    Small,
    /// 64×64 blocks, 4×4 per invocation.
    Medium,
    /// 128×128 blocks, 8×8 per invocation (discrete GPUs).
    Discrete,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, value_enum, default_value = "both")]
    backend: BenchBackend,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// A named workload: W0 (2-2-2, batch 1), W1 (784-256-256-10, 1024),
    /// W2 (1024-1024-1024-1024, 1024), W3 (4096-4096-4096, 4096). Default W1.
    #[arg(long, conflicts_with = "layers")]
    workload: Option<String>,
    /// Layer sizes, instead of a workload.
    #[arg(long)]
    layers: Option<String>,
    /// Samples per step (default: the workload's).
    #[arg(long, allow_negative_numbers = true)]
    batch: Option<usize>,
    /// Timed steps (default: the workload's).
    #[arg(long, allow_negative_numbers = true)]
    steps: Option<usize>,
    /// Untimed steps first.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3)]
    warmup: usize,
    /// Learning rate (the PyTorch peer's 0.5).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    lr: f32,
    /// Seed of the initial weights and the random batch.
    #[arg(long, allow_negative_numbers = true, default_value_t = 42)]
    seed: u64,
    /// CPU threads (0: one per core).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0)]
    threads: usize,
    /// GPU kernels.
    #[arg(long, value_enum, default_value = "auto")]
    kernels: KernelsArg,
    /// Tile sizes of the tiled kernels (default: chosen by adapter type).
    #[arg(long, value_enum)]
    tiles: Option<TilesArg>,
    /// Also time each GPU kernel of a step with timestamp queries (median of 5 steps).
    #[arg(long)]
    profile: bool,
    /// Print one JSON object per backend, one per line.
    #[arg(long)]
    json: bool,
}

/// Defaults that train each built-in set well: (layers, epochs, batch, lr).
struct Defaults {
    layers: &'static str,
    epochs: usize,
    batch: usize,
    lr: f32,
}

fn defaults(name: &str) -> Defaults {
    match name {
        "xor" => Defaults {
            layers: "2,4,1",
            epochs: 2000,
            batch: 4,
            lr: 5.0,
        },
        "example" => Defaults {
            layers: "2,2,2",
            epochs: 1,
            batch: 1,
            lr: 0.5,
        },
        _ => Defaults {
            layers: "2,32,2",
            epochs: 40,
            batch: 8,
            lr: 8.0,
        },
    }
}

/// The device to train on, chosen once.
enum Device {
    Cpu,
    Gpu(Arc<GpuContext>),
}

/// The GPU `--adapter` names (an index from `devices`, or part of a name), or the best one.
fn gpu_context(adapter: Option<&str>) -> Result<Arc<GpuContext>> {
    match adapter {
        Some(sel) => GpuContext::with_adapter(sel),
        None => GpuContext::new(),
    }
}

fn pick_device(arg: BackendArg, adapter: Option<&str>, quiet: bool) -> Result<Device> {
    match (arg, adapter) {
        (BackendArg::Cpu, Some(_)) => Err(Error::Invalid(
            "--adapter picks a GPU; it cannot go with --backend cpu".into(),
        )),
        (BackendArg::Cpu, None) => Ok(Device::Cpu),
        (BackendArg::Gpu, _) | (BackendArg::Auto, Some(_)) => {
            Ok(Device::Gpu(gpu_context(adapter)?))
        }
        (BackendArg::Auto, None) => match GpuContext::new() {
            Ok(ctx) => Ok(Device::Gpu(ctx)),
            Err(e) => {
                if !quiet {
                    eprintln!("notice: {e}; using the CPU backend");
                }
                Ok(Device::Cpu)
            }
        },
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                };
            }
            // One line: clap's first line already starts with "error: "; a
            // first line ending in ':' continues with a list, joined on.
            let text = e.render().to_string();
            let mut line = text
                .lines()
                .next()
                .unwrap_or("error: bad arguments")
                .to_string();
            if line.ends_with(':') {
                let rest = text.lines().skip(1);
                let items: Vec<&str> = rest
                    .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage"))
                    .map(str::trim)
                    .collect();
                line = format!("{line} {}", items.join(", "));
            }
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    let run = match cli.cmd {
        Cmd::Train(a) => cmd_train(*a),
        Cmd::Bench(a) => cmd_bench(a),
        Cmd::Eval(m) => cmd_eval(m),
        Cmd::Predict { m, out } => cmd_predict(m, out),
        Cmd::Example {
            backend,
            adapter,
            json,
        } => cmd_example(backend, adapter.as_deref(), json),
        Cmd::Devices { json } => cmd_devices(json),
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = shadertrain::error::one_line(&e.to_string(), usize::MAX);
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// What `--data` names: a built-in set or a CSV file. Decided once, so the
/// `--layers` check and the loader agree.
enum DataArg<'a> {
    Builtin(&'a str),
    Csv(&'a Path),
    /// A directory holding MNIST-format IDX files.
    Idx(&'a Path),
    /// An IDX images file and its labels file, `IMAGES,LABELS`.
    IdxFiles(&'a Path, &'a Path),
}

fn data_arg(data: &str) -> Result<DataArg<'_>> {
    match data {
        "spirals" | "xor" | "example" => Ok(DataArg::Builtin(data)),
        dir if Path::new(dir).is_dir() => Ok(DataArg::Idx(Path::new(dir))),
        pair if pair.contains(',') && !pair.to_ascii_lowercase().ends_with(".csv") => {
            let (images, labels) = pair.split_once(',').unwrap_or((pair, ""));
            Ok(DataArg::IdxFiles(Path::new(images), Path::new(labels)))
        }
        path if path.to_ascii_lowercase().ends_with(".csv") || Path::new(path).exists() => {
            Ok(DataArg::Csv(Path::new(path)))
        }
        other => Err(Error::Invalid(format!(
            "--data: unknown dataset '{other}' (built-in: spirals, xor, example; a .csv file, a directory of MNIST IDX files, or IMAGES,LABELS IDX files)"
        ))),
    }
}

/// The training set and, with `--val-split` or `--val`, the validation set,
/// both standardised under `--normalize` (or as the resumed run was) with
/// the training statistics, which are returned for checkpoints.
fn load_sets(
    a: &TrainArgs,
    source: &DataArg<'_>,
    net: &Network,
    seed: u64,
    resumed: Option<&Checkpoint>,
) -> Result<(Dataset, Option<Dataset>, Option<Standardizer>)> {
    let data = load_data(source, a.target.as_deref(), net.outputs(), seed)?;
    let by = match (resumed, &a.layers) {
        (Some(_), None) => "the checkpoint's network",
        _ => "--layers",
    };
    check_fits(&data, source, net, by)?;
    let (mut train, mut val) = match (a.val_split, &a.val) {
        (Some(f), _) => {
            let (t, v) = data.split_validation(f, seed)?;
            (t, Some(v))
        }
        (None, Some(path)) => {
            let src = data_arg(path).map_err(|_| {
                Error::Invalid(format!(
                    "--val: '{path}' is not a CSV file or an IDX directory"
                ))
            })?;
            if matches!(src, DataArg::Builtin(_)) {
                return Err(Error::Invalid(format!(
                    "--val: '{path}' is not a CSV file or an IDX directory"
                )));
            }
            let v = load_data(&src, a.target.as_deref(), net.outputs(), seed)?;
            check_fits(&v, &src, net, by)?;
            (data, Some(v))
        }
        (None, None) => (data, None),
    };
    let z = match resumed {
        Some(c) => {
            if a.normalize && c.standardizer.is_none() {
                return Err(Error::Invalid(
                    "--normalize: the resumed run was trained without it".into(),
                ));
            }
            c.standardizer.clone()
        }
        None => a.normalize.then(|| Standardizer::fit(&train)),
    };
    if let Some(z) = &z {
        z.apply(&mut train)?;
        if let Some(v) = val.as_mut() {
            z.apply(v)?;
        }
    }
    Ok((train, val, z))
}

/// The set `source` names, targets one-hot over `net_outputs` classes
/// (CSV: the `target` column); the spirals drawn with `seed`.
/// The data argument as messages name it: the file, the directory or the set.
fn shown(source: &DataArg<'_>) -> String {
    match source {
        DataArg::Builtin(name) => (*name).to_string(),
        DataArg::Csv(p) | DataArg::Idx(p) | DataArg::IdxFiles(p, _) => p.display().to_string(),
    }
}

/// Refuse data whose widths do not fit `net`, naming the file and what
/// defines the network (`by`: `--layers`, or the model).
fn check_fits(data: &Dataset, source: &DataArg<'_>, net: &Network, by: &str) -> Result<()> {
    let unit = match source {
        DataArg::Csv(_) => "input columns",
        DataArg::Idx(_) | DataArg::IdxFiles(..) => "values per image",
        DataArg::Builtin(_) => "inputs",
    };
    let msg = match data.mismatch(net.inputs(), net.outputs()) {
        None => return Ok(()),
        Some(Width::Inputs(n)) => format!(
            "{n} {unit}, but {by} {} takes {} inputs",
            net.describe(),
            net.inputs()
        ),
        Some(Width::Outputs(n)) => format!(
            "{n} target columns, but {by} {} has {} outputs",
            net.describe(),
            net.outputs()
        ),
    };
    Err(Error::Data {
        path: shown(source),
        msg,
    })
}

fn load_data(
    source: &DataArg<'_>,
    target: Option<&str>,
    net_outputs: usize,
    seed: u64,
) -> Result<Dataset> {
    if let (Some(t), false) = (target, matches!(source, DataArg::Csv(_))) {
        return Err(Error::Invalid(format!(
            "--target {t:?} names a CSV column, but the data is not a CSV file"
        )));
    }
    Ok(match source {
        DataArg::Builtin("xor") => Dataset::xor(),
        DataArg::Builtin("example") => Dataset::example(),
        DataArg::Builtin(_) => Dataset::spirals(1000, seed),
        DataArg::Csv(path) => Dataset::from_csv(path, target, net_outputs)?,
        DataArg::Idx(dir) => {
            let ((images, labels), _test) = shadertrain::idx::find_mnist(dir)?;
            Dataset::from_idx(&images, &labels, net_outputs)?
        }
        DataArg::IdxFiles(images, labels) => Dataset::from_idx(images, labels, net_outputs)?,
    })
}

fn cmd_train(a: TrainArgs) -> Result<()> {
    let d = defaults(&a.data);
    let source = data_arg(&a.data)?;
    let resumed = a.resume.as_deref().map(Checkpoint::load).transpose()?;
    if matches!(
        source,
        DataArg::Csv(_) | DataArg::Idx(_) | DataArg::IdxFiles(..)
    ) && a.layers.is_none()
        && resumed.is_none()
    {
        return Err(Error::Invalid(
            "--layers is required with a CSV file or IDX directory, e.g. --layers 784,128,10"
                .into(),
        ));
    }
    // Refuse unwritable output paths before training, not after.
    if let Some(p) = &a.plot {
        let ext = p
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("png" | "svg")) {
            return Err(Error::Invalid(format!(
                "--plot: {} must end in .png or .svg",
                p.display()
            )));
        }
    }
    for (flag, path) in [
        ("--metrics", &a.metrics),
        ("--save", &a.save),
        ("--plot", &a.plot),
    ] {
        check_out_dir(flag, path.as_deref())?;
    }
    if a.save_every == Some(0) {
        return Err(Error::Invalid("--save-every must be at least 1".into()));
    }
    let net = match (&resumed, &a.layers) {
        (Some(c), Some(l)) => {
            let n = Network::parse(l)?;
            if &n != c.params.network() {
                return Err(Error::Shape(format!(
                    "--layers {} does not match the checkpoint's {}",
                    n.describe(),
                    c.params.network().describe()
                )));
            }
            n
        }
        (Some(c), None) => c.params.network().clone(),
        (None, l) => Network::parse(l.as_deref().unwrap_or(d.layers))?,
    };
    match (a.loss, net.loss()) {
        (Some(LossArg::Ce), Loss::Mse) => {
            return Err(Error::Invalid(format!(
                "--loss ce needs a softmax output layer (end --layers with {}:softmax); {} ends in {}",
                net.outputs().max(2),
                net.describe(),
                net.output_activation().name()
            )))
        }
        (Some(LossArg::Mse), Loss::CrossEntropy) => {
            return Err(Error::Invalid(
                "--loss mse is not supported after a softmax output (softmax trains with cross-entropy); use another output activation, e.g. :sigmoid".into(),
            ))
        }
        _ => {}
    }
    let seed = match (&resumed, a.seed) {
        (Some(c), Some(s)) if s != c.state.seed => {
            return Err(Error::Invalid(format!(
                "--seed {s} conflicts with the checkpoint's seed {}; resuming needs the same seed",
                c.state.seed
            )))
        }
        (Some(c), _) => c.state.seed,
        (None, s) => s.unwrap_or(42),
    };
    let st = resumed.as_ref().map(|c| &c.state);
    let (optimizer, schedule) = optimizer_and_schedule(&a, st)?;
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(d.epochs),
        batch: a.batch.or(st.map(|s| s.batch)).unwrap_or(d.batch),
        lr: a.lr.or(st.map(|s| s.lr)).unwrap_or(d.lr),
        seed,
        shuffle: true,
        schedule,
        nan_check: a.nan_check,
    };
    cfg.validate()?;
    let (data, val, z) = load_sets(&a, &source, &net, seed, resumed.as_ref())?;
    if let Some(s) = st {
        if s.samples != data.len() {
            return Err(Error::Invalid(format!(
                "--resume: the checkpoint was trained on '{}' ({} samples), this run has '{}' ({} samples); resuming needs the same data",
                s.data,
                s.samples,
                data.name,
                data.len()
            )));
        }
        if s.epoch >= cfg.epochs {
            return Err(Error::Invalid(format!(
                "--resume: the checkpoint has already trained {} epochs; --epochs counts the total, so ask for more than {}",
                s.epoch, s.epoch
            )));
        }
    }
    let run = Run {
        net: &net,
        data: &data,
        val: val.as_ref(),
        cfg: &cfg,
        standardizer: z.as_ref(),
        resumed: resumed.as_ref(),
        optimizer,
        history: std::cell::RefCell::new(
            resumed
                .as_ref()
                .map(|c| c.state.history.clone())
                .unwrap_or_default(),
        ),
    };
    let device = pick_device(a.backend, a.adapter.as_deref(), a.quiet)?;
    let capacity = cfg.batch.min(data.len()).max(1);
    match device {
        Device::Cpu => {
            let b = FastCpuBackend::new(&net, capacity, a.threads)?;
            run_training(b, "cpu", &run, &a)
        }
        Device::Gpu(ctx) => {
            let b = GpuBackend::new(ctx, &net, capacity)?;
            run_training(b, "gpu", &run, &a)
        }
    }
}

/// The optimiser and schedule from the flags, or, when resuming, from the
/// checkpoint (a flag that disagrees with it is refused: the saved state
/// belongs to the saved optimiser).
/// Refuse a `flag` the user `given` that does not apply to this run (it
/// applies only `to` something, and the run `now` uses something else):
/// settings that would be silently ignored.
fn refuse_unused(flag: &str, given: bool, applies: bool, to: &str, now: &str) -> Result<()> {
    if given && !applies {
        return Err(Error::Invalid(format!(
            "{flag} applies only to {to}, and this run uses {now}"
        )));
    }
    Ok(())
}

fn optimizer_and_schedule(a: &TrainArgs, st: Option<&TrainState>) -> Result<(Optimizer, Schedule)> {
    let base = st.map(|s| s.optimizer).unwrap_or_default();
    let kind = match &a.optimizer {
        Some(name) => OptimizerKind::parse(name)?,
        None => base.kind,
    };
    // Settings of another optimiser or schedule would be silently ignored.
    let uses = format!("--optimizer {}", kind.name());
    let momentum = kind == OptimizerKind::Momentum;
    refuse_unused(
        "--momentum",
        a.momentum.is_some(),
        momentum,
        "--optimizer momentum",
        &uses,
    )?;
    let adam = kind == OptimizerKind::Adam;
    for (flag, v) in [("--beta1", a.beta1), ("--beta2", a.beta2), ("--eps", a.eps)] {
        refuse_unused(flag, v.is_some(), adam, "--optimizer adam", &uses)?;
    }
    let opt = Optimizer {
        kind,
        momentum: a.momentum.unwrap_or(base.momentum),
        beta1: a.beta1.unwrap_or(base.beta1),
        beta2: a.beta2.unwrap_or(base.beta2),
        eps: a.eps.unwrap_or(base.eps),
        weight_decay: a.weight_decay.unwrap_or(base.weight_decay),
    };
    opt.validate()?;
    let schedule = match (&a.lr_schedule, st) {
        (Some(name), _) => match name.as_str() {
            "constant" => Schedule::Constant,
            "cosine" => Schedule::Cosine,
            "step" => {
                // On resume the checkpoint's step settings are the defaults.
                let (every, gamma) = match st.map(|s| s.schedule) {
                    Some(Schedule::Step { every, gamma }) => (every, gamma),
                    _ => (10, 0.1),
                };
                Schedule::Step {
                    every: a.lr_step.unwrap_or(every),
                    gamma: a.lr_gamma.unwrap_or(gamma),
                }
            }
            other => {
                return Err(Error::Invalid(format!(
                    "--lr-schedule: '{other}' is not constant, step or cosine"
                )))
            }
        },
        (None, Some(s)) => s.schedule,
        (None, None) => Schedule::Constant,
    };
    let step = matches!(schedule, Schedule::Step { .. });
    let sched = format!("--lr-schedule {}", schedule.spec());
    for (flag, given) in [
        ("--lr-step", a.lr_step.is_some()),
        ("--lr-gamma", a.lr_gamma.is_some()),
    ] {
        refuse_unused(flag, given, step, "--lr-schedule step", &sched)?;
    }
    schedule.validate()?;
    if let Some(s) = st {
        if opt != s.optimizer {
            return Err(Error::Invalid(format!(
                "--resume: the checkpoint was trained with {} ({:?}); resuming needs the same optimizer settings",
                s.optimizer.name(),
                s.optimizer
            )));
        }
        if schedule != s.schedule {
            return Err(Error::Invalid(format!(
                "--resume: the checkpoint's --lr-schedule is {}; resuming needs the same schedule",
                s.schedule.spec()
            )));
        }
    }
    Ok((opt, schedule))
}

/// Everything a training run is about, decided before a backend exists.
struct Run<'a> {
    net: &'a Network,
    data: &'a Dataset,
    val: Option<&'a Dataset>,
    cfg: &'a TrainConfig,
    standardizer: Option<&'a Standardizer>,
    resumed: Option<&'a Checkpoint>,
    optimizer: Optimizer,
    /// Every epoch so far, the resumed ones first.
    history: std::cell::RefCell<Vec<EpochStats>>,
}

impl Run<'_> {
    /// The checkpoint of `backend`'s parameters and optimiser after `epoch` epochs.
    fn checkpoint<B: Backend<Scalar = f32> + ?Sized>(
        &self,
        backend: &mut B,
        epoch: usize,
    ) -> Result<Checkpoint> {
        let state = TrainState {
            epoch,
            seed: self.cfg.seed,
            batch: self.cfg.batch,
            lr: self.cfg.lr,
            data: self.data.name.clone(),
            samples: self.data.len(),
            history: self.history.borrow().clone(),
            optimizer: self.optimizer,
            schedule: self.cfg.schedule,
        };
        Checkpoint::capture(backend, state, self.standardizer.cloned())
    }
}

fn run_training<B: Backend<Scalar = f32>>(
    mut backend: B,
    kind: &str,
    run: &Run<'_>,
    a: &TrainArgs,
) -> Result<()> {
    let (net, data, val, cfg) = (run.net, run.data, run.val, run.cfg);
    let first = run.resumed.map_or(1, |c| c.state.epoch + 1);
    let adapter = backend.describe();
    if !a.quiet {
        eprintln!("backend: {kind}: {adapter}");
        eprintln!(
            "training {} on '{}' ({} samples): {} epochs, batch {}, lr {}, seed {}",
            net.describe(),
            data.name,
            data.len(),
            cfg.epochs,
            cfg.batch,
            cfg.lr,
            cfg.seed
        );
    }
    // A resumed run starts from its checkpoint (parameters, optimiser and its
    // state), the worked example from its published weights, everything else
    // from a seeded init.
    match run.resumed {
        Some(c) => {
            if !a.quiet {
                eprintln!("resuming after epoch {}", c.state.epoch);
            }
            c.restore(&mut backend)?;
        }
        None => {
            // The initial parameters, and a read-back for each checkpoint.
            shadertrain::memory::ensure_params(net, 2)?;
            let init = if a.data == "example" && net == &example::network() {
                example::params()
            } else {
                net.init(cfg.seed)
            };
            backend.set_params(&init)?;
            backend.set_optimizer(&run.optimizer)?;
        }
    }
    let steps = data.len().div_ceil(cfg.batch.min(data.len()).max(1));
    let bar = ProgressBar::new(((cfg.epochs + 1 - first) * steps) as u64);
    if a.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t0 = Instant::now();
    let mut saved = first - 1;
    train_epochs(&mut backend, data, val, cfg, first, |b, p| {
        match p {
            Progress::Step { .. } => bar.inc(1),
            Progress::Epoch(s) => {
                bar.set_message(epoch_line(s, cfg.epochs));
                run.history.borrow_mut().push(*s);
                if let (Some(path), Some(n)) = (&a.save, a.save_every) {
                    if s.epoch % n == 0 {
                        run.checkpoint(b, s.epoch)?.save(path)?;
                        saved = s.epoch;
                    }
                }
            }
        }
        Ok(())
    })?;
    if let Some(path) = &a.save {
        if saved != cfg.epochs {
            run.checkpoint(&mut backend, cfg.epochs)?.save(path)?;
        }
    }
    let train_secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let (totals, metric) = evaluate(&mut backend, data)?;
    let samples = ((cfg.epochs + 1 - first) * data.len()) as f64;
    let acc = totals.accuracy(metric);
    println!(
        "final loss: {:.6} ({})",
        totals.loss(),
        totals.loss_fn.name()
    );
    if let Some(acc) = acc {
        println!("accuracy: {:.2}%", acc * 100.0);
    }
    let val_totals = match val {
        Some(v) => Some(evaluate(&mut backend, v)?),
        None => None,
    };
    if let Some((t, m)) = &val_totals {
        println!("validation loss: {:.6}", t.loss());
        if let Some(acc) = t.accuracy(*m) {
            println!("validation accuracy: {:.2}%", acc * 100.0);
        }
    }
    println!(
        "throughput: {:.0} samples/s ({} samples in {:.2} s)",
        samples / train_secs,
        samples,
        train_secs
    );
    if let Some(path) = &a.plot {
        let title = format!("{} on '{}' ({kind}: {adapter})", net.describe(), data.name);
        shadertrain::plot::plot_history(path, &title, &run.history.borrow())?;
    }
    if let Some(path) = &a.metrics {
        let json = serde_json::json!({
            "backend": kind,
            "adapter": adapter,
            "layers": net.sizes(),
            "epochs": *run.history.borrow(),
            "final": {
                "loss": totals.loss(),
                "accuracy": acc,
                "samples_per_s": samples / train_secs,
                "seconds": train_secs,
                "val_loss": val_totals.as_ref().map(|(t, _)| t.loss()),
                "val_accuracy": val_totals.as_ref().and_then(|(t, m)| t.accuracy(*m)),
            },
        });
        write_atomic(
            path,
            serde_json::to_string_pretty(&json)
                .unwrap_or_default()
                .as_bytes(),
        )?;
    }
    Ok(())
}

fn epoch_line(s: &EpochStats, epochs: usize) -> String {
    let mut line = format!("epoch {}/{epochs}  loss {:.5}", s.epoch, s.loss);
    if let Some(acc) = s.accuracy {
        line += &format!("  acc {:.1}%", acc * 100.0);
    }
    if let Some(l) = s.val_loss {
        line += &format!("  val loss {l:.5}");
    }
    if let Some(acc) = s.val_accuracy {
        line += &format!("  val acc {:.1}%", acc * 100.0);
    }
    line + &format!("  {:.0} samples/s", s.samples_per_s)
}

/// A saved model on the chosen device, and the data it is to see,
/// standardised as in training.
struct Loaded {
    ckpt: Checkpoint,
    data: Dataset,
}

fn load_model(m: &ModelArgs, inputs_only_ok: bool) -> Result<Loaded> {
    if m.batch == 0 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    let ckpt = Checkpoint::load(&m.model)?;
    let net = ckpt.params.network().clone();
    let source = data_arg(&m.data)?;
    let mut data = match source {
        DataArg::Csv(path)
            if inputs_only_ok
                && m.target.is_none()
                && Dataset::csv_columns(path)? == net.inputs() =>
        {
            Dataset::from_csv_inputs(path, net.inputs(), net.outputs())?
        }
        _ => load_data(&source, m.target.as_deref(), net.outputs(), ckpt.state.seed)?,
    };
    check_fits(&data, &source, &net, "the model")?;
    if let Some(z) = &ckpt.standardizer {
        z.apply(&mut data)?;
    }
    Ok(Loaded { ckpt, data })
}

/// Runs `f` on a backend holding the model, on the device `--backend` names.
fn with_model<R>(
    m: &ModelArgs,
    l: &Loaded,
    quiet: bool,
    f: impl FnOnce(&mut dyn Backend<Scalar = f32>) -> Result<R>,
) -> Result<R> {
    let net = l.ckpt.params.network();
    let capacity = m.batch.min(l.data.len()).max(1);
    let mut b: Box<dyn Backend<Scalar = f32>> =
        match pick_device(m.backend, m.adapter.as_deref(), quiet)? {
            Device::Cpu => Box::new(FastCpuBackend::new(net, capacity, m.threads)?),
            Device::Gpu(ctx) => Box::new(GpuBackend::new(ctx, net, capacity)?),
        };
    b.set_params(&l.ckpt.params)?;
    f(b.as_mut())
}

fn cmd_eval(m: ModelArgs) -> Result<()> {
    let l = load_model(&m, false)?;
    // One pass: the totals and the outputs the confusion matrix needs.
    let (totals, metric, out) = with_model(&m, &l, m.json, |b| {
        shadertrain::train::evaluate_and_predict(b, &l.data)
    })?;
    let confusion = l
        .data
        .is_classification()
        .then(|| confusion_matrix(&out, &l.data));
    let acc = totals.accuracy(metric);
    if m.json {
        let json = serde_json::json!({
            "model": m.model.display().to_string(),
            "layers": l.ckpt.params.network().sizes(),
            "samples": l.data.len(),
            "loss": totals.loss(),
            "accuracy": acc,
            "confusion": confusion,
        });
        println!("{json}");
        return Ok(());
    }
    println!(
        "model {} ({} epochs) on '{}' ({} samples)",
        l.ckpt.params.network().describe(),
        l.ckpt.state.epoch,
        l.data.name,
        l.data.len()
    );
    println!("loss: {:.6}", totals.loss());
    if let Some(acc) = acc {
        println!("accuracy: {:.2}%", acc * 100.0);
    }
    if let Some(c) = confusion {
        println!("confusion matrix (rows: true class, columns: predicted):");
        let w = c
            .iter()
            .flatten()
            .max()
            .map_or(1, |v| v.to_string().len())
            .max(3);
        let head: Vec<String> = (0..c.len()).map(|j| format!("{j:>w$}")).collect();
        println!("      {}", head.join(" "));
        for (i, row) in c.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>w$}")).collect();
            println!("  {i:>3} {}", cells.join(" "));
        }
    }
    Ok(())
}

/// Refuses an output path whose directory is missing, before any work.
fn check_out_dir(flag: &str, path: Option<&Path>) -> Result<()> {
    match path.and_then(Path::parent) {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => Err(Error::Invalid(format!(
            "{flag}: directory {} does not exist",
            dir.display()
        ))),
        _ => Ok(()),
    }
}

fn cmd_predict(m: ModelArgs, out_path: Option<PathBuf>) -> Result<()> {
    check_out_dir("--out", out_path.as_deref())?;
    let l = load_model(&m, true)?;
    let out = with_model(&m, &l, out_path.is_none(), |b| {
        shadertrain::train::predict(b, &l.data)
    })?;
    let no = l.data.outputs;
    let mut csv = String::new();
    let mut head: Vec<String> = (0..no).map(|k| format!("output_{k}")).collect();
    head.push("predicted".into());
    csv += &head.join(",");
    csv.push('\n');
    for row in out.chunks(no) {
        for v in row {
            csv += &format!("{v},");
        }
        csv += &format!("{}\n", class_of(row));
    }
    match out_path {
        Some(p) => write_atomic(&p, csv.as_bytes()),
        None => {
            use std::io::Write;
            std::io::stdout()
                .write_all(csv.as_bytes())
                .map_err(|e| Error::io(Path::new("<stdout>"), e))
        }
    }
}

/// One kernel dispatch's share of a profiled step.
#[derive(serde::Serialize)]
struct KernelTime {
    kernel: String,
    ms: f64,
}

/// Median per-dispatch times of `runs` profiled steps, in dispatch order, or
/// `None` where the adapter has no timestamp queries.
fn profile_gpu(g: &mut GpuBackend, lr: f32, runs: usize) -> Result<Option<Vec<KernelTime>>> {
    let mut all: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..runs {
        match g.profile_step(lr)? {
            Some(p) => all.push(p),
            None => return Ok(None),
        }
    }
    let Some(first) = all.first() else {
        return Ok(None);
    };
    Ok(Some(
        first
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let ms = all.iter().filter_map(|p| p.get(i).map(|x| x.1)).collect();
                KernelTime {
                    kernel: name.clone(),
                    ms: bench::Timing { ms }.median(),
                }
            })
            .collect(),
    ))
}

/// One backend's result, as `bench --json` prints it.
#[derive(serde::Serialize)]
struct BenchRow {
    backend: &'static str,
    adapter: String,
    layers: Vec<usize>,
    batch: usize,
    steps: usize,
    ms_per_step_median: f64,
    ms_per_step_min: f64,
    ms_per_step_max: f64,
    samples_per_s: f64,
    gflops: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<&'static str>,
    /// GPU only: which kernels ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernels: Option<String>,
    /// GPU with `--profile`: median milliseconds per kernel dispatch of a step.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<KernelTime>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_param_diff: Option<f64>,
}

fn cmd_bench(a: BenchArgs) -> Result<()> {
    let on_gpu = a.backend != BenchBackend::Cpu;
    for (flag, given) in [
        ("--kernels", a.kernels != KernelsArg::Auto),
        ("--tiles", a.tiles.is_some()),
        ("--profile", a.profile),
        ("--adapter", a.adapter.is_some()),
    ] {
        refuse_unused(
            flag,
            given,
            on_gpu,
            "the GPU (--backend gpu or both)",
            "--backend cpu",
        )?;
    }
    // clap refuses --workload with --layers; with neither, W1.
    let (workload, net) = match &a.layers {
        Some(l) => (None, Network::parse(l)?),
        None => {
            let w = Workload::named(a.workload.as_deref().unwrap_or("W1"))?;
            (Some(w), w.network())
        }
    };
    let batch = a.batch.or(workload.map(|w| w.batch)).unwrap_or(1024);
    let steps = a.steps.or(workload.map(|w| w.steps)).unwrap_or(20);
    if batch == 0 {
        return Err(Error::Invalid("--batch must be at least 1".into()));
    }
    if steps == 0 {
        return Err(Error::Invalid("--steps must be at least 1".into()));
    }
    if !a.lr.is_finite() || a.lr <= 0.0 {
        return Err(Error::Invalid(format!(
            "--lr must be a positive number, got {}",
            a.lr
        )));
    }
    // The initial parameters, and one read-back per backend.
    shadertrain::memory::ensure_params(&net, 3)?;
    let params = net.init(a.seed);
    let (x, y) = bench::random_batch(&net, batch, a.seed)?;
    let flops = bench::flops_per_step(&net, batch);
    let want = |b: BenchBackend| a.backend == b || a.backend == BenchBackend::Both;
    let mut rows: Vec<(BenchRow, shadertrain::network::Params<f32>)> = Vec::new();
    // The GPU first: a missing adapter should fail before minutes of CPU timing.
    let gpu = if want(BenchBackend::Gpu) {
        let ctx = gpu_context(a.adapter.as_deref())?;
        let auto = GpuOptions::for_adapter(&ctx, &net, batch)?;
        let options = GpuOptions {
            kernels: match a.kernels {
                KernelsArg::Auto => auto.kernels,
                KernelsArg::Tiled => KernelSet::Tiled,
                KernelsArg::Simple => KernelSet::Simple,
            },
            tiles: a.tiles.map(|t| match t {
                TilesArg::Small => TileConfig::SMALL,
                TilesArg::Medium => TileConfig::MEDIUM,
                TilesArg::Discrete => TileConfig::DISCRETE,
            }),
            ..GpuOptions::default()
        };
        Some(GpuBackend::with_options(ctx, &net, batch, options)?)
    } else {
        None
    };
    let run = |name: &'static str,
               b: &mut dyn Backend<Scalar = f32>|
     -> Result<(BenchRow, shadertrain::network::Params<f32>)> {
        if !a.json {
            eprintln!("timing {name}: {} ...", b.describe());
        }
        let (t, p) = bench::time_steps(b, &params, (&x, &y), a.lr, a.warmup, steps)?;
        let med = t.median();
        Ok((
            BenchRow {
                backend: name,
                adapter: b.describe(),
                layers: net.sizes().to_vec(),
                batch,
                steps,
                ms_per_step_median: med,
                ms_per_step_min: t.min(),
                ms_per_step_max: t.max(),
                samples_per_s: batch as f64 / (med / 1e3),
                gflops: flops / (med / 1e3) / 1e9,
                workload: workload.map(|w| w.name),
                kernels: None,
                profile: None,
                speedup: None,
                max_param_diff: None,
            },
            p,
        ))
    };
    if let Some(mut g) = gpu {
        let kernels = match g.tiles() {
            Some(t) => format!(
                "tiled {}x{}, {}x{} per invocation",
                t.bm(),
                t.bn(),
                t.tm,
                t.tn
            ),
            None => "simple".into(),
        };
        if !a.json {
            eprintln!("gpu kernels: {kernels}");
        }
        let (mut r, p) = run("gpu", &mut g)?;
        r.kernels = Some(kernels);
        if a.profile {
            r.profile = profile_gpu(&mut g, a.lr, 5)?;
            if r.profile.is_none() && !a.json {
                eprintln!("--profile: this adapter has no timestamp queries");
            }
        }
        rows.push((r, p));
    }
    if want(BenchBackend::Cpu) {
        rows.push(run(
            "cpu",
            &mut FastCpuBackend::new(&net, batch, a.threads)?,
        )?);
    }
    if let [(g, gp), (c, cp)] = rows.as_mut_slice() {
        let diff = bench::max_param_diff(gp, cp)?;
        let speedup = c.ms_per_step_median / g.ms_per_step_median;
        for r in [g, c] {
            r.speedup = Some(speedup);
            r.max_param_diff = Some(diff);
        }
    }
    for (r, _) in &rows {
        if a.json {
            println!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            println!(
                "{:<4} {:>10.3} ms/step (min {:.3}, max {:.3})  {:>12.0} samples/s  {:>8.2} GFLOP/s  [{}]",
                r.backend,
                r.ms_per_step_median,
                r.ms_per_step_min,
                r.ms_per_step_max,
                r.samples_per_s,
                r.gflops,
                r.adapter
            );
        }
    }
    for (r, _) in &rows {
        let Some(prof) = r.profile.as_ref().filter(|_| !a.json) else {
            continue;
        };
        let total: f64 = prof.iter().map(|k| k.ms).sum();
        println!("gpu kernels, median of 5 profiled steps (sum {total:.3} ms):");
        for k in prof {
            println!(
                "  {:<36} {:>10.3} ms  {:>5.1}%",
                k.kernel,
                k.ms,
                100.0 * k.ms / total.max(1e-12)
            );
        }
    }
    if !a.json {
        if let Some((r, _)) = rows.first().filter(|_| rows.len() == 2) {
            println!(
                "speedup gpu over cpu: {:.2}x   max_param_diff after {} steps: {:.3e}",
                r.speedup.unwrap_or(f64::NAN),
                a.warmup + steps,
                r.max_param_diff.unwrap_or(f64::NAN)
            );
        }
        println!(
            "network {} batch {batch}, {steps} timed steps after {} warm-up, {:.3} GFLOP per step",
            net.describe(),
            a.warmup,
            flops / 1e9
        );
    }
    Ok(())
}

fn cmd_example(arg: BackendArg, adapter: Option<&str>, json: bool) -> Result<()> {
    let net = example::network();
    let report = match pick_device(arg, adapter, json)? {
        Device::Cpu => example::run(&mut CpuBackend::<f64>::new(&net, 1)?, "cpu")?,
        Device::Gpu(ctx) => {
            let name = format!("gpu: {}", ctx.describe());
            example::run(&mut GpuBackend::new(ctx, &net, 1)?, &name)?
        }
    };
    if json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    let v = |x: &[f64]| {
        x.iter()
            .map(|v| format!("{v:.9}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "classic 2-2-2 worked example, one SGD step (lr {}), backend {}",
        example::LEARNING_RATE,
        report.backend
    );
    println!("inputs {:?}  targets {:?}", example::INPUT, example::TARGET);
    println!("forward");
    println!("  out_h1, out_h2  = {}", v(&report.forward.hidden));
    println!("  out_o1, out_o2  = {}", v(&report.forward.output));
    println!("  E_total         = {:.9}", report.error);
    println!("backward");
    println!("  δ_o1, δ_o2      = {}", v(&report.deltas.output));
    println!("  δ_h1, δ_h2      = {}", v(&report.deltas.hidden));
    let names = [["hidden", "h"], ["output", "o"]];
    for (l, [layer, n]) in names.iter().enumerate() {
        for (j, row) in report.gradients.weights[l].iter().enumerate() {
            println!("  ∂E/∂W {layer} into {n}{} = {}", j + 1, v(row));
        }
        println!(
            "  ∂E/∂b {layer}          = {}",
            v(&report.gradients.biases[l])
        );
    }
    println!("after the update");
    for (l, [layer, n]) in names.iter().enumerate() {
        for (j, row) in report.updated.weights[l].iter().enumerate() {
            println!("  W {layer} into {n}{} = {}", j + 1, v(row));
        }
        println!("  b {layer}          = {}", v(&report.updated.biases[l]));
    }
    Ok(())
}

fn cmd_devices(json: bool) -> Result<()> {
    let list = list_adapters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return Ok(());
    }
    if list.is_empty() {
        println!("no adapters found (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1)");
        return Ok(());
    }
    for (i, a) in list.iter().enumerate() {
        println!(
            "[{i}] {} ({}, {}){}",
            a.name,
            a.backend,
            a.device_type,
            if a.compute { "" } else { "  [no compute]" }
        );
        if !a.driver.is_empty() {
            println!("    driver: {}", a.driver);
        }
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, max workgroups/dim {}, invocations/workgroup {}, storage buffers/stage {}",
            a.max_buffer_size >> 20,
            a.max_storage_binding >> 20,
            a.max_workgroups_per_dim,
            a.max_invocations_per_workgroup,
            a.max_storage_buffers_per_stage
        );
    }
    match GpuContext::new() {
        Ok(ctx) => println!("chosen: {}", ctx.describe()),
        Err(e) => println!("chosen: none ({e})"),
    }
    Ok(())
}
