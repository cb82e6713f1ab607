//! Per-layer activations and softmax + cross-entropy: the `--layers` syntax
//! and its round trip, the initialisation per activation, softmax and
//! cross-entropy values, whole GPU runs against the f64 reference on mixed
//! nets, and a small learning check on MNIST-shaped data. (Finite differences
//! per activation are in training.rs, the fast CPU path in fast_cpu.rs.)

mod common;

use common::*;
use shadertrain::backend::{Backend, Metric};
use shadertrain::cpu::CpuBackend;
use shadertrain::gpu::{GpuOptions, KernelSet, TileConfig};
use shadertrain::network::{Activation, Loss, Network, Params};
use shadertrain::train::{evaluate, train, TrainConfig};

/// Mixed nets: every activation, hidden and output, softmax with one output
/// and with several, one-neuron layers.
const NETS: &[&str] = &[
    "13,31:relu,17:tanh,5:softmax",
    "4,6:linear,3:relu,2:tanh",
    "3,5:tanh,1:linear",
    "6,7:relu,4",
    "5,1:relu,3:softmax",
    "9,11:sigmoid,2:softmax",
];

#[test]
fn parse_reads_activations_and_spec_round_trips() {
    let net = Network::parse("784, 128:relu ,64:tanh,10:softmax").unwrap();
    assert_eq!(net.sizes(), &[784, 128, 64, 10]);
    let acts: Vec<Activation> = net.layers().iter().map(|l| l.act).collect();
    assert_eq!(
        acts,
        [Activation::Relu, Activation::Tanh, Activation::Softmax]
    );
    assert_eq!(net.activation(1), Activation::Tanh);
    assert_eq!(net.output_activation(), Activation::Softmax);
    assert_eq!(net.loss(), Loss::CrossEntropy);
    assert_eq!(net.spec(), "784,128:relu,64:tanh,10:softmax");
    assert_eq!(net.describe(), "784-128:relu-64:tanh-10:softmax");
    // Sigmoid carries no suffix, so old specs and metadata stay as they were.
    let plain = Network::parse("2,32,2").unwrap();
    assert_eq!(plain.spec(), "2,32,2");
    assert_eq!(plain.describe(), "2-32-2");
    assert_eq!(plain.loss(), Loss::Mse);
    assert_eq!(plain, Network::new(&[2, 32, 2]).unwrap());
    assert_eq!(Network::parse("2,32:sigmoid,2").unwrap(), plain);
    for spec in NETS.iter().chain(&["1,1", "2,3:linear,4:relu,1:tanh"]) {
        let net = Network::parse(spec).unwrap();
        assert_eq!(Network::parse(&net.spec()).unwrap(), net, "{spec}");
    }
    for (spec, loss) in [
        ("3,2:linear", Loss::Mse),
        ("3,2:softmax", Loss::CrossEntropy),
    ] {
        assert_eq!(Network::parse(spec).unwrap().loss(), loss, "{spec}");
    }
}

#[test]
fn bad_layer_syntax_is_refused_with_one_line() {
    for (spec, says) in [
        ("784:relu,10", "input size"),
        ("784,128:softmax,10", "softmax"),
        ("4,3:softmax,2:relu", "hidden"),
        ("4,3:gelu,2", "unknown activation 'gelu'"),
        ("4,3:,2", "unknown activation ''"),
        ("4,:relu,2", "not a layer size"),
        ("4,3:relu:tanh,2", "unknown activation"),
        ("4,x:relu", "not a layer size"),
        ("4,0:relu", "is 0"),
        ("4", "at least two"),
        ("", "not a layer size"),
        ("4,3:Relu", "unknown activation"),
        ("4,3,1:softmax", "at least 2"),
        // Found by tests/fuzz_loaders.rs: quoted text kept on one line, and
        // sizes whose product overflowed usize panicked.
        ("0:soft\nmax", "'0:soft\\nmax'"),
        ("4,3:re\nlu", "unknown activation 're\\nlu'"),
        ("18446744073709551615,1", "2^32"),
        ("4294967296,4294967296", "2^32"),
        ("1,18446744073709551615,18446744073709551615", "2^32"),
        ("65536,65536", "4295032832 parameters"),
    ] {
        let err = Network::parse(spec).expect_err(spec).to_string();
        assert!(err.contains(says), "{spec:?}: {err}");
        assert!(!err.contains('\n'), "{spec:?}: {err}");
    }
    let hidden = [Activation::Softmax, Activation::Sigmoid];
    assert!(Network::with_activations(&[2, 3, 1], &hidden).is_err());
    assert!(Network::with_activations(&[2, 3, 1], &[Activation::Relu]).is_err());
}

