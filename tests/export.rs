//! `shadertrain export`: the ONNX file run in tract (an ONNX runtime written
//! by others) against the library's predictions for every activation, with
//! and without standardisation, at batch 1 and more through one symbolic
//! batch dimension; the torch file read back with the safetensors crate
//! (keys, shapes, dtype, folded values) and its snippet's modules; and the
//! command's files and refusals.

mod cli_support;

use cli_support::{expect_error, run, TempDir};
use safetensors::{Dtype, SafeTensors};
use shadertrain::checkpoint::Checkpoint;
use shadertrain::data::{Dataset, Standardizer, Task};
use shadertrain::export::{dense_layers, onnx, torch};
use shadertrain::network::Activation;
use shadertrain::{Network, Trainer};
use tract_onnx::prelude::*;

/// Every activation as a hidden and an output layer, and a deeper mix.
const SPECS: &[&str] = &[
    "5,7:sigmoid,3:sigmoid",
    "5,7:relu,3:relu",
    "5,7:tanh,3:tanh",
    "5,7:linear,3:linear",
    "5,7:relu,3:softmax",
    "5,8:tanh,6:linear,4:sigmoid,3:softmax",
];

/// A model of `spec` with non-zero biases (so folding into them shows), and
/// 5-input standardisation statistics when `norm`.
fn model(spec: &str, norm: bool) -> Checkpoint {
    let net = Network::parse(spec).unwrap();
    let mut c = Trainer::cpu(&net, 1).unwrap().seed(3).checkpoint().unwrap();
    let cycle = |v: &[f32]| (0..net.inputs()).map(|i| v[i % v.len()]).collect();
    c.standardizer = norm.then(|| Standardizer {
        mean: cycle(&[0.5, -1.0, 2.0, 0.0, 1e-3]),
        std: cycle(&[1.0, 2.0, 0.5, 1.0, 3.0]),
    });
    for l in 0..c.params.network().layers().len() {
        for (o, b) in c.params.bias_mut(l).iter_mut().enumerate() {
            *b = ((l * 7 + o) as f32 * 0.61).sin() * 0.5;
        }
    }
    c
}

/// `rows` raw inputs of width `n`, on the scale the statistics describe.
fn inputs(rows: usize, n: usize) -> Vec<f32> {
    (0..rows * n)
        .map(|i| (i as f32 * 0.731).sin() * 3.0 + (i % n) as f32 * 0.25)
        .collect()
}

/// The library's outputs for raw inputs `x`, standardised as `predict` does.
fn predict(ckpt: &Checkpoint, x: &[f32]) -> Vec<f32> {
    let net = ckpt.params.network();
    let rows = x.len() / net.inputs();
    let mut data = Dataset::from_vecs(
        "export",
        (net.inputs(), net.outputs()),
        x.to_vec(),
        vec![0.0; rows * net.outputs()],
        Task::Regression,
    )
    .unwrap();
    if let Some(z) = &ckpt.standardizer {
        z.apply(&mut data).unwrap();
    }
    let mut t = Trainer::cpu(net, rows).unwrap().model(ckpt).unwrap();
    t.predict(&data).unwrap()
}

fn assert_within(label: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol,
            "{label}: output {i}: exported {g}, predict {w} (diff {:e})",
            (g - w).abs()
        );
    }
}

/// The ONNX model in tract, with its input left symbolic.
fn tract_model(bytes: &[u8]) -> TypedRunnableModel<TypedModel> {
    tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap()
}

