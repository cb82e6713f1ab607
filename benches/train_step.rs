//! Criterion benches of one full training step (forward, backward, update),
//! per backend: `cpu_*` and `gpu_*`. The GPU step waits for the device inside
//! the timed region (a read of the loss totals), so it measures real work.
//! GPU benches skip with a printed reason where there is no adapter.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shadertrain::backend::Backend;
use shadertrain::cpu::CpuBackend;
use shadertrain::gpu::{GpuBackend, GpuContext};
use shadertrain::network::Network;

/// (name, layers, batch): W0 and W1 of the benchmark suite, and a small net.
const WORKLOADS: &[(&str, &str, usize)] = &[
    ("W0_2-2-2_b1", "2,2,2", 1),
    ("small_64-128-10_b256", "64,128,10", 256),
    ("W1_784-256-256-10_b1024", "784,256,256,10", 1024),
];

fn data(net: &Network, batch: usize) -> (Vec<f32>, Vec<f32>) {
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let x = (0..batch * net.inputs())
        .map(|_| r.random_range(0.01..1.0))
        .collect();
    let y = (0..batch * net.outputs())
        .map(|_| r.random_range(0.01..1.0))
        .collect();
    (x, y)
}

fn bench_backend<B: Backend<Scalar = f32>>(
    c: &mut Criterion,
    prefix: &str,
    mut make: impl FnMut(&Network, usize) -> B,
) {
    for &(name, layers, batch) in WORKLOADS {
        let net = Network::parse(layers).expect("workload layers");
        let mut b = make(&net, batch);
        b.set_params(&net.init(1)).expect("params");
        let (x, y) = data(&net, batch);
        b.load_batch(&x, &y).expect("batch");
        let mut g = c.benchmark_group(format!("{prefix}_train_step"));
        g.throughput(Throughput::Elements(batch as u64));
        if batch >= 1024 {
            g.sample_size(10);
        }
        g.bench_function(name, |bench| {
            bench.iter(|| {
                b.step(0.5).expect("step");
                // Waits for the GPU; a no-op read on the CPU.
                b.take_totals().expect("totals")
            })
        });
        g.finish();
    }
}

fn cpu(c: &mut Criterion) {
    bench_backend(c, "cpu", |net, batch| {
        CpuBackend::<f32>::new(net, batch).expect("cpu backend")
    });
}

fn gpu(c: &mut Criterion) {
    let ctx = match GpuContext::new() {
        Ok(ctx) => ctx,
        Err(e) => {
            eprintln!("skipping gpu benches: {e}");
            return;
        }
    };
    eprintln!("gpu benches on {}", ctx.describe());
    bench_backend(c, "gpu", |net, batch| {
        GpuBackend::new(ctx.clone(), net, batch).expect("gpu backend")
    });
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
