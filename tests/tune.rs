//! Tuning: a kernel configuration per product against the f64 reference,
//! the candidate generator's safety conditions, a recorded plan replayed
//! bitwise, and the tuning cache (written and reused, corrupt, stale,
//! concurrent writers). Every cache lives in a directory of its own, passed
//! through [`GpuOptions::cache_dir`], never through the environment.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::gpu::plan::{products, Choice, KernelPlan, Source};
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
        assert_eq!(g.kernel_plan(), Some(&plan));
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
    let (x, y) = batch_for(&net, batch, "replay");
    let train = |g: &mut GpuBackend| {
        g.set_params(&net.init(5)).unwrap();
        g.load_batch(&x, &y).unwrap();
        for _ in 0..4 {
            g.step(0.2).unwrap();
        }
        g.params().unwrap().data
    };
    let mut first = planned(&ctx, &net, batch, mixed_plan(&net));
    let recorded = first
        .kernel_config()
        .expect("a tiled backend records its plan");
    let replay = KernelPlan::parse(&net, &recorded, Source::Given).unwrap();
    assert_eq!(replay, mixed_plan(&net), "{recorded}");
    let mut second = planned(&ctx, &net, batch, replay);
    let (a, b) = (train(&mut first), train(&mut second));
    let same = a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits());
    assert!(same, "replaying {recorded} changed the parameters");
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
        let plan = g.kernel_plan().unwrap().clone();
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
    assert_eq!(g.kernel_plan().unwrap().configs(), vec![loops]);
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
        let plan = g.kernel_plan().unwrap();
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
        checked: false,
        budget: std::time::Duration::from_secs(60),
        candidates: Some(candidates.to_vec()),
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
