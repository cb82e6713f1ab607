//! Checkpoints: a round trip keeps every bit, and every kind of bad file is
//! refused with the reason.

mod common;

use common::safetensors_header::{header, with_header};
use common::sample_checkpoint;
use shadertrain::checkpoint::{Checkpoint, VERSION};
use shadertrain::optim::{Optimizer, OptimizerKind};
use std::collections::HashMap;

/// The sample checkpoint: Adam with non-default settings on a 5-input
/// relu/softmax network.
fn sample(norm: bool) -> Checkpoint {
    let opt = Optimizer {
        beta2: 0.99,
        weight_decay: 1e-4,
        ..Optimizer::new(OptimizerKind::Adam)
    };
    sample_checkpoint("5,7:relu,3:softmax", opt, norm)
}

#[test]
fn round_trip_keeps_every_bit() {
    for norm in [false, true] {
        let c = sample(norm);
        let back = Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap();
        assert_eq!(back, c);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back.params.data), bits(&c.params.data));
    }
}

#[test]
fn save_and_load_through_a_file() {
    let dir = std::env::temp_dir().join(format!("shadertrain-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    let c = sample(true);
    c.save(&path).unwrap();
    c.save(&path).unwrap(); // over an existing file
    assert_eq!(Checkpoint::load(&path).unwrap(), c);
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "no temporary files left: {names:?}");
    let e = Checkpoint::load(&dir.join("missing.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A safetensors file with these tensors (zeros of the given shapes: F64
/// for `history.*`, else F32) and metadata, as the safetensors crate writes it.
fn file<S: AsRef<[usize]>>(tensors: &[(&str, S)], meta: &[(&str, &str)]) -> Vec<u8> {
    let dtype = |n: &str| {
        if n.starts_with("history.") {
            safetensors::Dtype::F64
        } else {
            safetensors::Dtype::F32
        }
    };
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape)| {
            let shape = shape.as_ref().to_vec();
            (
                n.to_string(),
                shape.clone(),
                vec![0u8; dtype(n).bitsize() / 8 * shape.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(dtype(n), s.clone(), b).unwrap(),
            )
        })
        .collect();
    let meta: HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn meta<'a>(over: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut m = vec![
        ("format", "shadertrain"),
        ("version", "2"),
        ("layers", "2,3"),
        ("epoch", "1"),
        ("seed", "1"),
        ("batch", "4"),
        ("lr", "0.5"),
        ("data", "d"),
        ("samples", "8"),
        ("optimizer", "sgd"),
        ("momentum", "0.9"),
        ("beta1", "0.9"),
        ("beta2", "0.999"),
        ("eps", "1e-8"),
        ("weight_decay", "0"),
        ("optimizer_t", "0"),
        ("lr_schedule", "constant"),
    ];
    for (k, v) in over {
        m.retain(|(mk, _)| mk != k);
        if !v.is_empty() {
            m.push((k, v));
        }
    }
    m
}

/// The tensors of a one-epoch `2,3` checkpoint.
const GOOD: [(&str, &[usize]); 6] = [
    ("layers.0.weight", &[3, 2]),
    ("layers.0.bias", &[3]),
    ("history.loss", &[1]),
    ("history.accuracy", &[1]),
    ("history.val_loss", &[1]),
    ("history.val_accuracy", &[1]),
];

#[test]
fn bad_files_are_refused_with_the_reason() {
    let good = GOOD;
    assert!(Checkpoint::from_bytes(&file(&good, &meta(&[]))).is_ok());
    let full = sample(false).to_bytes().unwrap();
    let newer = (VERSION + 1).to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "not a safetensors"),
        (
            "text",
            b"hello, world, not a checkpoint".to_vec(),
            "not a safetensors",
        ),
        (
            "truncated",
            full[..full.len() - 10].to_vec(),
            "not a safetensors",
        ),
        ("no metadata", file(&good, &[]), "metadata lacks 'format'"),
        (
            "other format",
            file(&good, &meta(&[("format", "pytorch")])),
            "not 'shadertrain'",
        ),
        (
            "newer",
            file(&good, &meta(&[("version", &newer)])),
            "newer than this build",
        ),
        (
            "bad layers",
            file(&good, &meta(&[("layers", "2,x")])),
            "metadata layers",
        ),
        (
            "no epoch",
            file(&good, &meta(&[("epoch", "")])),
            "lacks 'epoch'",
        ),
        (
            "bad lr",
            file(&good, &meta(&[("lr", "fast")])),
            "'lr' is not a valid value",
        ),
        (
            "missing bias",
            file(&good[..1], &meta(&[])),
            "'layers.0.bias' is missing",
        ),
        (
            "other architecture",
            file(
                &[("layers.0.weight", vec![2, 3]), ("layers.0.bias", vec![3])],
                &meta(&[]),
            ),
            "has shape [2, 3], the architecture needs [3, 2]",
        ),
    ];
    // Found by tests/fuzz_loaders.rs: a small file declaring 4.3e9 parameters
    // had them allocated before its tensors were looked at; quoted metadata
    // broke the one-line message.
    let cases = cases.into_iter().chain([
        (
            "huge architecture",
            file(&good, &meta(&[("layers", "65535,65535")])),
            "'layers.0.weight' has shape [3, 2], the architecture needs [65535, 65535]",
        ),
        (
            "overflowing architecture",
            file(&good, &meta(&[("layers", "18446744073709551615,2")])),
            "2^32",
        ),
        (
            "format with a newline",
            file(&good, &meta(&[("format", "a\nb")])),
            "format is 'a\\nb'",
        ),
        (
            "schedule with a newline",
            file(&good, &meta(&[("lr_schedule", "x\ny")])),
            "'x\\ny'",
        ),
    ]);
    for (name, bytes, want) in cases {
        let e = Checkpoint::from_bytes(&bytes).unwrap_err();
        assert!(e.contains(want), "{name}: {e:?} should say {want:?}");
        assert!(!e.contains('\n'), "{name}: {e:?} is not one line");
    }
    // A NaN weight is refused too.
    let mut c = sample(false);
    c.params.data[4] = f32::NAN;
    let e = Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
    assert!(e.contains("layers.0.weight[4] is NaN"), "{e}");
}

