//! Whole training runs: the GPU and the f64 CPU reference agree step by step
//! from one seed; the reference's gradients agree with finite differences;
//! runs are bitwise repeatable; partial last batches are handled.

mod common;

use common::*;
use shadertrain::backend::{Backend, Metric};
use shadertrain::cpu::CpuBackend;
use shadertrain::data::{Dataset, Task};
use shadertrain::gpu::{GpuBackend, GpuContext, GpuOptions, KernelSet, TileConfig};
use shadertrain::network::{Loss, Network, Params};
use shadertrain::train::{train, TrainConfig};
use std::sync::Arc;

/// `steps` batches of random data for `net`.
fn batches(net: &Network, batch: usize, steps: usize, label: &str) -> Vec<(Vec<f32>, Vec<f32>)> {
    let mut g = rng(label);
    (0..steps)
        .map(|_| {
            (
                random(&mut g, batch * net.inputs(), -1.0, 1.0),
                random(&mut g, batch * net.outputs(), 0.0, 1.0),
            )
        })
        .collect()
}

/// The simple kernels, and the tiled ones with both tile configurations.
const KERNELS: [(&str, GpuOptions); 3] = [
    (
        "simple",
        GpuOptions {
            kernels: KernelSet::Simple,
            tiles: None,
            ..GpuOptions::BASE
        },
    ),
    (
        "tiled small",
        GpuOptions {
            kernels: KernelSet::Tiled,
            tiles: Some(TileConfig::SMALL),
            ..GpuOptions::BASE
        },
    ),
    (
        "tiled discrete",
        GpuOptions {
            kernels: KernelSet::Tiled,
            tiles: Some(TileConfig::DISCRETE),
            ..GpuOptions::BASE
        },
    ),
];

fn gpu(ctx: &Arc<GpuContext>, net: &Network, batch: usize, options: GpuOptions) -> GpuBackend {
    GpuBackend::with_options(ctx.clone(), net, batch, options).unwrap()
}

/// `step` on every kernel set, the tiled ones on the fused path.
#[test]
fn twenty_steps_gpu_matches_cpu_reference() {
    let Some(ctx) = gpu_or_skip("twenty_steps_gpu_matches_cpu_reference") else {
        return;
    };
    // The learning rate of the widest net is kept small: at 0.9 its dynamics
    // amplify f32 rounding ~2× per step (the f32 CPU drifts from f64 as far as
    // the GPU does), which would test the arithmetic's chaos, not the kernels.
    let cases = [
        (&[1, 1, 1][..], 1, 0.9),
        (&[3, 7, 5], 7, 0.9),
        (&[17, 33, 9], 64, 0.9),
        (&[100, 257, 10], 7, 0.2),
        (&[5, 9, 1], 3, 0.9),
        (&[40, 130, 33, 7], 37, 0.5),
    ];
    for ((sizes, batch, lr), (kernels, options)) in cases
        .into_iter()
        .flat_map(|c| KERNELS.into_iter().map(move |k| (c, k)))
    {
        let net = Network::new(sizes).unwrap();
        let label = format!("{kernels} {} batch {batch}", net.describe());
        let init: Params<f32> = net.init(7);
        let mut gpu = gpu(&ctx, &net, batch, options);
        let mut cpu = CpuBackend::<f64>::new(&net, batch).unwrap();
        gpu.set_params(&init).unwrap();
        cpu.set_params(&init.cast()).unwrap();
        for (step, (x, y)) in batches(&net, batch, 20, &label).iter().enumerate() {
            gpu.load_batch(x, y).unwrap();
            cpu.load_batch(&f64s(x), &f64s(y)).unwrap();
            gpu.step(lr).unwrap();
            cpu.step(lr).unwrap();
            let (lg, lc) = (gpu.take_totals().unwrap(), cpu.take_totals().unwrap());
            assert_close(
                &format!("{label} step {step} loss"),
                &[lg.loss() as f32],
                &[lc.loss()],
                1e-6,
                1e-4,
            );
        }
        let (pg, pc) = (gpu.params().unwrap(), cpu.params().unwrap());
        assert_close(
            &format!("{label} params after 20 steps"),
            &pg.data,
            &pc.data,
            1e-5,
            1e-4,
        );
    }
}

