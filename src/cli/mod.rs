//! The command line's shared pieces: the flag that names each library
//! [`Setting`], the one-line rendering of every error, the device flags, and
//! the checks every command makes before it works. One file per command
//! beside it; none of them trains by itself: they parse, drive
//! [`shadertrain::Trainer`], and render.

pub mod bench;
pub mod export;
pub mod info;
pub mod lr_find;
pub mod model;
pub mod signals;
pub mod train;
pub mod tune;

use clap::ValueEnum;
use shadertrain::error::{one_line, Setting};
use shadertrain::trainer::{Device, Fallback, Trainer};
use shadertrain::{fsutil, Error, Result};
use std::path::Path;
use std::process::ExitCode;

/// Set once a write to stdout failed (a closed pipe): nothing more is printed.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Prints to stdout (through `outln!` and `out!`) unless stdout is closed:
/// the first failed write (EPIPE after `| head`) stops all printing, quietly,
/// as Unix tools stop; the command still writes its files and exits 0.
pub fn print_out(args: std::fmt::Arguments<'_>) {
    let _ = write_out(std::fmt::format(args).as_bytes());
}

/// Writes `bytes` to stdout, flushed. A closed stdout (EPIPE) is not an
/// error: it and any failure stop all later printing; failures other than
/// EPIPE are returned.
pub fn write_out(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) => {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            match e.kind() {
                std::io::ErrorKind::BrokenPipe => Ok(()),
                _ => Err(e),
            }
        }
    }
}

/// The flag that sets `s`.
pub fn flag(s: Setting) -> &'static str {
    match s {
        Setting::Layers => "--layers",
        Setting::Epochs => "--epochs",
        Setting::Batch => "--batch",
        Setting::LearningRate => "--lr",
        Setting::Seed => "--seed",
        Setting::Optimizer => "--optimizer",
        Setting::Momentum => "--momentum",
        Setting::Beta1 => "--beta1",
        Setting::Beta2 => "--beta2",
        Setting::Eps => "--eps",
        Setting::WeightDecay => "--weight-decay",
        Setting::Schedule => "--lr-schedule",
        Setting::ScheduleStep => "--lr-step",
        Setting::ScheduleGamma => "--lr-gamma",
        Setting::ValSplit => "--val-split",
        Setting::Normalize => "--normalize",
        Setting::Threads => "--threads",
        Setting::Steps => "--steps",
        Setting::Plot => "--plot",
        Setting::Adapter => "--adapter",
        Setting::SaveEvery => "--save-every",
        Setting::Data => "--data",
        Setting::Target => "--target",
        Setting::LogDir => "--log-dir",
        Setting::MetricsLog => "--metrics-jsonl",
        Setting::LogEvery => "--log-every",
        Setting::Devices => "--devices",
        Setting::MicroBatches => "--micro-batches",
        Setting::Distributed => "--distributed",
        Setting::KernelConfig => "--kernel-config",
        Setting::ClipNorm => "--clip-norm",
        Setting::Warmup => "--warmup",
        Setting::EarlyStop => "--early-stop",
        Setting::MinDelta => "--min-delta",
        Setting::Dropout => "--layers",
    }
}

/// `e` as one line, settings named by their flags. Every message passes
/// through [`one_line`], so no input can make it span two lines.
pub fn message(e: &Error) -> String {
    one_line(&e.render(flag), usize::MAX)
}

/// Prints clap's refusal as one line (help and version as clap prints them)
/// and returns the exit code.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind::*};
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
    // An invalid value is worded here: clap would print a value holding a
    // line break across two lines.
    let ctx = |k| match e.get(k) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => Some(v.join(", ")),
        _ => None,
    };
    if let (InvalidValue, Some(arg), Some(value)) = (
        e.kind(),
        ctx(ContextKind::InvalidArg),
        ctx(ContextKind::InvalidValue),
    ) {
        let arg = arg.split_whitespace().next().unwrap_or(&arg).to_string();
        let mut line = format!(
            "error: invalid value '{}' for '{arg}'",
            one_line(&value, 40)
        );
        if let Some(valid) = ctx(ContextKind::ValidValue) {
            line += &format!(" [possible values: {valid}]");
        }
        eprintln!("{line}");
        return ExitCode::from(2);
    }
    // Otherwise clap's first line, which starts with "error: "; a first line
    // ending in ':' continues with a list, joined on.
    let text = e.render().to_string();
    let mut line = text
        .lines()
        .next()
        .unwrap_or("error: bad arguments")
        .to_string();
    if line.ends_with(':') {
        let items: Vec<&str> = text
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage"))
            .map(str::trim)
            .collect();
        line = format!("{line} {}", items.join(", "));
    }
    eprintln!("{}", one_line(&line, usize::MAX));
    ExitCode::from(2)
}

