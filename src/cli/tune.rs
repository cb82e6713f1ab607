//! `shadertrain tune`: measure the tiled products' candidate configurations
//! of a network on the adapter ([`shadertrain::gpu::tune`]), print a table
//! (or JSON lines) and write the choices to the tuning cache, where `train`
//! and `bench` find them (`--tune cached`, the default).

use shadertrain::gpu::tune::{
    self, adapter_key, default_cache_dir, Timing, TuneCache, TuneSettings,
};
use shadertrain::gpu::{micro_batch_rows, GpuContext, KernelConfig};
use shadertrain::{Error, Result, Setting};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct TuneArgs {
    /// A named workload: W0 (2-2-2, batch 1), W1 (784-256-256-10, 1024),
    /// W2 (1024-1024-1024-1024, 1024), W3 (4096-4096-4096, 4096). Default W1.
    #[arg(long, conflicts_with = "layers")]
    workload: Option<String>,
    /// Layer sizes, instead of a workload.
    #[arg(long)]
    layers: Option<String>,
    /// Samples per step (default: the workload's, else 1024).
    #[arg(long, allow_negative_numbers = true, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    batch: Option<usize>,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Print one JSON object per measurement (product `step`: a whole step),
    /// then a summary (the plan chosen, `timing`: `timestamps` or `wall-clock`).
    #[arg(long)]
    json: bool,
    /// Seconds after which no further candidate starts (the first always runs).
    #[arg(long, default_value_t = 60.0, allow_negative_numbers = true)]
    budget: f64,
    /// Exactly these candidates, comma-separated, instead of the adapter's
    /// tile list, the split-K ladder and the simple set: configurations
    /// (`gen:8x8:4x4:k8`, `loops:8x8:4x4:k8`; `:sN` gives every gradient N
    /// K slices) and `simple` (the simple set's whole step against the
    /// tiled plan chosen).
    #[arg(long)]
    candidates: Option<String>,
    /// How candidates are timed: `auto` (GPU timestamps where the adapter
    /// has them, else the wall clock), `timestamps`, or `wall-clock` (each
    /// dispatch submitted alone and waited for: for adapters whose
    /// timestamps are missing or wrong).
    #[arg(long, value_enum, default_value = "auto")]
    timing: TimingArg,
    /// The cache directory (default: `SHADERTRAIN_CACHE_DIR`, else
    /// `$XDG_CACHE_HOME/shadertrain`, else `~/.cache/shadertrain`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

/// `--timing`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TimingArg {
    /// GPU timestamps where the adapter has them, else the wall clock.
    Auto,
    /// GPU timestamps (an error where the adapter has none).
    Timestamps,
    /// The wall clock around each dispatch submitted on its own.
    WallClock,
}

impl TimingArg {
    fn timing(self) -> Timing {
        match self {
            TimingArg::Auto => Timing::Auto,
            TimingArg::Timestamps => Timing::Timestamps,
            TimingArg::WallClock => Timing::WallClock,
        }
    }
}

/// `--candidates`: the tile configurations, and whether `simple` is among them.
fn parse_candidates(list: &str) -> Result<(Vec<KernelConfig>, bool)> {
    let mut configs = Vec::new();
    let mut simple = false;
    for c in list.split(',').map(str::trim) {
        if c == "simple" {
            simple = true;
            continue;
        }
        // Its own flag's name, not --kernel-config's.
        configs.push(KernelConfig::parse(c).map_err(|e| match e {
            Error::Setting { value, problem, .. } => {
                Error::Invalid(format!("--candidates '{value}': {problem}"))
            }
            e => e,
        })?);
    }
    if configs.is_empty() {
        return Err(Error::Invalid(format!(
            "--candidates '{list}' names no tile configuration (e.g. gen:8x8:4x4:k8): the simple set is measured against one"
        )));
    }
    Ok((configs, simple))
}

