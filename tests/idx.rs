//! The MNIST IDX loader: plain and gzip files of the real shape, and every
//! kind of broken file refused with a message naming it.

use shadertrain::data::{Dataset, Task};
use shadertrain::idx::{find_mnist, IdxReader};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A fresh directory for one test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("shadertrain-idx-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        if name.ends_with(".gz") {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            std::fs::write(&p, e.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&p, bytes).unwrap();
        }
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An IDX file: header for `ty` and `dims`, then `body`.
fn idx(ty: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// `n` 28×28 u8 images whose label is the bright quadrant, and their labels.
fn mnist_like(n: usize) -> (Vec<u8>, Vec<u8>) {
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = (i * 7 + 3) % 4;
        for r in 0..28 {
            for c in 0..28 {
                let q = (r / 14) * 2 + c / 14;
                let noise = ((i * 31 + r * 7 + c * 13) % 40) as u8;
                img.push(if q == class { 200 + noise / 4 } else { noise });
            }
        }
        lab.push(class as u8);
    }
    (
        idx(0x08, &[n as u32, 28, 28], &img),
        idx(0x08, &[n as u32], &lab),
    )
}

#[test]
fn plain_and_gzip_files_load_the_same() {
    let d = Dir::new("roundtrip");
    let (img, lab) = mnist_like(37);
    let a = Dataset::from_idx(
        &d.write("train-images-idx3-ubyte", &img),
        &d.write("train-labels-idx1-ubyte", &lab),
        10,
    )
    .unwrap();
    let b = Dataset::from_idx(&d.write("imgs.gz", &img), &d.write("labs.gz", &lab), 10).unwrap();
    assert_eq!((a.inputs, a.outputs, a.len()), (784, 10, 37));
    assert_eq!(a.task, Task::Classification { classes: 10 });
    assert_eq!(a.x, b.x);
    assert_eq!(a.y, b.y);
    // Pixels scaled to [0, 1]; the first image's first pixel is value img[16].
    assert_eq!(a.x[0], img[16] as f32 / 255.0);
    assert!(a.x.iter().all(|v| (0.0..=1.0).contains(v)));
    // One-hot labels: sample 0 is class 3.
    assert_eq!(&a.y[..10], &[0., 0., 0., 1., 0., 0., 0., 0., 0., 0.]);
    // A multi-member gzip (`cat a.gz b.gz`, split inside the header and
    // inside the values) is one stream, as gunzip reads it.
    let gz = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    let members = [gz(&img[..6]), gz(&img[6..1000]), gz(&img[1000..])].concat();
    let c =
        Dataset::from_idx(&d.write("members", &members), &d.write("labs.gz", &lab), 10).unwrap();
    assert_eq!(a.x, c.x);
}

