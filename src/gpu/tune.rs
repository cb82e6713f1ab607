//! Measuring candidate configurations of the tiled products on the adapter
//! ([`tune`]), and the on-disk cache of the choices ([`TuneCache`]).
//!
//! Each candidate runs the whole network: first a correctness check
//! against the CPU backend on the same network at up to 515 rows (every
//! output and gradient compared, `abs + rel·|ref|`), then timed steps at
//! the tuned batch (one only for a candidate over twice as slow as the best
//! so far), each dispatch timed by GPU timestamps where the adapter has
//! `TIMESTAMP_QUERY`, else by the wall clock around its own submission
//! ([`Timing`] chooses). The candidates, in turn:
//! 1. tile configurations, each on every product;
//! 2. K slice counts (split K, `:sN`) for each gradient on its fastest
//!    tiles, the derived count among them;
//! 3. the simple kernel set's whole step against the whole step of the
//!    tiled plan chosen (the simple set runs one invocation per output and
//!    its own update dispatch; it runs no micro-batches, so a backend whose
//!    batch needs them keeps the tiled plan).
//!
//! Each product takes the candidate fastest on it (median of the timed
//! steps), the network the faster whole step. A candidate that fails the
//! check, or that wgpu refuses, is skipped with a one-line notice and never
//! chosen.
//!
//! The cache is one JSON file, `tune-v1.json`, in [`default_cache_dir`]: an
//! entry per product shape, keyed on the adapter (vendor, device, driver,
//! backend), whether modules are checked, a hash of every kernel source
//! (shader files and generated text: a code change makes old entries
//! stale) and the product's kind and `(M, N, K)`; and an entry per network
//! and batch ([`step_key`]) saying whether the simple set won. A corrupt or
//! unreadable file and stale entries are ignored with one line on stderr;
//! writes read, merge and replace the file atomically, so concurrent tuners
//! never leave it torn.

