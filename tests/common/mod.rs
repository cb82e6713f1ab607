//! Shared test helpers: the GPU (or a printed reason to skip), random data,
//! and an `abs + rel·|ref|` comparison that says where and by how much.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shadertrain::backend::{Backend, Metric};
use shadertrain::checkpoint::{Checkpoint, DataFingerprint, OptimizerState, TrainState};
use shadertrain::cpu::{self, CpuBackend, FastCpuBackend};
use shadertrain::data::{Dataset, Standardizer, Task};
use shadertrain::gpu::{Acc, GpuBackend, GpuContext};
use shadertrain::network::{Activation, Loss, Network, Params};
use shadertrain::optim::Optimizer;
use shadertrain::train::{EpochStats, Schedule};
use std::sync::{Arc, OnceLock};

mod device_macro;
pub mod npy_file;
pub mod safetensors_header;
#[allow(unused_imports)]
pub(crate) use device_macro::test_device;

/// The default activation and loss, for kernels checked in their sigmoid form.
pub const SIG: Activation = Activation::Sigmoid;
/// See [`SIG`].
pub const MSE: Loss = Loss::Mse;

/// Every activation a hidden layer may have.
pub const HIDDEN: [Activation; 4] = [
    Activation::Sigmoid,
    Activation::Relu,
    Activation::Tanh,
    Activation::Linear,
];

/// Every activation an output layer may have, with its loss.
pub const OUTPUTS: [(Activation, Loss); 5] = [
    (Activation::Sigmoid, Loss::Mse),
    (Activation::Relu, Loss::Mse),
    (Activation::Tanh, Loss::Mse),
    (Activation::Linear, Loss::Mse),
    (Activation::Softmax, Loss::CrossEntropy),
];

/// What a layer with `act` outputs for random logits in (-2, 2), `(batch, n)`:
/// the `A` a backward kernel reads (relu's zeros, softmax's rows included).
pub fn activated(g: &mut ChaCha8Rng, act: Activation, batch: usize, n: usize) -> Vec<f32> {
    let mut a: Vec<f64> = random(g, batch * n, -2.0, 2.0)
        .iter()
        .map(|&z| cpu::activate(act, z as f64))
        .collect();
    if act == Activation::Softmax {
        cpu::softmax_forward(&mut a, batch, n);
    }
    a.iter().map(|&v| v as f32).collect()
}

/// The GPU for this test binary, or `None` with a printed reason. With
/// `REQUIRE_GPU=1` a missing adapter fails the test instead.
pub fn gpu_or_skip(test: &str) -> Option<Arc<GpuContext>> {
    static CTX: OnceLock<Result<Arc<GpuContext>, String>> = OnceLock::new();
    // SAFETY of the env var: set before any thread reads it (Mesa is noisy without it).
    let ctx = CTX.get_or_init(|| GpuContext::new().map_err(|e| e.to_string()));
    match ctx {
        Ok(c) => Some(c.clone()),
        Err(e) => {
            if std::env::var("REQUIRE_GPU").as_deref() == Ok("1") {
                panic!("{test}: REQUIRE_GPU=1 but {e}");
            }
            eprintln!("skipped {test}: {e} (set REQUIRE_GPU=1 to fail instead)");
            None
        }
    }
}

/// Where a check of [`test_device!`] runs.
pub enum Device {
    Cpu,
    Gpu(Arc<GpuContext>),
}

impl Device {
    /// The GPU, or `None` with a printed reason (see [`gpu_or_skip`]).
    pub fn gpu(test: &str) -> Option<Device> {
        gpu_or_skip(test).map(Device::Gpu)
    }

