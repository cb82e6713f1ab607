//! Tuning: a kernel configuration per product against the f64 reference,
//! given K slices (`:sN`) against it too, the candidate generator's safety
//! conditions, a recorded plan replayed bitwise, the simple set as a
//! measured choice, the wall-clock timing path, and the tuning cache
//! (written and reused, corrupt, stale, concurrent writers). Every cache lives in a directory of its own, passed
//! through [`GpuOptions::cache_dir`], never through the environment.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::gpu::plan::{products, Choice, KernelPlan, Product, Source};
use shadertrain::gpu::tune::{self, adapter_key, sources_hash, CacheEntry, TuneCache, CACHE_FILE};
use shadertrain::gpu::{Core, GpuBackend, GpuOptions, KernelConfig, TileConfig, TuneMode};
use shadertrain::network::Network;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A fresh directory for one test's cache.
fn cache_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadertrain-tune-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Each product of `net` on the next of several unlike configurations
/// (generated cores of several shapes and K steps, and the loops core).
fn mixed_plan(net: &Network) -> KernelPlan {
    let configs = [
        "gen:8x8:4x4:k8",
        "loops:8x8:4x4:k8",
        "gen:4x16:4x8:k16",
        "gen:8x8:16x16:k8",
        "gen:16x8:8x4:k16",
    ]
    .map(|c| KernelConfig::parse(c).unwrap());
    let mut i = 0;
    KernelPlan::from_fn(net, |_| {
        i += 1;
        Choice {
            config: configs[i % configs.len()],
            source: Source::Given,
        }
    })
}

/// A backend running `plan` exactly.
fn planned(
    ctx: &std::sync::Arc<shadertrain::gpu::GpuContext>,
    net: &Network,
    batch: usize,
    plan: KernelPlan,
) -> GpuBackend {
    let options = GpuOptions::BASE.with_plan(plan);
    GpuBackend::with_options(ctx.clone(), net, batch, options).unwrap()
}

