//! Metrics for trackers: TensorBoard event files (`--log-dir`,
//! `metrics::TensorBoard`) and JSON Lines (`--metrics-jsonl`,
//! `metrics::JsonLines`), through the binary and the library, on the CPU and
//! the GPU. The event files are read back by a reader written here from the
//! format's definition (TFRecord framing, both CRC-32Cs of every record
//! checked by a bitwise CRC, `Event` decoded with prost from TensorFlow's
//! field numbers) and compared with the run's history and its JSON Lines.
//! Each run's record (JSON Lines' first object, the event files' `run/config`
//! and `run/kernels` text summaries) names the backend, and on the GPU every
//! product's kernel configuration and its source, as `--metrics` has them.

// Both include the test_device! macro's file; each module uses its own.
#[allow(clippy::duplicate_mod)]
mod cli_support;
mod common;

use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// An independent reader of event files
// ---------------------------------------------------------------------------

/// `tensorflow.Event` (event.proto): the fields TensorBoard's scalars use.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    #[prost(double, tag = "1")]
    wall_time: f64,
    #[prost(int64, tag = "2")]
    step: i64,
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary` (summary.proto).
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    #[prost(message, repeated, tag = "1")]
    value: Vec<SummaryValue>,
}

/// `tensorflow.Summary.Value`: a scalar, or a text plugin's tensor.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryValue {
    #[prost(string, tag = "1")]
    tag: String,
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    #[prost(message, optional, tag = "8")]
    tensor: Option<Tensor>,
    #[prost(message, optional, tag = "9")]
    metadata: Option<Metadata>,
}

/// `tensorflow.TensorProto` (tensor.proto): dtype, shape, string values.
#[derive(Clone, PartialEq, prost::Message)]
struct Tensor {
    #[prost(int32, tag = "1")]
    dtype: i32,
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<Shape>,
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto`: its dimensions' sizes.
#[derive(Clone, PartialEq, prost::Message)]
struct Shape {
    #[prost(message, repeated, tag = "2")]
    dim: Vec<Dim>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Dim {
    #[prost(int64, tag = "1")]
    size: i64,
}

/// `tensorflow.SummaryMetadata`: `plugin_data.plugin_name`.
#[derive(Clone, PartialEq, prost::Message)]
struct Metadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    #[prost(string, tag = "1")]
    plugin_name: String,
}

/// CRC-32C, bit by bit (reflected Castagnoli polynomial): no table, no crate.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8`,
/// spelled as the format documents it (the writer uses `rotate_right`).
#[allow(clippy::manual_rotate)]
fn masked(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    ((crc >> 15) | (crc << 17)).wrapping_add(0xa282_ead8)
}

/// Every record of an event file, each one's length and data CRCs checked,
/// and nothing left over after the last.
fn records(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    while at < bytes.len() {
        assert!(at + 12 <= bytes.len(), "record {} cut short", out.len());
        let len_bytes = &bytes[at..at + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        assert_eq!(
            u32_at(at + 8),
            masked(len_bytes),
            "length CRC of record {}",
            out.len()
        );
        let data = at + 12;
        assert!(
            data + len + 4 <= bytes.len(),
            "record {} cut short",
            out.len()
        );
        let payload = &bytes[data..data + len];
        assert_eq!(
            u32_at(data + len),
            masked(payload),
            "data CRC of record {}",
            out.len()
        );
        out.push(payload.to_vec());
        at = data + len + 4;
    }
    out
}

/// The event files in `dir` (`files` of them), in name order (a run's
/// seconds, then the suffix of a second file in the same second), their
/// records decoded one file after the other. Each file's first record must
/// be the version record and nothing else.
fn events(dir: &Path, files: usize) -> Vec<Event> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert_eq!(
        paths.len(),
        files,
        "event files in {}: {paths:?}",
        dir.display()
    );
    let mut all = Vec::new();
    for path in paths {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events: Vec<Event> = records(&path)
            .iter()
            .map(|r| <Event as prost::Message>::decode(r.as_slice()).unwrap())
            .collect();
        let first = &events[0];
        assert_eq!(first.file_version.as_deref(), Some("brain.Event:2"));
        assert!(first.summary.is_none() && first.wall_time > 1e9);
        assert!(events[1..].iter().all(|e| e.file_version.is_none()));
        all.extend(events);
    }
    all
}

