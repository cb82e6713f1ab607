//! End-to-end tests of the `shadertrain` binary: `example`, `train`, `devices`
//! and the one-line `error: ...` for every kind of bad input.
//!
//! Tests that need a GPU (`--backend gpu`) go through [`gpu_or_skip`]: without
//! an adapter that can run compute shaders they print `skipped: ...` and
//! return, unless `REQUIRE_GPU=1`, in which case they fail.

use std::path::Path;

use serde_json::Value;

mod cli_support;
use cli_support::*;

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

/// A deterministic jitter in [-0.15, 0.15] for sample `i`, coordinate `k`.
fn jitter(i: usize, k: usize) -> f64 {
    // Knuth's multiplicative hash: well spread, no RNG crate needed.
    let h = ((i * 2 + k) as u64 + 1).wrapping_mul(2_654_435_761) % 1000;
    (h as f64 / 999.0 - 0.5) * 0.3
}

/// Three well-separated 2-D clusters, 50 points each, interleaved. Columns are
/// the two inputs and `label` (0, 1 or 2); with `label_in_middle`, the order is
/// `x,label,y` and a last column `noise` holds non-integer values.
fn clusters_csv(label_in_middle: bool) -> String {
    const CENTERS: [(f64, f64); 3] = [(-0.6, -0.6), (0.6, -0.6), (0.0, 0.6)];
    let mut s = String::from(if label_in_middle {
        "x,label,y,noise\n"
    } else {
        "x,y,label\n"
    });
    for i in 0..150 {
        let class = i % 3;
        let (cx, cy) = CENTERS[class];
        let (x, y) = (cx + jitter(i, 0), cy + jitter(i, 1));
        if label_in_middle {
            s.push_str(&format!(
                "{x:.4},{class},{y:.4},{:.3}\n",
                0.5 + jitter(i, 2)
            ));
        } else {
            s.push_str(&format!("{x:.4},{y:.4},{class}\n"));
        }
    }
    s
}

/// 120 rows of a smooth real-valued function of two inputs, in (0, 1).
fn regression_csv() -> String {
    let mut s = String::from("a,b,value\n");
    for i in 0..120 {
        let a = (i % 12) as f64 / 11.0 - 0.5;
        let b = (i / 12) as f64 / 9.0 - 0.5;
        let v = 0.5 + 0.3 * a - 0.2 * b + 0.1 * (3.0 * a * b).sin();
        s.push_str(&format!("{a:.4},{b:.4},{v:.5}\n"));
    }
    s
}

/// Read and parse a metrics file.
fn read_metrics(path: &Path, r: &Run) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("no metrics at {} ({e})\n{}", path.display(), r.dump()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("metrics are not JSON ({e}):\n{text}\n{}", r.dump()))
}

/// Check the metrics of a finished run: keys, layers, one entry per epoch,
/// finite losses that went down, and the backend. Returns the per-epoch losses.
fn check_metrics(m: &Value, backend: &str, layers: &[u64], epochs: usize, r: &Run) -> Vec<f64> {
    let ctx = || format!("metrics:\n{m:#}\n{}", r.dump());
    for key in ["backend", "adapter", "layers", "epochs"] {
        assert!(m.get(key).is_some(), "metrics lack '{key}'\n{}", ctx());
    }
    assert_eq!(m["backend"], backend, "{}", ctx());
    assert!(
        m["adapter"].as_str().is_some_and(|a| !a.is_empty()),
        "adapter should be a non-empty string\n{}",
        ctx()
    );
    assert_eq!(m["layers"], serde_json::json!(layers), "{}", ctx());
    let list = m["epochs"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", ctx()));
    assert_eq!(list.len(), epochs, "one entry per epoch\n{}", ctx());
    let mut losses = Vec::new();
    for (i, e) in list.iter().enumerate() {
        for key in ["epoch", "loss", "accuracy", "seconds"] {
            assert!(e.get(key).is_some(), "epoch {i} lacks '{key}'\n{}", ctx());
        }
        assert_eq!(e["epoch"], i + 1, "epochs are numbered from 1\n{}", ctx());
        let loss = e["loss"].as_f64().unwrap_or(f64::NAN);
        assert!(
            loss.is_finite() && loss >= 0.0,
            "epoch {i}: bad loss\n{}",
            ctx()
        );
        let secs = e["seconds"].as_f64().unwrap_or(f64::NAN);
        assert!(
            secs.is_finite() && secs >= 0.0,
            "epoch {i}: bad seconds\n{}",
            ctx()
        );
        losses.push(loss);
    }
    assert!(
        losses[losses.len() - 1] < losses[0],
        "the loss should go down: first {}, last {}\n{}",
        losses[0],
        losses[losses.len() - 1],
        ctx()
    );
    losses
}

// ---------------------------------------------------------------------------
// example
// ---------------------------------------------------------------------------

/// A number at a JSON pointer, or a panic naming it.
fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in\n{v:#}"))
}

fn assert_close(v: &Value, pointer: &str, want: f64, tol: f64) {
    let got = num(v, pointer);
    assert!(
        (got - want).abs() <= tol,
        "{pointer}: got {got}, want {want} (±{tol})\n{v:#}"
    );
}

/// Check an `example --json` report against the published worked example.
fn check_example(v: &Value, tol: f64) {
    for key in [
        "/backend",
        "/forward/hidden",
        "/forward/output",
        "/error",
        "/deltas/output",
        "/deltas/hidden",
        "/updated/weights",
        "/updated/biases",
    ] {
        assert!(v.pointer(key).is_some(), "missing {key} in\n{v:#}");
    }
    // Shapes: weights [layer][out][in], biases [layer][out].
    let w = v["updated"]["weights"].as_array().unwrap();
    assert_eq!(w.len(), 2, "two layers of weights\n{v:#}");
    for layer in w {
        let rows = layer.as_array().unwrap();
        assert_eq!(rows.len(), 2, "{v:#}");
        assert!(rows.iter().all(|r| r.as_array().unwrap().len() == 2));
    }
    let b = v["updated"]["biases"].as_array().unwrap();
    assert_eq!(b.len(), 2, "two layers of biases\n{v:#}");
    assert!(b.iter().all(|r| r.as_array().unwrap().len() == 2));

    // Forward pass and error.
    assert_close(v, "/forward/hidden/0", 0.593269992, tol);
    assert_close(v, "/forward/hidden/1", 0.596884378, tol);
    assert_close(v, "/forward/output/0", 0.75136507, tol);
    assert_close(v, "/forward/output/1", 0.772928465, tol);
    assert_close(v, "/error", 0.298371109, tol);
    assert_close(v, "/deltas/output/0", 0.138498562, tol);

    // Updated weights w1..w8: hidden rows h1=[w1,w2], h2=[w3,w4];
    // output rows o1=[w5,w6], o2=[w7,w8].
    let want = [
        ("/updated/weights/0/0/0", 0.149780716),
        ("/updated/weights/0/0/1", 0.19956143),
        ("/updated/weights/0/1/0", 0.24975114),
        ("/updated/weights/0/1/1", 0.29950229),
        ("/updated/weights/1/0/0", 0.35891648),
        ("/updated/weights/1/0/1", 0.408666186),
        ("/updated/weights/1/1/0", 0.511301270),
        ("/updated/weights/1/1/1", 0.561370121),
    ];
    for (p, x) in want {
        assert_close(v, p, x, tol);
    }

    // The deltas not in the published text must agree with the update:
    // w' = w - lr·δ_out·in, b' = b - lr·δ_out (lr 0.5).
    let lr = 0.5;
    let input = [0.05, 0.10];
    let w0 = [[[0.15, 0.20], [0.25, 0.30]], [[0.40, 0.45], [0.50, 0.55]]];
    let b0 = [[0.35, 0.35], [0.60, 0.60]];
    for (l, deltas) in ["/deltas/hidden", "/deltas/output"].iter().enumerate() {
        for j in 0..2 {
            let d = num(v, &format!("{deltas}/{j}"));
            assert_close(
                v,
                &format!("/updated/biases/{l}/{j}"),
                b0[l][j] - lr * d,
                tol,
            );
            for (i, &x_in) in input.iter().enumerate() {
                let a = if l == 0 {
                    x_in
                } else {
                    num(v, &format!("/forward/hidden/{i}"))
                };
                assert_close(
                    v,
                    &format!("/updated/weights/{l}/{j}/{i}"),
                    w0[l][j][i] - lr * d * a,
                    tol,
                );
            }
        }
    }
}

/// `example --json`: the worked example's numbers, within 1e-8 on the CPU
/// and 1e-6 on the GPU, and a backend naming the device.
fn example_json_matches_worked_example(device: Device) {
    let r = run(&["example", "--json", "--backend", device.name()]).success();
    let v = r.json();
    let tol = match device {
        Device::Cpu => {
            assert_eq!(v["backend"], "cpu", "{}", r.dump());
            1e-8
        }
        Device::Gpu => {
            assert!(
                v["backend"].as_str().is_some_and(|b| b.starts_with("gpu")),
                "backend should name the GPU\n{}",
                r.dump()
            );
            1e-6
        }
    };
    check_example(&v, tol);
}

test_device!(
    example_json_matches_worked_example,
    example_json_cpu_matches_worked_example,
    example_json_gpu_matches_worked_example
);

#[test]
fn example_text_cpu_prints_e_total() {
    let r = run(&["example", "--backend", "cpu"]).success();
    let out = r.stdout();
    assert!(out.contains("E_total"), "{}", r.dump());
    assert!(out.contains("0.298371109"), "E_total value\n{}", r.dump());
    assert!(out.contains("0.149780716"), "updated w1\n{}", r.dump());
}

// ---------------------------------------------------------------------------
// train
// ---------------------------------------------------------------------------

/// `train` on a CSV, quietly, with metrics: batch 8, lr 2.
fn csv_train_args<'a>(
    data: &'a str,
    layers: &'a str,
    epochs: &'a str,
    backend: &'a str,
    metrics: &'a str,
) -> Vec<&'a str> {
    csv_train_args_lr(data, layers, epochs, backend, metrics, "2")
}