/// The parameters' bits after 4 SGD steps of `g` from `net.init(5)` on a
/// batch of `batch` rows: what a replay must reproduce exactly.
fn trained_bits(g: &mut GpuBackend, net: &Network, batch: usize) -> Vec<u32> {
    let (x, y) = batch_for(net, batch, "replay");
    g.set_params(&net.init(5)).unwrap();
    g.load_batch(&x, &y).unwrap();
    for _ in 0..4 {
        g.step(0.2).unwrap();
    }
    g.params()
        .unwrap()
        .data
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

/// Every product on its own configuration trains as the f64 reference does:
/// odd shapes, batch 1, and a batch deep enough for split K.
#[test]
fn per_product_plan_matches_the_reference() {
    let Some(ctx) = gpu_or_skip("per_product_plan_matches_the_reference") else {
        return;
    };
    for (spec, batch) in [("7,13,5,3", 1), ("7,13,5,3", 37), ("9,1,17,2", 530)] {
        let net = Network::parse(spec).unwrap();
        let plan = mixed_plan(&net);
        assert!(plan.configs().len() > 2, "{plan}");
        let mut g = planned(&ctx, &net, batch, plan.clone());
        assert_eq!(g.kernel_plan(), &plan);
        steps_match_reference(
            &mut g,
            &net,
            batch,
            3,
            0.1,
            &format!("{spec} b{batch} {plan}"),
        );
    }
}

/// The plan a backend reports, parsed back, runs bitwise the same training.
#[test]
fn replayed_plan_trains_bitwise_equal() {
    let Some(ctx) = gpu_or_skip("replayed_plan_trains_bitwise_equal") else {
        return;
    };
    let net = Network::parse("6,11,4").unwrap();
    let batch = 23;
    let mut first = planned(&ctx, &net, batch, mixed_plan(&net));
    let recorded = first
        .kernel_config()
        .expect("a tiled backend records its plan");
    let replay = KernelPlan::parse(&net, &recorded, Source::Given).unwrap();
    assert_eq!(replay, mixed_plan(&net), "{recorded}");
    let mut second = planned(&ctx, &net, batch, replay);
    let (a, b) = (
        trained_bits(&mut first, &net, batch),
        trained_bits(&mut second, &net, batch),
    );
    assert!(a == b, "replaying {recorded} changed the parameters");
}

/// `--tune off` is the heuristic; `cached` with an empty cache too; with
/// entries for this adapter, sources and shape, `cache`; entries under
/// another sources hash are stale and ignored.
#[test]
fn cache_is_read_and_stale_entries_ignored() {
    let Some(ctx) = gpu_or_skip("cache_is_read_and_stale_entries_ignored") else {
        return;
    };
    let net = Network::parse("5,6,3").unwrap();
    let batch = 8;
    let dir = cache_dir("read");
    let options = |tune| GpuOptions {
        tune,
        cache_dir: Some(dir.clone()),
        ..GpuOptions::BASE
    };
    let sources = |tune| -> Vec<Source> {
        let g = GpuBackend::with_options(ctx.clone(), &net, batch, options(tune)).unwrap();
        let plan = g.kernel_plan().clone();
        plan.entries(&net).iter().map(|(_, c)| c.source).collect()
    };
    let n = products(&net).len();
    assert_eq!(sources(TuneMode::Off), vec![Source::Heuristic; n]);
    assert_eq!(sources(TuneMode::Cached), vec![Source::Heuristic; n]);
    let adapter = adapter_key(&ctx.info);
    let entries = |hash: &str| -> BTreeMap<String, CacheEntry> {
        products(&net)
            .into_iter()
            .map(|p| {
                let k = tune::key(&adapter, hash, false, p, p.shape(&net, batch));
                let e = CacheEntry {
                    config: "loops:8x8:4x4:k8".into(),
                    ms: 1.0,
                };
                (k, e)
            })
            .collect()
    };
    // Stale: another sources hash. Written by hand (store drops stale entries).
    let stale = serde_json::json!({"version": 1, "entries": entries("0000000000000000")});
    std::fs::write(dir.join(CACHE_FILE), stale.to_string()).unwrap();
    assert_eq!(TuneCache::load(&dir).len(), n);
    assert_eq!(sources(TuneMode::Cached), vec![Source::Heuristic; n]);
    let mut cache = TuneCache::load(&dir);
    cache.store(entries(sources_hash()), &adapter).unwrap();
    assert_eq!(
        TuneCache::load(&dir).len(),
        n,
        "stale entries dropped on write"
    );
    assert_eq!(sources(TuneMode::Cached), vec![Source::Cache; n]);
    let g = GpuBackend::with_options(ctx.clone(), &net, batch, options(TuneMode::Cached)).unwrap();
    let loops = KernelConfig::loops(TileConfig::SMALL);
    assert_eq!(g.kernel_plan().configs(), vec![loops]);
    // Off ignores the cache.
    assert_eq!(sources(TuneMode::Off), vec![Source::Heuristic; n]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A corrupt or unreadable cache is an empty one (with a notice), never an error.
#[test]
fn corrupt_cache_is_ignored() {
    let dir = cache_dir("corrupt");
    for bad in [
        "{not json",
        "{\"version\": 7, \"entries\": {}}",
        "[1, 2]",
        "",
    ] {
        std::fs::write(dir.join(CACHE_FILE), bad).unwrap();
        let (cache, why) = TuneCache::try_load(&dir).expect_err(bad);
        assert!(cache.is_empty(), "{bad}");
        assert!(!why.contains('\n'), "one line: {why}");
        assert!(TuneCache::load(&dir).is_empty());
    }
    // A directory where the file should be: unreadable, ignored.
    std::fs::remove_file(dir.join(CACHE_FILE)).unwrap();
    std::fs::create_dir(dir.join(CACHE_FILE)).unwrap();
    assert!(TuneCache::try_load(&dir).is_err());
    if let Some(ctx) = gpu_or_skip("corrupt_cache_is_ignored") {
        let options = GpuOptions {
            tune: TuneMode::Cached,
            cache_dir: Some(dir.clone()),
            ..GpuOptions::BASE
        };
        let net = Network::parse("3,4,2").unwrap();
        let g = GpuBackend::with_options(ctx, &net, 4, options).unwrap();
        let plan = g.kernel_plan();
        assert!(plan
            .entries(&net)
            .iter()
            .all(|(_, c)| c.source == Source::Heuristic));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writers racing on one cache never leave a torn file: every read while
/// they run parses, and the file at the end holds the last writer's
/// entries (each write reads, merges and renames a whole file over the old).
#[test]
fn concurrent_writers_never_tear_the_cache() {
    let dir = cache_dir("atomic");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let mut cache = TuneCache::load(&dir);
                    let e = CacheEntry {
                        config: "gen:8x8:4x4:k8".into(),
                        ms: i as f64,
                    };
                    let new = [(format!("writer{w}|entry{i}"), e)].into_iter().collect();
                    cache.store(new, "no-such-adapter").unwrap();
                }
            })
        })
        .collect();
    let mut reads = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        if let Err((_, why)) = TuneCache::try_load(&dir) {
            panic!("a reader saw a torn cache: {why}");
        }
        reads += 1;
    }
    for w in writers {
        w.join().unwrap();
    }
    let last = TuneCache::try_load(&dir).unwrap_or_else(|(_, why)| panic!("{why}"));
    assert!(
        last.len() >= 25,
        "{} entries after {reads} reads",
        last.len()
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != CACHE_FILE)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every candidate the tuner can produce, for every device type and for
/// the default and downlevel limits, passes its safety conditions and fits
/// the limits; its text parses back to it, and a plan of it round-trips.
#[test]
fn every_candidate_passes_the_safety_checks() {
    use wgpu::DeviceType::*;
    let net = Network::parse("4,3,2").unwrap();
    for limits in [wgpu::Limits::default(), wgpu::Limits::downlevel_defaults()] {
        for device in [Cpu, DiscreteGpu, IntegratedGpu, VirtualGpu, Other] {
            let list = tune::candidates(device, &limits);
            assert!(!list.is_empty(), "{device:?}");
            assert_eq!(
                list.iter().any(|c| c.double_buffer),
                device != Cpu,
                "{device:?}: double-buffered candidates on GPUs"
            );
            for c in list {
                c.check(&limits)
                    .unwrap_or_else(|e| panic!("{device:?} {c}: {e}"));
                match c.core {
                    Core::Generated => shadertrain::gpu::codegen::check(&c.tiles).unwrap(),
                    Core::Loops => c.tiles.safety().unwrap(),
                }
                assert_eq!(KernelConfig::parse(&c.to_string()).unwrap(), c);
                let plan = KernelPlan::uniform(&net, c, Source::Given);
                assert_eq!(
                    KernelPlan::parse(&net, &plan.to_string(), Source::Given).unwrap(),
                    plan
                );
            }
        }
    }
    let plan = mixed_plan(&net);
    assert_eq!(
        KernelPlan::parse(&net, &plan.to_string(), Source::Given).unwrap(),
        plan
    );
    for bad in [
        "f0=gen:8x8:4x4:k8",
        "f0=gen:8x8:4x4:k8,f0=gen:8x8:4x4:k8",
        "x9=gen:8x8:4x4:k8",
        "f0=gen:8x8:3x4:k8",
    ] {
        let e = KernelPlan::parse(&net, bad, Source::Given)
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n') && !e.is_empty(), "{bad}: {e}");
    }
}