/// Scalars by tag: (step, value) in file order.
fn scalars(events: &[Event]) -> BTreeMap<String, Vec<(i64, f32)>> {
    let mut by_tag: BTreeMap<String, Vec<(i64, f32)>> = BTreeMap::new();
    for e in events {
        for v in e.summary.iter().flat_map(|s| &s.value) {
            if let Some(x) = v.simple_value {
                by_tag.entry(v.tag.clone()).or_default().push((e.step, x));
            }
        }
    }
    by_tag
}

/// Text summaries by tag: (step, text) in file order. Each must be the text
/// plugin's form: plugin `text`, a `DT_STRING` (7) scalar holding one UTF-8
/// string, and no scalar beside it.
fn texts(events: &[Event]) -> BTreeMap<String, Vec<(i64, String)>> {
    let mut by_tag: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for e in events {
        for v in e.summary.iter().flat_map(|s| &s.value) {
            let Some(t) = &v.tensor else { continue };
            let plugin = v.metadata.as_ref().and_then(|m| m.plugin_data.as_ref());
            assert_eq!(
                plugin.map(|p| p.plugin_name.as_str()),
                Some("text"),
                "{}",
                v.tag
            );
            assert!(v.simple_value.is_none(), "{}", v.tag);
            assert_eq!(t.dtype, 7, "{}: DT_STRING", v.tag);
            assert_eq!(
                t.tensor_shape.as_ref().map(|s| s.dim.len()),
                Some(0),
                "{}",
                v.tag
            );
            assert_eq!(t.string_val.len(), 1, "{}", v.tag);
            let text = String::from_utf8(t.string_val[0].clone()).unwrap();
            by_tag
                .entry(v.tag.clone())
                .or_default()
                .push((e.step, text));
        }
    }
    by_tag
}

/// Checks the run records of `lines` (JSON Lines) against the event files'
/// text summaries in `dir`: one per run, at `starts` (global steps), each
/// opening the run's records; `run/config` names the backend, and where
/// tiled GPU kernels ran `run/kernels` lists every product of `kernel_configs` with its
/// configuration and source. Returns the run records.
fn check_run_records(dir: &Path, files: usize, lines: &[Json], starts: &[u64]) -> Vec<Json> {
    assert_eq!(lines[0]["kind"], "run", "{}", lines[0]);
    let runs: Vec<Json> = lines
        .iter()
        .filter(|l| l["kind"] == "run")
        .cloned()
        .collect();
    let got: Vec<u64> = runs
        .iter()
        .map(|r| r["global_step"].as_u64().unwrap())
        .collect();
    assert_eq!(got, starts, "the runs' starting steps");
    let text = texts(&events(dir, files));
    let config = text.get("run/config").cloned().unwrap_or_default();
    assert_eq!(config.len(), runs.len(), "{:?}", text.keys());
    for (r, (step, md)) in runs.iter().zip(&config) {
        assert_eq!(*step as u64, r["global_step"].as_u64().unwrap());
        let backend = r["backend"].as_str().unwrap();
        assert!(md.contains(&format!("| backend | {backend} |")), "{md}");
        assert!(md.contains(r["network"].as_str().unwrap()), "{md}");
    }
    let kernels = text.get("run/kernels").cloned().unwrap_or_default();
    let on_gpu: Vec<&Json> = runs
        .iter()
        .filter(|r| r.get("kernel_config").is_some())
        .collect();
    assert_eq!(kernels.len(), on_gpu.len(), "{:?}", text.keys());
    for (r, (_, md)) in on_gpu.iter().zip(&kernels) {
        let plan = r["kernel_config"].as_str().expect("kernel_config");
        assert!(md.contains(&format!("`{plan}`")), "{md}");
        let products = r["kernel_configs"].as_array().expect("kernel_configs");
        assert!(!products.is_empty());
        for p in products {
            let [m, n, k] = [0, 1, 2].map(|i| p["shape"][i].as_u64().unwrap());
            let row = format!(
                "| {} | {m}×{n}×{k} | `{}` | {} |",
                p["product"].as_str().unwrap(),
                p["config"].as_str().unwrap(),
                p["source"].as_str().unwrap()
            );
            assert!(md.contains(&row), "{row} not in {md}");
            assert!(
                ["tuned", "cache", "heuristic", "given"].contains(&p["source"].as_str().unwrap()),
                "{p}"
            );
        }
        assert!(r["checked"].is_boolean(), "{r}");
    }
    runs
}