/// Sigmoid nets start where they always did; relu layers are He-uniform
/// (`r = sqrt(6 / in)`), the rest Xavier (`r = sqrt(6 / (in + out))`), from
/// one stream.
#[test]
fn init_fits_the_activation() {
    let net = Network::parse("50,40:relu,30:tanh,20:softmax").unwrap();
    let p: Params<f64> = net.init(9);
    let sig: Params<f64> = Network::new(&[50, 40, 30, 20]).unwrap().init(9);
    for (l, ly) in net.layers().iter().enumerate() {
        let r = match ly.act {
            Activation::Relu => (6.0 / ly.n_in as f64).sqrt(),
            _ => (6.0 / (ly.n_in + ly.n_out) as f64).sqrt(),
        };
        let max = p.weights(l).iter().fold(0.0f64, |m, w| m.max(w.abs()));
        assert!(max <= r && max > 0.9 * r, "layer {l}: max {max}, r {r}");
        assert!(p.bias(l).iter().all(|&b| b == 0.0));
        if ly.act != Activation::Relu {
            assert_eq!(p.weights(l), sig.weights(l), "layer {l}: Xavier as before");
        }
    }
    assert_ne!(p.weights(0), sig.weights(0));
}

/// The softmax rows sum to 1 and cross-entropy is `−Σ y ln a`, mean over the batch.
#[test]
fn softmax_output_and_cross_entropy_loss() {
    let net = Network::parse("3,4:softmax").unwrap();
    let mut cpu = CpuBackend::<f64>::new(&net, 2).unwrap();
    cpu.set_params(&net.init(1)).unwrap();
    let y = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0];
    cpu.load_batch(&[0.5, -1.0, 2.0, -0.3, 0.2, 0.9], &y)
        .unwrap();
    cpu.forward().unwrap();
    let a = cpu.read_activations(1).unwrap();
    for row in a.chunks(4) {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-15, "{row:?}");
    }
    let want = -(a[1].ln() + a[7].ln()) / 2.0;
    let t = cpu.take_totals().unwrap();
    assert_eq!(t.loss_fn, Loss::CrossEntropy);
    assert!((t.loss() - want).abs() < 1e-15, "{} vs {want}", t.loss());
}

/// 10 classes, each a fixed random 28×28 prototype plus noise: `784,128:relu,
/// 10:softmax` with cross-entropy and SGD on the fast CPU path learns them.
#[test]
fn relu_softmax_learns_mnist_shaped_classes() {
    let (train_set, test_set) = mnist_shaped("mnist-shaped");
    let net = Network::parse("784,128:relu,10:softmax").unwrap();
    let mut cpu = fast_cpu(&net, 32, 2);
    cpu.set_params(&net.init(4)).unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch: 32,
        lr: 0.1,
        seed: 4,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: false,
    };
    let history = train(&mut cpu, &train_set, &cfg, |_| {}).unwrap();
    assert!(history.iter().all(|e| e.loss.is_finite()));
    let (totals, metric) = evaluate(&mut cpu, &test_set).unwrap();
    assert_eq!(totals.loss_fn, Loss::CrossEntropy);
    let acc = totals.accuracy(metric).unwrap();
    assert!(
        acc > 0.9,
        "accuracy {acc} after {} epochs (chance 0.1); losses {:?}",
        cfg.epochs,
        history.iter().map(|e| e.loss).collect::<Vec<_>>()
    );
}

/// Every kernel set and tile size against the f64 reference over several
/// steps on mixed nets: losses step by step, parameters at the end.
#[test]
fn gpu_runs_match_the_reference_every_activation() {
    let Some(ctx) = gpu_or_skip("gpu_runs_match_the_reference_every_activation") else {
        return;
    };
    // The last splits batches into micro-batches of 4 (gradients accumulated).
    let sets = [
        (KernelSet::Simple, None, None),
        (KernelSet::Tiled, Some(TileConfig::SMALL), None),
        (KernelSet::Tiled, Some(TileConfig::DISCRETE), None),
        (KernelSet::Tiled, Some(TileConfig::SMALL), Some(4)),
    ];
    for (spec, batch) in [(NETS[0], 11), (NETS[1], 1), (NETS[4], 5), (NETS[2], 3)] {
        let net = Network::parse(spec).unwrap();
        for (kernels, tiles, max_chunk) in sets {
            let label = format!("{spec} batch {batch} {kernels:?} {tiles:?} chunk {max_chunk:?}");
            let options = GpuOptions {
                kernels,
                tiles,
                max_chunk,
                ..GpuOptions::default()
            };
            let (mut gpu, mut cpu) = gpu_and_reference(&ctx, &net, batch, options, 7);
            gpu.set_metric(Metric::Argmax).unwrap();
            cpu.set_metric(Metric::Argmax).unwrap();
            for step in 0..8 {
                let (x, y) = batch_for(&net, batch, &format!("{label} step {step}"));
                gpu.load_batch(&x, &y).unwrap();
                cpu.load_batch(&f64s(&x), &f64s(&y)).unwrap();
                gpu.step(0.4).unwrap();
                cpu.step(0.4).unwrap();
                let (tg, tc) = (gpu.take_totals().unwrap(), cpu.take_totals().unwrap());
                assert_eq!(tg.loss_fn, net.loss());
                let what = format!("{label} step {step} loss");
                assert_close(&what, &[tg.loss() as f32], &[tc.loss()], 1e-6, 1e-4);
                assert_eq!(tg.correct, tc.correct, "{label} step {step} correct");
            }
            let (pg, pc) = (gpu.params().unwrap(), cpu.params().unwrap());
            assert_close(&format!("{label} params"), &pg.data, &pc.data, 1e-5, 1e-4);
        }
    }
}
