//! Momentum and Adam: their update kernels against the CPU twins (f64) on
//! random data; whole runs of the GPU (simple, tiled, tiled in micro-batches)
//! and of the fast CPU against the f64 reference; the optimizer state's round
//! trip; and Adam learning MNIST-shaped classes.

mod common;

use common::*;
use shadertrain::backend::{Backend, Metric};
use shadertrain::cpu::{self, CpuBackend};
use shadertrain::gpu::{GpuBackend, GpuOptions, KernelRunner, KernelSet, TileConfig};
use shadertrain::network::{Network, Params};
use shadertrain::optim::{Optimizer, OptimizerKind};
use shadertrain::train::{evaluate, train, TrainConfig};

const MOMENTUM: Optimizer = Optimizer {
    kind: OptimizerKind::Momentum,
    momentum: 0.9,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    weight_decay: 0.0,
    clip_norm: None,
};
const ADAM: Optimizer = Optimizer {
    kind: OptimizerKind::Adam,
    ..MOMENTUM
};

/// Each optimizer with and without weight decay, and SGD with decay (the
/// momentum kernel at μ = 0).
fn optimizers() -> Vec<(String, Optimizer)> {
    let mut out = Vec::new();
    for base in [MOMENTUM, ADAM] {
        for wd in [0.0, 0.05] {
            out.push((
                format!("{} wd {wd}", base.name()),
                Optimizer {
                    weight_decay: wd,
                    ..base
                },
            ));
        }
    }
    let sgd = Optimizer {
        weight_decay: 0.05,
        ..Optimizer::default()
    };
    out.push(("sgd wd 0.05".into(), sgd));
    out
}

#[test]
fn parse_validate_and_state_len() {
    for kind in OptimizerKind::ALL {
        assert_eq!(OptimizerKind::parse(kind.name()).unwrap(), kind);
    }
    let err = OptimizerKind::parse("rmsprop").unwrap_err().to_string();
    assert!(
        // The library names the setting, not the flag (the CLI maps it).
        err.contains("optimizer") && !err.contains("--") && err.contains("rmsprop"),
        "{err}"
    );
    let d = Optimizer::default();
    assert_eq!(d.kind, OptimizerKind::Sgd);
    assert!(d.is_plain_sgd());
    d.validate().unwrap();
    assert_eq!(
        [d.state_len(7), MOMENTUM.state_len(7), ADAM.state_len(7)],
        [0, 7, 14]
    );
    let bad = [
        ("--momentum", Optimizer { momentum: 1.0, ..d }),
        (
            "--momentum",
            Optimizer {
                momentum: -0.1,
                ..d
            },
        ),
        (
            "--beta1",
            Optimizer {
                beta1: f32::NAN,
                ..d
            },
        ),
        ("--beta2", Optimizer { beta2: 1.5, ..d }),
        ("--eps", Optimizer { eps: 0.0, ..d }),
        (
            "--eps",
            Optimizer {
                eps: f32::INFINITY,
                ..d
            },
        ),
        (
            "--weight-decay",
            Optimizer {
                weight_decay: -1e-3,
                ..d
            },
        ),
        (
            "--weight-decay",
            Optimizer {
                weight_decay: f32::NAN,
                ..d
            },
        ),
    ];
    for (flag, opt) in bad {
        let err = opt.validate().expect_err(flag).to_string();
        // The library's name for the setting the flag sets ("weight decay").
        let name = flag.trim_start_matches("--").replace('-', " ");
        assert!(
            err.starts_with(&name) && !err.contains('\n'),
            "{flag}: {err}"
        );
    }
    // Decay reaches the weights, never the biases.
    let net = Network::parse("3,2,1").unwrap();
    let decay: Vec<f64> = Optimizer {
        weight_decay: 0.5,
        ..ADAM
    }
    .decay(&net);
    assert_eq!(
        decay,
        [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.0]
    );
}