fn jsonl(path: &Path) -> Vec<Json> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn f32_of(v: &Json) -> f32 {
    v.as_f64().unwrap() as f32
}

/// Checks the records of a run against its history (`epochs`, as `--metrics`
/// writes it): the JSON Lines and the `files` event files in `dir` agree
/// with it and with each other; steps are recorded every `every` and at each
/// epoch's end, numbered globally; `lr(epoch)` is each step's rate.
fn check_run(
    dir: &Path,
    files: usize,
    lines: &[Json],
    epochs: &[Json],
    every: usize,
    lr: impl Fn(usize) -> f32,
) {
    let (steps, epoch_lines): (Vec<&Json>, Vec<&Json>) = lines
        .iter()
        .filter(|l| l["kind"] != "run")
        .partition(|l| l["kind"] == "step");
    assert!(epoch_lines.iter().all(|l| l["kind"] == "epoch"));
    // Epoch records: the history's objects, field for field.
    assert_eq!(epoch_lines.len(), epochs.len());
    for (l, e) in epoch_lines.iter().zip(epochs) {
        let mut l = (*l).clone();
        l.as_object_mut().unwrap().remove("kind");
        assert_eq!(&l, e);
    }
    // Step records: which, how numbered, and the last one is the epoch's loss.
    let first = epochs[0]["epoch"].as_u64().unwrap() as usize;
    for (i, e) in epochs.iter().enumerate() {
        let epoch = first + i;
        let mine: Vec<&&Json> = steps.iter().filter(|s| s["epoch"] == epoch).collect();
        let n = mine.last().unwrap()["step"].as_u64().unwrap() as usize;
        let want: Vec<usize> = (1..=n).filter(|s| s % every == 0 || *s == n).collect();
        let got: Vec<usize> = mine
            .iter()
            .map(|s| s["step"].as_u64().unwrap() as usize)
            .collect();
        assert_eq!(got, want, "epoch {epoch}'s step records");
        for s in &mine {
            let step = s["step"].as_u64().unwrap() as usize;
            assert_eq!(s["global_step"], (epoch - 1) * n + step);
            assert_eq!(f32_of(&s["lr"]), lr(epoch));
            assert!(s["loss"].as_f64().unwrap() > 0.0);
        }
        assert_eq!(mine.last().unwrap()["loss"], e["loss"], "epoch {epoch}");
        // kind, epoch, step, global_step, loss, lr.
        let keys: Vec<&String> = mine[0].as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 6, "{keys:?}");
    }
    // The event file holds the same values, at the same steps.
    let tb = scalars(&events(dir, files));
    let series = |tag: &str| tb.get(tag).cloned().unwrap_or_default();
    let at = |records: &[&Json], step: &str, key: &str| -> Vec<(i64, f32)> {
        records
            .iter()
            .filter(|r| !r[key].is_null())
            .map(|r| (r[step].as_i64().unwrap(), f32_of(&r[key])))
            .collect()
    };
    assert_eq!(series("loss/step"), at(&steps, "global_step", "loss"));
    assert_eq!(series("lr/step"), at(&steps, "global_step", "lr"));
    let ep: Vec<&Json> = epochs.iter().collect();
    for (tag, key) in [
        ("loss/epoch", "loss"),
        ("accuracy/epoch", "accuracy"),
        ("loss/val", "val_loss"),
        ("accuracy/val", "val_accuracy"),
        ("samples_per_s/epoch", "samples_per_s"),
    ] {
        assert_eq!(series(tag), at(&ep, "epoch", key), "{tag}");
    }
    // And nothing else: the validation tags only with a validation set.
    let tags = if epochs[0]["val_loss"].is_null() {
        5
    } else {
        7
    };
    assert_eq!(tb.len(), tags, "{:?}", tb.keys());
}