/// The tuner on a tiny network: every product measured for every
/// candidate that runs, each product's choice the fastest, and a candidate
/// the device refuses (too much workgroup memory) skipped with a one-line
/// reason, never chosen.
#[test]
fn tune_measures_and_chooses_the_fastest() {
    let Some(ctx) = gpu_or_skip("tune_measures_and_chooses_the_fastest") else {
        return;
    };
    let net = Network::parse("6,5,3").unwrap();
    let candidates = ["gen:8x8:4x4:k8", "gen:32x32:16x16:k256", "loops:8x8:4x4:k8"]
        .map(|c| KernelConfig::parse(c).unwrap());
    let settings = tune::TuneSettings {
        candidates: Some(candidates.to_vec()),
        splits: Some(Vec::new()),
        simple: false,
        ..tune::TuneSettings::default()
    };
    let mut lines = Vec::new();
    let report = tune::tune(&ctx, &net, 11, &settings, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    let (config, why) = &report.skipped[0];
    assert_eq!(config, "gen:32x32:16x16:k256");
    assert!(why.contains("workgroup") && !why.contains('\n'), "{why}");
    let n = products(&net).len();
    assert_eq!(report.measurements.len(), 2 * n);
    for (p, choice) in report.plan.entries(&net) {
        assert_eq!(choice.source, Source::Tuned);
        let rows: Vec<_> = report
            .measurements
            .iter()
            .filter(|m| m.product == p.label())
            .collect();
        let best = rows.iter().min_by(|a, b| a.ms.total_cmp(&b.ms)).unwrap();
        assert!(
            best.chosen && best.candidate == choice.config.to_string(),
            "{p:?}: {rows:?}"
        );
        assert!(
            rows.iter().all(|m| m.ms > 0.0 && m.gflops.is_finite()),
            "{rows:?}"
        );
    }
}

/// The heuristic chooses per product: a wide product gets large blocks, a
/// narrow output layer small ones (its padding would cost more than the
/// larger blocks save), on each device type within its limits.
#[test]
fn heuristic_chooses_per_product() {
    use shadertrain::gpu::plan::{heuristic_plan, Product, ProductId};
    let limits = wgpu::Limits::default();
    let net = Network::parse("4096,4096,10").unwrap();
    let plan = heuristic_plan(wgpu::DeviceType::DiscreteGpu, &limits, &net, 4096);
    let at = |kind, layer| plan.get(ProductId { kind, layer }).config;
    assert_eq!(
        at(Product::Forward, 0),
        KernelConfig::generated(TileConfig::DISCRETE),
        "{plan}"
    );
    assert_eq!(
        at(Product::Forward, 1),
        KernelConfig::generated(TileConfig::SMALL),
        "{plan}"
    );
    assert!(plan.configs().len() >= 2, "{plan}");
    for (_, c) in plan.entries(&net) {
        assert_eq!(c.source, Source::Heuristic);
        c.config.check(&limits).unwrap();
    }
    // Batch 1 on a CPU adapter: every product small.
    let tiny = heuristic_plan(wgpu::DeviceType::Cpu, &limits, &net, 1);
    assert_eq!(
        at(Product::Forward, 0),
        KernelConfig::generated(TileConfig::DISCRETE)
    );
    assert_eq!(
        tiny.get(ProductId {
            kind: Product::Forward,
            layer: 0
        })
        .config
        .tiles,
        TileConfig::SMALL,
        "{tiny}"
    );
}

/// Plans whose gradients run given K slices (`:sN`) train as the f64
/// reference does: K = 1 (batch 1), a last slice left empty (40 rows, 5 BK
/// steps in 4 slices of 2), more slices asked than K has BK steps (clamped),
/// K steps of 16, the loops core, per-product counts, and micro-batches
/// (each clamped at its own rows). The slices run are the clamp's.
#[test]
fn split_k_plans_match_the_reference() {
    let Some(ctx) = gpu_or_skip("split_k_plans_match_the_reference") else {
        return;
    };
    let c = |t: &str| KernelConfig::parse(t).unwrap();
    let uniform = |net: &Network, t: &str| KernelPlan::uniform(net, c(t), Source::Given);
    let small = Network::parse("7,13,5,3").unwrap();
    let odd = Network::parse("9,1,17,2").unwrap();
    // Per gradient layer: its own tiles and count; the others on plain tiles.
    let per_layer = KernelPlan::from_fn(&odd, |p| Choice {
        config: match (p.kind, p.layer) {
            (Product::Gradient, 0) => c("gen:4x16:4x8:k16:s3"),
            (Product::Gradient, 1) => c("gen:8x8:4x4:k8:s64"),
            (Product::Gradient, _) => c("loops:8x8:4x4:k8:s2"),
            _ => c("gen:8x8:4x4:k8"),
        },
        source: Source::Given,
    });
    // Network, batch, plan, micro-batch cap, K slices run at the last rows.
    type Case<'a> = (&'a Network, usize, KernelPlan, Option<usize>, Vec<u32>);
    let cases: Vec<Case> = vec![
        (
            &small,
            1,
            uniform(&small, "gen:8x8:4x4:k8:s8"),
            None,
            vec![1; 3],
        ),
        (
            &small,
            40,
            uniform(&small, "gen:8x8:4x4:k8:s4"),
            None,
            vec![4; 3],
        ),
        (
            &small,
            37,
            uniform(&small, "loops:8x8:4x4:k8:s16"),
            None,
            vec![5; 3],
        ),
        (&odd, 530, per_layer, None, vec![3, 64, 2]),
        // Micro-batches of 16, 16 and 5 rows: the last one's single step.
        (
            &small,
            37,
            uniform(&small, "gen:8x8:4x4:k8:s2"),
            Some(16),
            vec![1; 3],
        ),
    ];
    for (net, batch, plan, max_chunk, want) in cases {
        let text = plan.to_string();
        assert!(text.contains(":s"), "{text}");
        assert_eq!(KernelPlan::parse(net, &text, Source::Given).unwrap(), plan);
        let options = GpuOptions {
            max_chunk,
            ..GpuOptions::BASE
        }
        .with_plan(plan);
        let mut g = GpuBackend::with_options(ctx.clone(), net, batch, options).unwrap();
        let label = format!("{} b{batch} {text} chunk {max_chunk:?}", net.describe());
        steps_match_reference(&mut g, net, batch, 3, 0.1, &label);
        assert_eq!(g.gradient_splits(), want.as_slice(), "{label}");
    }
}