// ---------------------------------------------------------------------------
// Format version 2: history as tensors, deterministic bytes, values checked
// ---------------------------------------------------------------------------

/// `c` as a version-1 file, built the old way: the safetensors crate's
/// writer, the history (with its wall-clock values) as JSON metadata, no
/// data fingerprint.
fn version_1(c: &Checkpoint) -> Vec<u8> {
    let b = c.to_bytes().unwrap();
    let back = Checkpoint::from_bytes(&b).unwrap();
    assert_eq!(&back, c);
    let st = safetensors::SafeTensors::deserialize(&b).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&b).unwrap();
    let mut meta: HashMap<String, String> = header.metadata().clone().unwrap();
    meta.insert("version".into(), "1".into());
    meta.remove("data_inputs_hash");
    meta.remove("data_targets_hash");
    let history: Vec<_> = c
        .state
        .history
        .iter()
        .map(|e| shadertrain::EpochStats {
            seconds: 0.125,
            samples_per_s: 1.0 / 3.0,
            ..*e
        })
        .collect();
    meta.insert("history".into(), serde_json::to_string(&history).unwrap());
    let views: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("history."))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn version_1_files_still_load() {
    for norm in [false, true] {
        let c = sample(norm);
        let v1 = version_1(&c);
        let back = Checkpoint::from_bytes(&v1).unwrap();
        // Everything but the fingerprint, which version 1 did not keep; the
        // wall-clock values are dropped.
        let mut want = c.clone();
        want.state.fingerprint = None;
        assert_eq!(back, want);
        // Written again, it is a version-2 file that loads the same.
        let again = back.to_bytes().unwrap();
        assert_eq!(Checkpoint::from_bytes(&again).unwrap(), back);
        assert!(header(&again).contains("\"version\":\"2\""));
    }
}