/// [`csv_train_args`] with another learning rate.
fn csv_train_args_lr<'a>(
    data: &'a str,
    layers: &'a str,
    epochs: &'a str,
    backend: &'a str,
    metrics: &'a str,
    lr: &'a str,
) -> Vec<&'a str> {
    let mut v = vec![
        "train", "--data", data, "--layers", layers, "--epochs", epochs,
    ];
    v.extend_from_slice(&["--batch", "8", "--lr", lr, "--backend", backend, "--quiet"]);
    v.extend_from_slice(&["--metrics", metrics]);
    v
}

/// Train the 3-class clusters on `device` and check stdout and the metrics.
fn train_csv_classification(device: Device) {
    let backend = device.name();
    let dir = TempDir::new(&format!("train-{backend}"));
    let data = dir.file("clusters.csv", &clusters_csv(false));
    let metrics = dir.path("m.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let r = run(&csv_train_args(&data, "2,8,3", "30", backend, &metrics_arg)).success();
    let out = r.stdout();
    assert!(out.contains("final loss"), "{}", r.dump());
    assert!(out.contains("accuracy"), "{}", r.dump());
    let m = read_metrics(&metrics, &r);
    check_metrics(&m, backend, &[2, 8, 3], 30, &r);
    let acc = m["final"]["accuracy"].as_f64();
    assert!(
        acc.is_some_and(|a| a >= 0.9),
        "well-separated clusters should reach 90% accuracy, got {acc:?}\n{m:#}\n{}",
        r.dump()
    );
    assert_eq!(
        dir.listing(),
        ["clusters.csv", "m.json"],
        "no temporary files left behind"
    );
}

test_device!(
    train_csv_classification,
    train_csv_classification_cpu,
    train_csv_classification_gpu
);

#[test]
fn train_csv_regression_has_null_accuracy() {
    let dir = TempDir::new("regression");
    let data = dir.file("reg.csv", &regression_csv());
    let metrics = dir.path("m.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let r = run(&csv_train_args(&data, "2,6,1", "20", "cpu", &metrics_arg)).success();
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
    assert!(
        !r.stdout().contains("accuracy:"),
        "regression has no accuracy line\n{}",
        r.dump()
    );
    let m = read_metrics(&metrics, &r);
    check_metrics(&m, "cpu", &[2, 6, 1], 20, &r);
    assert!(m["final"]["accuracy"].is_null(), "{m:#}");
    for e in m["epochs"].as_array().unwrap() {
        assert!(e["accuracy"].is_null(), "per-epoch accuracy is null\n{m:#}");
    }
}

#[test]
fn train_csv_target_in_middle_column() {
    let dir = TempDir::new("target");
    let data = dir.file("mid.csv", &clusters_csv(true));
    let metrics = dir.path("m.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    // Inputs are x, y and noise (3 columns); the target is `label`.
    let r = run(&[
        "train",
        "--data",
        &data,
        "--target",
        "label",
        "--layers",
        "3,8,3",
        "--epochs",
        "30",
        "--batch",
        "8",
        "--lr",
        "2",
        "--backend",
        "cpu",
        "--quiet",
        "--metrics",
        &metrics_arg,
    ])
    .success();
    assert!(r.stdout().contains("accuracy"), "{}", r.dump());
    let m = read_metrics(&metrics, &r);
    check_metrics(&m, "cpu", &[3, 8, 3], 30, &r);
    let acc = m["final"]["accuracy"].as_f64();
    assert!(
        acc.is_some_and(|a| a >= 0.9),
        "the middle column was the label: accuracy should be high, got {acc:?}\n{m:#}"
    );
    // Without --target the last column (non-integer `noise`) is the target.
    let args = [
        "train",
        "--data",
        &data,
        "--layers",
        "3,8,3",
        "--epochs",
        "1",
        "--backend",
        "cpu",
        "--quiet",
    ];
    expect_error(&args, &["line 2", "noise"]);
}

#[test]
fn train_builtin_sets() {
    let r = run(&["train", "--data", "xor", "--backend", "cpu", "--quiet"]).success();
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
    assert!(r.stdout().contains("accuracy"), "{}", r.dump());
    assert!(
        r.stderr_lines().is_empty(),
        "--quiet prints nothing on stderr\n{}",
        r.dump()
    );
    let r = run(&[
        "train",
        "--data",
        "example",
        "--epochs",
        "1",
        "--backend",
        "cpu",
        "--quiet",
    ])
    .success();
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
}

// ---------------------------------------------------------------------------
// devices
// ---------------------------------------------------------------------------

#[test]
fn devices_text_and_json() {
    let r = run(&["devices"]).success();
    assert!(
        !r.stdout().trim().is_empty(),
        "devices prints a list or says there is none\n{}",
        r.dump()
    );
    let r = run(&["devices", "--json"]).success();
    let v = r.json();
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("devices --json is not an array\n{}", r.dump()));
    for a in list {
        assert!(
            a["name"].is_string(),
            "adapter without a name\n{}",
            r.dump()
        );
        assert!(
            a["compute"].is_boolean(),
            "adapter without compute\n{}",
            r.dump()
        );
    }
}

// ---------------------------------------------------------------------------
// Bad input: one `error:` line, non-zero exit, never a panic
// ---------------------------------------------------------------------------

/// `train --backend cpu --quiet` plus `extra`.
fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--backend", "cpu", "--quiet"];
    v.extend_from_slice(extra);
    v
}

#[test]
fn bad_layers() {
    expect_error(&train_args(&["--layers", "2"]), &["--layers"]);
    expect_error(&train_args(&["--layers", "2,0,2"]), &["--layers", "0"]);
    expect_error(&train_args(&["--layers", "2,x,2"]), &["--layers", "'x'"]);
}

#[test]
fn bad_batch_epochs_lr() {
    expect_error(&train_args(&["--batch", "0"]), &["--batch"]);
    expect_error(&train_args(&["--epochs", "0"]), &["--epochs"]);
    for lr in ["0", "-1", "nan", "inf"] {
        expect_error(&train_args(&["--lr", lr]), &["--lr"]);
    }
}

#[test]
fn bad_backend_flag_and_dataset() {
    expect_error(
        &["train", "--backend", "foo", "--quiet"],
        &["foo", "--backend"],
    );
    expect_error(&train_args(&["--bogus"]), &["--bogus"]);
    expect_error(&train_args(&["--data", "nosuch"]), &["nosuch", "--data"]);
}

// Broken CSV files, end to end: tests/bad_inputs.rs.

#[test]
fn csv_without_layers_is_refused() {
    let dir = TempDir::new("no-layers");
    // Two inputs and 0/1 labels: would train with the built-in default 2,32,2.
    let data = dir.file("two.csv", "a,b,label\n0,0,0\n1,1,1\n0,1,1\n1,0,0\n");
    expect_error(&train_args(&["--data", &data]), &["--layers"]);
}

/// With no adapter (here: `WGPU_BACKEND` names an API this OS lacks),
/// `--backend gpu` is a one-line error and `--backend auto` falls back to the
/// CPU with a one-line notice. Runs on every machine, GPU or not.
#[test]
fn missing_gpu_is_an_error_or_a_notice() {
    let no_gpu: &[(&str, &str)] = if cfg!(target_os = "macos") {
        &[("WGPU_BACKEND", "dx12")]
    } else {
        &[("WGPU_BACKEND", "metal")]
    };
    let r = run_env(&["example", "--backend", "gpu", "--json"], no_gpu);
    assert!(!r.out.status.success(), "expected failure\n{}", r.dump());
    let lines = r.stderr_lines();
    assert_eq!(lines.len(), 1, "{}", r.dump());
    assert!(
        lines[0].starts_with("error: no GPU adapter"),
        "{}",
        r.dump()
    );
    assert!(!r.stderr().contains("panicked"), "{}", r.dump());

    let r = run_env(&["train", "--data", "xor", "--epochs", "5"], no_gpu).success();
    let notices: Vec<String> = r
        .stderr_lines()
        .into_iter()
        .filter(|l| l.starts_with("notice:"))
        .collect();
    assert_eq!(notices.len(), 1, "one notice line\n{}", r.dump());
    assert!(notices[0].contains("using the CPU backend"), "{}", r.dump());
    assert!(r.stderr().contains("backend: cpu"), "{}", r.dump());
    assert!(r.stdout().contains("final loss"), "{}", r.dump());
}

// ---------------------------------------------------------------------------
// bench
// ---------------------------------------------------------------------------

/// The JSON objects of `bench --json`, one per line.
fn bench_rows(args: &[&str]) -> (Vec<Value>, Run) {
    bench_rows_env(args, &[])
}

/// [`bench_rows`] with extra environment variables.
fn bench_rows_env(args: &[&str], env: &[(&str, &str)]) -> (Vec<Value>, Run) {
    let r = run_env(args, env).success();
    let rows = r
        .stdout()
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\n{}", r.dump()))
        })
        .collect();
    (rows, r)
}

