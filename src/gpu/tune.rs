//! Measuring candidate configurations of the tiled products on the adapter
//! ([`tune`]), and the on-disk cache of the choices ([`TuneCache`]).
//!
//! Each candidate configuration runs the whole network: first a correctness
//! check against the CPU backend on the same network at up to 515 rows
//! (every output and gradient compared, `abs + rel·|ref|`), then timed
//! steps at the tuned batch (one only for a candidate over twice as slow as
//! the best so far), each dispatch timed by GPU timestamps where the adapter
//! has `TIMESTAMP_QUERY`, else by the wall clock around its own submission.
//! Each product then takes the candidate fastest on it (median of the timed
//! steps). A candidate that fails the check, or that wgpu refuses, is
//! skipped with a one-line notice and never chosen.
//!
//! The cache is one JSON file, `tune-v1.json`, in [`default_cache_dir`]: an
//! entry per product shape, keyed on the adapter (vendor, device, driver,
//! backend), whether modules are checked, a hash of every kernel source
//! (shader files and generated text: a code change makes old entries
//! stale) and the product's kind and `(M, N, K)`. A corrupt or unreadable
//! file and stale entries are ignored with one line on stderr; writes read,
//! merge and replace the file atomically, so concurrent tuners never leave
//! it torn.

use super::backend::GpuBackend;
use super::context::GpuContext;
use super::kernels::{KernelConfig, TileConfig, ALL};
use super::options::GpuOptions;
use super::plan::{heuristic_plan, products, Choice, KernelPlan, ProductId, Source};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::network::Network;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where a backend's product configurations come from ([`GpuOptions::tune`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TuneMode {
    /// The built-in heuristic only.
    Off,
    /// The tuning cache where it has the product, else the heuristic.
    #[default]
    Cached,
    /// As `Cached`, products missing from the cache measured first (and
    /// written to it).
    Auto,
}

impl TuneMode {
    /// `off`, `cached` or `auto`.
    pub fn name(self) -> &'static str {
        match self {
            TuneMode::Off => "off",
            TuneMode::Cached => "cached",
            TuneMode::Auto => "auto",
        }
    }
}

/// The cache directory: `SHADERTRAIN_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/shadertrain`, else `$HOME/.cache/shadertrain`; `None`
/// where none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("SHADERTRAIN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("shadertrain")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("shadertrain")))
}

/// The cache file's name inside its directory.
pub const CACHE_FILE: &str = "tune-v1.json";

/// FNV-1a, 64 bits: stable across builds and platforms (std's hasher is not).
fn fnv1a(hash: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(hash, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// FNV-1a of `bytes` from the standard offset basis.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a(0xcbf2_9ce4_8422_2325, bytes)
}

/// A hash of every kernel's source: the shader files as built in, and the
/// generated cores of a few configurations (the generator's text).
pub fn sources_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let mut h = 0xcbf2_9ce4_8422_2325;
        for spec in ALL {
            h = fnv1a(h, spec.source.as_bytes());
        }
        let samples = [
            TileConfig::SMALL,
            TileConfig::CPU_LARGE,
            TileConfig::DISCRETE,
        ];
        for spec in ALL
            .iter()
            .filter(|s| super::codegen::source(s, &TileConfig::SMALL, false).is_ok())
        {
            for t in &samples {
                for db in [false, true] {
                    if let Ok(src) = super::codegen::source(spec, t, db) {
                        h = fnv1a(h, src.as_bytes());
                    }
                }
            }
        }
        format!("{h:016x}")
    })
}

/// The adapter part of a cache key: vendor, device, driver and its version, backend.
pub fn adapter_key(info: &wgpu::AdapterInfo) -> String {
    format!(
        "{:04x}:{:04x}:{}:{}:{:?}",
        info.vendor, info.device, info.driver, info.driver_info, info.backend
    )
    .replace('|', "/")
}