// ---------------------------------------------------------------------------
// Through the binary
// ---------------------------------------------------------------------------

mod cli {
    use super::cli_support::*;
    use super::*;
    use shadertrain::train::Schedule;

    fn check_cli(device: Device) {
        let tmp = TempDir::new(&format!("metrics-cli-{}", device.name()));
        let (logs, lines, metrics) = (
            tmp.path("logs/run1"),
            tmp.path("m.jsonl"),
            tmp.path("m.json"),
        );
        let args = [
            "train",
            "--backend",
            device.name(),
            "--quiet",
            "--epochs",
            "2",
            "--val-split",
            "0.25",
            "--lr-schedule",
            "step",
            "--lr-step",
            "1",
            "--lr-gamma",
            "0.5",
            "--log-every",
            "7",
            "--log-dir",
            logs.to_str().unwrap(),
            "--metrics-jsonl",
            lines.to_str().unwrap(),
            "--metrics",
            metrics.to_str().unwrap(),
        ];
        run(&args).success();
        let m: Json = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
        let epochs = m["epochs"].as_array().unwrap();
        let sched = Schedule::Step {
            every: 1,
            gamma: 0.5,
        };
        // spirals: lr 8; 1500 training samples in batches of 8.
        let lines = jsonl(&lines);
        check_run(&logs, 1, &lines, epochs, 7, |e| sched.lr(8.0, e, 2));
        assert_eq!(
            lines.iter().filter(|l| l["kind"] == "step").count(),
            2 * (188 / 7 + 1)
        );
        // The run record says what --metrics says of the kernels.
        let runs = check_run_records(&logs, 1, &lines, &[0]);
        let r = &runs[0];
        assert_eq!(r["backend"], device.name());
        assert_eq!(r["layers"], m["layers"]);
        let tiled = r.get("kernel_configs").is_some_and(Json::is_array);
        assert_eq!(tiled, device.name() == "gpu", "{r}");
        for key in ["kernel_config", "kernel_configs", "checked", "whole_step"] {
            assert_eq!(r.get(key), m.get(key), "{key}");
        }
        assert_eq!(r["batch"], 8);
        assert_eq!(r["first_epoch"], 1);
        assert_eq!(r["epochs"], 2);
    }

    test_device!(check_cli, cli_cpu, cli_gpu);

    /// A resumed run writes a second event file into the same directory and
    /// appends to the same JSON Lines file; together they are one run.
    #[test]
    fn resumed_runs_continue_the_records() {
        let tmp = TempDir::new("metrics-resume");
        let (logs, lines, ckpt, metrics) = (
            tmp.path("logs"),
            tmp.path("m.jsonl"),
            tmp.path("c.safetensors"),
            tmp.path("m.json"),
        );
        let p = |p: &PathBuf| p.to_str().unwrap().to_owned();
        let common = [
            "train",
            "--backend",
            "cpu",
            "--quiet",
            "--data",
            "xor",
            "--batch",
            "2",
            "--log-every",
            "1",
            "--save",
            &p(&ckpt),
            "--log-dir",
            &p(&logs),
            "--metrics-jsonl",
            &p(&lines),
            "--metrics",
            &p(&metrics),
        ];
        run(&[&common[..], &["--epochs", "3"]].concat()).success();
        run(&[&common[..], &["--epochs", "5", "--resume", &p(&ckpt)]].concat()).success();
        let m: Json = serde_json::from_str(&std::fs::read_to_string(&metrics).unwrap()).unwrap();
        // A checkpoint keeps no wall-clock values: the resumed epochs'
        // seconds and throughput are 0 in --metrics, while the first run's
        // JSON Lines have them.
        let records = jsonl(&lines);
        let mut epochs = m["epochs"].as_array().unwrap().clone();
        let first_run = records.iter().filter(|l| l["kind"] == "epoch").take(3);
        for (e, l) in epochs.iter_mut().zip(first_run) {
            for k in ["seconds", "samples_per_s"] {
                assert_eq!(e[k], 0.0, "a resumed epoch's {k}");
                e[k] = l[k].clone();
            }
        }
        // xor: lr 5, two steps an epoch.
        check_run(&logs, 2, &records, &epochs, 1, |_| 5.0);
        // A run record for each run, the second after its 3 epochs of 2 steps.
        let runs = check_run_records(&logs, 2, &records, &[0, 6]);
        assert_eq!(runs[1]["first_epoch"], 4);
        assert_eq!(runs[1]["epochs"], 5);
    }