/// The keys the issue names, with sane values.
fn check_bench_row(v: &Value, backend: &str, layers: &[u64], batch: u64, steps: u64, r: &Run) {
    assert_eq!(v["backend"], backend, "{}", r.dump());
    assert!(v["adapter"].as_str().is_some_and(|s| !s.is_empty()));
    let got: Vec<u64> = serde_json::from_value(v["layers"].clone()).unwrap();
    assert_eq!(got, layers, "{}", r.dump());
    assert_eq!(v["batch"], batch);
    assert_eq!(v["steps"], steps);
    let (med, min, max) = (
        num(v, "/ms_per_step_median"),
        num(v, "/ms_per_step_min"),
        num(v, "/ms_per_step_max"),
    );
    assert!(0.0 < min && min <= med && med <= max, "{}", r.dump());
    let sps = num(v, "/samples_per_s");
    assert!(
        (sps - batch as f64 / (med / 1e3)).abs() <= 1e-6 * sps,
        "{}",
        r.dump()
    );
    let macs: u64 = layers.windows(2).map(|w| w[0] * w[1]).sum();
    let gflops = 6.0 * (batch * macs) as f64 / (med / 1e3) / 1e9;
    assert!(
        (num(v, "/gflops") - gflops).abs() <= 1e-6 * gflops,
        "{}",
        r.dump()
    );
}

#[test]
fn bench_cpu_json_has_every_key() {
    let (rows, r) = bench_rows(&[
        "bench",
        "--backend",
        "cpu",
        "--workload",
        "W0",
        "--steps",
        "50",
        "--json",
    ]);
    assert_eq!(rows.len(), 1, "{}", r.dump());
    check_bench_row(&rows[0], "cpu", &[2, 2, 2], 1, 50, &r);
    assert!(
        rows[0].get("speedup").is_none(),
        "speedup needs both backends"
    );
    assert_eq!(rows[0]["workload"], "W0");
}

#[test]
fn bench_text_reports_the_workload() {
    let r = run(&[
        "bench",
        "--backend",
        "cpu",
        "--layers",
        "5,17,3",
        "--batch",
        "9",
        "--steps",
        "4",
    ])
    .success();
    let out = r.stdout();
    assert!(
        out.contains("ms/step") && out.contains("GFLOP/s"),
        "{}",
        r.dump()
    );
    assert!(
        out.contains("5-17-3") && out.contains("batch 9"),
        "{}",
        r.dump()
    );
}

#[test]
fn bench_both_compares_gpu_with_cpu() {
    if !gpu_or_skip("bench_both_compares_gpu_with_cpu") {
        return;
    }
    let (rows, r) = bench_rows(&[
        "bench", "--layers", "13,37,5", "--batch", "67", "--steps", "5", "--json",
    ]);
    assert_eq!(rows.len(), 2, "{}", r.dump());
    check_bench_row(&rows[0], "gpu", &[13, 37, 5], 67, 5, &r);
    check_bench_row(&rows[1], "cpu", &[13, 37, 5], 67, 5, &r);
    let speedup = num(&rows[0], "/speedup");
    let want = num(&rows[1], "/ms_per_step_median") / num(&rows[0], "/ms_per_step_median");
    assert!((speedup - want).abs() <= 1e-9 * want, "{}", r.dump());
    // Same seed, same 8 steps: the two backends agree to f32 rounding.
    let diff = num(&rows[0], "/max_param_diff");
    assert!(
        (0.0..1e-4).contains(&diff),
        "max_param_diff {diff}\n{}",
        r.dump()
    );
    assert_eq!(rows[1]["max_param_diff"], rows[0]["max_param_diff"]);
}