/// The cache key of product `p` of `shape` on this adapter, these sources
/// and checks.
pub fn key(adapter: &str, hash: &str, checked: bool, p: ProductId, shape: [usize; 3]) -> String {
    let [m, n, k] = shape;
    let checks = if checked { "checked" } else { "unchecked" };
    format!("{adapter}|{hash}|{checks}|{}:{m}x{n}x{k}", p.kind.name())
}

/// One measured choice in the cache.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CacheEntry {
    /// The chosen configuration, as [`KernelConfig`] writes it.
    pub config: String,
    /// Its median milliseconds on the product.
    pub ms: f64,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<String, CacheEntry>,
}

/// The tuning cache of one directory, as read.
#[derive(Debug, Default)]
pub struct TuneCache {
    path: PathBuf,
    entries: BTreeMap<String, CacheEntry>,
}

impl TuneCache {
    /// The file in `dir`, read; a missing file is an empty cache, and a
    /// corrupt or unreadable one is empty after one line on stderr.
    pub fn load(dir: &Path) -> TuneCache {
        Self::try_load(dir).unwrap_or_else(|(cache, why)| {
            eprintln!("tuning cache {}: {why}; ignored", cache.path.display());
            cache
        })
    }

    /// As [`TuneCache::load`], a corrupt or unreadable file an error: the
    /// empty cache and why.
    pub fn try_load(dir: &Path) -> std::result::Result<TuneCache, (TuneCache, String)> {
        let path = dir.join(CACHE_FILE);
        match Self::read(&path) {
            Ok(entries) => Ok(TuneCache { path, entries }),
            Err(why) => Err((
                TuneCache {
                    path,
                    entries: BTreeMap::new(),
                },
                why,
            )),
        }
    }

    /// The entries of the file at `path`; none where it does not exist.
    fn read(path: &Path) -> std::result::Result<BTreeMap<String, CacheEntry>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(format!("unreadable ({e})")),
        };
        let file: CacheFile = serde_json::from_str(&text).map_err(|e| format!("corrupt ({e})"))?;
        if file.version != 1 {
            return Err(format!("version {} is not 1", file.version));
        }
        Ok(file.entries)
    }

    /// The file it reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The cached choice for `key`, if there is one that parses.
    fn get(&self, key: &str) -> Option<KernelConfig> {
        let e = self.entries.get(key)?;
        KernelConfig::parse(&e.config).ok()
    }

    /// Entries for the product part of `key` (after the sources hash) under
    /// another sources hash: stale.
    fn stale(&self, adapter: &str, hash: &str) -> usize {
        let prefix = format!("{adapter}|");
        self.entries
            .keys()
            .filter(|k| k.starts_with(&prefix) && !k[prefix.len()..].starts_with(hash))
            .count()
    }

    /// Add `new` to the file: read it again, merge (new entries win), write
    /// a temporary file beside it and rename it over the old one. Stale
    /// entries of this adapter are dropped. The directory is made if
    /// missing.
    pub fn store(&mut self, new: BTreeMap<String, CacheEntry>, adapter: &str) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let mut entries = Self::read(&self.path).unwrap_or_default();
        let prefix = format!("{adapter}|");
        let hash = sources_hash();
        entries.retain(|k, _| !k.starts_with(&prefix) || k[prefix.len()..].starts_with(hash));
        entries.extend(new);
        let file = CacheFile {
            version: 1,
            entries,
        };
        let text =
            serde_json::to_string_pretty(&file).map_err(|e| Error::Invalid(e.to_string()))?;
        crate::fsutil::write_atomic(&self.path, text.as_bytes())?;
        self.entries = file.entries;
        Ok(())
    }
}

