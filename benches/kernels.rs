//! Criterion benches of the kernels apart from the full step, per backend:
//! `forward/…` is every layer's fused product + bias + sigmoid and the loss;
//! `backward/…` is the output and hidden deltas and the gradients (unfused
//! from the update). On the GPU both the tiled kernels and the simple
//! reference twins run, so their ratio is the tiling's gain on this adapter.
//! Without an adapter the GPU benches print why and are skipped.
//!
//! `SHADERTRAIN_BENCH_WORKLOADS` picks the workloads (default W1).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shadertrain::backend::Backend;
use shadertrain::bench::{gpu_for_benches, random_batch, workloads_from_env, Workload};
use shadertrain::cpu::FastCpuBackend;
use shadertrain::gpu::{GpuBackend, KernelSet};

fn workloads() -> Vec<Workload> {
    workloads_from_env("SHADERTRAIN_BENCH_WORKLOADS", "W1")
}

/// Benches `forward` and `backward` of one backend on one workload.
fn passes(c: &mut Criterion, name: &str, w: &Workload, b: &mut dyn Backend<Scalar = f32>) {
    let net = w.network();
    b.set_params(&net.init(1)).expect("params");
    let (x, y) = random_batch(&net, w.batch, 1).expect("batch fits in memory");
    b.load_batch(&x, &y).expect("batch");
    for pass in ["forward", "backward"] {
        let mut g = c.benchmark_group(format!("{pass}/{name}"));
        g.throughput(Throughput::Elements(w.batch as u64));
        g.sample_size(10);
        g.bench_function(w.name, |bench| {
            bench.iter(|| {
                match pass {
                    "forward" => b.forward().expect("forward"),
                    _ => b.backward().expect("backward"),
                }
                b.sync().expect("sync")
            })
        });
        g.finish();
    }
    b.take_totals().expect("totals");
}

fn cpu(c: &mut Criterion) {
    for w in workloads() {
        let mut b = FastCpuBackend::new(&w.network(), w.batch, 0).expect("cpu backend");
        passes(c, "cpu", &w, &mut b);
    }
}

fn gpu(c: &mut Criterion) {
    let Some(ctx) = gpu_for_benches() else {
        return;
    };
    for w in workloads() {
        for (name, set) in [
            ("gpu_tiled", KernelSet::Tiled),
            ("gpu_simple", KernelSet::Simple),
        ] {
            let mut b = GpuBackend::with_kernel_set(ctx.clone(), &w.network(), w.batch, set)
                .expect("gpu backend");
            passes(c, name, &w, &mut b);
        }
    }
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