/// What ran on the GPU: checked or not, dispatches per step, and each tiled
/// product's configuration with its source; `--kernel-config` replays one
/// (the previous loop core included) and is reported as `given`, also by
/// every worker count of `--devices`.
#[test]
fn bench_gpu_reports_kernel_configs() {
    if !gpu_or_skip("bench_gpu_reports_kernel_configs") {
        return;
    }
    let base = [
        "bench",
        "--backend",
        "gpu",
        "--layers",
        "5,7,3",
        "--batch",
        "9",
        "--steps",
        "2",
        "--json",
    ];
    // A network this small steps in one dispatch unless told otherwise.
    let (rows, r) = bench_rows(&base);
    assert_eq!(rows[0]["dispatches_per_step"], 1, "{}", r.dump());
    assert_eq!(rows[0]["whole_step"], true, "{}", r.dump());
    let (rows, r) = bench_rows(&[&base[..], &["--profile"]].concat());
    let prof = rows[0]["profile"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = prof.iter().filter_map(|k| k["kernel"].as_str()).collect();
    assert_eq!(names, ["whole_step_2"], "{}", r.dump());
    let (rows, r) = bench_rows_env(&base, &[("SHADERTRAIN_WHOLE_STEP", "0")]);
    let v = &rows[0];
    assert_eq!(v["checked"], false, "{}", r.dump());
    assert_eq!(v["whole_step"], false, "{}", r.dump());
    // forward, the output layer with its loss, delta_hidden, gradient ×2
    assert_eq!(v["dispatches_per_step"], 5, "{}", r.dump());
    let configs = v["kernel_configs"].as_array().expect("kernel_configs");
    // forward ×2, delta_hidden ×1, gradient ×2
    assert_eq!(configs.len(), 5, "{}", r.dump());
    assert!(
        configs.iter().all(|c| c["source"] == "heuristic"),
        "{}",
        r.dump()
    );
    assert_eq!(configs[0]["product"], "forward layer 0");
    assert_eq!(configs[0]["shape"], serde_json::json!([9, 7, 5]));
    for config in [
        "loops:8x8:4x4:k8",
        "gen:4x16:4x8:k16",
        "gen:4x16:4x8:k16:db",
    ] {
        let mut args = base.to_vec();
        args.extend(["--kernel-config", config]);
        let (rows, r) = bench_rows(&args);
        let configs = rows[0]["kernel_configs"]
            .as_array()
            .expect("kernel_configs");
        assert!(
            configs
                .iter()
                .all(|c| c["config"] == config && c["source"] == "given"),
            "{}",
            r.dump()
        );
    }
    // The scaling table's workers run it too: every row reports it.
    let mut args = base.to_vec();
    args.extend(["--devices", "0,0", "--kernel-config", "gen:4x16:4x8:k16"]);
    let (rows, r) = bench_rows(&args);
    assert_eq!(rows.len(), 2, "{}", r.dump());
    assert!(
        rows.iter()
            .all(|w| w["kernel_config"] == "gen:4x16:4x8:k16"),
        "{}",
        r.dump()
    );
    let env = [("SHADERTRAIN_CHECKED", "1")];
    let r = run_env(&base, &env).success();
    let v: Value = serde_json::from_str(r.stdout().lines().next().unwrap_or("")).unwrap();
    assert_eq!(v["checked"], true, "{}", r.dump());
    expect_error(
        &[
            "bench",
            "--backend",
            "gpu",
            "--kernel-config",
            "gen:8x8:3x4:k8",
        ],
        &["--kernel-config", "gen:8x8:3x4:k8"],
    );
    expect_error(
        &[
            "bench",
            "--backend",
            "gpu",
            "--kernel-config",
            "loops:8x8:4x4:k8:db",
        ],
        &["--kernel-config", "loops:8x8:4x4:k8:db", "loops core"],
    );
}

#[test]
fn bad_bench_flags() {
    let bench = |extra: &[&'static str]| {
        let mut v = vec!["bench", "--backend", "cpu"];
        v.extend_from_slice(extra);
        v
    };
    expect_error(&bench(&["--workload", "W9"]), &["W9"]);
    expect_error(
        &bench(&["--workload", "W1", "--layers", "2,2"]),
        &["--workload", "--layers"],
    );
    expect_error(&bench(&["--steps", "0"]), &["--steps"]);
    expect_error(&bench(&["--batch", "0"]), &["--batch"]);
    expect_error(&bench(&["--lr", "nan"]), &["--lr"]);
    expect_error(&["bench", "--backend", "tpu"], &["tpu"]);
    expect_error(&bench(&["--layers", "3"]), &["--layers"]);
    expect_error(
        &bench(&["--kernel-config", "gen:8x8"]),
        &["--kernel-config"],
    );
}

// ---------------------------------------------------------------------------
// validation and normalisation
// ---------------------------------------------------------------------------

/// `--val-split` and `--val` score a held-out set every epoch, into the
/// progress, the metrics and the final lines; `--normalize` still learns.
#[test]
fn train_with_validation_and_normalize() {
    let dir = TempDir::new("validation");
    let data = dir.file("clusters.csv", &clusters_csv(false));
    let metrics = dir.path("m.json");
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let base = csv_train_args(&data, "2,8,3", "20", "cpu", &metrics_arg);
    for extra in [
        &["--val-split", "0.25"][..],
        &["--val", &data, "--normalize"][..],
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let r = run(&args).success();
        let m = read_metrics(&metrics, &r);
        check_metrics(&m, "cpu", &[2, 8, 3], 20, &r);
        for e in m["epochs"].as_array().unwrap() {
            assert!(num(e, "/val_loss") >= 0.0, "{m:#}");
            assert!((0.0..=1.0).contains(&num(e, "/val_accuracy")), "{m:#}");
            assert!(num(e, "/samples_per_s") > 0.0, "{m:#}");
        }
        let val_acc = num(&m, "/final/val_accuracy");
        assert!(
            val_acc >= 0.9,
            "validation accuracy {val_acc}\n{}",
            r.dump()
        );
        assert!(r.stdout().contains("validation accuracy"), "{}", r.dump());
    }
}

#[test]
fn bad_validation_flags() {
    expect_error(&train_args(&["--val-split", "1.5"]), &["--val-split"]);
    expect_error(&train_args(&["--val-split", "0"]), &["--val-split"]);
    expect_error(&train_args(&["--val-split", "nan"]), &["--val-split"]);
    expect_error(
        &train_args(&["--val-split", "0.1", "--val", "x.csv"]),
        &["--val-split", "--val"],
    );
    expect_error(&train_args(&["--val", "spirals"]), &["--val", "spirals"]);
    expect_error(&train_args(&["--val", "/nonexistent/v.csv"]), &["v.csv"]);
    // A validation CSV whose width does not fit the network.
    let dir = TempDir::new("bad-val");
    let v = dir.file("v.csv", "a,b,c,label\n1,2,3,0\n");
    expect_error(
        &train_args(&["--layers", "2,4,2", "--val", &v]),
        &["3 input columns"],
    );
}

#[test]
fn bench_gpu_profile_and_kernel_sets() {
    if !gpu_or_skip("bench_gpu_profile_and_kernel_sets") {
        return;
    }
    // The tiled step's own dispatches, not the whole step's one.
    let tiled_step = [("SHADERTRAIN_WHOLE_STEP", "0")];
    for kernels in ["tiled", "simple"] {
        let (rows, r) = bench_rows_env(
            &[
                "bench",
                "--backend",
                "gpu",
                "--layers",
                "9,21,4",
                "--batch",
                "33",
                "--steps",
                "3",
                "--kernels",
                kernels,
                "--profile",
                "--json",
            ],
            &tiled_step,
        );
        assert_eq!(rows.len(), 1, "{}", r.dump());
        check_bench_row(&rows[0], "gpu", &[9, 21, 4], 33, 3, &r);
        assert!(
            rows[0]["kernels"]
                .as_str()
                .unwrap_or("")
                .starts_with(kernels),
            "{}",
            r.dump()
        );
        // lavapipe has timestamp queries: every dispatch is named and timed.
        let prof = rows[0]["profile"].as_array().cloned().unwrap_or_default();
        assert!(!prof.is_empty(), "{}", r.dump());
        for k in &prof {
            assert!(
                k["kernel"].as_str().is_some_and(|s| !s.is_empty()),
                "{}",
                r.dump()
            );
            assert!(num(k, "/ms") >= 0.0, "{}", r.dump());
        }
        let names: Vec<&str> = prof.iter().filter_map(|k| k["kernel"].as_str()).collect();
        assert!(names.iter().any(|n| n.starts_with("forward")), "{names:?}");
        assert!(names.iter().any(|n| n.contains("delta")), "{names:?}");
    }
}

// ---------------------------------------------------------------------------
// checkpoints
// ---------------------------------------------------------------------------

/// Training 4 epochs straight, and 2 then resuming to 4, give the same
/// parameters bit for bit and the same losses in epochs 3 and 4; with the
/// plain defaults, and with Adam, a step schedule and relu/softmax layers,
/// whose moments and schedule the checkpoint must carry.
fn resume_matches_straight_run(device: Device) {
    let backend = device.name();
    let test = format!("resume-{backend}");
    resume_case(&format!("{test}-sgd"), backend, "2,8,3", "2", &[]);
    resume_case(
        &format!("{test}-adam"),
        backend,
        "2,8:relu,3:softmax",
        "0.05",
        &[
            "--optimizer",
            "adam",
            "--weight-decay",
            "0.001",
            "--lr-schedule",
            "step",
            "--lr-step",
            "1",
            "--lr-gamma",
            "0.5",
        ],
    );
}

fn resume_case(test: &str, backend: &str, layers: &str, lr: &str, flags: &[&str]) {
    let dir = TempDir::new(test);
    let data = dir.file("clusters.csv", &clusters_csv(false));
    let [straight, half, resumed] = ["straight", "half", "resumed"].map(|n| {
        (
            dir.path(&format!("{n}.safetensors"))
                .to_string_lossy()
                .into_owned(),
            dir.path(&format!("{n}.json"))
                .to_string_lossy()
                .into_owned(),
        )
    });
    let train = |epochs: &str, out: &(String, String), extra: &[&str]| {
        let mut args = csv_train_args_lr(&data, layers, epochs, backend, &out.1, lr);
        args.extend_from_slice(&["--save", &out.0, "--val-split", "0.2", "--normalize"]);
        args.extend_from_slice(extra);
        run(&args).success()
    };
    let r4 = train("4", &straight, flags);
    let half_flags: Vec<&str> = flags.iter().copied().chain(["--save-every", "1"]).collect();
    train("2", &half, &half_flags);
    // The optimiser and schedule come back from the checkpoint.
    let r = train("4", &resumed, &["--resume", &half.0]);
    let load = |p: &str| shadertrain::checkpoint::Checkpoint::load(Path::new(p)).unwrap();
    let (a, b) = (load(&straight.0), load(&resumed.0));
    assert_eq!(a.state.epoch, 4);
    assert_eq!(b.state.epoch, 4);
    assert_eq!(load(&half.0).state.epoch, 2);
    assert!(
        a.params
            .data
            .iter()
            .zip(&b.params.data)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "resumed parameters differ from the straight run's\n{}\n{}",
        r4.dump(),
        r.dump()
    );
    assert_eq!(a.standardizer, b.standardizer);
    assert_eq!(a.state.optimizer, b.state.optimizer);
    assert_eq!(a.optimizer_state, b.optimizer_state, "optimizer moments");
    let (ma, mb) = (
        read_metrics(Path::new(&straight.1), &r4),
        read_metrics(Path::new(&resumed.1), &r),
    );
    // The resumed run's metrics cover the whole run, its first two epochs
    // from the checkpoint.
    let epochs_b = mb["epochs"].as_array().unwrap();
    assert_eq!(epochs_b.len(), 4, "{mb:#}");
    for (i, e) in epochs_b.iter().enumerate() {
        let e_a = &ma["epochs"][i];
        for key in ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"] {
            assert_eq!(e[key], e_a[key], "epoch {} {key}\n{ma:#}\n{mb:#}", i + 1);
        }
    }
    // Nothing but the outputs in the directory: no temporary files.
    for name in dir.listing() {
        assert!(!name.contains(".tmp"), "left behind: {name}");
    }
}

