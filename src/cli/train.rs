//! `shadertrain train`: flags to a [`Trainer`], a progress bar while it runs,
//! then the final figures, the plot and the metrics file. Every rule of the
//! run itself (batch size, initial weights, checkpoints, validation) is the
//! Trainer's; this file only decides what the flags ask for and refuses
//! flags that contradict each other or a resumed checkpoint.

use super::{check_outputs, device, open_with, refuse_unused, BackendArg};
use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use shadertrain::checkpoint::{Checkpoint, TrainState};
use shadertrain::data::{Dataset, Source, Standardizer};
use shadertrain::fsutil::write_atomic;
use shadertrain::metrics::{JsonLines, TensorBoard};
use shadertrain::network::{Loss, Network};
use shadertrain::optim::{Optimizer, OptimizerKind};
use shadertrain::plot::{lock_curve, step_curve_log_every, StepCurve};
use shadertrain::train::{
    batch_size, steps_per_epoch, EpochStats, Progress, Schedule, TrainConfig,
};
use shadertrain::{EarlyStop, Error, Result, Trainer};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A built-in set (spirals, xor, example), a CSV file with a header row,
    /// a directory holding MNIST-format IDX files (train-images-idx3-ubyte[.gz], …),
    /// an IDX images file and its labels file as IMAGES,LABELS, or NumPy
    /// arrays as X.npy,Y.npy (inputs f32/f64/u8, integer labels or float
    /// targets; memory-mapped, so they may be larger than memory).
    #[arg(long, default_value = "spirals")]
    data: String,
    /// CSV target column (default: the last).
    #[arg(long)]
    target: Option<String>,
    /// Layer sizes, inputs first, e.g. 2,32,32,2 (default: per built-in set; required for files).
    #[arg(long)]
    layers: Option<String>,
    /// Passes over the data [default: per built-in set; 10 for files]; 0 with
    /// --save writes the initial weights without training.
    #[arg(long, allow_negative_numbers = true)]
    epochs: Option<usize>,
    /// Samples per step [default: per built-in set; 32 for files].
    #[arg(long, allow_negative_numbers = true, value_parser = super::at_least_1())]
    batch: Option<usize>,
    /// Learning rate [default: per built-in set; 0.1 for files].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
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
    /// GPU: where each product's kernel configuration comes from: `off` the
    /// built-in heuristic, `cached` the tuning cache where it has the
    /// product (`shadertrain tune` fills it), `auto` tunes missing products
    /// first [default: cached, or the checkpoint's configuration with --resume].
    #[arg(long, value_enum)]
    tune: Option<super::TuneArg>,
    /// GPU: run exactly this kernel configuration, as checkpoints, `--metrics`
    /// and `bench --json` record it: one for every product
    /// (`gen:8x8:4x4:k8`; `:db` double buffering, `:v4` vec4 loads along K,
    /// `:s4` the gradients' K in 4 slices), one per
    /// product (`f0=…,d0=…,g0=…,f1=…`), or `simple` (the simple kernel set).
    #[arg(long, conflicts_with = "tune")]
    kernel_config: Option<String>,
    /// Write a checkpoint (safetensors: weights, architecture, training state) here when training ends.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also write the --save checkpoint every N epochs.
    #[arg(long, allow_negative_numbers = true, requires = "save", value_parser = super::at_least_1())]
    save_every: Option<usize>,
    /// Continue the run saved in this checkpoint; --epochs counts the total.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start from the weights in this safetensors file: a shadertrain
    /// checkpoint, a torch export, or a PyTorch nn.Sequential / ModuleList
    /// state dict (names and shapes checked against --layers).
    #[arg(long, conflicts_with = "resume")]
    init: Option<PathBuf>,
    /// mse or ce; follows from the output layer (ce after softmax, else mse),
    /// and a value that disagrees is refused.
    #[arg(long, value_enum)]
    loss: Option<LossArg>,
    /// The optimiser [default: sgd, or the checkpoint's].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerArg>,
    /// Momentum's μ [default: 0.9].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    momentum: Option<f32>,
    /// Adam's β1 [default: 0.9].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    beta1: Option<f32>,
    /// Adam's β2 [default: 0.999].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    beta2: Option<f32>,
    /// Adam's ε [default: 1e-8].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    eps: Option<f32>,
    /// Weight decay λ on weights, not biases (L2 for sgd/momentum, decoupled for adam) [default: 0].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    weight_decay: Option<f32>,
    /// How the learning rate changes from epoch to epoch [default: constant].
    #[arg(long, value_enum)]
    lr_schedule: Option<ScheduleArg>,
    /// Clip the gradients to this global L2 norm before every update (any
    /// optimiser), on the device that trains; the metrics count the
    /// updates it clipped.
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    clip_norm: Option<f32>,
    /// Ramp the learning rate up linearly from 0 over the first N steps,
    /// then follow --lr-schedule [default: 0; onecycle: 30% of the steps].
    #[arg(long, allow_negative_numbers = true)]
    warmup: Option<usize>,
    /// Stop after N epochs without improvement of the validation loss and
    /// restore the best epoch's weights (needs --val or --val-split).
    #[arg(long, allow_negative_numbers = true)]
    early_stop: Option<usize>,
    /// The improvement of the validation loss that --early-stop counts [default: 0].
    #[arg(long, allow_negative_numbers = true, requires = "early_stop")]
    min_delta: Option<f64>,
    /// Epochs between decays of the step schedule [default: 10].
    #[arg(long, allow_negative_numbers = true)]
    lr_step: Option<usize>,
    /// Factor of each decay of the step schedule [default: 0.1].
    #[arg(long, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    lr_gamma: Option<f32>,
    /// Write per-epoch metrics as JSON to this file.
    #[arg(long)]
    metrics: Option<PathBuf>,
    /// Write TensorBoard event files into this directory (created if
    /// missing): loss and learning rate per step, loss, accuracy, validation
    /// and samples/s per epoch, and the run's settings and GPU kernels as
    /// text. View with `tensorboard --logdir DIR`.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Append a run record (settings; on a GPU each product's kernel
    /// configuration and its source), then one JSON object per step record
    /// and per epoch to this file, flushed as the run goes (for MLflow, W&B
    /// and scripts).
    #[arg(long)]
    metrics_jsonl: Option<PathBuf>,
    /// Steps between the per-step records of --log-dir and --metrics-jsonl
    /// (the last step of every epoch is always recorded); each reads the
    /// running loss back, on a GPU waiting for the step [default: 10].
    #[arg(long, allow_negative_numbers = true, value_parser = super::at_least_1())]
    log_every: Option<usize>,
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
    /// CPU threads (0: one per core; with several cpu --devices, the cores shared among them).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0, value_parser = super::threads())]
    threads: usize,
    #[command(flatten)]
    parallel: super::ParallelArgs,
    /// Hold out this fraction of the data (seeded) for validation after every epoch.
    #[arg(long, conflicts_with = "val")]
    val_split: Option<f64>,
    /// A separate validation set (as --data takes it, not a built-in), scored after every epoch.
    #[arg(long)]
    val: Option<String>,
    /// Standardise every input column with the training set's mean and standard deviation.
    #[arg(long)]
    normalize: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LossArg {
    /// Mean squared error, `½ Σ (a − y)²`.
    Mse,
    /// Cross-entropy, `−Σ y log a`, after a softmax output.
    Ce,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OptimizerArg {
    /// Plain stochastic gradient descent.
    Sgd,
    /// SGD with (heavy-ball) momentum, --momentum.
    Momentum,
    /// Adam, --beta1, --beta2, --eps.
    Adam,
}

impl From<OptimizerArg> for OptimizerKind {
    fn from(a: OptimizerArg) -> Self {
        match a {
            OptimizerArg::Sgd => OptimizerKind::Sgd,
            OptimizerArg::Momentum => OptimizerKind::Momentum,
            OptimizerArg::Adam => OptimizerKind::Adam,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScheduleArg {
    /// The same rate every epoch.
    Constant,
    /// × --lr-gamma every --lr-step epochs.
    Step,
    /// From --lr down towards 0 along half a cosine.
    Cosine,
    /// Step by step: --warmup (30% of the steps by default) up from 0 to
    /// --lr, then half a cosine down towards 0.
    Onecycle,
}

impl TrainArgs {
    /// `--plot`, which `lr-find` draws its sweep into.
    pub(super) fn plot_path(&self) -> Option<PathBuf> {
        self.plot.clone()
    }
}

/// The run the flags ask for: the trainer (backend, settings, initial
/// weights or resumed state) and the data.
struct Run {
    t: Trainer,
    net: Network,
    data: Dataset,
    val: Option<Dataset>,
    /// With `--plot`, the per-step loss the trainer's step records feed.
    curve: Option<SharedCurve>,
}

type SharedCurve = Arc<Mutex<StepCurve>>;

pub fn run(mut a: TrainArgs) -> Result<ExitCode> {
    if let Some((rank, _)) = a.parallel.start()? {
        if rank != 0 {
            // Only rank 0 writes checkpoints, metrics and plots and prints.
            (a.save, a.save_every, a.metrics, a.plot) = (None, None, None, None);
            (a.log_dir, a.metrics_jsonl, a.quiet) = (None, None, true);
            super::silence_stdout();
        }
    }
    let Run {
        t,
        net,
        data,
        val,
        curve,
    } = prepare(&a)?;
    let outputs: Vec<&std::path::Path> = [&a.save, &a.metrics, &a.plot]
        .into_iter()
        .filter_map(|p| p.as_deref())
        .collect();
    let interrupt = super::signals::Interrupt::install(&outputs)?;
    let stop = interrupt.flag.clone();
    // In an MPI job the ranks stop together, after the same step.
    #[cfg(feature = "mpi")]
    let stop = match shadertrain::parallel::rank() {
        Some(_) => shadertrain::parallel::mpi::agree_on_stop(stop),
        None => stop,
    };
    let mut t = t.stop_when(stop);
    let adapter = t.backend().describe();
    let kernels = t.backend().kernels();
    let kind = t.kind().name();
    let first = t.first_epoch();
    let epochs = t.config().epochs;
    let steps = steps_per_epoch(t.config().batch, usize::MAX, data.len());
    let todo = (epochs.saturating_add(1).saturating_sub(first) as u64).saturating_mul(steps as u64);
    let bar = progress_bar(todo, a.quiet);
    let t0 = Instant::now();
    let new = t.fit_observed(&data, val.as_ref(), |_, p| {
        match p {
            Progress::Step { .. } => bar.inc(1),
            Progress::Epoch(s) => bar.set_message(epoch_line(s, epochs)),
        }
        Ok(())
    })?;
    let train_secs = t0.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let samples = new.len() as f64 * data.len() as f64;
    let (totals, metric) = t.evaluate(&data)?;
    let val_totals = match &val {
        Some(v) => Some(t.evaluate(v)?),
        None => None,
    };
    let acc = totals.accuracy(metric);
    if epochs == 0 {
        let path = a.save.as_deref().unwrap_or(std::path::Path::new("?"));
        outln!("wrote the initial weights to {}", path.display());
    }
    outln!(
        "{} loss: {:.6} ({})",
        if epochs == 0 { "initial" } else { "final" },
        totals.loss(),
        totals.loss_fn.name()
    );
    if let Some(acc) = acc {
        outln!("accuracy: {:.2}%", acc * 100.0);
    }
    if let Some((vt, m)) = &val_totals {
        outln!("validation loss: {:.6}", vt.loss());
        if let Some(acc) = vt.accuracy(*m) {
            outln!("validation accuracy: {:.2}%", acc * 100.0);
        }
    }
    if let Some(es) = t.early_stop_state() {
        let best = match es.best {
            Some((e, l)) => format!("best epoch {e} (validation loss {l:.6})"),
            None => "no epoch with a finite validation loss".into(),
        };
        match es.stopped {
            Some(e) => outln!(
                "early stopping: stopped after epoch {e}, {} epochs without improvement; weights of the {best}",
                es.rule.patience
            ),
            None => outln!("early stopping: did not stop; {best}; the weights are the last epoch's"),
        }
    }
    if let Some(c) = t.optimizer_in_use().clip_norm {
        let clipped: u64 = new.iter().map(|e| e.clipped).sum();
        let updates = new.len() as u64 * steps as u64;
        outln!("gradient clipping: {clipped} of {updates} updates clipped to norm {c}");
    }
    if epochs > 0 {
        outln!(
            "throughput: {:.0} samples/s ({} samples in {:.2} s)",
            samples / train_secs,
            samples,
            train_secs
        );
    }
    // A failure here comes after the checkpoint was complete: say it is kept.
    let reports = || -> Result<()> {
        if let Some(path) = &a.plot {
            // The argument, not the set's name (an IDX set's is its file's).
            let name = shadertrain::plot::dataset_title(&a.data);
            let title = format!("{} on {name} ({kind}: {adapter})", net.describe());
            let cfg = t.config();
            let varies = cfg.warmup > 0 || cfg.schedule != Schedule::Constant;
            let rates = varies.then(|| step_rates(cfg, t.history().len(), steps));
            let per_step = match &curve {
                Some(c) => lock_curve(c)?.series(),
                None => None,
            };
            let (rates, per_step) = (rates.as_deref(), per_step.as_deref());
            shadertrain::plot::plot_run(path, &title, t.history(), rates, per_step)?;
        }
        if let Some(path) = &a.metrics {
            let json = serde_json::json!({
                "backend": kind,
                "adapter": adapter,
                "layers": net.sizes(),
                "epochs": t.history(),
                "final": {
                    "loss": totals.loss(),
                    "accuracy": acc,
                    "samples_per_s": samples / train_secs,
                    "seconds": train_secs,
                    "val_loss": val_totals.as_ref().map(|(vt, _)| vt.loss()),
                    "val_accuracy": val_totals.as_ref().and_then(|(vt, m)| vt.accuracy(*m)),
                },
            });
            let mut json = json;
            // The keys bench --json gives them.
            if let Some(k) = &kernels {
                json["kernel_config"] = k.kernel_config.as_str().into();
                json["kernel_configs"] =
                    serde_json::to_value(&k.kernel_configs).unwrap_or_default();
                json["checked"] = k.checked.into();
                json["whole_step"] = k.whole_step.into();
            }
            if let Some(c) = t.optimizer_in_use().clip_norm {
                json["clip_norm"] = c.into();
                json["clipped"] = t.history().iter().map(|e| e.clipped).sum::<u64>().into();
            }
            if t.config().warmup > 0 {
                json["warmup"] = t.config().warmup.into();
            }
            if let Some(es) = t.early_stop_state() {
                json["early_stop"] = serde_json::json!({
                    "patience": es.rule.patience,
                    "min_delta": es.rule.min_delta,
                    "best_epoch": es.best_epoch(),
                    "best_val_loss": es.best.map(|(_, l)| l),
                    "stopped_epoch": es.stopped,
                });
            }
            if let Some((signal, _)) = interrupt.received().filter(|_| t.stopped()) {
                json["interrupted"] = signal.into();
            }
            let text = serde_json::to_string_pretty(&json).unwrap_or_default();
            write_atomic(path, text.as_bytes())?;
        }
        Ok(())
    };
    reports().map_err(|e| kept_checkpoint(e, a.save.as_deref()))?;
    // In an MPI job a rank also stops for another rank's signal.
    let signal = interrupt
        .received()
        .or_else(|| t.stopped().then_some(("a signal to another rank", 130)));
    match signal {
        Some((signal, code)) if t.stopped() => {
            let mut wrote: Vec<String> = Vec::new();
            for (what, path) in [
                ("the checkpoint", &a.save),
                ("the metrics", &a.metrics),
                ("the plot", &a.plot),
                ("the step records", &a.metrics_jsonl),
                ("the event files", &a.log_dir),
            ] {
                if let Some(p) = path {
                    wrote.push(format!("{what} to {}", p.display()));
                }
            }
            let done = t.history().len();
            let line = format!(
                "interrupted by {signal} after {done} of {epochs} epochs{}{}\n",
                if wrote.is_empty() { "" } else { "; wrote " },
                wrote.join(", ")
            );
            // One write: MPI ranks share a stderr, and a line written in
            // pieces interleaves with another rank's.
            let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
            Ok(ExitCode::from(code))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `e`, a failure after training, saying that the checkpoint at `save`,
/// written before it, is complete and kept.
fn kept_checkpoint(e: Error, save: Option<&std::path::Path>) -> Error {
    match (e, save) {
        (Error::Io { path, source }, Some(save)) => Error::Io {
            path,
            source: std::io::Error::new(
                source.kind(),
                format!(
                    "{source} (the checkpoint {} was complete before this failure and is kept)",
                    save.display()
                ),
            ),
        },
        (e, _) => e,
    }
}

/// What `lr-find` takes from the `train` flags: the trainer (network,
/// data, backend, batch, seed, optimiser, normalisation) and the data,
/// with a title for its plot. Flags of a training run that a sweep has no
/// use for are refused, so none is silently ignored.
pub(super) fn prepare_sweep(a: &mut TrainArgs) -> Result<(Trainer, Dataset, String)> {
    let unused = [
        ("--epochs", a.epochs.is_some()),
        ("--lr", a.lr.is_some()),
        ("--save", a.save.is_some()),
        ("--resume", a.resume.is_some()),
        ("--metrics", a.metrics.is_some()),
        ("--log-dir", a.log_dir.is_some()),
        ("--metrics-jsonl", a.metrics_jsonl.is_some()),
        ("--lr-schedule", a.lr_schedule.is_some()),
        ("--warmup", a.warmup.is_some()),
        ("--early-stop", a.early_stop.is_some()),
        ("--val", a.val.is_some()),
        ("--val-split", a.val_split.is_some()),
        ("--nan-check", a.nan_check),
    ];
    if let Some((flag, _)) = unused.iter().find(|(_, given)| *given) {
        return Err(Error::Invalid(format!(
            "lr-find: {flag} belongs to a training run; the sweep sets its own rates for --steps steps from the initial weights"
        )));
    }
    // The banner would describe a training run.
    let quiet = a.quiet;
    a.quiet = true;
    let Run { t, net, data, .. } = prepare(a)?;
    a.quiet = quiet;
    let name = shadertrain::plot::dataset_title(&a.data);
    let title = format!("LR range test: {} on {name}", net.describe());
    Ok((t, data, title))
}

/// Everything decided before training: flags checked against each other and
/// against a resumed checkpoint, outputs checked writable, data loaded, the
/// trainer opened and configured; the banner printed.
fn prepare(a: &TrainArgs) -> Result<Run> {
    let source = Source::parse(&a.data)?;
    let val = a
        .val
        .as_deref()
        .map(Source::parse)
        .transpose()
        .ok()
        .flatten();
    let mut inputs = vec![
        ("--resume", a.resume.as_deref()),
        ("--init", a.init.as_deref()),
    ];
    inputs.extend(
        super::files_of(&source)
            .into_iter()
            .map(|p| ("--data", Some(p))),
    );
    inputs.extend(
        val.iter()
            .flat_map(super::files_of)
            .map(|p| ("--val", Some(p))),
    );
    check_outputs(
        &[
            ("--save", a.save.as_deref()),
            ("--metrics", a.metrics.as_deref()),
            ("--plot", a.plot.as_deref()),
            ("--metrics-jsonl", a.metrics_jsonl.as_deref()),
        ],
        &inputs,
        &[("--save", "--resume")],
    )?;
    let recipe = source.recipe();
    let resumed = a.resume.as_deref().map(Checkpoint::load).transpose()?;
    if recipe.layers.is_none() && a.layers.is_none() && resumed.is_none() {
        return Err(Error::Invalid(
            "--layers is required with a CSV file or IDX directory, e.g. --layers 784,128,10"
                .into(),
        ));
    }
    if a.epochs == Some(0) {
        // Zero epochs write the initial weights: without --save there is
        // nothing to do, and nothing to draw or to continue.
        let why = if a.save.is_none() {
            Some("give --save FILE")
        } else if a.plot.is_some() {
            Some("--plot has no epochs to draw")
        } else if a.resume.is_some() {
            Some("--resume continues a run: ask for more epochs than it has")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(Error::Invalid(format!(
                "--epochs 0 only writes the initial weights with --save; {why}"
            )));
        }
    }
    // Refuse unwritable output paths before training, not after.
    if let Some(p) = &a.plot {
        shadertrain::plot::check_path(p)?;
    }
    refuse_unused(
        "--log-every",
        a.log_every.is_some(),
        a.log_dir.is_some() || a.metrics_jsonl.is_some(),
        "the per-step records of --log-dir and --metrics-jsonl",
        "neither",
    )?;
    let net = network(a, resumed.as_ref(), recipe.layers)?;
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
    let (optimizer, schedule) = optimizer_and_schedule(a, st)?;
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(recipe.epochs),
        batch: a.batch.or(st.map(|s| s.batch)).unwrap_or(recipe.batch),
        lr: a.lr.or(st.map(|s| s.lr)).unwrap_or(recipe.lr),
        seed,
        shuffle: true,
        schedule,
        warmup: warmup(a, st)?,
        nan_check: a.nan_check,
    };
    cfg.validate()?;
    let early = early_stop(a, st)?;
    let (data, val, z) = load_sets(a, &source, &net, seed, resumed.as_ref())?;
    shadertrain::parallel::check_same_data(&data, "training")?;
    if let Some(v) = &val {
        shadertrain::parallel::check_same_data(v, "validation")?;
    }
    shadertrain::train::total_steps(
        cfg.epochs,
        steps_per_epoch(cfg.batch, usize::MAX, data.len()),
    )?;
    let dev = device(a.backend, a.adapter.as_deref(), a.threads)?;
    let dev = a.parallel.device(dev, a.backend, a.threads)?;
    let capacity = batch_size(cfg.batch, usize::MAX, data.len());
    // The optimiser first (setting one zeroes its state), then the resumed
    // state over it, then the settings the flags resolved (the checkpoint's
    // where no flag was given).
    let gpu = gpu_options(a, &net, resumed.as_ref())?;
    let mut t = open_with(&dev, &net, capacity, a.quiet, gpu.as_ref())?.optimizer(optimizer)?;
    if let Some(c) = &resumed {
        t = t.resume(c)?;
    }
    t = t.with_config(cfg).early_stopping(early)?;
    if let Some(z) = z {
        t = t.standardizer(z);
    }
    if let Some(path) = &a.save {
        t = t.checkpoints(path, a.save_every)?;
    }
    let start = match &a.init {
        Some(path) => Some(shadertrain::weights::load(path, &net)?),
        None if resumed.is_none() => source.builtin().and_then(|b| b.initial_params(&net)),
        None => None,
    };
    if let Some(p) = start {
        t.set_params(&p)?;
    }
    // The plot's per-step curve reads the step records: dense enough for
    // short epochs unless --log-every says otherwise.
    let curve = a.plot.as_ref().map(|_| {
        let batch = batch_size(t.config().batch, usize::MAX, data.len());
        let c = StepCurve::new(batch, data.len(), t.config().epochs);
        Arc::new(Mutex::new(c))
    });
    match (a.log_every, &curve) {
        (Some(n), _) => t = t.log_every(n)?,
        (None, Some(c)) => {
            t = t.log_every(step_curve_log_every(lock_curve(c)?.steps_per_epoch()))?
        }
        (None, None) => {}
    }
    if let Some(c) = &curve {
        t = t.log_to(c.clone());
    }
    // Last, once every other check has passed: these create their files.
    if let Some(dir) = &a.log_dir {
        t = t.log_to(TensorBoard::create(dir)?);
    }
    if let Some(path) = &a.metrics_jsonl {
        t = t.log_to(JsonLines::create(path)?);
    }
    if !a.quiet {
        eprintln!("backend: {}: {}", t.kind().name(), t.backend().describe());
        if let Some(k) = t.backend().kernels() {
            let step = if k.whole_step {
                " (a step is one dispatch)"
            } else {
                ""
            };
            eprintln!("gpu kernels: {}{step}", k.kernel_config);
        }
        let cfg = t.config();
        eprintln!(
            "training {} on '{}' ({} samples): {} epochs, batch {}, lr {}, {}, seed {}{}",
            net.describe(),
            data.name,
            data.len(),
            cfg.epochs,
            cfg.batch,
            cfg.lr,
            t.optimizer_in_use().name(),
            cfg.seed,
            defaults_note(a, &source, resumed.is_some())
        );
        if let Some(c) = &resumed {
            eprintln!("resuming after epoch {}", c.state.epoch);
        }
    }
    Ok(Run {
        t,
        net,
        data,
        val,
        curve,
    })
}

/// The GPU options `--tune` and `--kernel-config` ask for; with neither, a
/// resumed run's recorded configuration replayed (so it stays bitwise equal
/// to a straight run); else `None` (the cache, or the heuristic). With
/// several workers every GPU worker runs the one plan these resolve.
fn gpu_options(
    a: &TrainArgs,
    net: &Network,
    resumed: Option<&Checkpoint>,
) -> Result<Option<shadertrain::gpu::GpuOptions>> {
    use shadertrain::gpu::{GpuOptions, KernelPlan};
    let on_gpu = a.backend != BackendArg::Cpu;
    for (flag, given) in [
        ("--tune", a.tune.is_some()),
        ("--kernel-config", a.kernel_config.is_some()),
    ] {
        refuse_unused(flag, given, on_gpu, "the GPU", "--backend cpu")?;
    }
    let recorded = resumed.and_then(|c| c.state.kernel_config.as_deref());
    let given = shadertrain::gpu::Source::Given;
    Ok(match (&a.kernel_config, a.tune, recorded) {
        (Some(text), _, _) => {
            Some(GpuOptions::default().with_plan(KernelPlan::parse(net, text, given)?))
        }
        (None, Some(t), _) => Some(GpuOptions {
            tune: t.mode(),
            ..GpuOptions::default()
        }),
        (None, None, Some(text)) if on_gpu => {
            Some(GpuOptions::default().with_plan(KernelPlan::parse(net, text, given)?))
        }
        _ => None,
    })
}

/// The network: `--layers`, the checkpoint's, or the data's default; a loss
/// that disagrees with its output layer is refused.
fn network(a: &TrainArgs, resumed: Option<&Checkpoint>, default: Option<&str>) -> Result<Network> {
    let net = match (resumed, &a.layers) {
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
        (None, l) => Network::parse(l.as_deref().or(default).unwrap_or_default())?,
    };
    match (a.loss, net.loss()) {
        (Some(LossArg::Ce), Loss::Mse) => Err(Error::Invalid(format!(
            "--loss ce needs a softmax output layer (end --layers with {}:softmax); {} ends in {}",
            net.outputs().max(2),
            net.describe(),
            net.output_activation().name()
        ))),
        (Some(LossArg::Mse), Loss::CrossEntropy) => Err(Error::Invalid(
            "--loss mse is not supported after a softmax output (softmax trains with cross-entropy); use another output activation, e.g. :sigmoid".into(),
        )),
        _ => Ok(net),
    }
}

/// The training set and, with `--val-split` or `--val`, the validation set,
/// both standardised under `--normalize` (or as the resumed run was) with
/// the training statistics, which are returned for checkpoints.
fn load_sets(
    a: &TrainArgs,
    source: &Source,
    net: &Network,
    seed: u64,
    resumed: Option<&Checkpoint>,
) -> Result<(Dataset, Option<Dataset>, Option<Standardizer>)> {
    let target = a.target.as_deref();
    let data = super::load_with_progress(source, target, net.outputs(), seed, a.quiet)?;
    let by = match (resumed, &a.layers) {
        (Some(_), None) => "the checkpoint's network",
        _ => "--layers",
    };
    source.check_fits(&data, net, by)?;
    let (mut train, mut val) = match (a.val_split, &a.val) {
        (Some(f), _) => {
            let (t, v) = data.split_validation(f, seed)?;
            (t, Some(v))
        }
        (None, Some(path)) => {
            let not_file = || {
                Error::Invalid(format!(
                    "--val: '{path}' is not a CSV file or an IDX directory"
                ))
            };
            let src = Source::parse(path).map_err(|_| not_file())?;
            if src.builtin().is_some() {
                return Err(not_file());
            }
            let v = super::load_with_progress(&src, target, net.outputs(), seed, a.quiet)?;
            src.check_fits(&v, net, by)?;
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

/// The optimiser and schedule from the flags, or, when resuming, from the
/// checkpoint (a flag that disagrees with it is refused: the saved state
/// belongs to the saved optimiser).
fn optimizer_and_schedule(a: &TrainArgs, st: Option<&TrainState>) -> Result<(Optimizer, Schedule)> {
    let base = st.map(|s| s.optimizer).unwrap_or_default();
    let kind = a.optimizer.map_or(base.kind, OptimizerKind::from);
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
        clip_norm: a.clip_norm.or(base.clip_norm),
    };
    opt.validate()?;
    let schedule = match (a.lr_schedule, st) {
        (Some(ScheduleArg::Constant), _) => Schedule::Constant,
        (Some(ScheduleArg::Cosine), _) => Schedule::Cosine,
        (Some(ScheduleArg::Onecycle), _) => Schedule::OneCycle,
        (Some(ScheduleArg::Step), _) => {
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

/// `--warmup`, or the checkpoint's; a value that disagrees with it is
/// refused (the resumed run would not follow the straight run's rates).
fn warmup(a: &TrainArgs, st: Option<&TrainState>) -> Result<usize> {
    match (a.warmup, st) {
        (Some(w), Some(s)) if w != s.warmup => Err(Error::Invalid(format!(
            "--warmup {w}: the checkpoint was trained with --warmup {}; resuming needs the same",
            s.warmup
        ))),
        (w, s) => Ok(w.or(s.map(|s| s.warmup)).unwrap_or(0)),
    }
}

/// `--early-stop` and `--min-delta`, or the checkpoint's; refused without a
/// validation set, and where they disagree with the checkpoint.
fn early_stop(a: &TrainArgs, st: Option<&TrainState>) -> Result<Option<EarlyStop>> {
    let saved = st.and_then(|s| s.early_stop.as_ref()).map(|e| e.rule);
    let rule = match (a.early_stop, saved) {
        (None, saved) => saved,
        (Some(patience), saved) => Some(EarlyStop {
            patience,
            min_delta: a.min_delta.or(saved.map(|r| r.min_delta)).unwrap_or(0.0),
        }),
    };
    if let Some(r) = &rule {
        r.validate()?;
        if a.val.is_none() && a.val_split.is_none() {
            return Err(Error::Invalid(format!(
                "--early-stop {} watches the validation loss: give --val FILE or --val-split F",
                r.patience
            )));
        }
    }
    if let (Some(r), Some(s)) = (rule, st) {
        let was = s.early_stop.as_ref().map(|e| e.rule);
        if was != Some(r) {
            return Err(Error::Invalid(match was {
                Some(w) => format!(
                    "--early-stop {} --min-delta {}: the checkpoint was trained with --early-stop {} --min-delta {}; resuming needs the same",
                    r.patience, r.min_delta, w.patience, w.min_delta
                ),
                None => "--early-stop: the checkpoint was trained without it; resuming needs the same settings".into(),
            }));
        }
    }
    Ok(rule)
}

/// Where a file's run takes defaults, which ones: they suit arbitrary data,
/// not this data, so the user should know they are in force.
fn defaults_note(a: &TrainArgs, source: &Source, resumed: bool) -> String {
    let unset: Vec<&str> = [
        ("--epochs", a.epochs.is_none()),
        ("--batch", a.batch.is_none()),
        ("--lr", a.lr.is_none()),
    ]
    .into_iter()
    .filter_map(|(f, unset)| unset.then_some(f))
    .collect();
    if resumed || source.builtin().is_some() || unset.is_empty() {
        return String::new();
    }
    format!(
        " (defaults for a file: set {} to change them)",
        unset.join(", ")
    )
}

/// The learning rate of every step of `epochs` epochs of `steps` steps, as
/// `(epoch − 1 + s/steps, lr)`, thinned to at most 2000 points for a plot.
fn step_rates(cfg: &TrainConfig, epochs: usize, steps: usize) -> Vec<(f64, f64)> {
    let total = epochs.saturating_mul(steps).max(1);
    let stride = total.div_ceil(2000).max(1);
    (0..total)
        .step_by(stride)
        .chain(std::iter::once(total - 1))
        .map(|i| {
            let (e, s) = (i / steps.max(1) + 1, i % steps.max(1) + 1);
            let x = (e - 1) as f64 + s as f64 / steps.max(1) as f64;
            (x, cfg.lr_at(e, s, steps) as f64)
        })
        .collect()
}

fn progress_bar(len: u64, quiet: bool) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {elapsed_precise}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
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
    if s.clipped > 0 {
        line += &format!("  clipped {}", s.clipped);
    }
    line + &format!("  {:.0} samples/s", s.samples_per_s)
}