    #[test]
    fn bad_log_dir_is_refused_before_training() {
        let tmp = TempDir::new("metrics-bad-log-dir");
        let file = tmp.file("a-file", "x");
        let under = format!("{file}/logs");
        let jsonl = tmp.path("m.jsonl");
        let (jsonl, dir) = (jsonl.to_str().unwrap(), tmp.0.to_str().unwrap());
        let mut refusals = vec![
            (
                vec!["--log-dir", &file, "--metrics-jsonl", jsonl],
                vec!["--log-dir", "is a file, not a directory"],
            ),
            (
                vec!["--log-dir", &under, "--metrics-jsonl", jsonl],
                vec!["--log-dir", "cannot create it"],
            ),
            (
                vec!["--metrics-jsonl", dir],
                vec!["--metrics-jsonl", "is a directory"],
            ),
            (vec!["--log-every", "5"], vec!["--log-every", "--log-dir"]),
            (
                vec!["--log-dir", dir, "--log-every", "0"],
                vec!["--log-every"],
            ),
        ];
        if cfg!(target_os = "linux") {
            // Unwritable even by root.
            refusals.push((
                vec!["--log-dir", "/proc/shadertrain-logs"],
                vec!["--log-dir", "cannot create it"],
            ));
        }
        for (args, expect) in refusals {
            expect_error(
                &[&["train", "--backend", "cpu"], args.as_slice()].concat(),
                &expect,
            );
        }
        // Refused before anything was written: no JSON Lines file, no event file.
        assert_eq!(tmp.listing(), vec!["a-file".to_string()]);
    }
}

// ---------------------------------------------------------------------------
// Through the library
// ---------------------------------------------------------------------------

mod library {
    use super::common::*;
    use super::*;
    use shadertrain::data::{Dataset, Task};
    use shadertrain::metrics::{JsonLines, TensorBoard};
    use shadertrain::network::Network;
    use shadertrain::{Error, Setting, Trainer};