/// Central differences in f64 against the reference's backward pass, for
/// every activation and both losses.
#[test]
fn finite_difference_gradient_check() {
    for (spec, batch) in [
        ("3,4,2", 5),
        ("2,3,3,2", 4),
        ("4,1,3", 1),
        ("3,4:relu,2:tanh", 5),
        ("2,3:tanh,3:linear,2:relu", 4),
        ("4,5:linear,3:softmax", 3),
        ("3,6:relu,4:tanh,5:softmax", 1),
        // Dropout after sigmoid and tanh, the mask fixed: a training pass
        // (dropout on, no update) at rows 3.. of a batch gives both the loss
        // and the gradient, with the masks of the same update each time.
        ("3,5:sigmoid:dropout=0.4,2", 6),
        ("2,6:tanh:dropout=0.5,4:sigmoid:dropout=0.3,3:softmax", 5),
        ("3,7:relu:dropout=0.2,4:tanh:dropout=0.6,2:tanh", 1),
    ] {
        let net = Network::parse(spec).unwrap();
        let dropout = net.has_dropout();
        let label = format!("fd {}", net.describe());
        let mut g = rng(&label);
        let x: Vec<f64> = f64s(&random(&mut g, batch * net.inputs(), -1.0, 1.0));
        let mut y: Vec<f64> = f64s(&random(&mut g, batch * net.outputs(), 0.05, 1.0));
        // Cross-entropy's delta A − Y assumes target rows summing to 1: soft targets.
        if net.loss() == Loss::CrossEntropy {
            for row in y.chunks_mut(net.outputs()) {
                let sum: f64 = row.iter().sum();
                row.iter_mut().for_each(|v| *v /= sum);
            }
        }
        // Larger weights than the init, so the sigmoids are not all near-linear.
        let p: Params<f64> =
            Params::from_vec(&net, f64s(&random(&mut g, net.param_count(), -2.0, 2.0))).unwrap();
        let mut cpu = CpuBackend::<f64>::new(&net, batch).unwrap();
        cpu.set_metric(Metric::None).unwrap();
        cpu.set_dropout_seed(0xfd).unwrap();
        cpu.load_batch(&x, &y).unwrap();
        let pass = |cpu: &mut CpuBackend<f64>| match dropout {
            true => cpu.train_pass(3),
            false => cpu.forward().and_then(|_| cpu.backward()),
        };
        let mut loss_at = |q: &Params<f64>| {
            cpu.set_params(q).unwrap();
            pass(&mut cpu).unwrap();
            cpu.take_totals().unwrap().loss()
        };
        // Central differences at h = 1e-6 carry rounding of about
        // ε·|L|/h ≈ 1e-10·|L| (losses here reach ~10): the absolute
        // tolerance below leaves room for that, not for a wrong gradient.
        let h = 1e-6;
        let mut numeric = Vec::with_capacity(p.data.len());
        for i in 0..p.data.len() {
            let (mut plus, mut minus) = (p.clone(), p.clone());
            plus.data[i] += h;
            minus.data[i] -= h;
            numeric.push((loss_at(&plus) - loss_at(&minus)) / (2.0 * h));
        }
        cpu.set_params(&p).unwrap();
        pass(&mut cpu).unwrap();
        let analytic = cpu.read_gradients().unwrap();
        if dropout {
            // The mask did drop units (else this checks nothing new).
            let a = cpu.read_activations(1).unwrap();
            assert!(a.contains(&0.0), "{label}: no unit dropped");
        }
        assert_close64(
            &format!("{label} ∂L/∂p"),
            &analytic.data,
            &numeric,
            1e-8,
            1e-6,
        );
    }
}