/// The configuration of every product a backend of `options` runs for
/// `net` at `rows` rows on `ctx`: the fixed plan of `options` if it has one
/// ([`GpuOptions::fixed_plan`]), else the heuristic's with, by
/// [`GpuOptions::tune`], the cached choices laid over it and the missing
/// products measured first.
pub fn resolve_plan(
    ctx: &std::sync::Arc<GpuContext>,
    net: &Network,
    rows: usize,
    options: &GpuOptions,
) -> Result<KernelPlan> {
    if let Some(plan) = options.fixed_plan(ctx, net)? {
        return Ok(plan);
    }
    let mut plan = heuristic_plan(ctx.info.device_type, &ctx.limits, net, rows);
    if options.tune == TuneMode::Off {
        return Ok(plan);
    }
    let Some(dir) = options.cache_dir.clone().or_else(default_cache_dir) else {
        return Ok(plan);
    };
    let mut cache = TuneCache::load(&dir);
    let adapter = adapter_key(&ctx.info);
    let hash = sources_hash();
    let mut missing = Vec::new();
    for p in products(net) {
        let k = key(&adapter, hash, options.checked, p, p.shape(net, rows));
        match cache.get(&k).filter(|c| c.check(&ctx.limits).is_ok()) {
            Some(config) => plan.set(
                p,
                Choice {
                    config,
                    source: Source::Cache,
                },
            ),
            None => missing.push(p),
        }
    }
    if !missing.is_empty() {
        let stale = cache.stale(&adapter, hash);
        if stale > 0 {
            eprintln!(
                "tuning cache {}: {stale} entries for other kernel sources ignored (stale; `shadertrain tune` measures again)",
                cache.path().display()
            );
        }
    }
    if options.tune == TuneMode::Auto && !missing.is_empty() {
        eprintln!(
            "tuning {} of {} products of {} at {rows} rows on {} ...",
            missing.len(),
            products(net).len(),
            net.describe(),
            ctx.info.name
        );
        let settings = TuneSettings {
            checked: options.checked,
            budget: auto_budget(),
            candidates: None,
        };
        // A device of its own on the same adapter (same name), so that a
        // candidate failing at run time cannot spoil the caller's device,
        // whose errors are sticky; the caller's where none opens.
        let own = GpuContext::with_adapter(&ctx.info.name)
            .ok()
            .filter(|c| c.info.name == ctx.info.name && c.info.backend == ctx.info.backend);
        let report = tune(
            own.as_ref().unwrap_or(ctx),
            net,
            rows,
            &settings,
            &mut |_| {},
        )?;
        for &p in &missing {
            plan.set(p, report.plan.get(p));
        }
        if let Err(e) = report.store(&mut cache, net, rows, &adapter, options.checked) {
            eprintln!("tuning cache {}: not written ({e})", cache.path().display());
        }
    }
    Ok(plan)
}

/// Time spent measuring candidates, after which no new one starts.
pub const DEFAULT_BUDGET: Duration = Duration::from_secs(60);

/// The budget of [`TuneMode::Auto`]: `SHADERTRAIN_TUNE_BUDGET` seconds
/// where set to a positive number, else [`DEFAULT_BUDGET`].
pub fn auto_budget() -> Duration {
    std::env::var("SHADERTRAIN_TUNE_BUDGET")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e6)
        .map_or(DEFAULT_BUDGET, Duration::from_secs_f64)
}

/// How [`tune`] measures.
#[derive(Debug, Clone)]
pub struct TuneSettings {
    /// Build the modules with naga's runtime checks.
    pub checked: bool,
    /// No candidate starts after this long (the first always runs).
    pub budget: Duration,
    /// The candidates; `None`: [`candidates`] for the adapter.
    pub candidates: Option<Vec<KernelConfig>>,
}

/// One product's measurement with one candidate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measurement {
    /// `forward layer 0`, …
    pub product: String,
    /// `(M, N, K)`.
    pub shape: [usize; 3],
    /// The candidate, as [`KernelConfig`] writes it.
    pub candidate: String,
    /// Median milliseconds of its dispatches (the output layer's forward:
    /// with its fused softmax, delta and loss where they run).
    pub ms: f64,
    /// `2·M·N·K` over that time.
    pub gflops: f64,
    /// Whether this product chose this candidate.
    pub chosen: bool,
}