/// `:sN` in text: parsed, written back, refused with one line where out of
/// range, repeated or given to a forward or delta product; one
/// configuration for every product puts it on the gradients only. The
/// clamp: K's whole BK steps and the scratch budget, never decreasing with
/// the rows; no `:sN` derives the slices as before.
#[test]
fn split_k_text_and_clamp() {
    use shadertrain::gpu::kernels::{k_splits_to, split_fill};
    use shadertrain::gpu::plan::{gradient_splits, scratch_budget};
    let c = KernelConfig::parse("gen:8x8:4x4:k8:s4").unwrap();
    assert_eq!(c.splits, Some(4));
    assert_eq!(c.to_string(), "gen:8x8:4x4:k8:s4");
    assert_eq!(c.modules(), KernelConfig::parse("gen:8x8:4x4:k8").unwrap());
    for bad in [
        "gen:8x8:4x4:k8:s0",
        "gen:8x8:4x4:k8:s1025",
        "gen:8x8:4x4:k8:s4:s4",
        "gen:8x8:4x4:k8:sx",
        "gen:8x8:4x4:k8:s",
        "gen:8x8:4x4:k8:x4",
        "gen:8x8:4x4:k8:",
        "gen:8x8:4x4:s4",
    ] {
        let e = KernelConfig::parse(bad).unwrap_err().to_string();
        assert!(e.contains(bad) && !e.contains('\n'), "{bad}: {e}");
    }
    let net = Network::parse("4,3,2").unwrap();
    let plan = KernelPlan::parse(&net, "gen:8x8:4x4:k8:s4", Source::Given).unwrap();
    for (p, choice) in plan.entries(&net) {
        let want = (p.kind == Product::Gradient).then_some(4);
        assert_eq!(choice.config.splits, want, "{p:?}");
    }
    assert_eq!(plan.to_string(), "gen:8x8:4x4:k8:s4");
    let mixed = "f0=gen:8x8:4x4:k8,d0=gen:8x8:4x4:k8,g0=gen:8x8:4x4:k8:s2,f1=gen:8x8:4x4:k8,g1=gen:8x8:4x4:k8:s4";
    let plan = KernelPlan::parse(&net, mixed, Source::Given).unwrap();
    assert_eq!(plan.to_string(), mixed);
    for (name, bad) in [
        (
            "f0",
            mixed.replace("f0=gen:8x8:4x4:k8", "f0=gen:8x8:4x4:k8:s2"),
        ),
        (
            "d0",
            mixed.replace("d0=gen:8x8:4x4:k8", "d0=gen:8x8:4x4:k8:s2"),
        ),
    ] {
        let e = KernelPlan::parse(&net, &bad, Source::Given)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("g<layer>") && !e.contains('\n'),
            "{bad}: {e}"
        );
    }
    // The clamp, on default limits.
    let limits = wgpu::Limits::default();
    let cpu = wgpu::DeviceType::Cpu;
    for s in [1, 3, 16, 1024] {
        let config = c.with_splits(Some(s));
        let mut last = 0;
        for rows in 1..300u32 {
            let got = gradient_splits(&config, (5, 7, rows), cpu, &limits);
            assert_eq!(got, s.min(rows.div_ceil(8)), "s{s} at {rows} rows");
            assert!(got >= last, "s{s}: fewer slices at {rows} rows than below");
            last = got;
        }
    }
    // 2048·4096 floats per slice: two fit the 16 Mi-float budget.
    let budget = scratch_budget(&limits);
    assert_eq!(budget, 16 << 20);
    let wide = gradient_splits(&c.with_splits(Some(8)), (2048, 4095, 4096), cpu, &limits);
    assert_eq!(wide, 2);
    // Derived: as before.
    for device in [cpu, wgpu::DeviceType::DiscreteGpu] {
        for (o, i, rows) in [(5, 7, 1), (256, 784, 1024), (10, 256, 60_000)] {
            let derived = c.with_splits(None);
            let want = k_splits_to(o, i, rows, &c.tiles, budget, split_fill(device));
            assert_eq!(
                gradient_splits(&derived, (o, i, rows), device, &limits),
                want
            );
        }
    }
}

