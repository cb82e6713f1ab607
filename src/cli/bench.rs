//! `shadertrain bench`: the training step timed on the CPU, the GPU or both,
//! side by side on the same initial parameters and batch, with the largest
//! parameter difference between them afterwards; `--profile` adds each GPU
//! kernel's share of a step.

use super::refuse_unused;
use clap::ValueEnum;
use shadertrain::backend::Backend;
use shadertrain::bench::{self, Workload};
use shadertrain::cpu::FastCpuBackend;
use shadertrain::gpu::plan::ProductId;
use shadertrain::gpu::{
    GpuBackend, GpuContext, GpuOptions, KernelPlan, KernelSet, Source, TileConfig, TuneMode,
};
use shadertrain::network::{Network, Params};
use shadertrain::parallel::DataParallel;
use shadertrain::trainer::Device;
use shadertrain::{Error, Result};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchBackend {
    Cpu,
    Gpu,
    Both,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KernelsArg {
    /// As `--tune` finds: the tiled products, or the simple set where the
    /// tuning cache measured it faster for this network and batch.
    Auto,
    /// Tiled products, fused loss and update (the tuning cache's tiled
    /// choices even where it measured the simple set faster).
    Tiled,
    /// One invocation per output: the GPU reference twins.
    Simple,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TilesArg {
    /// 32×32 blocks, 4×4 per invocation (CPU adapters).
    Small,
    /// 64×64 blocks, 4×4 per invocation.
    Medium,
    /// 128×128 blocks, 8×8 per invocation (discrete GPUs).
    Discrete,
}

#[derive(clap::Args)]
pub struct BenchArgs {
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
    #[arg(long, allow_negative_numbers = true, value_parser = super::at_least_1())]
    batch: Option<usize>,
    /// Timed steps, at most 10,000,000 (default: the workload's).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=shadertrain::bench::MAX_STEPS as u64))]
    steps: Option<usize>,
    /// Untimed steps first.
    #[arg(long, allow_negative_numbers = true, default_value_t = 3)]
    warmup: usize,
    /// Learning rate (the PyTorch peer's 0.5).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true, value_parser = super::f32_as_given)]
    lr: f32,
    /// Seed of the initial weights and the random batch.
    #[arg(long, allow_negative_numbers = true, default_value_t = 42)]
    seed: u64,
    /// CPU threads (0: one per core).
    #[arg(long, allow_negative_numbers = true, default_value_t = 0, value_parser = super::threads())]
    threads: usize,
    /// GPU kernels.
    #[arg(long, value_enum, default_value = "auto")]
    kernels: KernelsArg,
    /// Tile sizes of the tiled kernels (default: chosen by adapter type).
    #[arg(long, value_enum)]
    tiles: Option<TilesArg>,
    /// The tiled kernels' configuration, as `bench --json`, checkpoints and
    /// `--metrics` record it: one for every product,
    /// `gen|loops:WXxWY:TMxTN:kBK`, then optional `:db` (register double
    /// buffering), `:v4` (`vec4` loads along K in every block; both
    /// generated cores only) and `:sN` (N K slices of the gradients) (e.g.
    /// `gen:8x8:4x4:k8`, `gen:8x8:16x16:k8:db:s2`; `loops`
    /// is the previous tiled.wgsl core), one per product,
    /// `f0=…,d0=…,g0=…,f1=…`, or `simple` (the simple set).
    #[arg(long, conflicts_with_all = ["tiles", "kernels", "tune"])]
    kernel_config: Option<String>,
    /// Where each product's configuration comes from: `off` the built-in
    /// heuristic, `cached` the tuning cache where it has the product
    /// (`shadertrain tune` fills it), `auto` tunes missing products first.
    #[arg(long, value_enum)]
    tune: Option<super::TuneArg>,
    /// Also time each GPU kernel of a step with timestamp queries (median of 5 steps).
    #[arg(long)]
    profile: bool,
    /// Print one JSON object per backend, one per line.
    #[arg(long)]
    json: bool,
    /// With --devices LIST: the data-parallel step on the first 1, 2, …, P
    /// devices of the list (alternated, 3 rounds), with speedup, scaling
    /// efficiency and the reduction's share; under mpirun, the ranks against one.
    #[command(flatten)]
    parallel: super::ParallelArgs,
}

/// One worker count's result of `bench --devices` or `bench` under mpirun.
#[derive(serde::Serialize)]
struct ScalingRow {
    workers: usize,
    adapter: String,
    layers: Vec<usize>,
    batch: usize,
    steps: usize,
    /// Median over rounds of each round's median step.
    ms_per_step_median: f64,
    samples_per_s: f64,
    /// One worker's step time over this one's.
    speedup: f64,
    /// `speedup / workers`.
    efficiency: f64,
    /// Milliseconds per step combining the shards (totals and gradients).
    reduction_ms: f64,
    /// `reduction_ms / ms_per_step_median`.
    reduction_share: f64,
    /// GPU: the kernel plan every worker runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_config: Option<String>,
}

/// Times `dev`'s data-parallel step: the medians of `rounds` runs of the
/// timed steps, and the reduction's milliseconds per step.
fn time_parallel(
    b: &mut DataParallel,
    a: &BenchArgs,
    params: &Params<f32>,
    batch: (&[f32], &[f32]),
    steps: usize,
) -> Result<(f64, f64)> {
    b.take_reduction_seconds();
    let (t, _) = bench::time_steps(b, params, batch, a.lr, a.warmup, steps)?;
    let per_step = b.take_reduction_seconds() * 1e3 / (a.warmup + steps) as f64;
    Ok((t.median(), per_step))
}

/// The GPU options `--kernels`, `--tiles`, `--kernel-config` and `--tune` ask for.
fn gpu_options(a: &BenchArgs, net: &Network) -> Result<GpuOptions> {
    let auto = GpuOptions::default();
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
        tune: a.tune.map_or(TuneMode::Cached, super::TuneArg::mode),
        // The tiled products even where the cache chose the simple set.
        tune_kernel_set: a.kernels == KernelsArg::Auto,
        ..auto
    };
    Ok(match &a.kernel_config {
        Some(text) => options.with_plan(KernelPlan::parse(net, text, Source::Given)?),
        None => options,
    })
}

/// `bench --devices LIST` (or under mpirun): the scaling table.
fn scaling(
    a: &BenchArgs,
    net: &Network,
    batch: usize,
    steps: usize,
    params: &Params<f32>,
    (x, y): (&[f32], &[f32]),
) -> Result<()> {
    let device = match a.backend {
        BenchBackend::Cpu => Device::Cpu { threads: a.threads },
        BenchBackend::Gpu => Device::Gpu {
            adapter: a.adapter.clone(),
        },
        BenchBackend::Both => Device::Auto { threads: a.threads },
    };
    // Every GPU worker of a run takes the one plan these resolve.
    let gpu = (a.backend != BenchBackend::Cpu)
        .then(|| gpu_options(a, net))
        .transpose()?;
    let open = |dev: &Device| DataParallel::open_with(dev, net, batch, gpu.as_ref());
    // Candidates: P = 1..=n over a prefix of the list, or one worker against the ranks.
    let mut runs: Vec<(usize, DataParallel)> = Vec::new();
    let rank = shadertrain::parallel::rank();
    match (rank, &a.parallel.devices) {
        (Some((r, size)), _) => {
            // The single-worker baseline runs on rank 0 alone, before the ranks run.
            if r == 0 {
                let one = Device::Parallel(vec![device.clone()]);
                runs.push((1, open(&one)?));
            }
            runs.push((size, open(&Device::Mpi(Box::new(device)))?));
        }
        (None, Some(list)) => {
            let list = shadertrain::parallel::parse_devices(list, a.threads)?;
            for p in 1..=list.len() {
                let dev = Device::Parallel(list[..p].to_vec());
                runs.push((p, open(&dev)?));
            }
        }
        (None, None) => return Ok(()),
    }
    const ROUNDS: usize = 3;
    let mut ms = vec![Vec::new(); runs.len()];
    let mut red = vec![Vec::new(); runs.len()];
    for _ in 0..ROUNDS {
        for (i, (p, b)) in runs.iter_mut().enumerate() {
            if rank.is_some() && *p > 1 {
                shadertrain::parallel::barrier();
            }
            let (m, r) = time_parallel(b, a, params, (x, y), steps)?;
            ms[i].push(m);
            red[i].push(r);
        }
    }
    if rank.is_some_and(|(r, _)| r != 0) {
        return Ok(());
    }
    let median = |v: &[f64]| bench::Timing { ms: v.to_vec() }.median();
    let base = median(&ms[0]);
    for (i, (p, b)) in runs.iter().enumerate() {
        let m = median(&ms[i]);
        let speedup = base / m;
        let r = median(&red[i]);
        let row = ScalingRow {
            workers: *p,
            adapter: b.describe(),
            layers: net.sizes().to_vec(),
            batch,
            steps,
            ms_per_step_median: m,
            samples_per_s: batch as f64 / (m / 1e3),
            speedup,
            efficiency: speedup / *p as f64,
            reduction_ms: r,
            reduction_share: r / m,
            kernel_config: b.kernel_config(),
        };
        if a.json {
            outln!("{}", serde_json::to_string(&row).unwrap_or_default());
        } else {
            outln!(
                "P={:<2} {:>10.3} ms/step  {:>12.0} samples/s  speedup {:>5.2}x  efficiency {:>5.1}%  reduction {:.3} ms ({:.1}%)  [{}]",
                row.workers,
                row.ms_per_step_median,
                row.samples_per_s,
                row.speedup,
                100.0 * row.efficiency,
                row.reduction_ms,
                100.0 * row.reduction_share,
                row.adapter
            );
        }
    }
    if !a.json {
        outln!(
            "network {} batch {batch}, {steps} timed steps after {} warm-up, median of {ROUNDS} alternated rounds",
            net.describe(),
            a.warmup
        );
    }
    Ok(())
}

/// One kernel dispatch's share of a profiled step.
#[derive(serde::Serialize)]
struct KernelTime {
    kernel: String,
    ms: f64,
    /// The configuration a tiled product kernel ran with, and its source.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'static str>,
}

/// Median per-dispatch times of `runs` profiled steps, in dispatch order, or
/// `None` where the adapter has no timestamp queries.
fn profile_gpu(g: &mut GpuBackend, lr: f32, runs: usize) -> Result<Option<Vec<KernelTime>>> {
    // Each tiled product's dispatches run its configuration in the plan.
    let plan = g.kernel_plan().clone();
    let choice = |label: &str| {
        let p = ProductId::of_label(label)?;
        Some(plan.get(p)).filter(|_| plan.simple().is_none())
    };
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
                    config: choice(name).map(|c| c.config.to_string()),
                    source: choice(name).map(|c| c.source.name()),
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
    /// GPU only: dispatches recorded by one step.
    #[serde(skip_serializing_if = "Option::is_none")]
    dispatches_per_step: Option<usize>,
    /// GPU only: the configuration of each product and where it came from
    /// (`tuned`, `cache`, `heuristic`, `given`); `simple` for each where the
    /// simple kernels run.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_configs: Option<Vec<shadertrain::gpu::report::ProductConfig>>,
    /// GPU only: whether the modules were built with naga's runtime checks
    /// (`SHADERTRAIN_CHECKED=1`).
    #[serde(skip_serializing_if = "Option::is_none")]
    checked: Option<bool>,
    /// GPU only: the driver's pipeline cache: `read`, `written`, `memory`
    /// or `off` (`GpuBackend::pipeline_cache`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_cache: Option<&'static str>,
    /// GPU only: whether a step runs as one dispatch, `whole_step_L`
    /// (a tiny network; `SHADERTRAIN_WHOLE_STEP=0` turns it off).
    #[serde(skip_serializing_if = "Option::is_none")]
    whole_step: Option<bool>,
    /// GPU with `--profile`: median milliseconds per kernel dispatch of a step.
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<Vec<KernelTime>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_param_diff: Option<f64>,
}

/// `--workload` or `--layers` (clap refuses both; with neither, W1) and
/// `--batch`: the workload, the network and the batch (the workload's, else 1024).
pub(super) fn workload_net(
    workload: Option<&str>,
    layers: Option<&str>,
    batch: Option<usize>,
) -> Result<(Option<Workload>, Network, usize)> {
    let (workload, net) = match layers {
        Some(l) => (None, Network::parse(l)?),
        None => {
            let w = Workload::named(workload.unwrap_or("W1"))?;
            (Some(w), w.network())
        }
    };
    let batch = batch.or(workload.map(|w| w.batch)).unwrap_or(1024);
    Ok((workload, net, batch))
}

pub fn run(a: BenchArgs) -> Result<()> {
    refuse_unused(
        "--micro-batches",
        a.parallel.micro_batches.is_some(),
        false,
        "train, eval and predict",
        "bench (whose --devices times 1..P workers)",
    )?;
    let distributed = a.parallel.start()?;
    if distributed.is_some_and(|(r, _)| r != 0) {
        super::silence_stdout();
    }
    let on_gpu = a.backend != BenchBackend::Cpu;
    for (flag, given) in [
        ("--kernels", a.kernels != KernelsArg::Auto),
        ("--tiles", a.tiles.is_some()),
        ("--kernel-config", a.kernel_config.is_some()),
        ("--tune", a.tune.is_some()),
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
    let (workload, net, batch) = workload_net(a.workload.as_deref(), a.layers.as_deref(), a.batch)?;
    let steps = a.steps.or(workload.map(|w| w.steps)).unwrap_or(20);
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
    if distributed.is_some() || a.parallel.devices.is_some() {
        return scaling(&a, &net, batch, steps, &params, (&x, &y));
    }
    let want = |b: BenchBackend| a.backend == b || a.backend == BenchBackend::Both;
    // Checked before any GPU work (a bad --kernel-config needs no GPU).
    let options = gpu_options(&a, &net)?;
    let mut rows: Vec<(BenchRow, Params<f32>)> = Vec::new();
    // The GPU first: a missing adapter should fail before minutes of CPU timing.
    let gpu = if want(BenchBackend::Gpu) {
        let ctx = match a.adapter.as_deref() {
            Some(sel) => GpuContext::with_adapter(sel)?,
            None => GpuContext::new()?,
        };
        Some(GpuBackend::with_options(ctx, &net, batch, options)?)
    } else {
        None
    };
    let run = |name: &'static str,
               b: &mut dyn Backend<Scalar = f32>|
     -> Result<(BenchRow, Params<f32>)> {
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
                checked: None,
                pipeline_cache: None,
                whole_step: None,
                dispatches_per_step: None,
                kernel_configs: None,
                profile: None,
                speedup: None,
                max_param_diff: None,
            },
            p,
        ))
    };
    if let Some(mut g) = gpu {
        let kernels = match g.kernel_set() {
            KernelSet::Tiled => format!("tiled {}", g.kernel_plan()),
            KernelSet::Simple => "simple".into(),
        };
        let checked = g.checked();
        if !a.json {
            let checks = if checked { "checked" } else { "unchecked" };
            let whole = g.kernels().is_some_and(|k| k.whole_step);
            let step = if whole {
                "; a step is one dispatch"
            } else {
                ""
            };
            eprintln!("gpu kernels: {kernels}; modules {checks}{step}");
        }
        let (mut r, p) = run("gpu", &mut g)?;
        r.kernels = Some(kernels);
        r.checked = Some(checked);
        r.pipeline_cache = Some(g.pipeline_cache());
        r.dispatches_per_step = Some(g.dispatches_per_step()?);
        let report = g.kernels();
        r.whole_step = Some(report.as_ref().is_some_and(|k| k.whole_step));
        r.kernel_configs = Some(report.map_or(Vec::new(), |k| k.kernel_configs));
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
            outln!("{}", serde_json::to_string(r).unwrap_or_default());
        } else {
            outln!(
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
        outln!("gpu kernels, median of 5 profiled steps (sum {total:.3} ms):");
        for k in prof {
            outln!(
                "  {:<36} {:>10.3} ms  {:>5.1}%  {} {}",
                k.kernel,
                k.ms,
                100.0 * k.ms / total.max(1e-12),
                k.config.as_deref().unwrap_or(""),
                k.source.unwrap_or("")
            );
        }
    }
    if !a.json {
        if let Some((r, _)) = rows.first().filter(|_| rows.len() == 2) {
            outln!(
                "speedup gpu over cpu: {:.2}x   max_param_diff after {} steps: {:.3e}",
                r.speedup.unwrap_or(f64::NAN),
                a.warmup.saturating_add(steps),
                r.max_param_diff.unwrap_or(f64::NAN)
            );
        }
        outln!(
            "network {} batch {batch}, {steps} timed steps after {} warm-up, {:.3} GFLOP per step",
            net.describe(),
            a.warmup,
            flops / 1e9
        );
    }
    Ok(())
}