#[test]
fn the_same_checkpoint_gives_the_same_bytes() {
    let c = sample(true);
    let first = c.to_bytes().unwrap();
    // Each HashMap draws its own order; a writer that followed one would
    // differ within a few calls.
    for _ in 0..20 {
        assert_eq!(c.clone().to_bytes().unwrap(), first);
    }
    let head = header(&first);
    let v: serde_json::Value = serde_json::from_str(&head).unwrap();
    let keys: Vec<&String> = v["__metadata__"].as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    // serde_json's map is sorted itself: check the text's order too.
    let pos = |k: &str| head.find(&format!("\"{k}\":")).unwrap();
    assert!(pos("batch") < pos("beta1") && pos("beta1") < pos("data"));
    assert!(!head.contains("seconds") && !head.contains("samples_per_s"));
}

#[test]
fn size_grows_by_a_bounded_amount_per_epoch() {
    let with_epochs = |e: usize| {
        let mut c = sample(false);
        let h = c.state.history[1];
        c.state.history = (1..=e)
            .map(|epoch| shadertrain::EpochStats { epoch, ..h })
            .collect();
        c.state.epoch = e;
        c.to_bytes().unwrap()
    };
    let (a, b) = (with_epochs(10), with_epochs(100_010));
    // 4 f64 per epoch, plus a few more digits in the header's counts and
    // offsets.
    let grew = b.len() - a.len();
    assert!(
        (32 * 100_000..32 * 100_000 + 256).contains(&grew),
        "grew by {grew} bytes"
    );
    assert!(header(&b).len() < header(&a).len() + 256);
    let c = Checkpoint::from_bytes(&b).unwrap();
    assert_eq!(c.state.history.len(), 100_010);
    assert_eq!(c.state.history[100_009].epoch, 100_010);
}