/// What [`tune`] measured and chose.
#[derive(Debug, Clone)]
pub struct TuneReport {
    /// Every product with every candidate that passed, in product order.
    pub measurements: Vec<Measurement>,
    /// The candidates skipped, with why (one line each).
    pub skipped: Vec<(String, String)>,
    /// The fastest candidate per product, marked [`Source::Tuned`] (the
    /// heuristic's where no candidate passed).
    pub plan: KernelPlan,
    /// Whether times came from GPU timestamps (else the wall clock).
    pub timestamps: bool,
    /// Per product, `(ms, config)` of the choice.
    chosen: BTreeMap<ProductId, (f64, KernelConfig)>,
}

impl TuneReport {
    /// Write each measured product's choice to `cache`.
    pub fn store(
        &self,
        cache: &mut TuneCache,
        net: &Network,
        rows: usize,
        adapter: &str,
        checked: bool,
    ) -> Result<()> {
        let hash = sources_hash();
        let new = self
            .chosen
            .iter()
            .map(|(p, (ms, c))| {
                let k = key(adapter, hash, checked, *p, p.shape(net, rows));
                (
                    k,
                    CacheEntry {
                        config: c.to_string(),
                        ms: *ms,
                    },
                )
            })
            .collect();
        cache.store(new, adapter)
    }
}

/// The candidate configurations for an adapter: generated cores over
/// workgroup shapes, per-invocation blocks, K steps and double buffering,
/// and tiled.wgsl's loops core, by device type (a CPU adapter gets few:
/// each step is slow there), each passing its safety conditions and
/// `limits`.
pub fn candidates(device: wgpu::DeviceType, limits: &wgpu::Limits) -> Vec<KernelConfig> {
    let t = |wg_x, wg_y, tm, tn, bk| TileConfig {
        wg_x,
        wg_y,
        tm,
        tn,
        bk,
    };
    let mut out: Vec<KernelConfig> = Vec::new();
    let gen = KernelConfig::generated;
    match device {
        wgpu::DeviceType::Cpu => {
            for tiles in [
                TileConfig::CPU_LARGE,
                TileConfig::SMALL,
                t(8, 8, 8, 8, 8),
                t(8, 8, 8, 8, 16),
            ] {
                out.push(gen(tiles));
            }
            // No double buffering: on 2-core lavapipe it made W1 4% and
            // 512⁴ 9% slower (BENCHMARKS.md); llvmpipe has no loads to hide.
        }
        _ => {
            // Each tiling with and without register double buffering,
            // which hides global latency on a GPU at the cost of registers.
            for (wx, wy) in [(16, 16), (8, 8), (16, 8), (8, 16)] {
                for (tm, tn) in [(8, 8), (4, 4), (4, 8), (8, 4), (8, 16), (16, 8)] {
                    for bk in [8, 16] {
                        for db in [false, true] {
                            out.push(gen(t(wx, wy, tm, tn, bk)).with_double_buffer(db));
                        }
                    }
                }
            }
            out.push(KernelConfig::loops(TileConfig::DISCRETE));
        }
    }
    out.push(KernelConfig::loops(TileConfig::SMALL));
    out.retain(|c| c.check(limits).is_ok());
    out
}

/// Rows the correctness check runs: enough for split K, few enough that
/// the CPU reference takes little time.
const CHECK_ROWS: usize = 515;

/// Timed steps per candidate (after the check's forward and backward).
const TIMED: usize = 3;