fn small_set(n: usize, label: &str) -> Dataset {
    let mut g = rng(label);
    let x = random(&mut g, n * 3, -1.0, 1.0);
    let mut y = vec![0.0f32; n * 2];
    for s in 0..n {
        y[s * 2 + usize::from(x[s * 3] > 0.0)] = 1.0;
    }
    Dataset::from_vecs(label, (3, 2), x, y, Task::Classification { classes: 2 }).unwrap()
}

/// 23 samples in batches of 8: two full steps and one of 7 per epoch.
#[test]
fn training_loop_with_partial_batches_gpu_matches_cpu() {
    let net = Network::parse("3,6,2").unwrap();
    let data = small_set(23, "partial");
    let cfg = TrainConfig {
        epochs: 4,
        batch: 8,
        lr: 1.0,
        seed: 3,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: false,
    };
    let mut cpu = CpuBackend::<f64>::new(&net, 8).unwrap();
    cpu.set_params(&net.init(3)).unwrap();
    let hc = train(&mut cpu, &data, &cfg, |_| {}).unwrap();
    assert_eq!(hc.len(), 4);
    assert!(hc
        .iter()
        .all(|e| e.loss.is_finite() && e.accuracy.is_some()));
    let Some(ctx) = gpu_or_skip("training_loop_with_partial_batches_gpu_matches_cpu") else {
        return;
    };
    let mut gpu = GpuBackend::new(ctx, &net, 8).unwrap();
    gpu.set_params(&net.init(3)).unwrap();
    let hg = train(&mut gpu, &data, &cfg, |_| {}).unwrap();
    for (a, b) in hg.iter().zip(&hc) {
        assert_close(
            &format!("epoch {} loss", a.epoch),
            &[a.loss as f32],
            &[b.loss],
            1e-6,
            1e-4,
        );
        assert_eq!(a.accuracy, b.accuracy, "epoch {} accuracy", a.epoch);
    }
    assert_close(
        "params after 4 epochs",
        &gpu.params().unwrap().data,
        &cpu.params().unwrap().data,
        1e-5,
        1e-4,
    );
}

/// Same seed, data and backend: bitwise-identical parameters and losses.
#[test]
fn runs_are_bitwise_repeatable() {
    let net = Network::parse("3,9,2").unwrap();
    let data = small_set(50, "repeat");
    let cfg = TrainConfig {
        epochs: 3,
        batch: 16,
        lr: 0.8,
        seed: 11,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: false,
    };
    // Two fresh runs on backends from `make` must agree to the bit.
    let same_twice = |name: &str, make: &dyn Fn() -> Box<dyn Backend<Scalar = f32>>| {
        let run = || {
            let mut b = make();
            b.set_params(&net.init(11)).unwrap();
            let h = train(&mut *b, &data, &cfg, |_| {}).unwrap();
            (
                h.iter().map(|e| e.loss).collect::<Vec<_>>(),
                b.params().unwrap().data,
            )
        };
        let (first, second) = (run(), run());
        assert_eq!(first.0, second.0, "{name} losses differ between runs");
        assert_eq!(first.1, second.1, "{name} parameters differ between runs");
    };
    same_twice("cpu", &|| {
        Box::new(CpuBackend::<f32>::new(&net, 16).unwrap())
    });
    let Some(ctx) = gpu_or_skip("runs_are_bitwise_repeatable") else {
        return;
    };
    same_twice("gpu", &|| {
        Box::new(GpuBackend::new(ctx.clone(), &net, 16).unwrap())
    });
}

/// Builds a fresh backend for one run.
type MakeBackend<'a> = Box<dyn Fn() -> Box<dyn Backend<Scalar = f32>> + 'a>;