/// A recorded plan with K slices replays bitwise, also on a backend of
/// another capacity (the clamp depends on the rows and the device only).
#[test]
fn replayed_split_plan_trains_bitwise_equal() {
    let Some(ctx) = gpu_or_skip("replayed_split_plan_trains_bitwise_equal") else {
        return;
    };
    let net = Network::parse("6,11,4").unwrap();
    let batch = 23;
    let train = |g: &mut GpuBackend| {
        let bits = trained_bits(g, &net, batch);
        (bits, g.gradient_splits().to_vec())
    };
    let plan = KernelPlan::parse(
        &net,
        "f0=gen:8x8:4x4:k8,g0=gen:8x8:4x4:k8:s3,f1=loops:8x8:4x4:k8,d0=gen:8x8:4x4:k8,g1=loops:8x8:4x4:k8:s2",
        Source::Given,
    )
    .unwrap();
    let mut first = planned(&ctx, &net, batch, plan);
    let recorded = first.kernel_config().unwrap();
    let replay = KernelPlan::parse(&net, &recorded, Source::Given).unwrap();
    let mut second = planned(&ctx, &net, 64, replay);
    let ((a, sa), (b, sb)) = (train(&mut first), train(&mut second));
    assert_eq!(sa, vec![3, 2], "{recorded}");
    assert_eq!(sa, sb, "{recorded}");
    assert!(a == b, "replaying {recorded} changed the parameters");
}

