//! Criterion benches of one full training step (forward, backward, update)
//! per backend and per workload: `train_step/{cpu,gpu}/W0..W3`. The GPU step
//! waits for the device inside the timed region ([`Backend::sync`]), so it
//! measures the work, not its recording. Without an adapter the GPU benches
//! print why and are skipped.
//!
//! `SHADERTRAIN_BENCH_WORKLOADS=W0,W1,W2,W3` picks the workloads (default
//! W0,W1,W2: a W3 step is seconds on a 2-core CPU).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadertrain::backend::Backend;
use shadertrain::bench::{gpu_for_benches, random_batch, workloads_from_env, Workload};
use shadertrain::cpu::FastCpuBackend;
use shadertrain::gpu::GpuBackend;
use shadertrain::network::Network;

/// The workloads to run, from the environment.
fn workloads() -> Vec<Workload> {
    workloads_from_env("SHADERTRAIN_BENCH_WORKLOADS", "W0,W1,W2")
}

fn bench_backend<B: Backend<Scalar = f32>>(
    c: &mut Criterion,
    prefix: &str,
    mut make: impl FnMut(&Network, usize) -> B,
) {
    let mut g = c.benchmark_group(format!("train_step/{prefix}"));
    for w in workloads() {
        let net = w.network();
        let mut b = make(&net, w.batch);
        b.set_params(&net.init(1)).expect("params");
        let (x, y) = random_batch(&net, w.batch, 1).expect("batch fits in memory");
        b.load_batch(&x, &y).expect("batch");
        g.throughput(Throughput::Elements(w.batch as u64));
        g.sample_size(if w.batch >= 1024 { 10 } else { 100 });
        g.bench_function(w.name, |bench| {
            bench.iter(|| {
                b.step(0.5).expect("step");
                b.sync().expect("sync")
            })
        });
        // Loss totals grow with every step; keep them bounded.
        b.take_totals().expect("totals");
    }
    g.finish();
}

fn cpu(c: &mut Criterion) {
    bench_backend(c, "cpu", |net, batch| {
        FastCpuBackend::new(net, batch, 0).expect("cpu backend")
    });
}

fn gpu(c: &mut Criterion) {
    let Some(ctx) = gpu_for_benches() else {
        return;
    };
    bench_backend(c, "gpu", |net, batch| {
        GpuBackend::new(ctx.clone(), net, batch).expect("gpu backend")
    });
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