/// `nan_check` reads the running totals after every step without disturbing
/// them: a converging run is bit for bit the same with and without it, on
/// every backend; a diverging one stops at the step, naming it.
#[test]
fn nan_check_changes_nothing_and_stops_at_the_step() {
    let net = Network::parse("3,9:linear,2:linear").unwrap();
    let data = small_set(50, "nan-check");
    let cfg = |lr, nan_check| TrainConfig {
        epochs: 3,
        batch: 16,
        lr,
        seed: 5,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check,
    };
    let mut makers: Vec<(&str, MakeBackend)> = vec![
        (
            "cpu",
            Box::new(|| Box::new(CpuBackend::<f32>::new(&net, 16).unwrap())),
        ),
        ("fast", Box::new(|| Box::new(fast_cpu(&net, 16, 2)))),
    ];
    if let Some(ctx) = gpu_or_skip("nan_check_changes_nothing_and_stops_at_the_step") {
        for kernels in [KernelSet::Simple, KernelSet::Tiled] {
            let ctx = ctx.clone();
            let net = net.clone();
            let options = GpuOptions {
                kernels,
                tiles: Some(TileConfig::SMALL),
                ..GpuOptions::default()
            };
            makers.push((
                "gpu",
                Box::new(move || Box::new(gpu(&ctx, &net, 16, options.clone()))),
            ));
        }
    }
    for (name, make) in &makers {
        let run = |c: &TrainConfig| {
            let mut b = make();
            b.set_params(&net.init(5)).unwrap();
            let r = train(&mut *b, &data, c, |_| {});
            r.map(|h| {
                (
                    h.iter().map(|e| e.loss).collect::<Vec<_>>(),
                    b.params().unwrap().data,
                )
            })
        };
        let plain = run(&cfg(0.05, false)).unwrap();
        let checked = run(&cfg(0.05, true)).unwrap();
        assert_eq!(plain, checked, "{name}: --nan-check changed the run");
        let e = run(&cfg(50.0, true)).unwrap_err().to_string();
        assert!(
            e.contains("diverged") && e.contains("(step "),
            "{name}: {e}"
        );
        let e = run(&cfg(50.0, false)).unwrap_err().to_string();
        assert!(e.contains("in epoch 1;"), "{name}: {e}");
    }
}

/// A batch larger than the backend's capacity, or of the wrong width, is an error.
#[test]
fn bad_batches_are_errors_not_panics() {
    let net = Network::parse("2,3,1").unwrap();
    let mut cpu = CpuBackend::<f32>::new(&net, 2).unwrap();
    assert!(
        cpu.load_batch(&[0.1; 6], &[0.5; 3]).is_err(),
        "3 rows into capacity 2"
    );
    assert!(
        cpu.load_batch(&[0.1; 3], &[0.5; 1]).is_err(),
        "ragged input"
    );
    assert!(
        cpu.load_batch(&[0.1; 4], &[0.5; 3]).is_err(),
        "targets for 3 rows, inputs for 2"
    );
    assert!(cpu.forward().is_err(), "forward with no batch");
    assert!(CpuBackend::<f32>::new(&net, 0).is_err());
    if let Some(ctx) = gpu_or_skip("bad_batches_are_errors_not_panics") {
        let mut gpu = GpuBackend::new(ctx.clone(), &net, 2).unwrap();
        assert!(gpu.load_batch(&[0.1; 6], &[0.5; 3]).is_err());
        assert!(gpu.forward().is_err(), "forward with no batch");
        assert!(GpuBackend::new(ctx, &net, 0).is_err());
        let other = Network::parse("2,2,1").unwrap();
        assert!(gpu.set_params(&other.init(1)).is_err());
    }
}