#[test]
fn onnx_in_tract_matches_predict() {
    for spec in SPECS {
        for norm in [false, true] {
            let ckpt = model(spec, norm);
            let net = ckpt.params.network().clone();
            let runnable = tract_model(&onnx::to_onnx(&ckpt).unwrap());
            // One model, several batch sizes: the batch dimension is symbolic.
            for rows in [1, 2, 17] {
                let x = inputs(rows, net.inputs());
                let input = tract_ndarray::Array2::from_shape_vec((rows, net.inputs()), x.clone())
                    .unwrap()
                    .into_tensor();
                let out = runnable.run(tvec!(input.into())).unwrap();
                let view = out[0].to_array_view::<f32>().unwrap();
                assert_eq!(view.shape(), &[rows, net.outputs()], "{spec}");
                let got: Vec<f32> = view.iter().copied().collect();
                let label = format!("{spec} norm={norm} batch={rows}");
                assert_within(&label, &got, &predict(&ckpt, &x), 1e-5);
            }
        }
    }
}

#[test]
fn onnx_graph_is_gemm_and_activation_at_opset_13() {
    let ckpt = model("5,8:tanh,6:linear,4:sigmoid,3:softmax", true);
    let bytes = onnx::to_onnx(&ckpt).unwrap();
    let proto = tract_onnx::onnx()
        .proto_model_for_read(&mut &bytes[..])
        .unwrap();
    assert!(proto
        .opset_import
        .iter()
        .any(|o| o.domain.is_empty() && o.version >= 13));
    let graph = proto.graph.unwrap();
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    assert_eq!(
        ops,
        ["Gemm", "Tanh", "Gemm", "Gemm", "Sigmoid", "Gemm", "Softmax"]
    );
    for n in &graph.node {
        let attr = |name: &str| n.attribute.iter().find(|a| a.name == name).map(|a| a.i);
        match n.op_type.as_str() {
            "Gemm" => assert_eq!(attr("transB"), Some(1)),
            "Softmax" => assert_eq!(attr("axis"), Some(-1)),
            _ => assert!(n.attribute.is_empty()),
        }
    }
    // float[batch, 5] in, float[batch, 3] out.
    use tract_onnx::pb::tensor_shape_proto::dimension::Value;
    use tract_onnx::pb::type_proto::Value as Type;
    for (vi, width) in [(&graph.input[0], 5), (&graph.output[0], 3)] {
        let Some(Type::TensorType(t)) = vi.r#type.as_ref().and_then(|t| t.value.clone()) else {
            panic!("{} has no tensor type", vi.name)
        };
        assert_eq!(t.elem_type, 1, "float");
        let dims: Vec<Option<Value>> = t.shape.unwrap().dim.into_iter().map(|d| d.value).collect();
        assert_eq!(
            dims,
            [
                Some(Value::DimParam("batch".into())),
                Some(Value::DimValue(width))
            ]
        );
    }
    // The weights keep their (out, in) layout.
    let w0 = graph
        .initializer
        .iter()
        .find(|t| t.name == "layers.0.weight")
        .unwrap();
    assert_eq!(w0.dims, [8, 5]);
}

#[test]
fn folding_standardisation_is_exact_algebra() {
    let ckpt = model("5,4:relu,2:linear", true);
    let z = ckpt.standardizer.clone().unwrap();
    let folded = &dense_layers(&ckpt).unwrap()[0];
    let (w, b) = (ckpt.params.weights(0), ckpt.params.bias(0));
    let x = inputs(1, 5);
    for o in 0..4 {
        let row = |v: &[f32]| v[o * 5..o * 5 + 5].to_vec();
        let want: f64 = b[o] as f64
            + row(w)
                .iter()
                .zip(&x)
                .enumerate()
                .map(|(i, (w, x))| *w as f64 * (*x as f64 - z.mean[i] as f64) / z.std[i] as f64)
                .sum::<f64>();
        let got: f64 = folded.bias[o] as f64
            + row(&folded.weight)
                .iter()
                .zip(&x)
                .map(|(w, x)| *w as f64 * *x as f64)
                .sum::<f64>();
        assert!((got - want).abs() < 1e-5, "neuron {o}: {got} vs {want}");
    }
    // Later layers and unstandardised models are untouched.
    assert_eq!(
        dense_layers(&ckpt).unwrap()[1].weight,
        ckpt.params.weights(1)
    );
    let plain = model("5,4:relu,2:linear", false);
    assert_eq!(
        dense_layers(&plain).unwrap()[0].weight,
        plain.params.weights(0)
    );
}

