//! Weights in and the model's outputs: `weights::load` on the three kinds of
//! file (a shadertrain checkpoint, a PyTorch `nn.Sequential` state dict, a
//! `ModuleList` under a prefix) in every float type PyTorch saves, with
//! one-line refusals; `train --init` and `--epochs 0 --save` end to end on
//! both backends; `predict`'s columns for classifiers and regressors;
//! `eval --json`'s activations; shortest floats in checkpoint metadata.

mod cli_support;
use cli_support::*;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use shadertrain::checkpoint::{shortest, Checkpoint};
use shadertrain::network::{Network, Params};
use shadertrain::weights;

/// A safetensors file of `(name, dtype, shape, values)`, values encoded in `dtype`.
fn file(tensors: &[(&str, Dtype, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, dtype, _, v)| match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F64 => v.iter().flat_map(|x| (*x as f64).to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
            Dtype::I32 => v.iter().flat_map(|x| (*x as i32).to_le_bytes()).collect(),
            other => panic!("no encoder for {other:?}"),
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, dtype, shape, _), b)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// `net`'s parameters as a state dict whose layer `l` is named `names[l]`.
fn state_dict(
    net: &Network,
    p: &Params<f32>,
    names: &[&str],
    dtype: Dtype,
) -> Vec<(String, Dtype, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();
    for (l, ly) in net.layers().iter().enumerate() {
        let w = (ly.n_out, ly.n_in);
        out.push((
            format!("{}.weight", names[l]),
            dtype,
            vec![w.0, w.1],
            p.weights(l).to_vec(),
        ));
        out.push((
            format!("{}.bias", names[l]),
            dtype,
            vec![ly.n_out],
            p.bias(l).to_vec(),
        ));
    }
    out
}

fn encode(t: &[(String, Dtype, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, Dtype, Vec<usize>, Vec<f32>)> = t
        .iter()
        .map(|(n, d, s, v)| (n.as_str(), *d, s.clone(), v.clone()))
        .collect();
    file(&borrowed)
}

#[test]
fn every_kind_of_file_loads_the_same_weights() {
    let net = Network::parse("3,5:relu,4:tanh,2:softmax").unwrap();
    let p = net.init(11);
    // A shadertrain checkpoint (normalisation and optimiser state ignored).
    let ckpt = {
        use shadertrain::optim::{Optimizer, OptimizerKind};
        let mut c = cli_free_checkpoint(&net, &p);
        c.state.optimizer = Optimizer::new(OptimizerKind::Adam);
        c.optimizer_state.moments = vec![0.0; 2 * net.param_count()];
        c.to_bytes().unwrap()
    };
    assert_eq!(weights::from_bytes(&ckpt, &net).unwrap(), p, "checkpoint");
    // nn.Sequential(Linear, ReLU, Linear, Tanh, Linear, Softmax).
    let seq = encode(&state_dict(&net, &p, &["0", "2", "4"], Dtype::F32));
    assert_eq!(weights::from_bytes(&seq, &net).unwrap(), p, "Sequential");
    // A ModuleList under a prefix, numbered past 9: ordered as numbers.
    let list = encode(&state_dict(
        &net,
        &p,
        &["net.layers.2", "net.layers.9", "net.layers.10"],
        Dtype::F32,
    ));
    assert_eq!(weights::from_bytes(&list, &net).unwrap(), p, "ModuleList");
    // f64 exactly; f16 and bf16 to their precision.
    let f64s = encode(&state_dict(&net, &p, &["0", "2", "4"], Dtype::F64));
    assert_eq!(weights::from_bytes(&f64s, &net).unwrap(), p, "f64");
    for (dtype, tol) in [(Dtype::F16, 1e-3), (Dtype::BF16, 1e-2)] {
        let f = encode(&state_dict(&net, &p, &["0", "2", "4"], dtype));
        let got = weights::from_bytes(&f, &net).unwrap();
        for (i, (a, b)) in got.data.iter().zip(&p.data).enumerate() {
            assert!(
                (a - b).abs() <= tol * b.abs().max(1.0),
                "{dtype:?} [{i}]: {a} vs {b}"
            );
        }
    }
}

/// A checkpoint of `p` with input statistics, built through the library.
fn cli_free_checkpoint(net: &Network, p: &Params<f32>) -> Checkpoint {
    use shadertrain::data::Standardizer;
    let mut t = shadertrain::Trainer::cpu(net, 4)
        .unwrap()
        .standardizer(Standardizer {
            mean: vec![0.5; net.inputs()],
            std: vec![2.0; net.inputs()],
        });
    t.set_params(p).unwrap();
    t.checkpoint().unwrap()
}

#[test]
fn mismatches_are_refused_with_one_line_naming_the_tensor() {
    let net = Network::parse("3,5,2").unwrap();
    let p = net.init(3);
    let good = state_dict(&net, &p, &["0", "2"], Dtype::F32);
    let other = Network::parse("3,6,2").unwrap();
    let mut nan = good.clone();
    nan[2].3[1] = f32::NAN;
    let mut ints = good.clone();
    ints[0].1 = Dtype::I32;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "another width",
            encode(&state_dict(&other, &other.init(1), &["0", "2"], Dtype::F32)),
            "'0.weight' has shape [6, 3], but layer 1 of 3-5-2 needs [5, 3]",
        ),
        (
            "one layer short",
            encode(&good[..2]),
            "holds 1 linear layers",
        ),
        (
            "no bias",
            encode(&good[..3]),
            "'2.weight' has no bias '2.bias'",
        ),
        (
            "a 1-D weight (a norm layer)",
            file(&[("1.weight", Dtype::F32, vec![5], vec![1.0; 5])]),
            "'1.weight' has 1 dimensions",
        ),
        (
            "a NaN",
            encode(&nan),
            "2.weight[1] is NaN, a non-finite value",
        ),
        ("integers", encode(&ints), "'0.weight' is I32"),
        (
            "not safetensors",
            b"\x08\x00\x00\x00\x00\x00\x00\x00{}".to_vec(),
            "not a safetensors file",
        ),
        ("empty", Vec::new(), "not a safetensors file"),
    ];
    for (what, bytes, want) in cases {
        let e = weights::from_bytes(&bytes, &net).unwrap_err();
        assert!(e.contains(want), "{what}: {e}");
        assert!(!e.contains('\n'), "{what}: {e}");
    }
}