pub fn run(a: TuneArgs) -> Result<()> {
    let (_, net, batch) =
        super::bench::workload_net(a.workload.as_deref(), a.layers.as_deref(), a.batch)?;
    if !(a.budget.is_finite() && a.budget > 0.0 && a.budget <= 1e6) {
        return Err(Error::Invalid(format!(
            "--budget must be a number of seconds in (0, 1e6], got {}",
            a.budget
        )));
    }
    let given = a.candidates.as_deref().map(parse_candidates).transpose()?;
    let dir = a.cache_dir.clone().or_else(default_cache_dir).ok_or_else(|| {
        Error::Invalid(
            "no cache directory: set SHADERTRAIN_CACHE_DIR, XDG_CACHE_HOME or HOME, or pass --cache-dir"
                .into(),
        )
    })?;
    let ctx = match a.adapter.as_deref() {
        Some(sel) => GpuContext::with_adapter(sel)?,
        None => GpuContext::new()?,
    };
    let rows = micro_batch_rows(&net, batch, &ctx.limits, None)?;
    if rows < batch {
        return Err(Error::setting(
            Setting::Batch,
            batch,
            format!("runs as micro-batches of {rows} on this device; tune --batch {rows}"),
        ));
    }
    let checked = shadertrain::gpu::kernels::checked_by_env();
    let settings = TuneSettings {
        checked,
        budget: Duration::from_secs_f64(a.budget),
        timing: a.timing.timing(),
        ..match given {
            // Exactly the candidates named.
            Some((configs, simple)) => TuneSettings {
                candidates: Some(configs),
                splits: Some(Vec::new()),
                simple,
                ..TuneSettings::default()
            },
            None => TuneSettings::default(),
        }
    };
    eprintln!(
        "tuning {} at batch {batch} on {} ({} modules)",
        net.describe(),
        ctx.describe(),
        if checked { "checked" } else { "unchecked" }
    );
    let report = tune::tune(&ctx, &net, batch, &settings, &mut |line| {
        eprintln!("  {line}")
    })?;
    let clock = report.timing.name();
    let rows = report.measurements.iter().chain(&report.steps);
    if a.json {
        for m in rows {
            outln!("{}", serde_json::to_string(m).unwrap_or_default());
        }
    } else {
        outln!(
            "{:<22} {:>16} {:<34} {:>10} {:>9}  chosen",
            "product",
            "M×N×K",
            "candidate",
            "ms",
            "GFLOP/s"
        );
        for m in rows {
            let [mm, n, k] = m.shape;
            outln!(
                "{:<22} {:>16} {:<34} {:>10.4} {:>9.2}  {}",
                m.product,
                format!("{mm}×{n}×{k}"),
                match m.k_slices {
                    Some(s) => format!("{} (s{s})", m.candidate),
                    None => m.candidate.clone(),
                },
                m.ms,
                m.gflops,
                if m.chosen { "*" } else { "" }
            );
        }
    }
    for (c, why) in &report.skipped {
        eprintln!("skipped {c}: {why}");
    }
    let mut cache = TuneCache::load(&dir);
    report.store(&mut cache, &net, batch, &adapter_key(&ctx.info), checked)?;
    let plan = report.plan.to_string();
    if a.json {
        let line = serde_json::json!({
            "layers": net.sizes(),
            "batch": batch,
            "adapter": ctx.describe(),
            "timing": clock,
            "checked": checked,
            "kernel_config": plan,
            "cache": cache.path(),
        });
        outln!("{line}");
    } else {
        let clock = match report.timing {
            Timing::WallClock => "the wall clock",
            _ => "GPU timestamps",
        };
        outln!("timed by {clock}; chosen: {plan}");
        if report.steps.is_empty() && settings.simple {
            outln!(
                "the simple set was not measured (see the skipped lines); the tiled plan stands"
            );
        }
        outln!("written to {}", cache.path().display());
    }
    Ok(())
}