/// The tiled step (update fused into the gradient pass) against the tiled
/// forward, backward and update called one by one, against the simple
/// kernels: parameters, losses and the gradients of `backward` agree.
#[test]
fn tiled_step_matches_separate_calls_and_simple_kernels() {
    let Some(ctx) = gpu_or_skip("tiled_step_matches_separate_calls_and_simple_kernels") else {
        return;
    };
    for (sizes, batch) in [(&[6, 35, 19, 3][..], 29), (&[2, 1, 1], 1)] {
        let net = Network::new(sizes).unwrap();
        let label = format!("{} batch {batch}", net.describe());
        let [simple, small, discrete] = KERNELS.map(|(_, o)| gpu(&ctx, &net, batch, o));
        let mut backends = [("simple", simple), ("small", small), ("discrete", discrete)];
        let mut fused = gpu(&ctx, &net, batch, GpuOptions::default());
        let init: Params<f32> = net.init(5);
        fused.set_params(&init).unwrap();
        for (_, b) in &mut backends {
            b.set_params(&init).unwrap();
        }
        for (step, (x, y)) in batches(&net, batch, 6, &label).iter().enumerate() {
            fused.load_batch(x, y).unwrap();
            fused.step(0.8).unwrap();
            let want = fused.take_totals().unwrap().loss();
            let mut grads = Vec::new();
            for (name, b) in &mut backends {
                b.load_batch(x, y).unwrap();
                b.forward().unwrap();
                b.backward().unwrap();
                grads.push((*name, b.read_gradients().unwrap().data));
                b.update(0.8).unwrap();
                let got = b.take_totals().unwrap().loss();
                let what = format!("{label} step {step} {name} loss");
                assert_close(&what, &[got as f32], &[want], 1e-6, 1e-5);
            }
            let (_, reference) = &grads[0];
            for (name, g) in &grads[1..] {
                let what = format!("{label} step {step} {name} gradients");
                assert_close(&what, g, &f64s(reference), 1e-7, 1e-4);
            }
        }
        let want = f64s(&fused.params().unwrap().data);
        for (name, b) in &mut backends {
            let what = format!("{label} {name} params after 6 steps");
            assert_close(&what, &b.params().unwrap().data, &want, 1e-6, 1e-5);
        }
    }
}

/// One profiled step per kernel set: a time for every dispatch, named by
/// kernel and layer, and the same step as `step` takes.
#[test]
fn profile_step_times_every_kernel() {
    let Some(ctx) = gpu_or_skip("profile_step_times_every_kernel") else {
        return;
    };
    let net = Network::parse("4,7,3").unwrap();
    let (x, y) = batches(&net, 5, 1, "profile").remove(0);
    let expected: [(&str, &[&str]); 2] = [
        (
            "simple",
            &[
                "forward_dense layer 0",
                "forward_dense layer 1",
                "loss_reduce",
                "delta_output",
                "delta_hidden layer 0",
                "gradient_weights layer 0",
                "gradient_bias layer 1",
                "sgd_update",
            ],
        ),
        (
            "tiled",
            &[
                "forward_dense_tiled layer 0",
                "forward_output_loss_tiled layer 1",
                "delta_hidden_tiled layer 0",
                "gradient_sgd_tiled layer 1",
                "gradient_sgd_tiled layer 0",
            ],
        ),
    ];
    for ((name, options), (_, labels)) in KERNELS.into_iter().take(2).zip(expected) {
        let mut profiled = gpu(&ctx, &net, 5, options.clone());
        let mut plain = gpu(&ctx, &net, 5, options);
        for b in [&mut profiled, &mut plain] {
            b.set_params(&net.init(2)).unwrap();
            b.load_batch(&x, &y).unwrap();
        }
        let Some(times) = profiled.profile_step(0.5).unwrap() else {
            eprintln!(
                "skipped profile_step_times_every_kernel: no timestamp queries on {}",
                ctx.describe()
            );
            return;
        };
        plain.step(0.5).unwrap();
        for want in labels {
            assert!(
                times.iter().any(|(l, _)| l == want),
                "{name}: no time for {want} in {times:?}"
            );
        }
        assert!(
            times.iter().all(|(_, ms)| ms.is_finite() && *ms > 0.0),
            "{name}: {times:?}"
        );
        let (a, b) = (profiled.params().unwrap(), plain.params().unwrap());
        assert_eq!(a.data, b.data, "{name}: a profiled step is a step");
    }
}