#[test]
fn finds_the_four_files_in_a_directory() {
    let d = Dir::new("find");
    let (img, lab) = mnist_like(3);
    d.write("train-images-idx3-ubyte.gz", &img);
    d.write("train-labels-idx1-ubyte.gz", &lab);
    let (train, test) = find_mnist(&d.0).unwrap();
    assert!(train.0.ends_with("train-images-idx3-ubyte.gz"));
    assert!(test.is_none());
    d.write("t10k-images.idx3-ubyte", &img);
    d.write("t10k-labels.idx1-ubyte", &lab);
    let (_, test) = find_mnist(&d.0).unwrap();
    assert!(test.unwrap().1.ends_with("t10k-labels.idx1-ubyte"));
    let e = find_mnist(Path::new("/nonexistent-dir"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train-images"), "{e}");
}

fn open_err(bytes: &[u8], name: &str) -> String {
    let d = Dir::new(&format!("bad-{name}"));
    let p = d.write(name, bytes);
    match IdxReader::open(&p) {
        Ok(r) => r.read_f32(1.0, &mut Vec::new()).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn broken_files_are_refused_with_the_reason() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty", vec![], "truncated"),
        ("magic", b"PK\x03\x04rest".to_vec(), "not an IDX file"),
        ("type", idx(0x07, &[2], &[1, 2]), "unknown IDX value type"),
        ("ndim0", idx(0x08, &[], &[]), "0 dimensions"),
        ("header", vec![0, 0, 8, 3, 0, 0], "truncated"),
        (
            "short",
            idx(0x08, &[10, 2], &[1; 19]),
            "need 32 bytes but the file has 31",
        ),
        ("long", idx(0x08, &[2], &[1, 2, 3]), "need 10 bytes"),
        (
            "huge",
            idx(0x08, &[60000, 65535, 65535], &[0; 8]),
            "too large",
        ),
        (
            "nan",
            idx(0x0D, &[1], &f32::NAN.to_be_bytes()),
            "not finite",
        ),
    ];
    for (name, bytes, want) in &cases {
        let e = open_err(bytes, name);
        assert!(e.contains(want), "{name}: {e:?} should say {want:?}");
        assert!(e.contains(name), "{name}: {e:?} should name the file");
    }
    // The same through gzip: sizes are checked against the decompressed stream.
    let e = open_err(&idx(0x08, &[10, 2], &[1; 19]), "short.gz");
    assert!(e.contains("gzip stream holds 31"), "{e}");
    let e = open_err(&idx(0x08, &[60000, 65535, 65535], &[0; 8]), "huge.gz");
    assert!(e.contains("too large"), "{e}");
}

#[test]
fn labels_must_match_images_and_classes() {
    let d = Dir::new("labels");
    let (img, _) = mnist_like(4);
    let i = d.write("i", &img);
    let err = |lab: Vec<u8>, classes: usize| {
        let l = d.write("l", &lab);
        Dataset::from_idx(&i, &l, classes).unwrap_err().to_string()
    };
    assert!(err(idx(0x08, &[3], &[0, 1, 2]), 10).contains("3 labels for 4 images"));
    assert!(err(idx(0x08, &[4], &[0, 1, 12, 2]), 10).contains("label 12 of sample 2"));
    assert!(err(idx(0x08, &[4], &[0, 1, 3, 2]), 3).contains("label 3"));
    assert!(err(idx(0x08, &[2, 2], &[0, 1, 1, 0]), 10).contains("1-dimensional"));
    assert!(err(idx(0x08, &[4], &[0, 1, 1, 0]), 1).contains("at least 2 outputs"));
}

/// Data of the real MNIST shape through the binary: a 784-32-4 net learns
/// which quadrant is bright.
#[test]
fn train_on_an_idx_directory() {
    let d = Dir::new("train");
    let (img, lab) = mnist_like(400);
    d.write("train-images-idx3-ubyte.gz", &img);
    d.write("train-labels-idx1-ubyte.gz", &lab);
    let args = [
        "--layers", "784,32,4", "--epochs", "10", "--batch", "16", "--lr", "2",
    ];
    let acc = train_percent(&args, &d.0, "accuracy");
    assert!(acc > 95.0, "accuracy {acc}%");
}

/// The two files named directly, `IMAGES,LABELS`, for training and for
/// `--val`; a missing file is named in the error.
#[test]
fn train_on_named_idx_files() {
    let d = Dir::new("pair");
    let (img, lab) = mnist_like(200);
    let i = d.write("imgs.gz", &img).to_string_lossy().into_owned();
    let l = d.write("labs.gz", &lab).to_string_lossy().into_owned();
    let (vi, vl) = mnist_like(40);
    let vi = d.write("vimgs", &vi).to_string_lossy().into_owned();
    let vl = d.write("vlabs", &vl).to_string_lossy().into_owned();
    let run = |data: &str, val: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_shadertrain"))
            .args([
                "train",
                "--backend",
                "cpu",
                "--quiet",
                "--layers",
                "784,16:relu,4:softmax",
            ])
            .args([
                "--epochs", "5", "--batch", "16", "--lr", "0.2", "--data", data, "--val", val,
            ])
            .output()
            .unwrap()
    };
    let out = run(&format!("{i},{l}"), &format!("{vi},{vl}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("validation accuracy: 100.00%"), "{stdout}");
    let out = run(
        &format!("{i},{}", d.0.join("nope").display()),
        &format!("{vi},{vl}"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nope"), "{err}");
}

/// The acceptance run: MNIST's real shape (28×28 u8 images, 10
/// classes, gzip IDX files) through the binary, a 784-128:relu-10:softmax
/// network with Adam; it learns to well above chance.
#[test]
fn adam_learns_mnist_shaped_idx_data() {
    let d = Dir::new("adam");
    let n = 600;
    let (mut img, mut lab) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = (i * 7 + 1) % 10;
        // Class c lights a 7×7 block at row (c / 4)·7, column (c % 4)·7, on noise.
        for r in 0..28 {
            for c in 0..28 {
                let on = r / 7 == class / 4 && c / 7 == class % 4;
                let noise = ((i * 131 + r * 17 + c * 29) % 97) as u8;
                img.push(if on { 160 + noise / 2 } else { noise });
            }
        }
        lab.push(class as u8);
    }
    d.write(
        "train-images-idx3-ubyte.gz",
        &idx(0x08, &[n as u32, 28, 28], &img),
    );
    d.write("train-labels-idx1-ubyte.gz", &idx(0x08, &[n as u32], &lab));
    let args = [
        "--layers",
        "784,128:relu,10:softmax",
        "--optimizer",
        "adam",
        "--lr",
        "0.001",
        "--epochs",
        "3",
        "--batch",
        "32",
        "--val-split",
        "0.2",
    ];
    let acc = train_percent(&args, &d.0, "validation accuracy");
    assert!(acc > 90.0, "validation accuracy {acc}% (chance is 10%)");
}

/// Runs `shadertrain train --backend cpu --quiet ARGS --data DATA`, expects
/// success, and returns the percentage on the stdout line starting `label: `.
fn train_percent(args: &[&str], data: &std::path::Path, label: &str) -> f64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shadertrain"))
        .args(["train", "--backend", "cpu", "--quiet"])
        .args(args)
        .arg("--data")
        .arg(data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{label}: ");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim_end_matches('%').parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' line in {stdout}"))
}

/// Found by tests/fuzz_loaders.rs: a gzip file's length field holds only the
/// low 32 bits of the uncompressed length, so a crafted one passed the size
/// check and the loader reserved memory for every declared value (2^30 here,
/// 4 GiB) before finding the stream empty. Now it reserves as values arrive.
#[test]
fn gzip_with_a_lying_length_field_is_refused_with_its_true_length() {
    let d = Dir::new("gzip-lying");
    let header = idx(0x08, &[1 << 30, 4], &[]);
    let mut z = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&header).unwrap();
        e.finish().unwrap()
    };
    // 12 + 2^32 bytes needed, which is 12 mod 2^32: what the trailer says.
    let n = z.len();
    z[n - 4..].copy_from_slice(&12u32.to_le_bytes());
    let images = d.0.join("images.gz");
    std::fs::write(&images, &z).unwrap();
    let labels = d.write("labels", &idx(0x08, &[1 << 30], &[]));
    let e = Dataset::from_idx(&images, &labels, 10)
        .unwrap_err()
        .to_string();
    // The labels file is checked first as plain: its length is wrong.
    assert!(e.contains("labels") && e.contains("truncated"), "{e}");
    let e = IdxReader::open(&images)
        .unwrap()
        .read_f32(1.0, &mut Vec::new())
        .unwrap_err()
        .to_string();
    // The true length, not the trailer's, is reported.
    assert!(
        e.contains("images.gz") && e.contains("need 4294967308 bytes but the gzip stream holds 12"),
        "{e}"
    );
}

