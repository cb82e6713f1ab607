//! NumPy `.npy` data: arrays mapped, not copied, giving the same rows,
//! splits, standardisation, fingerprint and training as the same values in
//! memory; every malformed array refused in one line before allocation.

mod common;

use common::npy_file::{le_f32, le_i64, npy};
use common::{random, rng, test_device, Device};
use shadertrain::backend::Backend;
use shadertrain::checkpoint::DataFingerprint;
use shadertrain::data::{Dataset, Source, Standardizer, Task};
use shadertrain::network::Network;
use shadertrain::npy::NpyArray;
use shadertrain::train::{train, Schedule, TrainConfig};
use std::path::PathBuf;

/// A scratch directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(test: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("shadertrain-npy-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every row of `d`, gathered: `(x, y)`.
fn rows(d: &Dataset) -> (Vec<f32>, Vec<f32>) {
    let idx: Vec<usize> = (0..d.len()).collect();
    let mut x = vec![f32::NAN; d.len() * d.inputs];
    let mut y = vec![f32::NAN; d.len() * d.outputs];
    d.gather(&idx, &mut x, &mut y);
    (x, y)
}

/// `n` rows of `w` random f32 inputs and integer labels below `classes`,
/// written as `x.npy` and `y.npy`; the paths and the values.
fn labelled(dir: &Dir, n: usize, w: usize, classes: i64) -> (PathBuf, PathBuf, Vec<f32>, Vec<i64>) {
    let mut g = rng(&format!("npy-{n}-{w}"));
    let x = random(&mut g, n * w, -2.0, 3.0);
    let labels: Vec<i64> = (0..n as i64).map(|i| (i * 7 + 3) % classes).collect();
    let xp = dir.write("x.npy", &npy("<f4", &[n, w], false, &le_f32(&x)));
    let yp = dir.write("y.npy", &npy("<i8", &[n], false, &le_i64(&labels)));
    (xp, yp, x, labels)
}

#[test]
fn u8_images_read_as_their_idx_twins() {
    let dir = Dir::new("u8");
    let (n, h, w) = (7, 3, 4);
    let pixels: Vec<u8> = (0..n * h * w).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
    let xp = dir.write("img.npy", &npy("|u1", &[n, h, w], false, &pixels));
    let yp = dir.write("lab.npy", &npy("|u1", &[n], false, &labels));
    let d = Dataset::from_npy(&xp, &yp, 3).unwrap();
    assert!(d.is_mapped() && d.x.is_empty() && d.y.is_empty());
    assert_eq!((d.len(), d.inputs, d.outputs), (n, h * w, 3));
    assert_eq!(d.task, Task::Classification { classes: 3 });
    assert_eq!(d.name, "img");
    // The same bytes as IDX files: the same values, to the bit.
    let mut img = vec![0, 0, 8, 3];
    for s in [n, h, w] {
        img.extend((s as u32).to_be_bytes());
    }
    img.extend(&pixels);
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    lab.extend(&labels);
    let idx = Dataset::from_idx(&dir.write("i.idx", &img), &dir.write("l.idx", &lab), 3).unwrap();
    let (x, y) = rows(&d);
    assert_eq!(x, idx.x);
    assert_eq!(y, idx.y);
    // A shuffled gather reads the rows asked for.
    let mut bx = vec![0.0; 2 * d.inputs];
    let mut by = vec![0.0; 2 * d.outputs];
    d.gather(&[5, 1], &mut bx, &mut by);
    assert_eq!(&bx[..d.inputs], &idx.x[5 * d.inputs..6 * d.inputs]);
    assert_eq!(&by[3..], &idx.y[3..6]);
}