/// A count of at least 1 (epochs, batch, steps, save interval), checked by clap.
pub fn at_least_1() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
}

/// `--threads`: 0 (one per core) up to the CPU backend's limit.
pub fn threads() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(0..=shadertrain::cpu::MAX_THREADS as u64)
}

/// A float flag as a 32-bit float, refusing a value that is not 0 as written
/// but rounds to 0 (`1e-50`) or beyond the range (`1e39`): the library
/// would report the rounded value, not the one the user gave.
pub fn f32_as_given(s: &str) -> std::result::Result<f32, String> {
    let wide: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    let v = wide as f32;
    if wide.is_finite() && wide != 0.0 && v == 0.0 {
        return Err(format!("{s} rounds to 0 as a 32-bit float"));
    }
    if wide.is_finite() && v.is_infinite() {
        return Err(format!(
            "{s} is beyond a 32-bit float's range (it would be inf)"
        ));
    }
    Ok(v)
}

/// `--tune`: where the GPU products' configurations come from.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TuneArg {
    /// The built-in heuristic.
    Off,
    /// The tuning cache where it has the product, else the heuristic (the default).
    Cached,
    /// Tune the products the cache lacks first, then run.
    Auto,
}

impl TuneArg {
    /// The library's mode.
    pub fn mode(self) -> shadertrain::gpu::TuneMode {
        use shadertrain::gpu::TuneMode;
        match self {
            TuneArg::Off => TuneMode::Off,
            TuneArg::Cached => TuneMode::Cached,
            TuneArg::Auto => TuneMode::Auto,
        }
    }
}

/// `--backend`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// A real GPU; the CPU, with a notice, when there is none or only a
    /// software one (lavapipe, ~100× slower than the CPU backend).
    Auto,
    /// The CPU.
    Cpu,
    /// A GPU, software adapters included; an error when there is none.
    Gpu,
}

/// `--backend`, `--adapter` and `--threads` as a [`Device`].
pub fn device(backend: BackendArg, adapter: Option<&str>, threads: usize) -> Result<Device> {
    Ok(match (backend, adapter) {
        (BackendArg::Cpu, Some(_)) => {
            return Err(Error::Invalid(
                "--adapter picks a GPU; it cannot go with --backend cpu".into(),
            ))
        }
        (BackendArg::Cpu, None) => Device::Cpu { threads },
        // An adapter named under auto means that GPU.
        (BackendArg::Gpu, _) | (BackendArg::Auto, Some(_)) => Device::Gpu {
            adapter: adapter.map(String::from),
        },
        (BackendArg::Auto, None) => Device::Auto { threads },
    })
}

/// `--devices` and `--micro-batches`: data-parallel training ([`shadertrain::parallel`]).
#[derive(clap::Args, Clone, Default)]
pub struct ParallelArgs {
    /// Train data-parallel on these devices, one thread each, each taking a
    /// contiguous shard of every batch: adapter indices or name parts as
    /// `shadertrain devices` lists them, `cpu` for a CPU worker, or `all`.
    /// A repeat opens another device on the same adapter (`0,0`). --batch
    /// stays the whole batch; the result equals --micro-batches P bit for bit.
    #[arg(long, conflicts_with = "adapter")]
    pub devices: Option<String>,
    /// Run each batch on one device as P micro-batches, split and summed as
    /// --devices with P devices would: the single-device reference they equal.
    #[arg(long, allow_negative_numbers = true, value_parser = at_least_1(), conflicts_with = "devices")]
    pub micro_batches: Option<usize>,
    /// Train as one rank of an MPI job (`mpirun -np N shadertrain train …`,
    /// one rank per GPU, or per CPU backend): auto when a launcher started
    /// this process; needs a build with --features mpi.
    #[arg(long, value_enum, default_value = "auto")]
    pub distributed: DistributedArg,
}