    /// `"cpu"` or `"gpu"`, for labels.
    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu(_) => "gpu",
        }
    }

    /// An f32 backend for `net` with room for `batch` samples: the fast CPU
    /// backend (2 threads), or the GPU's with its default options.
    pub fn backend(&self, net: &Network, batch: usize) -> Box<dyn Backend<Scalar = f32>> {
        match self {
            Device::Cpu => Box::new(fast_cpu(net, batch, 2)),
            Device::Gpu(ctx) => Box::new(GpuBackend::new(ctx.clone(), net, batch).unwrap()),
        }
    }
}

/// The fast f32 CPU backend's type.
pub type FastCpu = FastCpuBackend;

/// The fast f32 CPU backend for `net` with room for `capacity` samples on
/// `threads` threads (0: all cores). Every test makes it here, and only here.
pub fn fast_cpu(net: &Network, capacity: usize, threads: usize) -> FastCpu {
    fast_cpu_result(net, capacity, threads).unwrap()
}

/// [`fast_cpu`] for tests of its refusals.
pub fn fast_cpu_result(
    net: &Network,
    capacity: usize,
    threads: usize,
) -> shadertrain::Result<FastCpu> {
    FastCpuBackend::new(net, capacity, threads)
}

/// `steps` SGD steps at `lr` on one batch of `net`'s random data, on `b` and
/// on the f64 reference from the same start: each step's sample count and
/// loss, and the parameters after, agree.
pub fn steps_match_reference<B: Backend<Scalar = f32> + ?Sized>(
    b: &mut B,
    net: &Network,
    batch: usize,
    steps: usize,
    lr: f32,
    label: &str,
) {
    let (x, y) = batch_for(net, batch, label);
    let init: Params<f32> = net.init(3);
    let mut cpu = CpuBackend::<f64>::new(net, batch).unwrap();
    cpu.set_params(&init.cast()).unwrap();
    b.set_params(&init).unwrap();
    cpu.load_batch(&f64s(&x), &f64s(&y)).unwrap();
    b.load_batch(&x, &y).unwrap();
    for step in 0..steps {
        b.step(lr).unwrap();
        cpu.step(lr).unwrap();
        let (lg, lc) = (b.take_totals().unwrap(), cpu.take_totals().unwrap());
        assert_eq!(lg.samples, batch as u64, "{label} step {step} samples");
        let what = format!("{label} step {step} loss");
        assert_close(&what, &[lg.loss() as f32], &[lc.loss()], 1e-6, 1e-4);
    }
    let what = format!("{label} params after {steps} steps");
    let (pg, pc) = (b.params().unwrap(), cpu.params().unwrap());
    assert_close(&what, &pg.data, &pc.data, 1e-5, 1e-4);
}

/// A GPU backend with `options` and the f64 reference for `net` with room
/// for `batch` rows, both holding `net.init(seed)`.
pub fn gpu_and_reference(
    ctx: &Arc<GpuContext>,
    net: &Network,
    batch: usize,
    options: shadertrain::gpu::GpuOptions,
    seed: u64,
) -> (GpuBackend, CpuBackend<f64>) {
    let mut gpu = GpuBackend::with_options(ctx.clone(), net, batch, options).unwrap();
    let mut cpu = CpuBackend::<f64>::new(net, batch).unwrap();
    let init: Params<f32> = net.init(seed);
    gpu.set_params(&init).unwrap();
    cpu.set_params(&init.cast()).unwrap();
    (gpu, cpu)
}