use super::backend::GpuBackend;
use super::context::GpuContext;
use super::kernels::{KernelConfig, TileConfig, ALL, MAX_SPLITS};
use super::options::GpuOptions;
use super::plan::{
    gradient_splits, heuristic_plan, products, Choice, KernelPlan, Product, ProductId, Source,
};
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
        for spec in ALL.iter().filter(|s| {
            super::codegen::source(s, &KernelConfig::generated(TileConfig::SMALL)).is_ok()
        }) {
            for &t in &samples {
                for (db, v4) in [(false, false), (true, false), (false, true)] {
                    let c = KernelConfig::generated(t)
                        .with_double_buffer(db)
                        .with_k_vec4(v4);
                    if let Ok(src) = super::codegen::source(spec, &c) {
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

/// The cache key of the whole-step choice (the simple kernel set or the
/// tiled products) for `net` at `rows` rows on this adapter, these sources
/// and checks.
pub fn step_key(adapter: &str, hash: &str, checked: bool, net: &Network, rows: usize) -> String {
    let checks = if checked { "checked" } else { "unchecked" };
    let sizes: Vec<String> = net.sizes().iter().map(|s| s.to_string()).collect();
    format!("{adapter}|{hash}|{checks}|step:{}x{rows}", sizes.join("-"))
}

/// The kernel set a whole-step cache entry names.
const SIMPLE: &str = "simple";
const TILED: &str = "tiled";

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

    /// The cached whole-step choice for `key` ([`step_key`]): whether the
    /// simple set won; `None` where not measured (or unreadable).
    fn simple(&self, key: &str) -> Option<bool> {
        match self.entries.get(key)?.config.as_str() {
            SIMPLE => Some(true),
            TILED => Some(false),
            _ => None,
        }
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
/// [`GpuOptions::tune`], the cached choices laid over it (the simple set
/// where the cache's whole-step entry chose it) and the missing products
/// measured first. A network without a whole-step entry runs its tiled
/// products (`shadertrain tune` measures it).
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
    let step = step_key(&adapter, hash, options.checked, net, rows);
    if !missing.is_empty() {
        let stale = cache.stale(&adapter, hash);
        if stale > 0 {
            eprintln!(
                "tuning cache {}: {stale} entries for other kernel sources ignored (stale; `shadertrain tune` measures again)",
                cache.path().display()
            );
        }
    } else if options.tune_kernel_set && cache.simple(&step) == Some(true) {
        return Ok(plan.into_simple(Source::Cache));
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
            simple: options.tune_kernel_set,
            ..TuneSettings::default()
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
        if report.plan.simple().is_some() {
            plan = plan.into_simple(Source::Tuned);
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

/// How [`tune`] times a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Timing {
    /// GPU timestamps where the adapter has `TIMESTAMP_QUERY`, else the wall clock.
    #[default]
    Auto,
    /// GPU timestamps around each dispatch (an error where the adapter has none).
    Timestamps,
    /// The wall clock around each dispatch submitted on its own until the
    /// device has finished it (a whole step: until the step has finished).
    /// Includes the submission's overhead; for adapters whose timestamps
    /// are missing or not to be trusted.
    WallClock,
}

impl Timing {
    /// `auto`, `timestamps` or `wall-clock`.
    pub fn name(self) -> &'static str {
        match self {
            Timing::Auto => "auto",
            Timing::Timestamps => "timestamps",
            Timing::WallClock => "wall-clock",
        }
    }

    /// What this timing is on `ctx`: `Auto` resolved by the adapter's
    /// features; `Timestamps` an error where it has none.
    pub fn on(self, ctx: &GpuContext) -> Result<Timing> {
        let has = (ctx.device.features()).contains(wgpu::Features::TIMESTAMP_QUERY);
        match self {
            Timing::Auto if has => Ok(Timing::Timestamps),
            Timing::Auto => Ok(Timing::WallClock),
            Timing::Timestamps if !has => Err(Error::Gpu(format!(
                "{} has no timestamp queries (TIMESTAMP_QUERY); time by the wall clock",
                ctx.info.name
            ))),
            t => Ok(t),
        }
    }
}

/// How [`tune`] measures.
#[derive(Debug, Clone)]
pub struct TuneSettings {
    /// Build the modules with naga's runtime checks.
    pub checked: bool,
    /// No candidate starts after this long (the first always runs).
    pub budget: Duration,
    /// The tile candidates; `None`: [`candidates`] for the adapter, after
    /// the heuristic's. A candidate's K slices (`:sN`) go to every gradient.
    pub candidates: Option<Vec<KernelConfig>>,
    /// K slice counts tried on each gradient's fastest tiles after the tile
    /// candidates (each clamped as [`super::plan::gradient_splits`] says;
    /// counts that clamp to one already measured are not run again);
    /// `None`: [`split_ladder`]; empty: none.
    pub splits: Option<Vec<u32>>,
    /// Last, measure the simple kernel set's whole step against the whole
    /// step of the tiled plan chosen, and choose the faster.
    pub simple: bool,
    /// How candidates are timed.
    pub timing: Timing,
}

impl Default for TuneSettings {
    /// Unchecked modules, [`DEFAULT_BUDGET`], the adapter's candidates, the
    /// split ladder, the simple set, [`Timing::Auto`].
    fn default() -> Self {
        TuneSettings {
            checked: false,
            budget: DEFAULT_BUDGET,
            candidates: None,
            splits: None,
            simple: true,
            timing: Timing::Auto,
        }
    }
}

/// K slice counts the tuner tries by default: the powers of two up to
/// [`MAX_SPLITS`] (a product's clamp ends the ladder early).
pub fn split_ladder() -> Vec<u32> {
    (0..=MAX_SPLITS.ilog2()).map(|i| 1 << i).collect()
}

/// One product's measurement with one candidate.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Measurement {
    /// `forward layer 0`, …; `step` for a whole step ([`TuneReport::steps`]).
    pub product: String,
    /// `(M, N, K)`; a whole step: `(rows, inputs, outputs)`.
    pub shape: [usize; 3],
    /// The candidate, as [`KernelConfig`] writes it; a whole step: its plan.
    pub candidate: String,
    /// A gradient's K slices as run at these rows (given and clamped, or
    /// derived).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub k_slices: Option<u32>,
    /// Median milliseconds of its dispatches (the output layer's forward:
    /// with its fused softmax, delta and loss where they run).
    pub ms: f64,
    /// `2·M·N·K` over that time (a whole step: the step's FLOPs).
    pub gflops: f64,
    /// Whether this product chose this candidate.
    pub chosen: bool,
}

/// What [`tune`] measured and chose.
#[derive(Debug, Clone)]
pub struct TuneReport {
    /// Every product with every candidate that passed, in product order.
    pub measurements: Vec<Measurement>,
    /// The whole steps compared: the tiled plan chosen, and the simple set,
    /// where [`TuneSettings::simple`] asked and both ran.
    pub steps: Vec<Measurement>,
    /// The candidates skipped, with why (one line each).
    pub skipped: Vec<(String, String)>,
    /// The fastest candidate per product, marked [`Source::Tuned`] (the
    /// heuristic's where no candidate passed); the simple set
    /// ([`KernelPlan::simple`]) where its whole step was faster.
    pub plan: KernelPlan,
    /// How times were taken: [`Timing::Timestamps`] or [`Timing::WallClock`].
    pub timing: Timing,
    /// Per product, `(ms, config)` of the choice.
    chosen: BTreeMap<ProductId, (f64, KernelConfig)>,
}

impl TuneReport {
    /// Write each measured product's choice to `cache`, and the whole-step
    /// choice where the steps were compared.
    pub fn store(
        &self,
        cache: &mut TuneCache,
        net: &Network,
        rows: usize,
        adapter: &str,
        checked: bool,
    ) -> Result<()> {
        let hash = sources_hash();
        let mut new: BTreeMap<String, CacheEntry> = self
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
        if let Some(best) = self.steps.iter().find(|m| m.chosen) {
            let set = if self.plan.simple().is_some() {
                SIMPLE
            } else {
                TILED
            };
            let entry = CacheEntry {
                config: set.into(),
                ms: best.ms,
            };
            new.insert(step_key(adapter, hash, checked, net, rows), entry);
        }
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
                        let tiles = t(wx, wy, tm, tn, bk);
                        // :v4 where some block of it would stage along K
                        // with idle invocations (else it changes nothing).
                        let threads = wx * wy;
                        let items = |len: u32| len / 4 * (bk / 4);
                        let v4s: &[bool] =
                            if items(tiles.bm()) < threads || items(tiles.bn()) < threads {
                                &[false, true]
                            } else {
                                &[false]
                            };
                        for db in [false, true] {
                            for &v4 in v4s {
                                out.push(gen(tiles).with_double_buffer(db).with_k_vec4(v4));
                            }
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

/// One plan measured on every product it runs: per product of
/// [`products`], the median ms, and whether it is a measurement of that
/// product's configuration (a split-K trial measures only gradients whose
/// K slices are new).
struct Trial {
    plan: KernelPlan,
    ms: Vec<f64>,
    counts: Vec<bool>,
}

/// Measure `settings`' candidates on every product of `net` at `rows` rows
/// on `ctx`, until the budget is spent; `progress` gets a line per
/// candidate. In turn: the tile candidates (default: [`candidates`], the
/// heuristic's configurations first), each run on every product; each
/// gradient's K slices on its fastest tiles ([`TuneSettings::splits`]);
/// then the whole step of the plan of the fastest per product against the
/// simple set's ([`TuneSettings::simple`]). Each product chooses its
/// fastest passing candidate, the network the faster whole step.
pub fn tune(
    ctx: &std::sync::Arc<GpuContext>,
    net: &Network,
    rows: usize,
    settings: &TuneSettings,
    progress: &mut dyn FnMut(&str),
) -> Result<TuneReport> {
    let timing = settings.timing.on(ctx)?;
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
    let m = Measurer {
        ctx,
        net,
        rows,
        checked: settings.checked,
        timing,
        reference: Reference::new(net, rows.min(CHECK_ROWS))?,
        batch: crate::bench::random_batch(net, rows, 7)?,
    };
    let all = products(net);
    let mut trials: Vec<Trial> = Vec::new();
    let mut log = Log {
        progress,
        skipped: Vec::new(),
        start: Instant::now(),
        budget: settings.budget,
    };
    let mut spoiled = false;
    // The tile candidates, each on every product.
    for (i, config) in list.iter().enumerate() {
        let what = config.to_string();
        if i > 0 && !log.may_start(&what) {
            continue;
        }
        let plan = KernelPlan::uniform(net, *config, Source::Given);
        let outcome = m.products(&plan, best_total(&trials)).map(|ms| {
            let line = format!("{:.3} ms in the products", ms.iter().sum::<f64>());
            trials.push(Trial {
                plan,
                counts: vec![true; ms.len()],
                ms,
            });
            line
        });
        log.report(&what, outcome);
        if ctx.check_errors().is_err() {
            // A spoiled device measures nothing more.
            spoiled = true;
            break;
        }
    }
    if !spoiled {
        let ladder = settings.splits.clone().unwrap_or_else(split_ladder);
        spoiled = split_trials(&m, &mut log, &mut trials, &heuristic, &ladder);
    }
    let fastest = choose(&all, &trials);
    let mut plan = heuristic;
    let mut chosen = BTreeMap::new();
    for (p, (ms, config, _)) in &fastest {
        let source = Source::Tuned;
        plan.set(
            *p,
            Choice {
                config: *config,
                source,
            },
        );
        chosen.insert(*p, (*ms, *config));
    }
    let mut measurements = Vec::new();
    for (j, p) in all.iter().enumerate() {
        let shape = p.shape(net, rows);
        let flop = 2.0 * shape.iter().map(|&v| v as f64).product::<f64>();
        for (t, trial) in trials.iter().enumerate().filter(|(_, t)| t.counts[j]) {
            let config = trial.plan.get(*p).config;
            let ms = trial.ms[j];
            measurements.push(Measurement {
                product: p.label(),
                shape,
                candidate: config.to_string(),
                k_slices: (p.kind == Product::Gradient).then(|| m.slices(&config, p)),
                ms,
                gflops: flop / (ms.max(1e-9) / 1e3) / 1e9,
                chosen: fastest.get(p).is_some_and(|f| f.2 == t),
            });
        }
    }
    let mut steps = Vec::new();
    if settings.simple && !spoiled && !fastest.is_empty() {
        steps = whole_steps(&m, &mut log, &plan);
        if steps.get(1).is_some_and(|s| s.chosen) {
            plan = plan.into_simple(Source::Tuned);
        }
    }
    Ok(TuneReport {
        measurements,
        steps,
        skipped: log.skipped,
        plan,
        timing,
        chosen,
    })
}

/// On each gradient's fastest tiles so far, a trial per count of
/// `ladder` that gives some gradient K slices not measured yet (the
/// derived count included). Returns whether the device was spoiled.
fn split_trials(
    m: &Measurer,
    log: &mut Log,
    trials: &mut Vec<Trial>,
    heuristic: &KernelPlan,
    ladder: &[u32],
) -> bool {
    let all = products(m.net);
    let fastest = choose(&all, trials);
    let mut seen: BTreeMap<ProductId, Vec<u32>> = BTreeMap::new();
    for (p, (_, config, _)) in fastest.iter().filter(|(p, _)| p.kind == Product::Gradient) {
        seen.insert(*p, vec![m.slices(config, p)]);
    }
    for &s in ladder {
        let plan = KernelPlan::from_fn(m.net, |p| {
            let config = fastest.get(&p).map_or(heuristic.get(p).config, |f| f.1);
            Choice {
                config: config.with_splits(Some(s)),
                source: Source::Given,
            }
        });
        let counts: Vec<bool> = all
            .iter()
            .map(|p| {
                let new = m.slices(&plan.get(*p).config, p);
                match seen.get_mut(p) {
                    Some(v) if !v.contains(&new) => {
                        v.push(new);
                        true
                    }
                    _ => false,
                }
            })
            .collect();
        if !counts.contains(&true) {
            continue;
        }
        let what = format!("gradients at :s{s}");
        if !log.may_start(&what) {
            break;
        }
        let outcome = m.products(&plan, best_total(trials)).map(|ms| {
            let gradients = ms.iter().zip(&counts).filter(|(_, &c)| c);
            let ms_in: f64 = gradients.map(|(t, _)| t).sum();
            trials.push(Trial { plan, ms, counts });
            format!("{ms_in:.3} ms in the gradients it splits anew")
        });
        log.report(&what, outcome);
        if m.ctx.check_errors().is_err() {
            return true;
        }
    }
    false
}

/// The whole step of tiled `plan`, then the simple set's, each checked
/// first; the faster marked chosen. Empty unless both ran.
fn whole_steps(m: &Measurer, log: &mut Log, plan: &KernelPlan) -> Vec<Measurement> {
    let flop = crate::bench::flops_per_step(m.net, m.rows);
    let shape = [m.rows, m.net.inputs(), m.net.outputs()];
    let tiled = plan.clone().with_source(Source::Given);
    let simple = KernelPlan::simple_set(m.net, Source::Given);
    let mut steps = Vec::new();
    for candidate in [tiled, simple] {
        let what = format!("whole step, {candidate}");
        if !log.may_start(&what) {
            break;
        }
        let outcome = m.step(&candidate).map(|ms| {
            steps.push(Measurement {
                product: "step".into(),
                shape,
                candidate: candidate.to_string(),
                k_slices: None,
                ms,
                gflops: flop / (ms.max(1e-9) / 1e3) / 1e9,
                chosen: false,
            });
            format!("{ms:.3} ms")
        });
        log.report(&what, outcome);
        if m.ctx.check_errors().is_err() {
            break;
        }
    }
    match steps.as_mut_slice() {
        [tiled, simple] => {
            let faster = if simple.ms < tiled.ms { simple } else { tiled };
            faster.chosen = true;
            steps
        }
        _ => Vec::new(),
    }
}

/// Progress lines, the candidates skipped and the budget of one [`tune`].
struct Log<'p> {
    progress: &'p mut dyn FnMut(&str),
    skipped: Vec<(String, String)>,
    start: Instant,
    budget: Duration,
}

impl Log<'_> {
    /// Whether the budget lets `what` start; a notice where not.
    fn may_start(&mut self, what: &str) -> bool {
        if self.start.elapsed() <= self.budget {
            return true;
        }
        let why = format!("the {:.0} s budget was spent", self.budget.as_secs_f64());
        self.skip(what, why);
        false
    }

    /// `what` measured (a line of its result) or skipped (why).
    fn report(&mut self, what: &str, outcome: Result<String>) {
        match outcome {
            Ok(line) => (self.progress)(&format!("{what}: {line}")),
            Err(e) => self.skip(what, crate::error::one_line(&e.to_string(), 300)),
        }
    }

    fn skip(&mut self, what: &str, why: String) {
        (self.progress)(&format!("{what}: skipped, {why}"));
        self.skipped.push((what.to_string(), why));
    }
}

/// The least total of the products' times over `trials`, if any.
fn best_total(trials: &[Trial]) -> Option<f64> {
    (trials.iter())
        .map(|t| t.ms.iter().sum::<f64>())
        .min_by(f64::total_cmp)
}

/// Per product of `all`, its fastest measurement over `trials`: `(ms,
/// configuration, trial)`; products without one are left out.
fn choose(all: &[ProductId], trials: &[Trial]) -> BTreeMap<ProductId, (f64, KernelConfig, usize)> {
    let mut out = BTreeMap::new();
    for (j, p) in all.iter().enumerate() {
        let best = (trials.iter().enumerate())
            .filter(|(_, t)| t.counts[j])
            .min_by(|a, b| a.1.ms[j].total_cmp(&b.1.ms[j]));
        if let Some((i, t)) = best {
            out.insert(*p, (t.ms[j], t.plan.get(*p).config, i));
        }
    }
    out
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

/// What every measurement shares: the device, the network at the tuned
/// rows, how to time, the CPU's answers and the timed batch.
struct Measurer<'a> {
    ctx: &'a std::sync::Arc<GpuContext>,
    net: &'a Network,
    rows: usize,
    checked: bool,
    timing: Timing,
    reference: Reference,
    /// Inputs and targets of `rows` rows.
    batch: (Vec<f32>, Vec<f32>),
}

/// The learning rate of the timed steps.
const LR: f32 = 1e-3;

impl Measurer<'_> {
    /// The K slices gradient `p` runs with `config` at the tuned rows.
    fn slices(&self, config: &KernelConfig, p: &ProductId) -> u32 {
        let [m, n, k] = p.shape(self.net, self.rows);
        let (device, limits) = (self.ctx.info.device_type, &self.ctx.limits);
        gradient_splits(config, (m as u32, n as u32, k as u32), device, limits)
    }

    /// A backend running `plan` (caught if it panics), checked against the
    /// reference, the timed batch loaded.
    fn checked_backend(&self, plan: &KernelPlan) -> Result<GpuBackend> {
        let build = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let options = GpuOptions {
                checked: self.checked,
                ..GpuOptions::BASE
            }
            .with_plan(plan.clone());
            let mut g = GpuBackend::with_options(self.ctx.clone(), self.net, self.rows, options)?;
            if g.micro_batch() < self.rows {
                return Err(Error::Gpu(format!(
                    "a batch of {} runs as micro-batches of {} here; tune a batch that fits",
                    self.rows,
                    g.micro_batch()
                )));
            }
            let r = &self.reference;
            g.set_params(&r.params)?;
            g.load_batch(&r.x, &r.y)?;
            g.forward()?;
            g.backward()?;
            let out = g.read_activations(self.net.layers().len())?;
            Reference::compare("output", &out, &r.out)?;
            Reference::compare("gradient", &g.read_gradients()?.data, &r.grads)?;
            debug_assert_eq!(out.len(), r.rows * self.net.outputs());
            // A step on the check's rows runs the pipelines the check did
            // not (the fused update): drivers may compile a pipeline at its
            // first dispatch (lavapipe took 100 ms there), which must not be
            // timed.
            g.step(LR)?;
            g.sync()?;
            g.load_batch(&self.batch.0, &self.batch.1)?;
            Ok(g)
        }));
        build.unwrap_or_else(|_| Err(Error::Gpu("the candidate panicked".into())))
    }

    /// `plan` on every product: checked, then timed (once only where that
    /// step's products take over twice `best` ms). Per product of
    /// [`products`], the median ms of its dispatches.
    fn products(&self, plan: &KernelPlan, best: Option<f64>) -> Result<Vec<f64>> {
        let mut g = self.checked_backend(plan)?;
        let in_products = |run: &[(String, f64)]| -> f64 {
            let products = run.iter().filter(|(l, _)| ProductId::of_label(l).is_some());
            products.map(|(_, ms)| ms).sum()
        };
        let mut runs: Vec<Vec<(String, f64)>> = Vec::new();
        for _ in 0..TIMED {
            runs.push(match self.timing {
                Timing::WallClock => g.time_dispatches_by_clock(LR)?,
                _ => g.time_dispatches(LR)?,
            });
            if best.is_some_and(|b| in_products(&runs[0]) > 2.0 * b) {
                break;
            }
        }
        let first = runs.first().cloned().unwrap_or_default();
        let per_label: Vec<(String, f64)> = first
            .into_iter()
            .enumerate()
            .map(|(i, (label, _))| {
                let ms = runs.iter().filter_map(|r| r.get(i).map(|x| x.1)).collect();
                (label, crate::bench::Timing { ms }.median())
            })
            .collect();
        Ok(products(self.net)
            .iter()
            .map(|p| {
                (per_label.iter())
                    .filter(|(label, _)| ProductId::of_label(label) == Some(*p))
                    .map(|(_, t)| t)
                    .sum()
            })
            .collect())
    }

    /// The median ms of `plan`'s whole step (the simple set's, for a simple
    /// plan), checked first: every dispatch's GPU time added up, or by the
    /// wall clock a step until the device has finished it.
    fn step(&self, plan: &KernelPlan) -> Result<f64> {
        let mut g = self.checked_backend(plan)?;
        let mut ms = Vec::with_capacity(TIMED);
        for _ in 0..TIMED {
            ms.push(match self.timing {
                Timing::WallClock => {
                    let start = Instant::now();
                    g.step(LR)?;
                    g.sync()?;
                    start.elapsed().as_secs_f64() * 1e3
                }
                _ => g.time_dispatches(LR)?.iter().map(|(_, t)| t).sum(),
            });
        }
        Ok(crate::bench::Timing { ms }.median())
    }
}