/// Odd lengths, several update counts `t`, random state and decay (zero or not).
#[test]
fn update_kernels_match_cpu() {
    let Some(ctx) = gpu_or_skip("update_kernels_match_cpu") else {
        return;
    };
    let r = KernelRunner::new(ctx).unwrap();
    for n in [1, 7, 65, 1001] {
        for t in [1, 2, 10, 1000] {
            for wd in [0.0, 0.03] {
                let label = format!("n {n} t {t} wd {wd}");
                let mut g = rng(&label);
                let p = random(&mut g, n, -1.0, 1.0);
                let gr = random(&mut g, n, -0.1, 0.1);
                let decay: Vec<f32> = random(&mut g, n, 0.0, 2.0).iter().map(|v| v * wd).collect();
                let mut m = random(&mut g, n, -0.05, 0.05);
                m.extend(random(&mut g, n, 1e-4, 1e-2));
                let opt = Optimizer {
                    beta1: 0.8,
                    beta2: 0.99,
                    momentum: 0.7,
                    ..ADAM
                };
                let (h32, h64) = (opt.terms::<f32>(0.03, t), opt.terms::<f64>(0.03, t));
                let (mut want_p, mut want_s) = (f64s(&p), f64s(&m[..n]));
                let (got_p, got_s) = r
                    .optimizer_update(OptimizerKind::Momentum, &p, &gr, &m[..n], &decay, &h32)
                    .unwrap();
                cpu::momentum_update(&mut want_p, &f64s(&gr), &mut want_s, &f64s(&decay), &h64);
                assert_close(
                    &format!("momentum {label} params"),
                    &got_p,
                    &want_p,
                    1e-7,
                    1e-5,
                );
                assert_close(&format!("momentum {label} v"), &got_s, &want_s, 1e-8, 1e-5);
                let (mut want_p, mut want_s) = (f64s(&p), f64s(&m));
                let (got_p, got_s) = r
                    .optimizer_update(OptimizerKind::Adam, &p, &gr, &m, &decay, &h32)
                    .unwrap();
                cpu::adam_update(&mut want_p, &f64s(&gr), &mut want_s, &f64s(&decay), &h64);
                assert_close(&format!("adam {label} params"), &got_p, &want_p, 1e-7, 1e-5);
                assert_close(&format!("adam {label} m, v"), &got_s, &want_s, 1e-8, 1e-5);
            }
        }
    }
}

const NET: &str = "13,31:relu,17:tanh,5:softmax";

/// `steps` steps of `b` and the f64 reference from one init with `opt`:
/// losses each step, parameters and state at the end.
fn run_against_reference<B: Backend<Scalar = f32> + ?Sized>(
    label: &str,
    b: &mut B,
    opt: &Optimizer,
    batch: usize,
    lr: f32,
) {
    let net = b.network().clone();
    let mut r = CpuBackend::<f64>::new(&net, batch).unwrap();
    let init: Params<f32> = net.init(7);
    b.set_params(&init).unwrap();
    r.set_params(&init.cast()).unwrap();
    b.set_optimizer(opt).unwrap();
    r.set_optimizer(opt).unwrap();
    b.set_metric(Metric::Argmax).unwrap();
    r.set_metric(Metric::Argmax).unwrap();
    for step in 0..10 {
        let (x, y) = batch_for(&net, batch, &format!("{NET} step {step}"));
        b.load_batch(&x, &y).unwrap();
        r.load_batch(&f64s(&x), &f64s(&y)).unwrap();
        b.step(lr).unwrap();
        r.step(lr).unwrap();
        let (tb, tr) = (b.take_totals().unwrap(), r.take_totals().unwrap());
        let what = format!("{label} step {step} loss");
        assert_close(&what, &[tb.loss() as f32], &[tr.loss()], 1e-6, 1e-4);
    }
    let (pb, pr) = (b.params().unwrap(), r.params().unwrap());
    assert_close(&format!("{label} params"), &pb.data, &pr.data, 1e-5, 1e-4);
    let ((tb, sb), (tr, sr)) = (b.optimizer_state().unwrap(), r.optimizer_state().unwrap());
    assert_eq!((tb, tr), (10, 10), "{label}: update counts");
    assert_close(&format!("{label} state"), &sb, &sr, 1e-6, 1e-4);
}