/// `--epochs 0 --save` writes the initial weights; `--init` starts from a
/// PyTorch-style file, and the checkpoint it writes before training holds
/// exactly those weights.
fn init_and_epochs_zero(device: Device) {
    let dir = TempDir::new(&format!("init-{}", device.name()));
    let net = Network::parse("2,6:tanh,2:softmax").unwrap();
    let p = net.init(99);
    let init = dir.path("torch.safetensors");
    std::fs::write(
        &init,
        encode(&state_dict(&net, &p, &["0", "2"], Dtype::F32)),
    )
    .unwrap();
    let out = dir.path("m.safetensors");
    let init_s = init.to_string_lossy().to_string();
    let out_s = out.to_string_lossy().to_string();
    let base = [
        "train",
        "--data",
        "spirals",
        "--layers",
        "2,6:tanh,2:softmax",
        "--quiet",
        "--backend",
        device.name(),
    ];
    let args = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let r = run(&args(&[
        "--init", &init_s, "--epochs", "0", "--save", &out_s,
    ]))
    .success();
    assert!(
        r.stdout().contains("wrote the initial weights"),
        "{}",
        r.dump()
    );
    let c = Checkpoint::load(&out).unwrap();
    assert_eq!(
        c.params, p,
        "the saved initial weights are the --init file's"
    );
    assert_eq!(c.state.epoch, 0);
    // It resumes like any checkpoint, and trains.
    let r = run(&args(&[
        "--resume", &out_s, "--epochs", "2", "--save", &out_s,
    ]))
    .success();
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
    assert_eq!(Checkpoint::load(&out).unwrap().state.epoch, 2);
    // Without --init, the seeded weights.
    run(&args(&["--epochs", "0", "--save", &out_s, "--seed", "5"])).success();
    assert_eq!(Checkpoint::load(&out).unwrap().params, net.init(5));
}
test_device!(
    init_and_epochs_zero,
    init_and_epochs_zero_cpu,
    init_and_epochs_zero_gpu
);