/// Measure `settings`' candidates (default: [`candidates`], the
/// heuristic's configurations first) on every product of `net` at `rows`
/// rows on `ctx`, in order, until the budget is spent; `progress` gets a
/// line per candidate. Each product chooses its fastest passing candidate.
pub fn tune(
    ctx: &std::sync::Arc<GpuContext>,
    net: &Network,
    rows: usize,
    settings: &TuneSettings,
    progress: &mut dyn FnMut(&str),
) -> Result<TuneReport> {
    let heuristic = heuristic_plan(ctx.info.device_type, &ctx.limits, net, rows);
    let mut list = heuristic.configs();
    let rest = match &settings.candidates {
        Some(c) => c.clone(),
        None => candidates(ctx.info.device_type, &ctx.limits),
    };
    if settings.candidates.is_some() {
        list.clear();
    }
    for c in rest {
        if !list.contains(&c) {
            list.push(c);
        }
    }
    let reference = Reference::new(net, rows.min(CHECK_ROWS))?;
    let (x, y) = crate::bench::random_batch(net, rows, 7)?;
    let all = products(net);
    let timestamps = ctx
        .device
        .features()
        .contains(wgpu::Features::TIMESTAMP_QUERY);
    // Per candidate, per product: median ms.
    let mut times: Vec<(KernelConfig, Vec<f64>)> = Vec::new();
    let mut skipped = Vec::new();
    let start = Instant::now();
    for (i, config) in list.iter().enumerate() {
        if i > 0 && start.elapsed() > settings.budget {
            let why = format!(
                "the {:.0} s budget was spent",
                settings.budget.as_secs_f64()
            );
            progress(&format!("{config}: skipped, {why}"));
            skipped.push((config.to_string(), why));
            continue;
        }
        // The fastest step so far in the products: a candidate far slower
        // is not timed again.
        let best = times
            .iter()
            .map(|(_, ms)| ms.iter().sum::<f64>())
            .min_by(f64::total_cmp);
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let data = (&x[..], &y[..]);
            measure(
                ctx,
                net,
                rows,
                *config,
                settings.checked,
                &reference,
                data,
                best,
            )
        }));
        let outcome = match run {
            Ok(r) => r,
            Err(_) => Err(Error::Gpu("the candidate panicked".into())),
        };
        match outcome {
            Ok(per_label) => {
                let ms: Vec<f64> = all
                    .iter()
                    .map(|p| {
                        per_label
                            .iter()
                            .filter(|(label, _)| ProductId::of_label(label) == Some(*p))
                            .map(|(_, t)| t)
                            .sum()
                    })
                    .collect();
                let total: f64 = ms.iter().sum();
                progress(&format!("{config}: {total:.3} ms in the products"));
                times.push((*config, ms));
            }
            Err(e) => {
                let why = crate::error::one_line(&e.to_string(), 300);
                progress(&format!("{config}: skipped, {why}"));
                skipped.push((config.to_string(), why));
            }
        }
        if ctx.check_errors().is_err() {
            // A spoiled device measures nothing more.
            break;
        }
    }
    let mut plan = heuristic;
    let mut chosen = BTreeMap::new();
    let mut measurements = Vec::new();
    for (j, p) in all.iter().enumerate() {
        let best = times
            .iter()
            .min_by(|a, b| a.1[j].total_cmp(&b.1[j]))
            .map(|(c, ms)| (*c, ms[j]));
        if let Some((config, ms)) = best {
            plan.set(
                *p,
                Choice {
                    config,
                    source: Source::Tuned,
                },
            );
            chosen.insert(*p, (ms, config));
        }
        let shape = p.shape(net, rows);
        let flop = 2.0 * shape.iter().map(|&v| v as f64).product::<f64>();
        for (c, ms) in &times {
            measurements.push(Measurement {
                product: p.label(),
                shape,
                candidate: c.to_string(),
                ms: ms[j],
                gflops: flop / (ms[j].max(1e-9) / 1e3) / 1e9,
                chosen: best.is_some_and(|b| b.0 == *c),
            });
        }
    }
    Ok(TuneReport {
        measurements,
        skipped,
        plan,
        timestamps,
        chosen,
    })
}

/// The CPU backend's outputs on a seeded batch: what every candidate must
/// reproduce.
struct Reference {
    rows: usize,
    params: crate::network::Params<f32>,
    x: Vec<f32>,
    y: Vec<f32>,
    /// The output layer's activations, `(rows, outputs)`.
    out: Vec<f32>,
    /// The gradients of every parameter.
    grads: Vec<f32>,
}