/// `--distributed`.
#[derive(Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DistributedArg {
    /// MPI when an MPI launcher (mpirun, srun) started this process.
    #[default]
    Auto,
    /// One rank of an MPI job.
    Mpi,
    /// A single process, even under a launcher (every rank trains alone).
    None,
}

impl ParallelArgs {
    /// Whether this run is one rank of an MPI job; starts MPI if so and
    /// returns `(rank, size)`. Under a launcher, a build without MPI refuses
    /// rather than letting every rank train and write alone.
    pub fn start(&self) -> Result<Option<(usize, usize)>> {
        let launcher = launched();
        let mpi = match self.distributed {
            DistributedArg::None => false,
            DistributedArg::Mpi => true,
            DistributedArg::Auto => launcher.is_some(),
        };
        if !mpi {
            return Ok(None);
        }
        if self.devices.is_some() || self.micro_batches.is_some() {
            return Err(Error::setting(
                Setting::Distributed,
                "mpi",
                "gives each rank one device (one rank per GPU); --devices and --micro-batches are for a single process",
            ));
        }
        #[cfg(feature = "mpi")]
        return shadertrain::parallel::mpi::init().map(Some);
        #[cfg(not(feature = "mpi"))]
        Err(match launcher {
            Some(var) => Error::setting(
                Setting::Distributed,
                "auto",
                format!("found an MPI launcher ({var}), but this shadertrain was built without MPI: cargo build --release --features mpi, or --distributed none to let every rank train alone"),
            ),
            None => shadertrain::parallel::not_built(),
        })
    }

    /// `dev` (what --backend, --adapter and --threads chose) spread as these
    /// flags ask; in an MPI job ([`ParallelArgs::start`] said so), this rank's
    /// device: with no --adapter, the host's GPUs (`--devices all`) dealt
    /// out by the rank's local index.
    pub fn device(&self, dev: Device, backend: BackendArg, threads: usize) -> Result<Device> {
        if shadertrain::parallel::rank().is_some() {
            let dev = match dev {
                Device::Gpu { adapter: None } | Device::Auto { .. }
                    if backend != BackendArg::Cpu =>
                {
                    let adapters = shadertrain::gpu::list_adapters();
                    let all = shadertrain::parallel::all_devices(&adapters);
                    let hardware = all.iter().any(|&i| adapters[i].device_type != "Cpu");
                    match all.get(local_rank() % all.len().max(1)) {
                        Some(i) if hardware || backend == BackendArg::Gpu => Device::Gpu {
                            adapter: Some(i.to_string()),
                        },
                        _ => dev,
                    }
                }
                d => d,
            };
            return Ok(Device::Mpi(Box::new(dev)));
        }
        if let Some(parts) = self.micro_batches {
            return Ok(Device::MicroBatches {
                device: Box::new(dev),
                parts,
            });
        }
        let Some(list) = &self.devices else {
            return Ok(dev);
        };
        let devices = shadertrain::parallel::parse_devices(list, threads)?;
        let cpu = |d: &Device| matches!(d, Device::Cpu { .. });
        let refuse = |why: &str| Err(Error::setting(Setting::Devices, list, why));
        match backend {
            BackendArg::Cpu if !devices.iter().all(cpu) => {
                return refuse(
                    "names GPUs, but --backend cpu trains on the CPU; name cpu workers (cpu,cpu)",
                )
            }
            BackendArg::Gpu if devices.iter().any(cpu) => {
                return refuse("names cpu workers, but --backend gpu trains on GPUs")
            }
            _ => {}
        }
        Ok(Device::Parallel(devices))
    }
}

/// The MPI launcher's variable that marks this process as a rank, if any.
fn launched() -> Option<String> {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"]
        .iter()
        .find_map(|v| std::env::var(v).ok().map(|val| format!("{v}={val}")))
}

/// This rank's index among the ranks of its host (0 if the launcher does not say).
fn local_rank() -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
        "PMIX_LOCAL_RANK",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0)
}