/// Every optimiser on the fast CPU backend, or on the GPU with the simple
/// kernels, the tiled ones, and the tiled ones splitting each batch of 11
/// into micro-batches of 4.
fn runs_match_the_reference(device: Device) {
    let net = Network::parse(NET).unwrap();
    let backends = || -> Vec<(String, Box<dyn Backend<Scalar = f32>>)> {
        let Device::Gpu(ctx) = &device else {
            return vec![("fast cpu".into(), Box::new(fast_cpu(&net, 11, 2)))];
        };
        let sets = [
            (KernelSet::Simple, None),
            (KernelSet::Tiled, None),
            (KernelSet::Tiled, Some(4)),
        ];
        sets.into_iter()
            .map(|(kernels, max_chunk)| {
                let options = GpuOptions {
                    kernels,
                    tiles: Some(TileConfig::SMALL),
                    max_chunk,
                    ..GpuOptions::default()
                };
                let gpu = GpuBackend::with_options(ctx.clone(), &net, 11, options).unwrap();
                let label = format!("gpu {kernels:?} chunk {max_chunk:?}");
                (label, Box::new(gpu) as Box<dyn Backend<Scalar = f32>>)
            })
            .collect()
    };
    for (name, opt) in optimizers() {
        let lr = if opt.kind == OptimizerKind::Adam {
            0.01
        } else {
            0.1
        };
        for (label, mut b) in backends() {
            run_against_reference(&format!("{label} {name}"), &mut *b, &opt, 11, lr);
        }
    }
}

test_device!(
    runs_match_the_reference,
    fast_cpu_runs_match_the_reference,
    gpu_runs_match_the_reference
);

