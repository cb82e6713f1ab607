//! Leak soak: thousands of training steps on the CPU backend and on the GPU
//! backend keep the process's resident memory flat and, on the GPU, wgpu's
//! count of live objects and memory unchanged.
//!
//! The GPU runs twice: with the kernels `GpuBackend::new` picks (on lavapipe
//! the simple ones) and with the tiled kernels and fused update that a real
//! GPU gets. Each run trains a small network (4-16-3, batches of 8, four batches in
//! turn, the totals read every 100 steps as the training loop does), warms
//! up, then measures `VmRSS` (`/proc/self/status`) and wgpu's internal
//! counters (`Device::get_internal_counters`, live with the `counters`
//! feature that the dev-dependency on wgpu turns on) before and after
//! `SOAK_STEPS` more steps (default 20,000), and prints both. The bound on
//! resident memory is 4 MiB over the run, about 200 bytes a step at 20,000:
//! a wgpu object leaked per step costs more than that (its host bookkeeping
//! alone), while allocator and driver noise after warm-up stays well under
//! it (BENCHMARKS.md records the figures). The GPU counters must not move,
//! but for wgpu's pool of command encoders, which must stay small.
//! The two tests run one at a time: resident memory is the whole process's.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::cpu::CpuBackend;
use shadertrain::gpu::{GpuBackend, GpuContext, KernelSet};
use shadertrain::network::Network;
use std::sync::Mutex;
use std::time::Instant;