/// Found by tests/fuzz_loaders.rs: images declared `[1, 0, 1]` loaded as one
/// image of no pixels, a set whose inputs table had no rows for its labels
/// (training would then index past it).
#[test]
fn images_of_no_values_are_refused() {
    let d = Dir::new("zero-pixels");
    let labels = d.write("labels", &idx(0x08, &[1], &[0]));
    for name in ["images", "images.gz"] {
        let images = d.write(name, &idx(0x08, &[1, 0, 1], &[]));
        let e = Dataset::from_idx(&images, &labels, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains(name) && e.contains("0 values"), "{e}");
    }
}

/// A gzip stream must hold exactly the declared values, and its checksum is
/// checked: the length field alone (mod 2^32) let extra data or a corrupt
/// stream through.
#[test]
fn gzip_streams_are_read_to_the_end_and_checked() {
    let d = Dir::new("gzip-end");
    let labels = d.write("labels", &idx(0x08, &[1], &[0]));
    let mut long = idx(0x08, &[1, 2], &[1, 2, 3]);
    let images = d.write("long.gz", &long);
    let e = Dataset::from_idx(&images, &labels, 10)
        .unwrap_err()
        .to_string();
    // The stream holds 15 bytes, the header's sizes need 14.
    assert!(
        e.contains("long.gz") && e.contains("need 14 bytes but the gzip stream holds 15"),
        "{e}"
    );
    // With the length field lying to match, the decoder's check finds it.
    let mut z = std::fs::read(&images).unwrap();
    let n = z.len();
    z[n - 4..].copy_from_slice(&14u32.to_le_bytes());
    std::fs::write(&images, &z).unwrap();
    let e = Dataset::from_idx(&images, &labels, 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("long.gz") && e.contains("cannot decompress") && e.contains("checksum"),
        "{e}"
    );
    // A stream whose checksum is wrong.
    long.pop();
    let images = d.write("crc.gz", &long);
    let mut z = std::fs::read(&images).unwrap();
    let n = z.len();
    z[n - 8] ^= 1;
    std::fs::write(&images, &z).unwrap();
    let e = Dataset::from_idx(&images, &labels, 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("crc.gz") && e.contains("checksum"), "{e}");
}