impl Reference {
    fn new(net: &Network, rows: usize) -> Result<Reference> {
        let params = net.init(11);
        let (x, y) = crate::bench::random_batch(net, rows, 13)?;
        let mut cpu = crate::cpu::FastCpuBackend::new(net, rows, 0)?;
        cpu.set_params(&params)?;
        cpu.load_batch(&x, &y)?;
        cpu.forward()?;
        cpu.backward()?;
        let out = cpu.read_activations(net.layers().len())?;
        let grads = cpu.read_gradients()?.data;
        Ok(Reference {
            rows,
            params,
            x,
            y,
            out,
            grads,
        })
    }

    /// Whether `got` matches `want` within `abs + rel·|want|`, `abs` scaled
    /// by the largest `|want|` (sums of many products round differently).
    fn compare(what: &str, got: &[f32], want: &[f32]) -> Result<()> {
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
        let (abs, rel) = (1e-3 * scale, 1e-2);
        if got.len() != want.len() {
            return Err(Error::Gpu(format!(
                "{what}: {} values, expected {}",
                got.len(),
                want.len()
            )));
        }
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (g - w).abs();
            // Written so that NaN fails too.
            if d.is_nan() || d > abs + rel * w.abs() {
                return Err(Error::Gpu(format!(
                    "wrong result: {what}[{i}] = {g}, the CPU gives {w} (off by {:.3e})",
                    (g - w).abs()
                )));
            }
        }
        Ok(())
    }
}

/// One candidate on every product: checked against `reference`, then timed
/// on `batch` (once only where that step's products take over twice
/// `best` ms). Returns `(dispatch label, median ms)` per dispatch of a step.
#[allow(clippy::too_many_arguments)]
fn measure(
    ctx: &std::sync::Arc<GpuContext>,
    net: &Network,
    rows: usize,
    config: KernelConfig,
    checked: bool,
    reference: &Reference,
    (x, y): (&[f32], &[f32]),
    best: Option<f64>,
) -> Result<Vec<(String, f64)>> {
    let options = GpuOptions {
        checked,
        ..GpuOptions::BASE
    }
    .with_plan(KernelPlan::uniform(net, config, Source::Given));
    let mut g = GpuBackend::with_options(ctx.clone(), net, rows, options)?;
    if g.micro_batch() < rows {
        return Err(Error::Gpu(format!(
            "a batch of {rows} runs as micro-batches of {} here; tune a batch that fits",
            g.micro_batch()
        )));
    }
    g.set_params(&reference.params)?;
    g.load_batch(&reference.x, &reference.y)?;
    g.forward()?;
    g.backward()?;
    let out = g.read_activations(net.layers().len())?;
    Reference::compare("output", &out, &reference.out)?;
    Reference::compare("gradient", &g.read_gradients()?.data, &reference.grads)?;
    debug_assert_eq!(out.len(), reference.rows * net.outputs());
    // The check compiled and ran every pipeline: no warm-up step.
    g.load_batch(x, y)?;
    let lr = 1e-3;
    let in_products = |run: &[(String, f64)]| -> f64 {
        let products = run.iter().filter(|(l, _)| ProductId::of_label(l).is_some());
        products.map(|(_, ms)| ms).sum()
    };
    let mut runs: Vec<Vec<(String, f64)>> = Vec::new();
    for _ in 0..TIMED {
        runs.push(g.time_dispatches(lr)?);
        if best.is_some_and(|b| in_products(&runs[0]) > 2.0 * b) {
            break;
        }
    }
    let first = runs.first().cloned().unwrap_or_default();
    Ok(first
        .into_iter()
        .enumerate()
        .map(|(i, (label, _))| {
            let ms = runs.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect();
            (label, crate::bench::Timing { ms }.median())
        })
        .collect())
}