/// Ranks other than 0 of an MPI job write nothing and print nothing but
/// their own failure: stdout is treated as closed from here on.
pub fn silence_stdout() {
    STDOUT_CLOSED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Opens a trainer on `device` and, unless `quiet`, says why `auto` chose the CPU.
pub fn open(
    device: &Device,
    net: &shadertrain::Network,
    capacity: usize,
    quiet: bool,
) -> Result<Trainer> {
    open_with(device, net, capacity, quiet, None)
}

/// [`open`], a GPU built with `gpu` where given ([`Trainer::on_with`]).
pub fn open_with(
    device: &Device,
    net: &shadertrain::Network,
    capacity: usize,
    quiet: bool,
    gpu: Option<&shadertrain::gpu::GpuOptions>,
) -> Result<Trainer> {
    let t = Trainer::on_with(device, net, capacity, gpu)?;
    if let (Some(f), false) = (t.fallback(), quiet) {
        notice(f);
    }
    Ok(t)
}

/// Says on stderr why `--backend auto` chose the CPU.
pub fn notice(f: &Fallback) {
    match f {
        Fallback::NoGpu(why) => eprintln!("notice: {why}; using the CPU backend"),
        Fallback::SoftwareGpu(name) => eprintln!(
            "notice: the only GPU is a software one ({name}), far slower than the CPU backend here; using the CPU backend (--backend gpu uses it anyway)"
        ),
    }
}

/// Checks every output of a command before any work: each one through
/// [`fsutil::check_output`] (writable, a regular file or none yet, a name
/// that fits), no two naming one file, and none naming an input, except the
/// (output, input) pairs in `may_share` (`--save` over `--resume`). An
/// absent flag is `None`, and so is `-` where it means standard output.
pub fn check_outputs(
    outputs: &[(&str, Option<&Path>)],
    inputs: &[(&str, Option<&Path>)],
    may_share: &[(&str, &str)],
) -> Result<()> {
    let outs: Vec<(&str, &Path)> = outputs.iter().filter_map(|&(f, p)| Some((f, p?))).collect();
    for &(flag, path) in &outs {
        fsutil::check_output(path)
            .map_err(|e| Error::Invalid(format!("{flag} {}", message(&e))))?;
    }
    for (i, &(flag, path)) in outs.iter().enumerate() {
        if let Some((other, _)) = outs[..i].iter().find(|(_, q)| fsutil::same_file(path, q)) {
            return Err(Error::Invalid(format!(
                "{other} and {flag} both name {}; give each output its own file",
                path.display()
            )));
        }
        let clash = inputs.iter().find(|&&(input, q)| {
            q.is_some_and(|q| fsutil::same_file(path, q)) && !may_share.contains(&(flag, input))
        });
        if let Some((input, _)) = clash {
            return Err(Error::Invalid(format!(
                "{flag} {} is the {input} file; writing it would replace an input, so choose another name",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Loads `source` ([`shadertrain::data::Source::load_observed`]), showing
/// a bar of the bytes read on stderr when the load takes more than a second
/// (a long CSV file, large `.npy` arrays being checked) and `quiet` is off.
pub fn load_with_progress(
    source: &shadertrain::data::Source,
    target: Option<&str>,
    outputs: usize,
    seed: u64,
    quiet: bool,
) -> Result<shadertrain::data::Dataset> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let t0 = std::time::Instant::now();
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    let mut shown = false;
    let data = source.load_observed(target, outputs, seed, &mut |l| {
        if !shown && !quiet && t0.elapsed() > std::time::Duration::from_secs(1) {
            shown = true;
            let template = match l.total {
                Some(_) => "loading {msg}: {bar:30} {bytes}/{total_bytes}  {elapsed}",
                None => "loading {msg}: {bytes}  {elapsed}",
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(source.shown());
            bar.set_draw_target(ProgressDrawTarget::stderr());
        }
        if let Some(total) = l.total {
            bar.set_length(total);
        }
        bar.set_position(l.done);
    });
    bar.finish_and_clear();
    data
}

/// The files (or directories) a data argument reads, to keep outputs off them.
pub fn files_of(source: &shadertrain::data::Source) -> Vec<&Path> {
    use shadertrain::data::Source;
    match source {
        Source::Builtin(_) => vec![],
        Source::Csv(p) | Source::IdxDir(p) => vec![p],
        Source::IdxFiles { images, labels } => vec![images, labels],
        Source::Npy { x, y } => vec![x, y],
    }
}

/// Refuse a `flag` the user `given` that does not apply to this run (it
/// applies only `to` something, and the run `now` uses something else):
/// settings that would be silently ignored.
pub fn refuse_unused(flag: &str, given: bool, applies: bool, to: &str, now: &str) -> Result<()> {
    if given && !applies {
        return Err(Error::Invalid(format!(
            "{flag} applies only to {to}, and this run uses {now}"
        )));
    }
    Ok(())
}