test_device!(
    resume_matches_straight_run,
    resume_matches_straight_run_cpu,
    resume_matches_straight_run_gpu
);

#[test]
fn bad_checkpoint_flags() {
    let dir = TempDir::new("bad-ckpt");
    let ckpt = dir.path("c.safetensors").to_string_lossy().into_owned();
    run(&train_args(&["--epochs", "2", "--save", &ckpt])).success();
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "2"]),
        &["already trained 2 epochs"],
    );
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "3", "--seed", "7"]),
        &["--seed 7", "42"],
    );
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "3", "--layers", "2,16,2"]),
        &["--layers", "2-16-2", "2-32-2"],
    );
    let other = dir.file("other.csv", "a,b,label\n0.1,0.2,0\n0.3,0.4,1\n0.5,0.6,1\n");
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "3", "--data", &other]),
        &["same data", "2000 samples", "3 samples"],
    );
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "3", "--normalize"]),
        &["--normalize"],
    );
    expect_error(
        &train_args(&["--resume", &ckpt, "--epochs", "3", "--optimizer", "adam"]),
        &["--resume", "sgd", "same optimizer"],
    );
    expect_error(
        &train_args(&[
            "--resume",
            &ckpt,
            "--epochs",
            "3",
            "--lr-schedule",
            "cosine",
        ]),
        &["--resume", "constant"],
    );
    expect_error(&train_args(&["--save-every", "1"]), &["--save"]);
    expect_error(
        &train_args(&["--save", &ckpt, "--save-every", "0"]),
        &["--save-every"],
    );
    expect_error(
        &train_args(&["--save", "/nonexistent/dir/c.safetensors"]),
        &["--save"],
    );
    expect_error(
        &train_args(&["--resume", "/nonexistent/c.safetensors"]),
        &["c.safetensors"],
    );
    // A file that is not a checkpoint: tests/bad_inputs.rs (bad_checkpoints).
}

// ---------------------------------------------------------------------------
// eval and predict
// ---------------------------------------------------------------------------

/// A model trained (and saved) on `backend` is scored and applied on the
/// CPU and, where there is one, the GPU, with the same results.
#[test]
fn eval_and_predict_a_saved_model_on_every_backend() {
    let dir = TempDir::new("eval");
    let data = dir.file("clusters.csv", &clusters_csv(false));
    let model = dir.path("m.safetensors").to_string_lossy().into_owned();
    let metrics = dir.path("train.json").to_string_lossy().into_owned();
    let has_gpu = gpu_missing().is_none();
    let trained_on = if has_gpu { "gpu" } else { "cpu" };
    let mut args = csv_train_args(&data, "2,8,3", "20", trained_on, &metrics);
    args.extend_from_slice(&["--save", &model, "--normalize"]);
    run(&args).success();
    let backends: &[&str] = if has_gpu { &["cpu", "gpu"] } else { &["cpu"] };
    let mut evals = Vec::new();
    let mut predictions = Vec::new();
    for &b in backends {
        let e = run(&[
            "eval",
            "--model",
            &model,
            "--data",
            &data,
            "--backend",
            b,
            "--json",
        ])
        .success();
        let v = e.json();
        assert_eq!(v["samples"], 150, "{}", e.dump());
        let confusion: Vec<Vec<u64>> = serde_json::from_value(v["confusion"].clone()).unwrap();
        assert_eq!(confusion.len(), 3);
        assert_eq!(confusion.iter().flatten().sum::<u64>(), 150);
        let diag: u64 = (0..3).map(|i| confusion[i][i]).sum();
        assert!(
            (diag as f64 / 150.0 - num(&v, "/accuracy")).abs() < 1e-12,
            "{v}"
        );
        assert!(num(&v, "/accuracy") > 0.9, "{v}");
        let text = run(&["eval", "--model", &model, "--data", &data, "--backend", b]).success();
        assert!(
            text.stdout().contains("confusion matrix"),
            "{}",
            text.dump()
        );
        evals.push(v);
        let out = dir.path(&format!("pred-{b}.csv"));
        let p = run(&[
            "predict",
            "--model",
            &model,
            "--data",
            &data,
            "--backend",
            b,
            "--out",
            &out.to_string_lossy(),
        ])
        .success();
        let csv = std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{e}\n{}", p.dump()));
        let mut lines = csv.lines();
        assert_eq!(lines.next(), Some("output_0,output_1,output_2,predicted"));
        let rows: Vec<Vec<f64>> = lines
            .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), 150);
        predictions.push(rows);
    }
    if let [cpu, gpu] = &predictions[..] {
        for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
            for k in 0..3 {
                assert!(
                    (a[k] - b[k]).abs() <= 1e-5 + 1e-4 * a[k].abs(),
                    "row {i} output {k}: cpu {} gpu {}",
                    a[k],
                    b[k]
                );
            }
            assert_eq!(a[3], b[3], "row {i}: predicted class");
        }
        assert!((num(&evals[0], "/loss") - num(&evals[1], "/loss")).abs() < 1e-5);
    }
    // Inputs only (no target column), to standard output.
    let mut inputs = String::from("x,y\n");
    for line in clusters_csv(false).lines().skip(1).take(5) {
        let cells: Vec<&str> = line.split(',').collect();
        inputs += &format!("{},{}\n", cells[0], cells[1]);
    }
    let only = dir.file("inputs.csv", &inputs);
    let p = run(&[
        "predict",
        "--model",
        &model,
        "--data",
        &only,
        "--backend",
        "cpu",
    ])
    .success();
    assert_eq!(p.stdout().lines().count(), 6, "{}", p.dump());
    // The same rows give the same predictions (to rounding: a batch of 5
    // takes other gemm kernels than one of 150).
    let parse = |l: &str| -> Vec<f64> { l.split(',').map(|c| c.parse().unwrap()).collect() };
    let whole = std::fs::read_to_string(dir.path("pred-cpu.csv")).unwrap();
    for (a, b) in p.stdout().lines().skip(1).zip(whole.lines().skip(1)) {
        let (a, b) = (parse(a), parse(b));
        assert!(
            a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-6),
            "{a:?} vs {b:?}"
        );
        assert_eq!(a[3], b[3]);
    }
}

#[test]
fn bad_eval_and_predict_flags() {
    let dir = TempDir::new("bad-eval");
    let model = dir.path("m.safetensors").to_string_lossy().into_owned();
    run(&train_args(&["--epochs", "1", "--save", &model])).success();
    expect_error(
        &[
            "eval",
            "--model",
            "/nonexistent/m.safetensors",
            "--data",
            "spirals",
        ],
        &["m.safetensors"],
    );
    // A broken model file, data of another width and a broken CSV:
    // tests/bad_inputs.rs (bad_checkpoints, checkpoint_of_another_architecture_than_the_data,
    // bad_csv_files_for_predict).
    expect_error(
        &[
            "eval", "--model", &model, "--data", "spirals", "--batch", "0",
        ],
        &["--batch"],
    );
    expect_error(&["eval", "--model", &model], &["--data"]);
    expect_error(
        &[
            "predict",
            "--model",
            &model,
            "--data",
            "spirals",
            "--out",
            "/nonexistent/p.csv",
        ],
        &["--out"],
    );
}