/// Steps measured after warm-up: `SOAK_STEPS`, default 20,000.
fn soak_steps() -> usize {
    std::env::var("SOAK_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

/// Steps before the first measurement: pools, caches and thread stacks
/// reach their steady size.
const WARM_UP: usize = 2_000;

/// Largest growth of resident memory allowed over the measured steps.
const RSS_BOUND_KIB: i64 = 4 * 1024;

/// One soak at a time: resident memory is the process's.
static SERIAL: Mutex<()> = Mutex::new(());

/// `VmRSS` of this process, KiB.
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One batch: `x (8, 4)`, `y (8, 3)`.
type Batch = (Vec<f32>, Vec<f32>);

/// Counter names and values.
type Counters = Vec<(&'static str, isize)>;

/// The network, and four batches to take in turn.
fn workload() -> (Network, Vec<Batch>) {
    let net = Network::parse("4,16,3").unwrap();
    let batches = (0..4)
        .map(|i| batch_for(&net, 8, &format!("soak batch {i}")))
        .collect();
    (net, batches)
}

/// `n` training steps, starting at step `from`; the totals read every 100.
fn train<B: Backend<Scalar = f32>>(b: &mut B, batches: &[Batch], from: usize, n: usize) {
    for i in from..from + n {
        let (x, y) = &batches[i % batches.len()];
        b.load_batch(x, y).unwrap();
        b.step(0.1).unwrap();
        if i % 100 == 99 {
            let loss = b.take_totals().unwrap().loss();
            assert!(loss.is_finite(), "step {i}: loss {loss}");
        }
    }
    b.sync().unwrap();
}

/// wgpu-hal's counters for `ctx`'s device, by name (all zero without the
/// `counters` feature, or where a backend does not keep one).
fn counters(ctx: &GpuContext) -> Counters {
    let c = ctx.device.get_internal_counters().hal;
    vec![
        ("buffers", c.buffers.read()),
        ("bind_groups", c.bind_groups.read()),
        ("bind_group_layouts", c.bind_group_layouts.read()),
        ("compute_pipelines", c.compute_pipelines.read()),
        ("pipeline_layouts", c.pipeline_layouts.read()),
        ("shader_modules", c.shader_modules.read()),
        ("command_encoders", c.command_encoders.read()),
        ("query_sets", c.query_sets.read()),
        ("fences", c.fences.read()),
        ("textures", c.textures.read()),
        ("buffer_memory", c.buffer_memory.read()),
        ("memory_allocations", c.memory_allocations.read()),
    ]
}

fn show(c: &[(&str, isize)]) -> String {
    c.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The counters that must not move at all: all but wgpu-core's pool of
/// command encoders (see [`gpu_soak`]).
fn fixed(c: &Counters) -> Counters {
    c.iter()
        .filter(|(k, _)| *k != "command_encoders")
        .copied()
        .collect()
}

/// Warm up, measure, soak, measure; prints the figures and checks the RSS bound.
fn soak<B: Backend<Scalar = f32>>(
    name: &str,
    b: &mut B,
    batches: &[Batch],
    mut probe: impl FnMut() -> Counters,
) -> (Counters, Counters) {
    let steps = soak_steps();
    train(b, batches, 0, WARM_UP);
    let (rss0, c0) = (rss_kib(), probe());
    let t = Instant::now();
    train(b, batches, WARM_UP, steps);
    let secs = t.elapsed().as_secs_f64();
    let (rss1, c1) = (rss_kib(), probe());
    eprintln!(
        "{name} soak: {steps} steps of 4-16-3, batch 8, after {WARM_UP} warm-up, in {secs:.1} s ({:.1} µs/step); VmRSS {rss0} → {rss1} KiB ({:+} KiB)",
        secs * 1e6 / steps as f64,
        rss1 - rss0
    );
    if !c0.is_empty() {
        eprintln!("{name} counters start: {}", show(&c0));
        eprintln!("{name} counters end:   {}", show(&c1));
    }
    assert!(
        rss1 - rss0 < RSS_BOUND_KIB,
        "{name}: resident memory grew {} KiB over {steps} steps (bound {RSS_BOUND_KIB} KiB)",
        rss1 - rss0
    );
    (c0, c1)
}

#[test]
fn cpu_memory_stays_flat() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (net, batches) = workload();
    // The fast backend is what `--backend cpu` trains with; the reference
    // twins too.
    let mut fast = fast_cpu(&net, 8, 0);
    fast.set_params(&net.init(5)).unwrap();
    soak("cpu (fast)", &mut fast, &batches, Vec::new);
    let mut reference = CpuBackend::<f32>::new(&net, 8).unwrap();
    reference.set_params(&net.init(5)).unwrap();
    soak("cpu (reference)", &mut reference, &batches, Vec::new);
}

/// The GPU soak with the kernels [`GpuBackend::new`] picks for the adapter
/// (lavapipe: the simple ones at this batch) or with `kernels`.
fn gpu_soak(test: &str, kernels: Option<KernelSet>) {
    // Before the device opens: loading the driver moves resident memory.
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = gpu_or_skip(test) else {
        return;
    };
    let (net, batches) = workload();
    let mut gpu = match kernels {
        None => GpuBackend::new(ctx.clone(), &net, 8),
        Some(k) => GpuBackend::with_kernel_set(ctx.clone(), &net, 8, k),
    }
    .unwrap();
    gpu.set_params(&net.init(5)).unwrap();
    let name = format!("gpu ({:?} kernels)", gpu.kernel_set());
    eprintln!("{name}: {}", gpu.describe());
    let (c0, c1) = soak(&name, &mut gpu, &batches, || counters(&ctx));
    // wgpu-core keeps finished command encoders in a pool for reuse, which
    // grows to the most ever in flight at once (a few: MAX_IN_FLIGHT steps,
    // a read-back, queue writes), so it may move between runs; one leaked
    // per step would be thousands. Everything else must not move at all.
    let pool = |c: &Counters| {
        c.iter()
            .find(|(k, _)| *k == "command_encoders")
            .map_or(0, |c| c.1)
    };
    assert!(pool(&c1) <= 16, "command encoders: {}", show(&c1));
    assert_eq!(
        show(&fixed(&c0)),
        show(&fixed(&c1)),
        "wgpu's live objects and memory changed over the soak"
    );
    let live = c0.iter().find(|(k, _)| *k == "buffers").map_or(0, |c| c.1);
    assert!(
        live > 0,
        "wgpu's counters read zero: is wgpu's `counters` feature on for the tests?"
    );
}

#[test]
fn gpu_memory_and_resources_stay_flat() {
    gpu_soak("gpu_memory_and_resources_stay_flat", None);
}

/// The tiled kernels with the SGD update fused into the gradient pass: what
/// a real GPU runs.
#[test]
fn gpu_tiled_memory_and_resources_stay_flat() {
    gpu_soak(
        "gpu_tiled_memory_and_resources_stay_flat",
        Some(KernelSet::Tiled),
    );
}

/// The training loop itself (`train::train`: shuffles, batch staging, totals
/// per epoch) with `nan_check`, so every step also reads the running loss
/// back: 20,000 steps as 2,000 epochs of 10 batches, on the fast CPU backend
/// and on the GPU, with the same bounds.
#[test]
fn training_loop_with_nan_check_stays_flat() {
    use shadertrain::data::{Dataset, Task};
    use shadertrain::train::{train, TrainConfig};
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let net = Network::parse("4,16,3").unwrap();
    let (x, y) = batch_for(&net, 80, "soak loop data");
    let data = Dataset::from_vecs("soak", (4, 3), x, y, Task::Regression).unwrap();
    let steps_per_epoch = 10;
    let cfg = |epochs: usize| TrainConfig {
        epochs,
        batch: 8,
        lr: 0.1,
        seed: 5,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: true,
    };
    let epochs = soak_steps().div_ceil(steps_per_epoch);
    let run = |name: &str, b: &mut dyn Backend<Scalar = f32>, probe: &dyn Fn() -> Counters| {
        b.set_params(&net.init(5)).unwrap();
        train(b, &data, &cfg(WARM_UP / steps_per_epoch), |_| {}).unwrap();
        let (rss0, c0) = (rss_kib(), probe());
        let t = Instant::now();
        train(b, &data, &cfg(epochs), |_| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let (rss1, c1) = (rss_kib(), probe());
        let steps = epochs * steps_per_epoch;
        eprintln!(
            "{name} training-loop soak: {steps} steps with --nan-check in {secs:.1} s ({:.1} µs/step); VmRSS {rss0} → {rss1} KiB ({:+} KiB)",
            secs * 1e6 / steps as f64,
            rss1 - rss0
        );
        assert!(
            rss1 - rss0 < RSS_BOUND_KIB,
            "{name}: VmRSS grew {} KiB",
            rss1 - rss0
        );
        if !c0.is_empty() {
            eprintln!("{name} counters start: {}", show(&c0));
            eprintln!("{name} counters end:   {}", show(&c1));
            assert_eq!(
                show(&fixed(&c0)),
                show(&fixed(&c1)),
                "{name}: wgpu counters moved"
            );
        }
    };
    run("cpu (fast)", &mut fast_cpu(&net, 8, 0), &Vec::new);
    if let Some(ctx) = gpu_or_skip("training_loop_with_nan_check_stays_flat") {
        let mut gpu = GpuBackend::new(ctx.clone(), &net, 8).unwrap();
        run("gpu", &mut gpu, &|| counters(&ctx));
    }
}
