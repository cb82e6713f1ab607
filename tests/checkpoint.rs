//! Checkpoints: a round trip keeps every bit, and every kind of bad file is
//! refused with the reason.

mod common;

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

/// A safetensors file with these tensors (f32, given shapes) and metadata.
fn file(tensors: &[(&str, Vec<usize>)], meta: &[(&str, &str)]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, shape)| {
            (
                n.to_string(),
                shape.clone(),
                vec![0u8; 4 * shape.iter().product::<usize>()],
            )
        })
        .collect();
    let views: Vec<_> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
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
        ("version", "1"),
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

#[test]
fn bad_files_are_refused_with_the_reason() {
    let good = [("layers.0.weight", vec![3, 2]), ("layers.0.bias", vec![3])];
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
    assert!(e.contains("non-finite"), "{e}");
}