#[test]
fn train_plots_png_and_svg() {
    let dir = TempDir::new("plot");
    for name in ["curves.png", "curves.svg"] {
        let p = dir.path(name).to_string_lossy().into_owned();
        run(&train_args(&[
            "--epochs",
            "3",
            "--val-split",
            "0.1",
            "--plot",
            &p,
        ]))
        .success();
        let bytes = std::fs::read(&p).unwrap();
        if name.ends_with("png") {
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
            assert!(bytes.len() > 10_000, "a drawn picture, not an empty one");
        } else {
            let text = String::from_utf8_lossy(&bytes);
            assert!(
                text.contains("<svg") && text.contains("validation"),
                "{text:.200}"
            );
        }
    }
    assert_eq!(
        dir.listing(),
        ["curves.png", "curves.svg"],
        "no temporary files left"
    );
    expect_error(
        &train_args(&["--plot", "curves.pdf"]),
        &["--plot", ".png or .svg"],
    );
    expect_error(
        &train_args(&["--plot", "/nonexistent/dir/c.png"]),
        &["--plot"],
    );
}

#[test]
fn adapter_by_index_or_name() {
    expect_error(
        &["train", "--backend", "cpu", "--adapter", "0", "--quiet"],
        &["--adapter", "--backend cpu"],
    );
    expect_error(
        &["example", "--adapter", "99"],
        &["--adapter", "no adapter 99"],
    );
    expect_error(
        &["example", "--adapter", "no-such-gpu"],
        &["--adapter", "no-such-gpu"],
    );
    if !gpu_or_skip("adapter_by_index_or_name") {
        return;
    }
    let list: Value = run(&["devices", "--json"]).success().json();
    let adapters = list.as_array().unwrap();
    let (i, a) = adapters
        .iter()
        .enumerate()
        .find(|(_, a)| a["compute"] == Value::Bool(true))
        .unwrap();
    let name = a["name"].as_str().unwrap();
    for sel in [i.to_string(), name.to_uppercase()] {
        let r = run(&["example", "--adapter", &sel, "--json"]).success();
        check_example(&r.json(), 1e-6);
        assert!(
            r.json()["backend"].as_str().unwrap().contains(name),
            "{}",
            r.dump()
        );
    }
}

#[test]
fn bad_optimizer_and_schedule_flags() {
    expect_error(
        &train_args(&["--optimizer", "rmsprop"]),
        &["--optimizer", "rmsprop"],
    );
    expect_error(
        &train_args(&["--optimizer", "momentum", "--momentum", "1.5"]),
        &["--momentum"],
    );
    expect_error(
        &train_args(&["--optimizer", "adam", "--beta2", "1"]),
        &["--beta2"],
    );
    expect_error(
        &train_args(&["--optimizer", "adam", "--eps", "0"]),
        &["--eps"],
    );
    expect_error(&train_args(&["--weight-decay", "-1"]), &["--weight-decay"]);
    expect_error(&train_args(&["--momentum", "nan"]), &["--momentum"]);
    expect_error(
        &train_args(&["--lr-schedule", "linear"]),
        &["--lr-schedule", "linear"],
    );
    expect_error(
        &train_args(&["--lr-schedule", "step", "--lr-step", "0"]),
        &["--lr-step"],
    );
    expect_error(
        &train_args(&["--lr-schedule", "step", "--lr-gamma", "2"]),
        &["--lr-gamma"],
    );
}

/// Every optimiser and schedule trains the default set from the CLI.
#[test]
fn optimizers_and_schedules_train() {
    let cases: [&[&str]; 4] = [
        &["--optimizer", "momentum", "--lr", "0.8"],
        &[
            "--optimizer",
            "adam",
            "--lr",
            "0.1",
            "--lr-schedule",
            "cosine",
        ],
        &[
            "--optimizer",
            "adam",
            "--lr",
            "0.05",
            "--lr-schedule",
            "step",
            "--lr-step",
            "15",
        ],
        &["--weight-decay", "0.0001"],
    ];
    for extra in cases {
        let mut args = train_args(&["--epochs", "20"]);
        args.extend_from_slice(extra);
        let r = run(&args).success();
        let acc: f64 = r
            .stdout()
            .lines()
            .find_map(|l| l.strip_prefix("accuracy: "))
            .and_then(|v| v.trim_end_matches('%').parse().ok())
            .unwrap_or(0.0);
        assert!(acc > 80.0, "{extra:?}: accuracy {acc}\n{}", r.dump());
    }
}

#[test]
fn loss_flag_must_fit_the_output_layer() {
    expect_error(
        &train_args(&["--loss", "ce"]),
        &["--loss ce", "softmax", "sigmoid"],
    );
    expect_error(
        &train_args(&["--loss", "mse", "--layers", "2,8,2:softmax"]),
        &["--loss mse", "softmax"],
    );
    expect_error(&train_args(&["--loss", "hinge"]), &["hinge", "--loss"]);
    let r = run(&train_args(&[
        "--loss",
        "ce",
        "--layers",
        "2,16:tanh,2:softmax",
        "--epochs",
        "3",
    ]))
    .success();
    assert!(r.stdout().contains("(cross-entropy)"), "{}", r.dump());
    let r = run(&train_args(&["--loss", "mse", "--epochs", "1"])).success();
    assert!(r.stdout().contains("(mse)"), "{}", r.dump());
}

/// The kernel configurations of one `bench --json` GPU row: `(config, source)` per product.
fn bench_sources(args: &[&str], env: &[(&str, &str)]) -> (Vec<(String, String)>, Run) {
    let r = run_env(args, env).success();
    let row: Value = serde_json::from_str(r.stdout().lines().next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}\n{}", r.dump()));
    let configs = row["kernel_configs"].as_array().expect("kernel_configs");
    let pairs = configs
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().unwrap_or("").to_string();
            (s("config"), s("source"))
        })
        .collect();
    (pairs, r)
}

/// The driver's pipeline cache: written by a first run, read by the next;
/// a damaged file, a FIFO or a directory at its name is ignored with one
/// line (the FIFO never opened, so nothing blocks), and the run goes on.
#[test]
fn pipeline_cache_is_kept_and_damage_ignored() {
    if !gpu_or_skip("pipeline_cache_is_kept_and_damage_ignored") {
        return;
    }
    let dir = TempDir::new("pipeline-cache");
    let cache = dir.0.to_string_lossy().into_owned();
    let env = [
        ("SHADERTRAIN_CACHE_DIR", cache.as_str()),
        ("SHADERTRAIN_PIPELINE_CACHE", "on"),
    ];
    let args = [
        "bench",
        "--backend",
        "gpu",
        "--layers",
        "3,2",
        "--batch",
        "2",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    let bench = || {
        let r = run_env(&args, &env).success();
        let state = r.json()["pipeline_cache"].as_str().map(str::to_owned);
        let adapter = r.json()["adapter"].as_str().unwrap_or("").to_owned();
        (
            state.unwrap_or_else(|| panic!("no pipeline_cache\n{}", r.dump())),
            adapter,
            r,
        )
    };
    let (state, adapter, r) = bench();
    if state == "off" {
        // Only Vulkan adapters have PIPELINE_CACHE in wgpu 30.
        assert!(!adapter.contains("Vulkan"), "{}", r.dump());
        return;
    }
    assert_eq!(state, "written", "{}", r.dump());
    let files: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("wgpu_pipeline_cache"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let file = files[0].clone();
    let bytes = std::fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"STPIPE01"), "{} bytes", bytes.len());
    assert_eq!(bench().0, "read");
    assert!(r
        .stderr_lines()
        .iter()
        .all(|l| !l.contains("pipeline cache")));

    // One bit of the driver's bytes flipped: not handed to the driver.
    let mut damaged = bytes.clone();
    *damaged.last_mut().unwrap() ^= 1;
    std::fs::write(&file, &damaged).unwrap();
    let (state, _, r) = bench();
    assert_eq!(state, "written", "{}", r.dump());
    let said: Vec<String> = r
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("pipeline cache"))
        .collect();
    assert_eq!(said.len(), 1, "{}", r.dump());
    assert!(
        said[0].contains("do not match their hash; ignored"),
        "{}",
        r.dump()
    );
    assert_eq!(std::fs::read(&file).unwrap(), bytes, "rewritten whole");

    // A FIFO at its name: refused before it is opened.
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo").arg(&file).status();
    if made.is_ok_and(|s| s.success()) {
        let (state, _, r) = bench();
        assert_eq!(state, "written", "{}", r.dump());
        assert!(
            r.stderr().contains("not a regular file; ignored"),
            "{}",
            r.dump()
        );
        assert_eq!(bench().0, "read");
    }

    // A directory at its name: ignored, and not written over.
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let (state, _, r) = bench();
    assert_eq!(state, "written", "{}", r.dump());
    assert!(
        r.stderr().contains("not a regular file; ignored"),
        "{}",
        r.dump()
    );
    assert!(r.stderr().contains("not written"), "{}", r.dump());
    assert!(file.is_dir());
}