#[test]
fn init_and_epochs_zero_refusals() {
    let dir = TempDir::new("init-refusals");
    let net = Network::parse("2,6,2").unwrap();
    let init = dir.path("w.safetensors");
    std::fs::write(
        &init,
        encode(&state_dict(&net, &net.init(1), &["0", "2"], Dtype::F32)),
    )
    .unwrap();
    let init = init.to_string_lossy().to_string();
    let out = dir.path("m.safetensors").to_string_lossy().to_string();
    let train = |extra: &[&str]| -> Vec<String> {
        ["train", "--backend", "cpu", "--quiet"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    expect_error(&train(&["--epochs", "0"]), &["--epochs 0", "--save"]);
    expect_error(
        &train(&["--epochs", "0", "--save", &out, "--plot", "p.png"]),
        &["--epochs 0", "--plot"],
    );
    expect_error(
        &train(&["--init", &init, "--layers", "2,5,2"]),
        &["w.safetensors", "'0.weight' has shape [6, 2]", "2-5-2"],
    );
    expect_error(
        &train(&["--init", &init, "--resume", &out]),
        &["--init", "--resume"],
    );
    expect_error(
        &train(&["--init", &dir.path("nope").to_string_lossy()]),
        &["nope"],
    );
    assert_eq!(
        dir.listing(),
        vec!["w.safetensors".to_string()],
        "no output left"
    );
}

/// A regression model's predictions have no class column; a classifier's do.
#[test]
fn predict_writes_a_class_column_only_for_classifiers() {
    let dir = TempDir::new("predict-columns");
    let mut csv = String::from("a,b,y\n");
    for i in 0..40 {
        let (a, b) = (i as f32 / 40.0, (i % 7) as f32 / 7.0);
        csv += &format!("{a},{b},{}\n", 2.0 * a - b + 0.5);
    }
    let data = dir.file("r.csv", &csv);
    let model = dir.path("m.safetensors").to_string_lossy().to_string();
    let train = |data: &str, layers: &str| {
        let args = [
            "train",
            "--data",
            data,
            "--layers",
            layers,
            "--epochs",
            "3",
            "--quiet",
            "--backend",
            "cpu",
            "--save",
            &model,
        ];
        run(&args).success();
    };
    train(&data, "2,8:tanh,1:linear");
    let inputs = dir.file("x.csv", "a,b\n0.1,0.2\n0.3,0.4\n");
    for d in [&data, &inputs] {
        let r = run(&[
            "predict",
            "--model",
            &model,
            "--data",
            d,
            "--backend",
            "cpu",
        ])
        .success();
        let out = r.stdout();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("output_0"), "{}", r.dump());
        assert!(lines.all(|l| l.split(',').count() == 1), "{}", r.dump());
    }
    // eval --json names the activations.
    let r = run(&[
        "eval",
        "--model",
        &model,
        "--data",
        &data,
        "--backend",
        "cpu",
        "--json",
    ])
    .success();
    let v: Value = r.json();
    assert_eq!(v["network"], "2,8:tanh,1:linear", "{}", r.dump());
    assert_eq!(v["activations"], serde_json::json!(["tanh", "linear"]));
    assert_eq!(v["layers"], serde_json::json!([2, 8, 1]));
    // A sigmoid classifier on inputs alone keeps its class column.
    let labelled = dir.file("c.csv", "a,b,y\n0,0,0\n1,1,1\n0,1,1\n1,0,0\n");
    train(&labelled, "2,4,1");
    let r = run(&[
        "predict",
        "--model",
        &model,
        "--data",
        &inputs,
        "--backend",
        "cpu",
    ])
    .success();
    assert_eq!(
        r.stdout().lines().next(),
        Some("output_0,predicted"),
        "{}",
        r.dump()
    );
}

/// Floats in checkpoint metadata are in their shortest round-trip form.
#[test]
fn checkpoint_metadata_floats_are_shortest() {
    assert_eq!(shortest(1e-30), "1e-30");
    assert_eq!(shortest(0.5), "0.5");
    assert_eq!(shortest(1e10), "1e10");
    for v in [1e-30f32, 0.1, 3.0e-8, f32::MIN_POSITIVE, 123456.79, 0.999] {
        assert_eq!(
            shortest(v).parse::<f32>().unwrap().to_bits(),
            v.to_bits(),
            "{v}"
        );
    }
    let net = Network::parse("2,3,1").unwrap();
    let mut c = cli_free_checkpoint(&net, &net.init(1));
    c.state.lr = 1e-30;
    c.state.optimizer.eps = 1e-8;
    c.state.schedule = shadertrain::train::Schedule::Step {
        every: 3,
        gamma: 1e-20,
    };
    let bytes = c.to_bytes().unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["lr"], "1e-30");
    assert_eq!(meta["eps"], "1e-8");
    assert_eq!(meta["lr_schedule"], "step:3:1e-20");
    assert_eq!(Checkpoint::from_bytes(&bytes).unwrap(), c, "round trip");
}