/// `n` steps straight equal `k` steps, the state and parameters carried to a
/// fresh backend, and `n − k` more: bitwise.
fn round_trip<B: Backend<Scalar = f32>>(label: &str, make: &dyn Fn() -> B, opt: &Optimizer) {
    let (n, k, batch) = (6, 2, 11);
    let net = make().network().clone();
    let data: Vec<_> = (0..n)
        .map(|s| batch_for(&net, batch, &format!("round trip {s}")))
        .collect();
    let train_steps = |b: &mut B, steps: &[(Vec<f32>, Vec<f32>)]| {
        for (x, y) in steps {
            b.load_batch(x, y).unwrap();
            b.step(0.05).unwrap();
        }
    };
    let mut straight = make();
    straight.set_optimizer(opt).unwrap();
    straight.set_params(&net.init(3)).unwrap();
    train_steps(&mut straight, &data);
    let mut first = make();
    first.set_optimizer(opt).unwrap();
    first.set_params(&net.init(3)).unwrap();
    train_steps(&mut first, &data[..k]);
    let (t, state) = first.optimizer_state().unwrap();
    assert_eq!(t, k as u64, "{label}: t");
    assert_eq!(state.len(), opt.state_len(net.param_count()), "{label}");
    let mut second = make();
    second.set_optimizer(opt).unwrap();
    second.set_params(&first.params().unwrap()).unwrap();
    second.set_optimizer_state(t, &state).unwrap();
    train_steps(&mut second, &data[k..]);
    assert!(
        straight.params().unwrap().data == second.params().unwrap().data,
        "{label}: resumed parameters differ from a straight run"
    );
    let (a, b) = (
        straight.optimizer_state().unwrap(),
        second.optimizer_state().unwrap(),
    );
    assert!(a == b, "{label}: resumed state differs from a straight run");
    // A state of the wrong length is refused, with a message.
    let err = second
        .set_optimizer_state(1, &state[1..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("optimizer state"), "{label}: {err}");
}

#[test]
fn state_round_trip_is_bitwise() {
    let net = Network::parse(NET).unwrap();
    for opt in [MOMENTUM, ADAM] {
        let label = format!("fast cpu {}", opt.name());
        round_trip(&label, &|| fast_cpu(&net, 11, 2), &opt);
        let label = format!("reference {}", opt.name());
        round_trip(&label, &|| CpuBackend::<f32>::new(&net, 11).unwrap(), &opt);
    }
    let Some(ctx) = gpu_or_skip("state_round_trip_is_bitwise") else {
        return;
    };
    for opt in [MOMENTUM, ADAM] {
        for kernels in [KernelSet::Simple, KernelSet::Tiled] {
            let label = format!("gpu {kernels:?} {}", opt.name());
            let make = || GpuBackend::with_kernel_set(ctx.clone(), &net, 11, kernels).unwrap();
            round_trip(&label, &make, &opt);
        }
    }
}

/// Setting the default optimizer changes nothing: the fused SGD step, bitwise.
#[test]
fn default_optimizer_is_the_fused_sgd() {
    let net = Network::parse(NET).unwrap();
    let run = |b: &mut dyn Backend<Scalar = f32>, set: bool| {
        if set {
            b.set_optimizer(&Optimizer::default()).unwrap();
        }
        b.set_params(&net.init(2)).unwrap();
        for s in 0..3 {
            let (x, y) = batch_for(&net, 11, &format!("default {s}"));
            b.load_batch(&x, &y).unwrap();
            b.step(0.3).unwrap();
        }
        assert_eq!(b.optimizer_state().unwrap(), (3, Vec::new()));
        b.params().unwrap().data
    };
    let fast = || fast_cpu(&net, 11, 2);
    assert!(
        run(&mut fast(), true) == run(&mut fast(), false),
        "fast cpu"
    );
    let Some(ctx) = gpu_or_skip("default_optimizer_is_the_fused_sgd") else {
        return;
    };
    let gpu = || GpuBackend::with_kernel_set(ctx.clone(), &net, 11, KernelSet::Tiled).unwrap();
    assert!(run(&mut gpu(), true) == run(&mut gpu(), false), "gpu tiled");
    let bad = Optimizer { eps: -1.0, ..ADAM };
    assert!(gpu().set_optimizer(&bad).is_err());
    assert!(fast().set_optimizer(&bad).is_err());
}

/// `784,128:relu,10:softmax` with Adam learns 10 noisy prototypes, on the
/// fast CPU or on the GPU.
fn adam_learns_mnist_shaped_classes(device: Device) {
    let (train_set, test_set) = mnist_shaped("adam mnist-shaped");
    let net = Network::parse("784,128:relu,10:softmax").unwrap();
    let cfg = TrainConfig {
        epochs: 2,
        batch: 32,
        lr: 1e-3,
        seed: 4,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: false,
    };
    let mut b = device.backend(&net, 32);
    b.set_optimizer(&ADAM).unwrap();
    b.set_params(&net.init(4)).unwrap();
    let history = train(&mut *b, &train_set, &cfg, |_| {}).unwrap();
    let (totals, metric) = evaluate(&mut *b, &test_set).unwrap();
    let acc = totals.accuracy(metric).unwrap();
    assert!(
        acc > 0.9,
        "{}: accuracy {acc} after {} epochs; losses {:?}",
        b.describe(),
        cfg.epochs,
        history.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
}

test_device!(
    adam_learns_mnist_shaped_classes,
    adam_learns_mnist_shaped_classes_cpu,
    adam_learns_mnist_shaped_classes_gpu
);

/// `forward`, `backward`, `update` called one by one give what `step` gives,
/// and a profiled GPU step names the update kernel.
#[test]
fn separate_calls_match_step() {
    let net = Network::parse(NET).unwrap();
    fn check(
        net: &Network,
        label: &str,
        a: &mut dyn Backend<Scalar = f32>,
        b: &mut dyn Backend<Scalar = f32>,
    ) {
        a.set_optimizer(&ADAM).unwrap();
        b.set_optimizer(&ADAM).unwrap();
        a.set_params(&net.init(8)).unwrap();
        b.set_params(&net.init(8)).unwrap();
        for s in 0..4 {
            let (x, y) = batch_for(net, 11, &format!("separate {s}"));
            a.load_batch(&x, &y).unwrap();
            b.load_batch(&x, &y).unwrap();
            a.step(0.01).unwrap();
            b.forward().unwrap();
            b.backward().unwrap();
            b.update(0.01).unwrap();
        }
        let (pa, pb) = (a.params().unwrap(), b.params().unwrap());
        assert_close(
            &format!("{label} params"),
            &pa.data,
            &f64s(&pb.data),
            1e-6,
            1e-5,
        );
        assert_eq!(a.optimizer_state().unwrap().0, 4, "{label}: t");
        assert_eq!(b.optimizer_state().unwrap().0, 4, "{label}: t");
    }
    let fast = || fast_cpu(&net, 11, 2);
    check(&net, "fast cpu", &mut fast(), &mut fast());
    let Some(ctx) = gpu_or_skip("separate_calls_match_step") else {
        return;
    };
    let gpu = || GpuBackend::with_kernel_set(ctx.clone(), &net, 11, KernelSet::Tiled).unwrap();
    check(&net, "gpu tiled", &mut gpu(), &mut gpu());
    let mut g = gpu();
    g.set_optimizer(&ADAM).unwrap();
    let (x, y) = batch_for(&net, 11, "profile");
    g.load_batch(&x, &y).unwrap();
    if let Some(times) = g.profile_step(0.01).unwrap() {
        let names: Vec<&str> = times.iter().map(|(l, _)| l.as_str()).collect();
        assert!(names.contains(&"adam_update"), "{names:?}");
        assert!(names.contains(&"gradient_dense_tiled layer 0"), "{names:?}");
    }
}

/// The GPU keeps params, grads and the optimizer state in a padded device
/// layout (`gpu::layout`): on odd widths, where every W row and every
/// offset after the first is padded, each optimizer (plain SGD, momentum,
/// Adam with weight decay, clipping that fires) trains as the f64 reference
/// does, simple and tiled kernels: the gradients read back at every other
/// step (the others are whole steps), the losses and clip counts each step,
/// the parameters and state at the end, all through the flat layout; and
/// every padding float on the device is still zero.
#[test]
fn padded_device_layout_trains_like_the_cpu() {
    let Some(ctx) = gpu_or_skip("padded_device_layout_trains_like_the_cpu") else {
        return;
    };
    let decayed = Optimizer {
        weight_decay: 0.05,
        ..ADAM
    };
    let clipped = |base: Optimizer| Optimizer {
        clip_norm: Some(0.05),
        ..base
    };
    let sgd = Optimizer::default();
    let opts = [
        ("sgd", sgd),
        ("momentum", MOMENTUM),
        ("adam wd", decayed),
        ("sgd clip", clipped(sgd)),
        ("adam wd clip", clipped(decayed)),
    ];
    let batch = 9;
    for spec in ["5,7:relu,3", "3,5:tanh,6,2:softmax"] {
        let net = Network::parse(spec).unwrap();
        for kernels in [KernelSet::Simple, KernelSet::Tiled] {
            for (name, opt) in opts {
                let label = format!("{spec} {kernels:?} {name}");
                let lr = if opt.kind == OptimizerKind::Adam {
                    0.01
                } else {
                    0.1
                };
                let options = GpuOptions {
                    kernels,
                    tiles: Some(TileConfig::SMALL),
                    ..GpuOptions::default()
                };
                let (mut g, mut r) = gpu_and_reference(&ctx, &net, batch, options, 5);
                g.set_optimizer(&opt).unwrap();
                r.set_optimizer(&opt).unwrap();
                let mut fired = 0;
                for step in 0..4 {
                    let (x, y) = batch_for(&net, batch, &format!("{label} {step}"));
                    g.load_batch(&x, &y).unwrap();
                    r.load_batch(&f64s(&x), &f64s(&y)).unwrap();
                    if step % 2 == 0 {
                        g.forward().unwrap();
                        g.backward().unwrap();
                        r.forward().unwrap();
                        r.backward().unwrap();
                        let (gg, gr) = (g.read_gradients().unwrap(), r.read_gradients().unwrap());
                        let what = format!("{label} step {step} gradients");
                        assert_close(&what, &gg.data, &gr.data, 1e-6, 1e-4);
                        g.update(lr).unwrap();
                        r.update(lr).unwrap();
                    } else {
                        g.step(lr).unwrap();
                        r.step(lr).unwrap();
                    }
                    let (tg, tr) = (g.take_totals().unwrap(), r.take_totals().unwrap());
                    let what = format!("{label} step {step} loss");
                    assert_close(&what, &[tg.loss() as f32], &[tr.loss()], 1e-6, 1e-4);
                    assert_eq!(tg.clipped, tr.clipped, "{label} step {step}: clipped");
                    fired += tg.clipped;
                }
                assert_eq!(
                    fired > 0,
                    opt.clip_norm.is_some(),
                    "{label}: clipping fired"
                );
                let (pg, pr) = (g.params().unwrap(), r.params().unwrap());
                assert_close(&format!("{label} params"), &pg.data, &pr.data, 1e-5, 1e-4);
                let ((tg, sg), (tr, sr)) =
                    (g.optimizer_state().unwrap(), r.optimizer_state().unwrap());
                assert_eq!((tg, sg.len()), (tr, sr.len()), "{label}: t, state length");
                assert_close(&format!("{label} state"), &sg, &sr, 1e-6, 1e-4);
                let pad = g.device_padding().unwrap();
                assert!(!pad.is_empty(), "{label}: {spec} has padding");
                let bad = pad.iter().position(|&v| v != 0.0);
                assert!(
                    bad.is_none(),
                    "{label}: padding float {bad:?} is not zero: {pad:?}"
                );
            }
        }
    }
}