/// Product entries and a whole-step entry for `net` at `batch`, as `tune`
/// writes them: every product on `config` (the gradients in one K slice),
/// the step on `set`.
fn cache_entries(
    ctx: &shadertrain::gpu::GpuContext,
    net: &Network,
    batch: usize,
    config: &str,
    set: &str,
) -> BTreeMap<String, CacheEntry> {
    let adapter = adapter_key(&ctx.info);
    let entry = |config: String| CacheEntry { config, ms: 1.0 };
    let mut out: BTreeMap<String, CacheEntry> = products(net)
        .into_iter()
        .map(|p| {
            let k = tune::key(&adapter, sources_hash(), false, p, p.shape(net, batch));
            let c = match p.kind {
                Product::Gradient => format!("{config}:s1"),
                _ => config.to_string(),
            };
            (k, entry(c))
        })
        .collect();
    let k = tune::step_key(&adapter, sources_hash(), false, net, batch);
    out.insert(k, entry(set.to_string()));
    out
}

/// A cache whose whole-step entry chose the simple set builds it (`simple`,
/// from `cache`), which trains as the f64 reference does; where the batch
/// runs as micro-batches, which the simple set cannot, the cached tiled
/// choices run instead, as they do where the caller asks for the tiled set.
/// `simple` replays bitwise, and given for a batch that needs micro-batches
/// it is refused in one line.
#[test]
fn simple_set_from_the_cache_runs_and_replays() {
    use shadertrain::gpu::KernelSet;
    let Some(ctx) = gpu_or_skip("simple_set_from_the_cache_runs_and_replays") else {
        return;
    };
    let net = Network::parse("5,6,3").unwrap();
    let batch = 8;
    let dir = cache_dir("simple");
    let adapter = adapter_key(&ctx.info);
    let mut cache = TuneCache::load(&dir);
    // At the batch, and at the micro-batch of 3 rows below.
    let mut entries = cache_entries(&ctx, &net, batch, "gen:8x8:4x4:k8", "simple");
    entries.extend(cache_entries(&ctx, &net, 3, "gen:8x8:4x4:k8", "simple"));
    cache.store(entries, &adapter).unwrap();
    let options = |max_chunk| GpuOptions {
        tune: TuneMode::Cached,
        cache_dir: Some(dir.clone()),
        max_chunk,
        ..GpuOptions::BASE
    };
    let mut g = GpuBackend::with_options(ctx.clone(), &net, batch, options(None)).unwrap();
    assert_eq!(g.kernel_set(), KernelSet::Simple);
    assert_eq!(g.kernel_plan().simple(), Some(Source::Cache));
    assert_eq!(g.kernel_config().as_deref(), Some("simple"));
    steps_match_reference(&mut g, &net, batch, 3, 0.1, "simple from the cache");
    // Where the whole-step kernel runs (a tiny net), its one dispatch wins
    // over the cached simple set, which it cannot run beside.
    let whole = GpuOptions {
        whole_step: true,
        ..options(None)
    };
    let g = GpuBackend::with_options(ctx.clone(), &net, batch, whole).unwrap();
    assert_eq!(g.kernel_set(), KernelSet::Tiled);
    assert!(shadertrain::Backend::kernels(&g).is_some_and(|k| k.whole_step));
    // Micro-batches of 3 rows: the tiled choices cached for 3 rows.
    let g = GpuBackend::with_options(ctx.clone(), &net, batch, options(Some(3))).unwrap();
    assert_eq!(g.kernel_set(), KernelSet::Tiled);
    let plan = g.kernel_plan();
    assert_eq!(plan.simple(), None);
    assert!(plan
        .entries(&net)
        .iter()
        .all(|(p, c)| c.source == Source::Cache
            && c.config.to_string()
                == if p.kind == Product::Gradient {
                    "gen:8x8:4x4:k8:s1"
                } else {
                    "gen:8x8:4x4:k8"
                }));
    // Off ignores the cache.
    let off = GpuOptions {
        tune: TuneMode::Off,
        ..options(None)
    };
    let g = GpuBackend::with_options(ctx.clone(), &net, batch, off).unwrap();
    assert_eq!(g.kernel_set(), KernelSet::Tiled);
    // Asked for the tiled set: the cached products, not the cached set.
    let tiled = GpuOptions {
        tune_kernel_set: false,
        ..options(None)
    };
    let g = GpuBackend::with_options(ctx.clone(), &net, batch, tiled).unwrap();
    assert_eq!(g.kernel_set(), KernelSet::Tiled);
    let sources = g.kernel_plan().entries(&net);
    assert!(sources.iter().all(|(_, c)| c.source == Source::Cache));
    // Replayed: the same training, bit for bit.
    let mut first = GpuBackend::with_options(ctx.clone(), &net, batch, options(None)).unwrap();
    let replay = KernelPlan::parse(&net, "simple", Source::Given).unwrap();
    assert_eq!(replay.to_string(), "simple");
    let mut second = planned(&ctx, &net, batch, replay.clone());
    assert_eq!(second.kernel_set(), KernelSet::Simple);
    let (a, b) = (
        trained_bits(&mut first, &net, batch),
        trained_bits(&mut second, &net, batch),
    );
    assert!(a == b, "replaying `simple` changed the parameters");
    let given = GpuOptions {
        max_chunk: Some(3),
        ..GpuOptions::BASE
    }
    .with_plan(replay);
    let e = GpuBackend::with_options(ctx.clone(), &net, batch, given)
        .err()
        .expect("the simple set runs no micro-batches")
        .to_string();
    assert!(e.contains("micro-batches") && !e.contains('\n'), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tuner timed by the wall clock, end to end: tiles, split counts
/// (a count that clamps to one measured is not run again) and the simple
/// set's whole step against the tiled plan's; each product and the network
/// choose the fastest; the report says the wall clock; the choices cached
/// are what a backend then builds.
#[test]
fn wall_clock_tuning_measures_chooses_and_caches() {
    use shadertrain::gpu::KernelSet;
    let Some(ctx) = gpu_or_skip("wall_clock_tuning_measures_chooses_and_caches") else {
        return;
    };
    let net = Network::parse("6,5,3").unwrap();
    let rows = 11;
    let settings = tune::TuneSettings {
        candidates: Some(vec![KernelConfig::parse("gen:8x8:4x4:k8").unwrap()]),
        // 11 rows are 2 BK steps: s2 and s4 both run 2 slices.
        splits: Some(vec![2, 4]),
        simple: true,
        timing: tune::Timing::WallClock,
        ..tune::TuneSettings::default()
    };
    let mut lines = Vec::new();
    let report = tune::tune(&ctx, &net, rows, &settings, &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    assert_eq!(report.timing, tune::Timing::WallClock);
    // The tiles, s2, the two whole steps.
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    for p in products(&net) {
        let rows: Vec<_> = (report.measurements.iter())
            .filter(|m| m.product == p.label())
            .collect();
        let n = if p.kind == Product::Gradient { 2 } else { 1 };
        assert_eq!(rows.len(), n, "{p:?}: {rows:?}");
        assert!(rows.iter().all(|m| m.ms > 0.0), "{rows:?}");
        let best = rows.iter().min_by(|a, b| a.ms.total_cmp(&b.ms)).unwrap();
        assert!(best.chosen, "{rows:?}");
        assert_eq!(best.candidate, report.plan.get(p).config.to_string());
        let slices = rows.iter().map(|m| m.k_slices);
        let want: Vec<_> = match p.kind {
            // Derived (one slice at 11 rows), then s2.
            Product::Gradient => vec![Some(1), Some(2)],
            _ => vec![None],
        };
        assert_eq!(slices.collect::<Vec<_>>(), want, "{rows:?}");
    }
    let [tiled, simple] = report.steps.as_slice() else {
        panic!("{:?}", report.steps);
    };
    assert_eq!(simple.candidate, "simple");
    assert!(tiled.ms > 0.0 && simple.ms > 0.0);
    assert_eq!(simple.chosen, simple.ms < tiled.ms);
    assert_eq!(tiled.chosen, !simple.chosen);
    assert_eq!(report.plan.simple().is_some(), simple.chosen);
    // Cached, then built as chosen.
    let dir = cache_dir("wall");
    let mut cache = TuneCache::load(&dir);
    (report.store(&mut cache, &net, rows, &adapter_key(&ctx.info), false)).unwrap();
    let options = GpuOptions {
        tune: TuneMode::Cached,
        cache_dir: Some(dir.clone()),
        ..GpuOptions::BASE
    };
    let g = GpuBackend::with_options(ctx.clone(), &net, rows, options).unwrap();
    let want = if simple.chosen {
        KernelSet::Simple
    } else {
        KernelSet::Tiled
    };
    assert_eq!(g.kernel_set(), want);
    let cached = report.plan.clone().with_source(Source::Cache);
    assert_eq!(g.kernel_plan(), &cached);
    // GPU timestamps only where the adapter has them.
    let has = (ctx.device.features()).contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(tune::Timing::Timestamps.on(&ctx).is_ok(), has);
    let auto = tune::Timing::Auto.on(&ctx).unwrap();
    assert_eq!(auto == tune::Timing::Timestamps, has);
    let _ = std::fs::remove_dir_all(&dir);
}