/// A hand-built checkpoint of `spec` trained with `opt`: two epochs of
/// history whose values need all 17 digits, optimiser moments of the right
/// length, and (with `norm`) a standardiser of uneven means and spreads.
pub fn sample_checkpoint(spec: &str, opt: Optimizer, norm: bool) -> Checkpoint {
    let net = Network::parse(spec).unwrap();
    let n = net.inputs();
    let cycle = |v: &[f32]| (0..n).map(|i| v[i % v.len()]).collect::<Vec<f32>>();
    Checkpoint {
        params: net.init(3),
        state: TrainState {
            epoch: 2,
            seed: 99,
            batch: 16,
            lr: 0.25,
            data: "clusters".into(),
            samples: 300,
            fingerprint: Some(DataFingerprint {
                inputs: 0x0123_4567_89ab_cdef,
                targets: u64::MAX,
            }),
            validation: None,
            kernel_config: None,
            history: (1..=2)
                .map(|epoch| EpochStats {
                    epoch,
                    // Values whose shortest decimal form needs 17 digits.
                    loss: (epoch as f64).sqrt() / 7.0,
                    accuracy: Some(0.25 * epoch as f64),
                    // A checkpoint keeps no wall-clock values.
                    seconds: 0.0,
                    samples_per_s: 0.0,
                    val_loss: (epoch == 2).then_some(0.3),
                    val_accuracy: None,
                    clipped: 0,
                })
                .collect(),
            optimizer: opt,
            schedule: Schedule::Step {
                every: 3,
                gamma: 0.5,
            },
            warmup: 0,
            early_stop: None,
        },
        optimizer_state: OptimizerState {
            t: 17,
            // Adam's second moments (the second half) are not negative.
            moments: (0..opt.state_len(net.param_count()))
                .map(|i| (i as f32 * 0.37).sin())
                .enumerate()
                .map(|(i, v)| if i < net.param_count() { v } else { v.abs() })
                .collect(),
        },
        standardizer: norm.then(|| Standardizer {
            mean: cycle(&[0.5, -1.0, 2.0, 0.0, 1e-3]),
            std: cycle(&[1.0, 2.0, 0.5, 1.0, 3.0]),
        }),
    }
}

/// The seed for this run's random data: `SHADERTRAIN_TEST_SEED`, or fresh
/// from the clock. Printed so that a failure can be replayed.
pub fn test_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = std::env::var("SHADERTRAIN_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("random data seed: SHADERTRAIN_TEST_SEED={s}");
        s
    })
}

/// A generator for one test case, derived from the run's seed and a label.
pub fn rng(label: &str) -> ChaCha8Rng {
    let mut h = test_seed();
    for b in label.bytes() {
        h = h.rotate_left(5) ^ b as u64;
        h = h.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    ChaCha8Rng::seed_from_u64(h)
}

/// `n` values uniform in `[lo, hi)`, never exactly zero.
pub fn random(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let v: f32 = rng.random_range(lo..hi);
            if v == 0.0 {
                hi * 0.5
            } else {
                v
            }
        })
        .collect()
}

/// One random batch for `net`: x in (-1, 1); targets one-hot under
/// cross-entropy (rows that sum to 1, as its delta `A − Y` needs), else in (0, 1).
pub fn batch_for(net: &Network, batch: usize, label: &str) -> (Vec<f32>, Vec<f32>) {
    let mut g = rng(label);
    let x = random(&mut g, batch * net.inputs(), -1.0, 1.0);
    let no = net.outputs();
    let y = match net.loss() {
        Loss::CrossEntropy => {
            let mut y = vec![0.0; batch * no];
            for s in 0..batch {
                y[s * no + g.random_range(0..no)] = 1.0;
            }
            y
        }
        Loss::Mse => random(&mut g, batch * no, 0.0, 1.0),
    };
    (x, y)
}

/// Widen to f64 for the reference.
pub fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Assert `|got − want| <= abs + rel·|want|` everywhere (NaN fails). On
/// failure, names the tensor, the first bad indices with both values, and the
/// largest difference.
pub fn assert_close(name: &str, got: &[f32], want: &[f64], abs: f64, rel: f64) {
    assert_eq!(
        got.len(),
        want.len(),
        "{name}: length {} but the reference has {}",
        got.len(),
        want.len()
    );
    let mut bad = Vec::new();
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g as f64 - w).abs();
        // Written so that NaN fails too.
        if d.is_nan() || d > abs + rel * w.abs() {
            bad.push(i);
        }
        if d > worst.0 || d.is_nan() {
            worst = (d, i);
        }
    }
    if !bad.is_empty() {
        let first: Vec<String> = bad
            .iter()
            .take(5)
            .map(|&i| {
                format!(
                    "[{i}] got {} want {} (diff {:e})",
                    got[i],
                    want[i],
                    (got[i] as f64 - want[i]).abs()
                )
            })
            .collect();
        panic!(
            "{name}: {} of {} elements outside {abs:e} + {rel:e}·|ref|; first: {}; largest diff {:e} at [{}] (seed {})",
            bad.len(),
            got.len(),
            first.join(", "),
            worst.0,
            worst.1,
            test_seed()
        );
    }
}