#[test]
fn values_that_cannot_be_are_refused_naming_the_field() {
    let adam = sample(true);
    let n = adam.params.data.len();
    type Edit = Box<dyn Fn(&mut Checkpoint)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "weight NaN",
            Box::new(|c| c.params.data[4] = f32::NAN),
            "layers.0.weight[4] is NaN",
        ),
        (
            "bias infinite",
            Box::new(|c| c.params.bias_mut(0)[1] = f32::INFINITY),
            "layers.0.bias[1] is inf",
        ),
        (
            "std 0",
            Box::new(|c| c.standardizer.as_mut().unwrap().std[3] = 0.0),
            "normalize.std[3] is 0",
        ),
        (
            "std negative",
            Box::new(|c| c.standardizer.as_mut().unwrap().std[1] = -2.0),
            "normalize.std[1] is -2",
        ),
        (
            "std NaN",
            Box::new(|c| c.standardizer.as_mut().unwrap().std[0] = f32::NAN),
            "normalize.std[0] is NaN",
        ),
        (
            "mean infinite",
            Box::new(|c| c.standardizer.as_mut().unwrap().mean[2] = f32::NEG_INFINITY),
            "normalize.mean[2] is -inf",
        ),
        (
            "moment NaN",
            Box::new(|c| c.optimizer_state.moments[5] = f32::NAN),
            "optimizer.state[5] is NaN",
        ),
        (
            "negative second moment",
            Box::new(move |c| c.optimizer_state.moments[n + 2] = -1e-3),
            "cannot be negative",
        ),
        (
            "too many updates",
            Box::new(|c| c.optimizer_state.t = 901),
            "'optimizer_t' is 901, but 2 epochs of 300 samples (and part of one more, if interrupted) take at most 900",
        ),
        (
            // An interrupted first epoch may have taken up to one update a sample.
            "more updates than one epoch after 0 epochs",
            Box::new(|c| {
                c.state.epoch = 0;
                c.state.history.clear();
                c.optimizer_state.t = 301;
            }),
            "'optimizer_t' is 301, but 0 epochs",
        ),
        (
            "history shorter than epoch",
            Box::new(|c| c.state.epoch = 3),
            "the history holds 2 epochs, but metadata 'epoch' is 3",
        ),
        (
            "epoch u64::MAX",
            Box::new(|c| c.state.epoch = usize::MAX),
            "metadata 'epoch' is 18446744073709551615",
        ),
        (
            "accuracy past 1",
            Box::new(|c| c.state.history[1].accuracy = Some(1.5)),
            "history.accuracy[1] is 1.5",
        ),
        (
            "negative loss",
            Box::new(|c| c.state.history[0].loss = -0.1),
            "history.loss[0] is -0.1",
        ),
        (
            "NaN loss",
            Box::new(|c| c.state.history[0].loss = f64::NAN),
            "history.loss[0] is NaN",
        ),
    ];
    for (name, edit, want) in cases {
        let mut c = adam.clone();
        edit(&mut c);
        let e = Checkpoint::from_bytes(&c.to_bytes().unwrap()).unwrap_err();
        assert!(e.contains(want), "{name}: {e:?} should say {want:?}");
        assert!(!e.contains("--"), "{name}: {e:?} names a flag");
    }
    // Edits of the header: duplicates, and metadata that contradicts the tensors.
    let bytes = adam.to_bytes().unwrap();
    let sgd = sample_checkpoint("5,7:relu,3:softmax", Optimizer::default(), false);
    let sgd_bytes = sgd.to_bytes().unwrap();
    let head = |b: &[u8], from: &str, to: &str| {
        let out = with_header(b, |h| h.replacen(from, to, 1));
        assert_ne!(out, b, "{from:?} is not in the header");
        out
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "metadata key twice",
            head(&bytes, "\"epoch\":\"2\"", "\"epoch\":\"2\",\"epoch\":\"3\""),
            "key 'epoch' appears twice",
        ),
        (
            "tensor twice",
            head(
                &bytes,
                "\"__metadata__\"",
                "\"layers.0.bias\":{},\"__metadata__\"",
            ),
            "key 'layers.0.bias' appears twice",
        ),
        (
            "state for SGD",
            head(&bytes, "\"optimizer\":\"adam\"", "\"optimizer\":\"sgd\""),
            "'optimizer.state' is not part",
        ),
        (
            "Adam without its state",
            head(
                &sgd_bytes,
                "\"optimizer\":\"sgd\"",
                "\"optimizer\":\"adam\"",
            ),
            "'optimizer.state' is missing",
        ),
        (
            "history in the metadata of version 2",
            head(&bytes, "\"format\"", "\"history\":\"[]\",\"format\""),
            "'history' belongs to version 1",
        ),
        (
            "half a fingerprint",
            with_header(&bytes, |h| {
                let v: serde_json::Value = serde_json::from_str(h).unwrap();
                let mut v = v;
                v["__metadata__"]
                    .as_object_mut()
                    .unwrap()
                    .remove("data_targets_hash");
                v.to_string()
            }),
            "lacks 'data_targets_hash'",
        ),
        (
            "fingerprint not hex",
            head(
                &bytes,
                "\"data_inputs_hash\":\"0123",
                "\"data_inputs_hash\":\"x123",
            ),
            "'data_inputs_hash' is 'x123456789abcdef'",
        ),
        (
            "version 0",
            head(&bytes, "\"version\":\"2\"", "\"version\":\"0\""),
            "'version' is 0",
        ),
        (
            "history F32",
            head(
                &bytes,
                "\"dtype\":\"F64\",\"shape\":[2]",
                "\"dtype\":\"F32\",\"shape\":[4]",
            ),
            "expected F64",
        ),
    ];
    for (name, bytes, want) in cases {
        let e = Checkpoint::from_bytes(&bytes).unwrap_err();
        assert!(e.contains(want), "{name}: {e:?} should say {want:?}");
        assert!(!e.contains('\n') && !e.contains("--"), "{name}: {e:?}");
    }
    // An unknown tensor.
    let mut extra = GOOD.to_vec();
    extra.push(("layers.1.weight", &[1]));
    let e = Checkpoint::from_bytes(&file(&extra, &meta(&[]))).unwrap_err();
    assert!(e.contains("tensor 'layers.1.weight' is not part"), "{e}");
}