#[test]
fn float_inputs_and_targets_of_every_kind() {
    let dir = Dir::new("floats");
    let n = 5;
    // f64 inputs, f32 regression targets of width 2.
    let x64: Vec<f64> = (0..n * 3).map(|i| i as f64 * 0.25 - 1.0).collect();
    let xb: Vec<u8> = x64.iter().flat_map(|v| v.to_le_bytes()).collect();
    let xp = dir.write("x64.npy", &npy("<f8", &[n, 3], false, &xb));
    let t: Vec<f32> = (0..n * 2).map(|i| i as f32 * 0.5).collect();
    let tp = dir.write("t.npy", &npy("<f4", &[n, 2], false, &le_f32(&t)));
    let d = Dataset::from_npy(&xp, &tp, 2).unwrap();
    assert_eq!(d.task, Task::Regression);
    let (x, y) = rows(&d);
    assert_eq!(x, x64.iter().map(|&v| v as f32).collect::<Vec<_>>());
    assert_eq!(y, t);
    // Big-endian f32 inputs; 0/1 float targets of one output: binary classes.
    let xs: Vec<f32> = (0..n).map(|i| i as f32 - 2.5).collect();
    let be: Vec<u8> = xs.iter().flat_map(|v| v.to_be_bytes()).collect();
    let xp = dir.write("be.npy", &npy(">f4", &[n], false, &be));
    let bp = dir.write(
        "b.npy",
        &npy(
            "<f8",
            &[n],
            false,
            &[0f64, 1.0, 1.0, 0.0, 1.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    let d = Dataset::from_npy(&xp, &bp, 1).unwrap();
    assert_eq!((d.inputs, d.task), (1, Task::Classification { classes: 2 }));
    assert_eq!(rows(&d), (xs.clone(), vec![0.0, 1.0, 1.0, 0.0, 1.0]));
    // One-hot float rows are classes; integer labels of one output are used as values.
    let oh = le_f32(&[1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    let op = dir.write("oh.npy", &npy("<f4", &[n, 2], false, &oh));
    assert_eq!(
        Dataset::from_npy(&xp, &op, 2).unwrap().task,
        Task::Classification { classes: 2 }
    );
    let ip = dir.write(
        "i.npy",
        &npy(
            "<i4",
            &[n, 1],
            false,
            &[3i32, 0, 1, 2, 0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>(),
        ),
    );
    let d = Dataset::from_npy(&xp, &ip, 1).unwrap();
    assert_eq!(d.task, Task::Regression);
    assert_eq!(rows(&d).1, vec![3.0, 0.0, 1.0, 2.0, 0.0]);
}

/// The validation split, standardisation, targets and fingerprint of a
/// mapped set equal those of the same values in memory, and nothing is copied.
#[test]
fn splits_standardisation_and_fingerprints_match_memory() {
    let dir = Dir::new("split");
    let (xp, yp, _, _) = labelled(&dir, 41, 5, 3);
    let mapped = Dataset::from_npy(&xp, &yp, 3).unwrap();
    let memory = mapped.to_memory().unwrap();
    assert!(!memory.is_mapped() && memory.x.len() == 41 * 5);
    assert_eq!(DataFingerprint::of(&mapped), DataFingerprint::of(&memory));
    assert_eq!(*mapped.targets(), memory.y[..]);
    let (mt, mut mv) = mapped.split_validation(0.25, 7).unwrap();
    let (it, mut iv) = memory.split_validation(0.25, 7).unwrap();
    assert!(mt.is_mapped() && mv.is_mapped() && mt.x.is_empty());
    assert_eq!((mt.len(), mv.len()), (it.len(), iv.len()));
    assert_eq!(rows(&mt), rows(&it));
    let z = Standardizer::fit(&mt);
    assert_eq!(z, Standardizer::fit(&it));
    let mut mt = mt;
    let mut it = it;
    for d in [&mut mt, &mut mv] {
        z.apply(d).unwrap();
    }
    for d in [&mut it, &mut iv] {
        z.apply(d).unwrap();
    }
    assert_eq!(rows(&mt), rows(&it));
    assert_eq!(rows(&mv), rows(&iv));
    assert_eq!(DataFingerprint::of(&mv), DataFingerprint::of(&iv));
    // A subset of a subset maps through both.
    let sub = mt.subset(&[3, 0], "sub");
    assert_eq!(rows(&sub), rows(&it.subset(&[3, 0], "sub")));
}

/// Training on mapped rows gives the parameters of training on the same
/// values in memory, to the bit: the batches are the same.
fn mapped_training_matches_memory(device: Device) {
    let dir = Dir::new(&format!("train-{}", device.name()));
    // 23 rows in batches of 5: an odd last batch, and one of 1 in the split.
    let (xp, yp, _, _) = labelled(&dir, 23, 6, 3);
    let mapped = Dataset::from_npy(&xp, &yp, 3).unwrap();
    let mut memory = mapped.to_memory().unwrap();
    let mut mapped = mapped;
    let z = Standardizer::fit(&memory);
    z.apply(&mut memory).unwrap();
    z.apply(&mut mapped).unwrap();
    let net = Network::parse("6,7:relu,3:softmax").unwrap();
    let cfg = TrainConfig {
        epochs: 3,
        batch: 5,
        lr: 0.3,
        seed: 11,
        shuffle: true,
        schedule: Schedule::Constant,
        warmup: 0,
        nan_check: false,
    };
    let fit = |d: &Dataset| {
        let mut b = device.backend(&net, 5);
        b.set_params(&net.init(11)).unwrap();
        let h = train(b.as_mut(), d, &cfg, |_| ()).unwrap();
        (
            h.iter().map(|e| e.loss).collect::<Vec<_>>(),
            b.params().unwrap().data,
        )
    };
    let (lm, pm) = fit(&mapped);
    let (li, pi) = fit(&memory);
    assert_eq!(lm, li, "{}: epoch losses", device.name());
    assert_eq!(pm, pi, "{}: parameters", device.name());
}

test_device!(
    mapped_training_matches_memory,
    mapped_training_matches_memory_cpu,
    mapped_training_matches_memory_gpu
);

/// A run that diverges on mapped inputs and targets of up to 2·10⁴ names
/// them as the likely cause, as it does for the same values in memory
/// (the hint searches the mapped rows, block by block).
#[test]
fn divergence_hint_reads_mapped_rows() {
    let dir = Dir::new("diverge");
    let n = 9000; // more than one 4096-row block; the largest in the last
    let x: Vec<f32> = (0..n * 2).map(|i| (i % 97) as f32 * 10.0 - 300.0).collect();
    let mut x = x;
    x[n * 2 - 3] = -2.0e4;
    let t: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 1.0e3).collect();
    let xp = dir.write("x.npy", &npy("<f4", &[n, 2], false, &le_f32(&x)));
    let tp = dir.write("t.npy", &npy("<f4", &[n], false, &le_f32(&t)));
    let mapped = Dataset::from_npy(&xp, &tp, 1).unwrap();
    assert!(mapped.is_mapped());
    let memory = mapped.to_memory().unwrap();
    let net = Network::parse("2,4:linear,1:linear").unwrap();
    let cfg = TrainConfig {
        epochs: 1,
        batch: 64,
        shuffle: false,
        nan_check: true,
        ..TrainConfig::default()
    };
    let hint = |d: &Dataset| {
        let mut b = shadertrain::CpuBackend::<f32>::new(&net, 64).unwrap();
        b.set_params(&net.init(1)).unwrap();
        match train(&mut b, d, &cfg, |_| ()) {
            Err(shadertrain::Error::Diverged {
                inputs, targets, ..
            }) => (inputs, targets),
            other => panic!("expected a divergence, got {other:?}"),
        }
    };
    let (inputs, targets) = hint(&mapped);
    assert_eq!(inputs, Some(2.0e4), "the mapped inputs' largest");
    assert_eq!(targets, Some(1.2e4), "the mapped targets' largest");
    assert_eq!(hint(&memory), (inputs, targets), "as in memory");
}

/// Opens the pair and returns the error line.
fn npy_err(dir: &Dir, x: &[u8], y: &[u8], outputs: usize) -> String {
    let xp = dir.write("bx.npy", x);
    let yp = dir.write("by.npy", y);
    Dataset::from_npy(&xp, &yp, outputs)
        .unwrap_err()
        .to_string()
}

/// A spoilt pair: its name, the inputs' and the targets' bytes, the
/// network's outputs, and what the error must say.
type Case<'a> = (&'a str, Vec<u8>, Vec<u8>, usize, Vec<&'a str>);

#[test]
fn malformed_arrays_are_refused_in_one_line() {
    let dir = Dir::new("bad");
    let good_x = npy("<f4", &[4, 2], false, &le_f32(&[0.5; 8]));
    let good_y = npy("<i8", &[4], false, &le_i64(&[0, 1, 2, 1]));
    let ok = Dataset::from_npy(
        &dir.write("gx.npy", &good_x),
        &dir.write("gy.npy", &good_y),
        3,
    );
    assert_eq!(ok.unwrap().len(), 4, "the pair the cases spoil loads");
    let mut v2_huge = b"\x93NUMPY\x02\x00".to_vec();
    v2_huge.extend(u32::MAX.to_le_bytes());
    let mut truncated = good_x.clone();
    truncated.pop();
    let mut trailing = good_x.clone();
    trailing.push(0);
    let mut nan = vec![0.5f32; 8];
    nan[5] = f32::NAN;
    let cases: Vec<Case> = vec![
        (
            "magic",
            b"PK\x03\x04 not numpy at all".to_vec(),
            good_y.clone(),
            3,
            vec!["bx.npy", "not a .npy file"],
        ),
        (
            "empty",
            vec![],
            good_y.clone(),
            3,
            vec!["bx.npy", "truncated"],
        ),
        (
            "version",
            b"\x93NUMPY\x07\x00\x10\x00".to_vec(),
            good_y.clone(),
            3,
            vec!["version 7"],
        ),
        (
            "header",
            v2_huge,
            good_y.clone(),
            3,
            vec!["header declares 4294967295 bytes"],
        ),
        (
            "syntax",
            npy("<f4", &[4, 2], false, &[])
                .iter()
                .map(|&b| if b == b'{' { b'[' } else { b })
                .collect(),
            good_y.clone(),
            3,
            vec!["bad .npy header"],
        ),
        (
            "truncated",
            truncated,
            good_y.clone(),
            3,
            vec!["needs 160 bytes but the file has 159", "truncated?"],
        ),
        (
            "trailing",
            trailing,
            good_y.clone(),
            3,
            vec!["needs 160 bytes but the file has 161"],
        ),
        (
            "fortran",
            npy("<f4", &[4, 2], true, &le_f32(&[0.5; 8])),
            good_y.clone(),
            3,
            vec!["Fortran order", "np.ascontiguousarray"],
        ),
        (
            "dtype",
            npy("<c8", &[4, 2], false, &[0; 64]),
            good_y.clone(),
            3,
            vec!["dtype '<c8' is not supported"],
        ),
        (
            "int inputs",
            npy("<i4", &[4, 2], false, &[0; 32]),
            good_y.clone(),
            3,
            vec!["inputs of dtype int32", "float32, float64 or uint8"],
        ),
        (
            "overflow",
            npy("<f4", &[1 << 40, 1 << 40], false, &[]),
            good_y.clone(),
            3,
            vec!["too large"],
        ),
        (
            "no rows",
            npy("<f4", &[0, 2], false, &[]),
            good_y.clone(),
            3,
            vec!["holds no rows"],
        ),
        (
            "nan",
            npy("<f4", &[4, 2], false, &le_f32(&nan)),
            good_y.clone(),
            3,
            vec!["bx.npy", "row 2, column 1 is not finite"],
        ),
        (
            "rows",
            good_x.clone(),
            npy("<i8", &[3], false, &le_i64(&[0, 1, 2])),
            3,
            vec!["by.npy", "3 rows of targets", "for 4 rows"],
        ),
        (
            "label",
            good_x.clone(),
            npy("<i8", &[4], false, &le_i64(&[0, 1, 3, 1])),
            3,
            vec!["by.npy", "label 3 of row 2", "0..=2"],
        ),
        (
            "negative",
            good_x.clone(),
            npy("<i8", &[4], false, &le_i64(&[0, -1, 0, 1])),
            3,
            vec!["label -1 of row 1"],
        ),
        (
            "label width",
            good_x.clone(),
            npy("<i8", &[4, 2], false, &[0; 64]),
            3,
            vec!["one per row"],
        ),
        (
            "float labels",
            good_x.clone(),
            npy("<f4", &[4], false, &le_f32(&[0.0, 1.0, 2.0, 1.0])),
            3,
            vec!["width 1", "3 outputs", "integer array"],
        ),
        (
            "target nan",
            good_x.clone(),
            npy("<f4", &[4], false, &le_f32(&[0.0, f32::INFINITY, 2.0, 1.0])),
            1,
            vec!["by.npy", "row 1, column 0 is not finite"],
        ),
    ];
    for (name, x, y, outputs, want) in cases {
        let e = npy_err(&dir, &x, &y, outputs);
        assert!(!e.contains('\n'), "{name}: {e:?}");
        for w in want {
            assert!(e.contains(w), "{name}: {e:?} should say {w:?}");
        }
    }
}

#[test]
fn arguments_name_npy_pairs() {
    let dir = Dir::new("parse");
    let (xp, yp, _, _) = labelled(&dir, 4, 2, 2);
    let arg = format!("{},{}", xp.display(), yp.display());
    assert_eq!(
        Source::parse(&arg).unwrap(),
        Source::Npy {
            x: xp.clone(),
            y: yp.clone()
        }
    );
    let d = Source::parse(&arg).unwrap().load(None, 2, 1).unwrap();
    assert!(d.is_mapped());
    // One array alone cannot train: say what is missing.
    let e = Source::parse(&xp.display().to_string())
        .unwrap_err()
        .to_string();
    assert!(e.contains("X.npy,Y.npy"), "{e}");
    // --target names a CSV column.
    let e = Source::parse(&arg)
        .unwrap()
        .load(Some("y"), 2, 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a CSV file"), "{e}");
}

/// A pipe cannot be mapped: it is read once, exactly the declared bytes,
/// into memory that counts against the limit.
#[cfg(unix)]
#[test]
fn a_pipe_is_read_once_and_bounded() {
    let dir = Dir::new("fifo");
    let (xp, _, x, _) = labelled(&dir, 9, 4, 3);
    let fifo = dir.0.join("x-fifo.npy");
    let ok = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !ok.is_ok_and(|s| s.success()) {
        eprintln!("skipped a_pipe_is_read_once_and_bounded: mkfifo failed");
        return;
    }
    let feed = |bytes: Vec<u8>| {
        let f = fifo.clone();
        std::thread::spawn(move || {
            let _ = std::fs::write(&f, bytes);
        })
    };
    let w = feed(std::fs::read(&xp).unwrap());
    let a = NpyArray::open(&fifo).unwrap();
    w.join().unwrap();
    assert!(!a.is_mapped());
    let mut row = vec![0.0; 4];
    a.row_f32(8, 1.0, &mut row);
    assert_eq!(row, x[32..36]);
    // More bytes than the shape declares, or fewer: refused.
    let mut long = std::fs::read(&xp).unwrap();
    long.extend([0; 4]);
    let w = feed(long);
    let e = NpyArray::open(&fifo).unwrap_err().to_string();
    w.join().unwrap();
    assert!(e.contains("goes on past"), "{e}");
    let mut short = std::fs::read(&xp).unwrap();
    short.truncate(short.len() - 4);
    let w = feed(short);
    let e = NpyArray::open(&fifo).unwrap_err().to_string();
    w.join().unwrap();
    assert!(e.contains("stream ended"), "{e}");
}

#[test]
fn headers_padded_to_16_bytes_and_version_2_read_too() {
    // Older NumPy padded headers to 16 bytes; version 2 has a 4-byte length.
    let dir = Dir::new("versions");
    let x = le_f32(&[1.0, 2.0, 3.0]);
    let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }";
    let mut v1 = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{h}{}\n", " ".repeat((16 - (10 + h.len() + 1) % 16) % 16));
    v1.extend((padded.len() as u16).to_le_bytes());
    v1.extend(padded.as_bytes());
    v1.extend(&x);
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    let h2 = format!("{h}\n");
    v2.extend((h2.len() as u32).to_le_bytes());
    v2.extend(h2.as_bytes());
    v2.extend(&x);
    for (name, bytes) in [("v1.npy", v1), ("v2.npy", v2)] {
        let a = NpyArray::open(&dir.write(name, &bytes)).unwrap();
        let mut out = vec![0.0; 1];
        a.row_f32(2, 1.0, &mut out);
        assert_eq!((a.shape.clone(), out[0]), (vec![3], 3.0), "{name}");
    }
}