/// `tune` measures and writes the cache; `bench` then reads it (source
/// `cache`), `--tune off` does not (`heuristic`), and a corrupt cache is
/// ignored with one line on stderr.
#[test]
fn tune_writes_the_cache_that_bench_reads() {
    if !gpu_or_skip("tune_writes_the_cache_that_bench_reads") {
        return;
    }
    let dir = TempDir::new("tune-cache");
    let cache = dir.0.to_string_lossy().into_owned();
    let env = [("SHADERTRAIN_CACHE_DIR", cache.as_str())];
    let net = ["--layers", "5,4,3", "--batch", "9"];
    let mut tune = vec![
        "tune",
        "--json",
        "--candidates",
        "gen:8x8:4x4:k8,loops:8x8:4x4:k8",
    ];
    tune.extend(net);
    let r = run_env(&tune, &env).success();
    let lines: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{}", r.dump())))
        .collect();
    // 5 products × 2 candidates, then the summary.
    assert_eq!(lines.len(), 11, "{}", r.dump());
    assert!(lines[..10]
        .iter()
        .all(|m| m["ms"].as_f64().is_some_and(|ms| ms > 0.0)));
    let chosen = lines[10]["kernel_config"]
        .as_str()
        .expect("kernel_config")
        .to_string();
    assert!(dir.path("tune-v1.json").exists(), "{}", r.dump());
    let mut bench = vec![
        "bench",
        "--backend",
        "gpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    bench.extend(net);
    let (cached, r) = bench_sources(&bench, &env);
    assert_eq!(cached.len(), 5, "{}", r.dump());
    assert!(cached.iter().all(|(_, s)| s == "cache"), "{}", r.dump());
    let plan: Vec<&str> = cached.iter().map(|(c, _)| c.as_str()).collect();
    assert!(
        chosen.contains('=') || plan.iter().all(|c| *c == chosen),
        "bench ran {plan:?}, tune chose {chosen}"
    );
    let mut off = bench.clone();
    off.extend(["--tune", "off"]);
    let (heuristic, r) = bench_sources(&off, &env);
    assert!(
        heuristic.iter().all(|(_, s)| s == "heuristic"),
        "{}",
        r.dump()
    );
    std::fs::write(dir.path("tune-v1.json"), "{\"version\": 1, \"entr").unwrap();
    let (ignored, r) = bench_sources(&bench, &env);
    assert!(
        ignored.iter().all(|(_, s)| s == "heuristic"),
        "{}",
        r.dump()
    );
    let notices: Vec<String> = r
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("tuning cache"))
        .collect();
    assert_eq!(notices.len(), 1, "{}", r.dump());
    assert!(notices[0].contains("ignored"), "{}", r.dump());
}

/// `train --backend gpu --data xor --layers 2,3,1 --epochs 1` and `extra`
/// with `env`, saving a checkpoint and `--metrics` in `dir`: the run, and
/// the kernel configuration recorded (the same in both).
fn train_recorded(dir: &TempDir, env: &[(&str, &str)], extra: &[&str]) -> (Run, String) {
    let save = dir.path("a.safetensors").to_string_lossy().into_owned();
    let metrics = dir.path("m.json").to_string_lossy().into_owned();
    let mut args = vec![
        "train",
        "--backend",
        "gpu",
        "--data",
        "xor",
        "--layers",
        "2,3,1",
        "--epochs",
        "1",
        "--save",
        &save,
        "--metrics",
        &metrics,
    ];
    args.extend(extra);
    let r = run_env(&args, env).success();
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let recorded = m["kernel_config"]
        .as_str()
        .expect("kernel_config in --metrics")
        .to_string();
    let ckpt = shadertrain::checkpoint::Checkpoint::load(std::path::Path::new(&save)).unwrap();
    assert_eq!(ckpt.state.kernel_config.as_deref(), Some(recorded.as_str()));
    (r, recorded)
}

/// Resuming [`train_recorded`]'s checkpoint replays `recorded`.
fn resume_replays(dir: &TempDir, env: &[(&str, &str)], recorded: &str) {
    let save = dir.path("a.safetensors").to_string_lossy().into_owned();
    let resume = [
        "train",
        "--backend",
        "gpu",
        "--data",
        "xor",
        "--resume",
        &save,
        "--epochs",
        "2",
    ];
    let r = run_env(&resume, env).success();
    assert!(
        r.stderr().contains(&format!("gpu kernels: {recorded}")),
        "{}",
        r.dump()
    );
}

/// `train --tune auto` tunes the products the cache lacks (a progress line),
/// writes the cache, trains, and records the configuration in the checkpoint
/// and `--metrics`; a resume replays it, and `--kernel-config` with
/// `--backend cpu` is refused.
#[test]
fn train_tune_auto_tunes_then_trains_and_records() {
    if !gpu_or_skip("train_tune_auto_tunes_then_trains_and_records") {
        return;
    }
    let dir = TempDir::new("tune-auto");
    let cache = dir.0.to_string_lossy().into_owned();
    // The first candidate only: lavapipe is slow.
    let env = [
        ("SHADERTRAIN_CACHE_DIR", cache.as_str()),
        ("SHADERTRAIN_TUNE_BUDGET", "0.001"),
    ];
    let (r, recorded) = train_recorded(&dir, &env, &["--tune", "auto"]);
    assert!(
        r.stderr().contains("tuning 5 of 5 products"),
        "{}",
        r.dump()
    );
    assert!(dir.path("tune-v1.json").exists(), "{}", r.dump());
    // A second run finds every product in the cache: no tuning.
    let (r, _) = train_recorded(&dir, &env, &["--tune", "auto"]);
    assert!(!r.stderr().contains("tuning"), "{}", r.dump());
    resume_replays(&dir, &env[..1], &recorded);
    expect_error(
        &[
            "train",
            "--backend",
            "cpu",
            "--data",
            "xor",
            "--kernel-config",
            "gen:8x8:4x4:k8",
        ],
        &["--kernel-config"],
    );
}

/// `--kernel-config` and `--tune` with several workers: `--devices 0,0` and
/// `--micro-batches 2` run the given plan and write the same checkpoint
/// bytes, which record it; a resume on `--devices` replays the record and
/// equals the straight run; `--tune auto` tunes once, on the first worker,
/// and every worker runs (and `--metrics` reports) what it chose.
#[test]
fn workers_take_one_kernel_config() {
    if !gpu_or_skip("workers_take_one_kernel_config") {
        return;
    }
    let dir = TempDir::new("workers-kernel-config");
    let plan = "f0=gen:8x8:4x4:k8,d0=loops:8x8:4x4:k8,g0=gen:4x16:4x8:k16,f1=gen:16x8:8x4:k16,g1=gen:8x8:16x16:k8";
    let path = |name: &str| dir.path(name).to_string_lossy().into_owned();
    let common = [
        "train",
        "--backend",
        "gpu",
        "--data",
        "xor",
        "--layers",
        "2,3,1",
        "--batch",
        "4",
    ];
    let train = |epochs: &str, save: &str, more: &[&str]| {
        let mut args = common.to_vec();
        args.extend(["--seed", "5", "--epochs", epochs, "--save", save]);
        args.extend(more);
        let r = run(&args).success();
        assert!(
            r.stderr().contains(&format!("gpu kernels: {plan}")),
            "{}",
            r.dump()
        );
    };
    let read = |name: &str| std::fs::read(dir.path(name)).unwrap();
    let given = ["--kernel-config", plan];
    train(
        "2",
        &path("threads"),
        &[&given[..], &["--devices", "0,0"]].concat(),
    );
    train(
        "2",
        &path("micro"),
        &[&given[..], &["--micro-batches", "2"]].concat(),
    );
    assert!(
        read("threads") == read("micro"),
        "--devices and --micro-batches differ"
    );
    let ckpt = shadertrain::checkpoint::Checkpoint::load(&dir.path("threads")).unwrap();
    assert_eq!(ckpt.state.kernel_config.as_deref(), Some(plan));
    // Stopped after 1 epoch and resumed without the flag: the record replays.
    train(
        "1",
        &path("first"),
        &[&given[..], &["--devices", "0,0"]].concat(),
    );
    let first = path("first");
    train(
        "2",
        &path("resumed"),
        &["--devices", "0,0", "--resume", &first],
    );
    assert!(
        read("threads") == read("resumed"),
        "the resumed run differs"
    );
    // --tune auto: one tuning, on the first worker; both run its choice.
    let cache = path("cache");
    let metrics = path("m.json");
    let env = [
        ("SHADERTRAIN_CACHE_DIR", cache.as_str()),
        ("SHADERTRAIN_TUNE_BUDGET", "0.001"),
    ];
    let tune = [
        "--epochs",
        "1",
        "--devices",
        "0,0",
        "--tune",
        "auto",
        "--metrics",
        &metrics,
    ];
    let args = [&common[..], &tune[..]].concat();
    let r = run_env(&args, &env).success();
    assert_eq!(
        r.stderr().matches("tuning 5 of 5 products").count(),
        1,
        "{}",
        r.dump()
    );
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
    let products = m["kernel_configs"].as_array().expect("kernel_configs");
    assert_eq!(products.len(), 5, "{m}");
    assert!(products.iter().all(|p| p["source"] == "tuned"), "{m}");
    assert!(
        dir.path("cache").join("tune-v1.json").exists(),
        "{}",
        r.dump()
    );
}