#[test]
fn folding_refuses_values_beyond_f32() {
    let mut ckpt = model("5,2:linear", true);
    ckpt.params.weights_mut(0)[3] = 1e30;
    ckpt.standardizer.as_mut().unwrap().std[3] = 1e-20;
    let e = onnx::to_onnx(&ckpt).unwrap_err().to_string();
    assert!(
        e.contains("weight (0, 3)") && e.contains("beyond f32"),
        "{e}"
    );
    assert!(torch::to_torch(&ckpt, "m.safetensors").is_err());
}

/// The `nn.` modules between `nn.Sequential(` and `)`, one a line.
fn snippet_modules(py: &str) -> Vec<String> {
    py.lines()
        .skip_while(|l| !l.contains("nn.Sequential("))
        .skip(1)
        .take_while(|l| *l != ")")
        .map(|l| l.trim().split(",  #").next().unwrap().to_string())
        .collect()
}

#[test]
fn torch_keys_shapes_and_folded_values() {
    let cases: &[(&str, &[&str])] = &[
        (
            "5,7:relu,3:softmax",
            &[
                "nn.Linear(5, 7)",
                "nn.ReLU()",
                "nn.Linear(7, 3)",
                "nn.Softmax(dim=-1)",
            ],
        ),
        (
            "5,8:tanh,6:linear,4:sigmoid,3:linear",
            &[
                "nn.Linear(5, 8)",
                "nn.Tanh()",
                "nn.Linear(8, 6)",
                "nn.Linear(6, 4)",
                "nn.Sigmoid()",
                "nn.Linear(4, 3)",
            ],
        ),
    ];
    for (spec, modules) in cases {
        for norm in [false, true] {
            let ckpt = model(spec, norm);
            let t = torch::to_torch(&ckpt, "out/m.safetensors").unwrap();
            assert_eq!(t.modules, *modules, "{spec}");
            assert_eq!(snippet_modules(&t.python), *modules, "{spec}: the snippet");
            assert!(t
                .python
                .contains("load_state_dict(load_file(\"out/m.safetensors\"), strict=True)"));
            assert_eq!(
                t.python.contains("folded"),
                norm,
                "{spec}: the snippet on folding"
            );
            let st = SafeTensors::deserialize(&t.weights).unwrap();
            let (_, header) = SafeTensors::read_metadata(&t.weights).unwrap();
            assert_eq!(header.metadata().as_ref().unwrap()["format"], "pt");
            // A key per Linear's weight and bias at its Sequential index, no others.
            let mut want_keys = Vec::new();
            let layers = dense_layers(&ckpt).unwrap();
            let linear_at: Vec<usize> = modules
                .iter()
                .enumerate()
                .filter(|(_, m)| m.starts_with("nn.Linear"))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(linear_at.len(), layers.len());
            for (&i, ly) in linear_at.iter().zip(&layers) {
                for (key, shape, values) in [
                    (format!("{i}.weight"), vec![ly.n_out, ly.n_in], &ly.weight),
                    (format!("{i}.bias"), vec![ly.n_out], &ly.bias),
                ] {
                    let v = st
                        .tensor(&key)
                        .unwrap_or_else(|_| panic!("{spec}: no {key}"));
                    assert_eq!(v.dtype(), Dtype::F32, "{key}");
                    assert_eq!(v.shape(), shape, "{key}");
                    let back: Vec<f32> = v
                        .data()
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                        .collect();
                    assert_eq!(&back, values, "{key}");
                    want_keys.push(key);
                }
            }
            let mut keys: Vec<String> = st.names().into_iter().map(String::from).collect();
            keys.sort();
            want_keys.sort();
            assert_eq!(keys, want_keys, "{spec}");
            // Folded: the first Linear differs from the checkpoint's exactly when standardised.
            assert_eq!(layers[0].weight != ckpt.params.weights(0), norm, "{spec}");
            if ckpt.params.network().output_activation() == Activation::Softmax {
                assert!(t.python.contains("model[:-1]"), "{spec}: how to get logits");
            }
        }
    }
}