#[test]
fn loading_reads_no_more_than_the_header_declares() {
    let dir = std::env::temp_dir().join(format!("shadertrain-bounded-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = sample(true).to_bytes().unwrap();
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 100]);
    let mut endless = u64::MAX.to_le_bytes().to_vec();
    endless.extend_from_slice(b"{\"a\":");
    let mut lying = (64u64).to_le_bytes().to_vec();
    lying.extend_from_slice(b"{}");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("longer", longer, "its header declares"),
        (
            "shorter",
            good[..good.len() - 1].to_vec(),
            "its header declares",
        ),
        ("endless header", endless, "past the 100000000-byte limit"),
        ("header past the end", lying, "its header declares 64 bytes"),
        (
            "7 bytes",
            vec![1; 7],
            "shorter than the 8-byte header length",
        ),
    ];
    for (name, bytes, want) in cases {
        let path = dir.join(format!("{}.safetensors", name.replace(' ', "-")));
        std::fs::write(&path, &bytes).unwrap();
        let e = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e:?} should say {want:?}");
        assert!(!e.contains('\n'), "{name}: {e:?}");
        // The same from memory.
        assert!(Checkpoint::from_bytes(&bytes).is_err(), "{name}");
    }
    // A device that never ends: refused after its first 8 bytes.
    #[cfg(unix)]
    {
        let t = std::time::Instant::now();
        let e = Checkpoint::load(std::path::Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/zero: not a safetensors checkpoint (its header length is 0)"),
            "{e}"
        );
        assert!(t.elapsed().as_secs() < 5);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Trainer on the CPU for XOR, saving to `path`.
fn xor_trainer(epochs: usize) -> shadertrain::Trainer {
    shadertrain::Trainer::cpu(
        &shadertrain::Network::parse("2,4:tanh,1:sigmoid").unwrap(),
        4,
    )
    .unwrap()
    .epochs(epochs)
    .batch(4)
    .lr(0.5)
}

#[test]
fn resuming_on_other_data_of_the_same_size_is_refused() {
    let dir = std::env::temp_dir().join(format!("shadertrain-fp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xor.safetensors");
    let data = shadertrain::Dataset::xor();
    let mut t = xor_trainer(2).checkpoints(&path, None).unwrap();
    t.fit(&data).unwrap();
    let ckpt = Checkpoint::load(&path).unwrap();
    assert_eq!(
        ckpt.state.fingerprint,
        Some(shadertrain::checkpoint::DataFingerprint::of(&data))
    );
    let flipped = |f: &dyn Fn(&mut shadertrain::Dataset)| {
        let mut d = data.clone();
        f(&mut d);
        d
    };
    let cases = [
        (
            flipped(&|d| d.y.iter_mut().for_each(|v| *v = 1.0 - *v)),
            "other targets",
        ),
        (flipped(&|d| d.x[0] += 0.5), "other inputs"),
        (
            flipped(&|d| {
                d.x[1] = 7.0;
                d.y[0] = 0.5;
            }),
            "other inputs and targets",
        ),
    ];
    for (other, want) in &cases {
        let e = xor_trainer(3)
            .resume(&ckpt)
            .unwrap()
            .fit(other)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("same 4 samples"), "{e}");
        assert!(!e.contains('\n') && !e.contains("--"), "{e}");
    }
    // The same data resumes; so does a version-1 checkpoint (no
    // fingerprint) on other data of the same size.
    xor_trainer(3).resume(&ckpt).unwrap().fit(&data).unwrap();
    let old = Checkpoint::from_bytes(&version_1(&ckpt)).unwrap();
    assert_eq!(old.state.fingerprint, None);
    let (other, _) = &cases[0];
    xor_trainer(3).resume(&old).unwrap().fit(other).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