/// The same check for f64 results.
pub fn assert_close64(name: &str, got: &[f64], want: &[f64], abs: f64, rel: f64) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(
            d <= abs + rel * w.abs(),
            "{name}[{i}]: got {g} want {w} (diff {d:e}, tolerance {abs:e} + {rel:e}·|ref|)"
        );
    }
    assert_eq!(got.len(), want.len(), "{name}: lengths differ");
}

/// Targets for outputs `a (batch, n)` that make scoring meaningful: one-hot
/// rows scored by argmax, or 0/1 scored by threshold when `n == 1`.
pub fn scored_targets(a: &[f32], batch: usize, n: usize) -> (Vec<f32>, Metric) {
    let mut y = vec![0.0f32; batch * n];
    for s in 0..batch {
        let k = (a[s * n].to_bits() as usize + s) % n;
        y[s * n + k] = 1.0;
    }
    let metric = if n == 1 {
        Metric::Threshold
    } else {
        Metric::Argmax
    };
    (y, metric)
}

/// Non-zero running totals for a loss kernel to add to (they never overwrite).
pub const START_TOTALS: Acc = {
    let mut loss_slots = [0.0; shadertrain::gpu::kernels::ACC_SLOTS];
    loss_slots[0] = 1.5;
    Acc {
        samples: 3,
        correct: 2,
        steps: 1,
        _pad: 0,
        loss_slots,
    }
};

/// `got` is [`START_TOTALS`] plus one batch of `batch` samples with the
/// reference's `loss` and `correct`.
pub fn assert_totals(label: &str, got: Acc, loss: f64, correct: u64, batch: usize) {
    let s = START_TOTALS;
    let want = s.loss() + loss;
    assert_close(
        &format!("{label} loss_sum"),
        &[got.loss() as f32],
        &[want],
        1e-6,
        1e-5,
    );
    assert_eq!(got.samples, s.samples + batch as u32, "{label}: samples");
    assert_eq!(got.steps, s.steps + 1, "{label}: steps");
    assert_eq!(
        got.correct as u64,
        s.correct as u64 + correct,
        "{label}: correct"
    );
}

/// MNIST-shaped data: 10 classes, each a fixed random 28×28 prototype in
/// [0, 1) plus uniform noise of ±0.6, clamped: 400 training samples and 200
/// test samples, classes in turn, one-hot targets.
pub fn mnist_shaped(label: &str) -> (Dataset, Dataset) {
    let (classes, per_class, pixels) = (10, 40, 784);
    let mut g = rng(label);
    let protos: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..pixels).map(|_| g.random_range(0.0..1.0)).collect())
        .collect();
    let mut make = |n: usize| {
        let mut x = Vec::with_capacity(n * pixels);
        let mut y = vec![0.0f32; n * classes];
        for s in 0..n {
            let c = s % classes;
            x.extend(protos[c].iter().map(|&p| {
                let v: f32 = p + g.random_range(-0.6..0.6);
                v.clamp(0.0, 1.0)
            }));
            y[s * classes + c] = 1.0;
        }
        Dataset::from_vecs(
            label,
            (pixels, classes),
            x,
            y,
            Task::Classification { classes },
        )
        .unwrap()
    };
    let train = make(classes * per_class);
    (train, make(200))
}