/// Every bad `--kernel-config` text is one line naming the flag and the
/// text, on `train` and `bench`, before any GPU work: K slices out of
/// range, repeated or on a forward or delta product, unknown fields.
#[test]
fn bad_kernel_config_texts_are_one_line() {
    let all = |f0: &str| {
        format!("f0={f0},d0=gen:8x8:4x4:k8,g0=gen:8x8:4x4:k8,f1=gen:8x8:4x4:k8,g1=gen:8x8:4x4:k8")
    };
    // Each text, and what its line names (a long text is cut short there).
    let texts = [
        ("gen:8x8:4x4:k8:s0".to_string(), "s1..=s1024"),
        ("gen:8x8:4x4:k8:s1025".to_string(), "s1..=s1024"),
        ("gen:8x8:4x4:k8:s4:s2".to_string(), "twice"),
        ("gen:8x8:4x4:k8:sx".to_string(), "s1..=s1024"),
        ("gen:8x8:4x4:k8:q".to_string(), "[:sN]"),
        ("simpel".to_string(), "gen|loops"),
        (all("gen:8x8:4x4:k8:s2"), "g<layer>"),
    ];
    for (text, why) in &texts {
        let short = &text[..text.len().min(40)];
        let train = [
            "train",
            "--backend",
            "gpu",
            "--data",
            "xor",
            "--layers",
            "2,3,1",
            "--kernel-config",
            text,
        ];
        expect_error(&train, &["--kernel-config", short, why]);
        let bench = [
            "bench",
            "--backend",
            "gpu",
            "--layers",
            "2,3,1",
            "--kernel-config",
            text,
        ];
        expect_error(&bench, &["--kernel-config", short, why]);
    }
}

/// `tune --timing wall-clock` with `simple` among the candidates: each
/// product measured, then the two whole steps, one chosen; the summary says
/// the wall clock and the plan chosen, which `bench` then builds from the
/// cache (`simple` for every product where the simple set won); `bench
/// --kernel-config simple` runs the simple set as given.
#[test]
fn tune_by_wall_clock_weighs_the_simple_set() {
    if !gpu_or_skip("tune_by_wall_clock_weighs_the_simple_set") {
        return;
    }
    let dir = TempDir::new("tune-wall");
    let cache = dir.0.to_string_lossy().into_owned();
    // The whole-step kernel off: where it runs, it beats a cached simple set.
    let env = [
        ("SHADERTRAIN_CACHE_DIR", cache.as_str()),
        ("SHADERTRAIN_WHOLE_STEP", "0"),
    ];
    let net = ["--layers", "5,4,3", "--batch", "9"];
    let mut tune = vec![
        "tune",
        "--json",
        "--timing",
        "wall-clock",
        "--candidates",
        "gen:8x8:4x4:k8,simple",
    ];
    tune.extend(net);
    let r = run_env(&tune, &env).success();
    let lines: Vec<Value> = r
        .stdout()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}\n{}", r.dump())))
        .collect();
    // 5 products, 2 whole steps, the summary.
    assert_eq!(lines.len(), 8, "{}", r.dump());
    let steps = &lines[5..7];
    assert!(steps.iter().all(|m| m["product"] == "step"), "{}", r.dump());
    assert_eq!(steps[1]["candidate"], "simple", "{}", r.dump());
    let chosen: Vec<bool> = steps.iter().map(|m| m["chosen"] == true).collect();
    assert!(chosen[0] != chosen[1], "{}", r.dump());
    let summary = &lines[7];
    assert_eq!(summary["timing"], "wall-clock", "{}", r.dump());
    let plan = summary["kernel_config"].as_str().unwrap_or("");
    assert_eq!(plan == "simple", chosen[1], "{}", r.dump());
    let mut bench = vec![
        "bench",
        "--backend",
        "gpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--json",
    ];
    bench.extend(net);
    let (cached, r) = bench_sources(&bench, &env);
    assert_eq!(cached.len(), 5, "{}", r.dump());
    assert!(cached.iter().all(|(_, s)| s == "cache"), "{}", r.dump());
    let simple = cached.iter().all(|(c, _)| c == "simple");
    assert_eq!(simple, chosen[1], "{}", r.dump());
    bench.extend(["--kernel-config", "simple"]);
    let (given, r) = bench_sources(&bench, &env);
    assert!(
        given.iter().all(|(c, s)| c == "simple" && s == "given"),
        "{}",
        r.dump()
    );
    assert!(
        r.stdout().contains("\"kernels\":\"simple\""),
        "{}",
        r.dump()
    );
}

/// `train --kernel-config simple` runs the simple set, records `simple` in
/// `--metrics` and the checkpoint, and a resume replays it.
#[test]
fn train_kernel_config_simple_is_recorded_and_replayed() {
    if !gpu_or_skip("train_kernel_config_simple_is_recorded_and_replayed") {
        return;
    }
    let dir = TempDir::new("simple-set");
    let cache = dir.0.to_string_lossy().into_owned();
    let env = [("SHADERTRAIN_CACHE_DIR", cache.as_str())];
    let (r, recorded) = train_recorded(&dir, &env, &["--kernel-config", "simple"]);
    assert_eq!(recorded, "simple", "{}", r.dump());
    assert!(r.stderr().contains("gpu kernels: simple"), "{}", r.dump());
    resume_replays(&dir, &env, "simple");
}

/// A double-buffered configuration given to `train` is recorded as given
/// (`:db`, on every product) in the checkpoint and `--metrics`, and a
/// resume replays it.
#[test]
fn train_records_and_replays_double_buffering() {
    if !gpu_or_skip("train_records_and_replays_double_buffering") {
        return;
    }
    let dir = TempDir::new("db-replay");
    let (r, recorded) = train_recorded(&dir, &[], &["--kernel-config", "gen:8x8:4x4:k8:db"]);
    let configs: Vec<&str> = recorded.split(',').collect();
    assert!(
        configs.iter().all(|c| c.ends_with("gen:8x8:4x4:k8:db")),
        "{recorded}\n{}",
        r.dump()
    );
    resume_replays(&dir, &[], &recorded);
}

/// `tune`'s own flags are checked before any GPU work, each error naming its flag.
#[test]
fn tune_refuses_bad_flags() {
    expect_error(
        &["tune", "--workload", "W0", "--budget", "0"],
        &["--budget"],
    );
    expect_error(
        &["tune", "--workload", "W0", "--budget", "nan"],
        &["--budget"],
    );
    expect_error(
        &["tune", "--workload", "W0", "--candidates", "gen:1x1"],
        &["--candidates", "gen:1x1"],
    );
    expect_error(&["tune", "--workload", "W9"], &["W9"]);
    expect_error(
        &["tune", "--workload", "W0", "--candidates", "simple"],
        &["--candidates", "simple"],
    );
    expect_error(
        &["tune", "--workload", "W0", "--timing", "sundial"],
        &["--timing", "sundial"],
    );
}