    /// Two noisy clusters in 2-D, one-hot.
    fn clusters(n: usize, label: &str) -> Dataset {
        let noise = random(&mut rng(label), n * 2, -0.4, 0.4);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = (i % 2) as f32;
            x.extend([c + noise[2 * i], 1.0 - c + noise[2 * i + 1]]);
            y.extend([1.0 - c, c]);
        }
        Dataset::from_vecs(
            "clusters",
            (2, 2),
            x,
            y,
            Task::Classification { classes: 2 },
        )
        .unwrap()
    }

    fn check_library(device: Device) {
        let tmp = cli_support::TempDir::new(&format!("metrics-lib-{}", device.name()));
        let (logs, path) = (tmp.path("logs"), tmp.path("run.jsonl"));
        let net = Network::parse("2,8:tanh,2:softmax").unwrap();
        let (train, val) = (clusters(100, "metrics train"), clusters(30, "metrics val"));
        // 100 samples in batches of 16: 7 steps an epoch, recorded at 3, 6 and 7.
        let mut t = Trainer::new(device.backend(&net, 16))
            .epochs(2)
            .lr(0.5)
            .log_to(TensorBoard::create(&logs).unwrap())
            .log_to(JsonLines::create(&path).unwrap())
            .log_every(3)
            .unwrap();
        t.fit_observed(&train, Some(&val), |_, _| Ok(())).unwrap();
        // A second call continues the same files and the same step numbering.
        let mut t = t.epochs(3);
        t.fit_observed(&train, Some(&val), |_, _| Ok(())).unwrap();
        let history = serde_json::to_value(t.history()).unwrap();
        let lines = jsonl(&path);
        // One run record: the second call continues the first's run.
        assert_eq!(lines.len(), 1 + 3 * (3 + 1));
        check_run(&logs, 1, &lines, history.as_array().unwrap(), 3, |_| 0.5);
        let runs = check_run_records(&logs, 1, &lines, &[0]);
        let want = t.backend().kernel_config();
        assert_eq!(runs[0]["kernel_config"].as_str(), want.as_deref());
        assert_eq!(runs[0]["kernel_configs"].is_array(), want.is_some());
    }

    test_device!(check_library, library_cpu, library_gpu);

    #[test]
    fn a_failed_run_leaves_valid_files() {
        let tmp = cli_support::TempDir::new("metrics-diverged");
        let (logs, path) = (tmp.path("logs"), tmp.path("run.jsonl"));
        // Unscaled targets and a large rate: diverges within a few epochs.
        let x: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let y: Vec<f32> = x.iter().map(|v| v * 1e4).collect();
        let data = Dataset::from_vecs("big", (1, 1), x, y, Task::Regression).unwrap();
        let net = Network::parse("1,4:linear,1:linear").unwrap();
        let err = Trainer::cpu(&net, 8)
            .unwrap()
            .epochs(50)
            .lr(1.0)
            .log_to(TensorBoard::create(&logs).unwrap())
            .log_to(JsonLines::create(&path).unwrap())
            .log_every(1)
            .unwrap()
            .fit(&data)
            .unwrap_err();
        assert!(matches!(err, Error::Diverged { .. }), "{err}");
        let lines = jsonl(&path);
        let tb = scalars(&events(&logs, 1));
        let steps = lines.iter().filter(|l| l["kind"] == "step").count();
        assert!(steps > 0);
        assert_eq!(tb["loss/step"].len(), steps);
    }

    #[test]
    fn bad_settings_are_refused() {
        let tmp = cli_support::TempDir::new("metrics-lib-bad");
        let file = tmp.file("f", "x");
        let t = Trainer::cpu(&Network::parse("2,2").unwrap(), 1).unwrap();
        assert!(matches!(
            t.log_every(0),
            Err(Error::Setting {
                setting: Setting::LogEvery,
                ..
            })
        ));
        let e = TensorBoard::create(&file).err().unwrap();
        assert!(
            matches!(
                e,
                Error::Setting {
                    setting: Setting::LogDir,
                    ..
                }
            ),
            "{e}"
        );
        // The path is quoted as every setting's value is: cut at 40 characters.
        let msg = e.to_string();
        assert!(msg.starts_with("log directory '/"), "{msg}");
        assert!(msg.ends_with("': is a file, not a directory"), "{msg}");
        let e = JsonLines::create(&tmp.0).err().unwrap();
        assert!(
            matches!(
                e,
                Error::Setting {
                    setting: Setting::MetricsLog,
                    ..
                }
            ),
            "{e}"
        );
    }

    /// A second writer in the same directory and second gets its own file.
    #[test]
    fn event_files_are_never_overwritten() {
        let tmp = cli_support::TempDir::new("metrics-two-writers");
        let a = TensorBoard::create(&tmp.0).unwrap();
        let b = TensorBoard::create(&tmp.0).unwrap();
        assert_ne!(a.path(), b.path());
        assert_eq!(tmp.listing().len(), 2);
    }
}