#[test]
fn torch_snippet_quotes_the_file_name() {
    let t = torch::to_torch(&model("5,2:linear", false), "a \"b\"\\c.safetensors").unwrap();
    assert!(
        t.python.contains(r#"load_file("a \"b\"\\c.safetensors")"#),
        "{}",
        t.python
    );
}

#[test]
fn cli_writes_both_formats() {
    let dir = TempDir::new("export-cli");
    let m = dir.path("m.safetensors");
    model("5,7:relu,3:softmax", true).save(&m).unwrap();
    let m = m.to_str().unwrap();
    let onnx_out = dir.path("m.onnx");
    run(&[
        "export",
        "--model",
        m,
        "--format",
        "onnx",
        "--out",
        onnx_out.to_str().unwrap(),
    ])
    .success();
    let bytes = std::fs::read(&onnx_out).unwrap();
    assert_eq!(
        bytes,
        onnx::to_onnx(&Checkpoint::load(m.as_ref()).unwrap()).unwrap()
    );
    tract_model(&bytes);

    let torch_out = dir.path("m.torch.safetensors");
    let r = run(&[
        "export",
        "--model",
        m,
        "--format",
        "torch",
        "--out",
        torch_out.to_str().unwrap(),
    ])
    .success();
    let py = std::fs::read_to_string(dir.path("m.torch.py")).unwrap();
    assert_eq!(r.stdout(), py, "the snippet printed is the one written");
    assert!(py.contains(&format!("load_file(\"{}\")", torch_out.display())));
    let st_bytes = std::fs::read(&torch_out).unwrap();
    assert_eq!(SafeTensors::deserialize(&st_bytes).unwrap().len(), 4);
    // The export is not a checkpoint, and says so if one tries.
    expect_error(
        &[
            "export",
            "--model",
            torch_out.to_str().unwrap(),
            "--format",
            "onnx",
            "--out",
            dir.path("x.onnx").to_str().unwrap(),
        ],
        &["metadata format is 'pt', not 'shadertrain'"],
    );
}

#[test]
fn cli_refusals_are_one_line_and_write_nothing() {
    let dir = TempDir::new("export-refusals");
    let m = dir.path("m.safetensors");
    model("5,2:linear", false).save(&m).unwrap();
    let m = m.to_str().unwrap();
    let out = |name: &str| dir.path(name).to_str().unwrap().to_string();
    let junk = dir.file("junk.safetensors", "not a model");
    expect_error(
        &[
            "export",
            "--model",
            &junk,
            "--format",
            "onnx",
            "--out",
            &out("a.onnx"),
        ],
        &["junk.safetensors", "not a safetensors checkpoint"],
    );
    expect_error(
        &[
            "export",
            "--model",
            m,
            "--format",
            "onnx",
            "--out",
            &out("nowhere/a.onnx"),
        ],
        &["--out", "does not exist"],
    );
    expect_error(
        &[
            "export",
            "--model",
            m,
            "--format",
            "keras",
            "--out",
            &out("a.onnx"),
        ],
        &["--format", "keras", "onnx, torch"],
    );
    expect_error(
        &["export", "--model", m, "--format", "onnx", "--out", m],
        &["--out", "is the --model file", "replace an input"],
    );
    expect_error(
        &[
            "export",
            "--model",
            m,
            "--format",
            "torch",
            "--out",
            &out("m.py"),
        ],
        &["--out", ".py"],
    );
    expect_error(
        &[
            "export",
            "--model",
            &out("missing.safetensors"),
            "--format",
            "torch",
            "--out",
            &out("t.safetensors"),
        ],
        &["missing.safetensors"],
    );
    let mut left = dir.listing();
    left.sort();
    assert_eq!(
        left,
        ["junk.safetensors", "m.safetensors"],
        "nothing written"
    );
}
