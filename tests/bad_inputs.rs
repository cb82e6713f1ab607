//! End to end, every kind of bad input file the binary can be handed (issue 5,
//! "Reliability"): broken CSV files, IDX files and checkpoints, and headers
//! declaring sizes that would exhaust memory. Each run must exit non-zero
//! without a panic, print exactly one `error:` line naming the file (and
//! the line, where there is one) and the problem, and leave no output file
//! behind: `--save`, `--metrics` and `--plot` (train) or `--out` (predict)
//! point into the test's directory, which afterwards holds only the inputs.

mod cli_support;
use cli_support::*;
#[path = "common/safetensors_header.rs"]
mod safetensors_header;

use std::io::Write;

/// Writes `files` into a fresh directory, runs the binary with `args` (`@/`
/// in an argument stands for that directory), and checks the failure: one
/// `error:` line holding every word of `expect`, and no new file.
fn expect_clean_failure(test: &str, files: &[(&str, Vec<u8>)], args: &[&str], expect: &[&str]) {
    let dir = TempDir::new(test);
    for (name, bytes) in files {
        std::fs::write(dir.path(name), bytes).unwrap();
    }
    let root = format!("{}/", dir.0.display());
    let args: Vec<String> = args.iter().map(|a| a.replace("@/", &root)).collect();
    let line = expect_error(&args, expect);
    // Shown with --nocapture: the catalogue of messages.
    eprintln!("{test}: {line}");
    let mut inputs: Vec<String> = files.iter().map(|(n, _)| n.to_string()).collect();
    inputs.sort();
    assert_eq!(
        dir.listing(),
        inputs,
        "{test}: a failed run left files behind ({line})"
    );
}

/// `train` on the CPU, quietly, writing every output file into `@/`.
fn train<'a>(data: &'a str, layers: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--backend",
        "cpu",
        "--quiet",
        "--epochs",
        "1",
        "--data",
        data,
        "--layers",
        layers,
        "--save",
        "@/model.safetensors",
        "--metrics",
        "@/metrics.json",
        "--plot",
        "@/plot.png",
    ]
}

// ---------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------

#[test]
fn bad_csv_files() {
    // (test, contents, layers, words of the error)
    let cases: &[(&str, &str, &str, &[&str])] = &[
        ("csv-empty", "", "2,4,2", &["data.csv", "empty"]),
        ("csv-blank", "\n \n\n", "2,4,2", &["data.csv", "empty"]),
        (
            "csv-header-only",
            "a,b,label\n",
            "2,4,2",
            &["data.csv", "no data rows"],
        ),
        (
            "csv-ragged-short",
            "a,b,label\n0,0,0\n1,1\n",
            "2,4,2",
            &["data.csv", "line 3", "expected 3 fields", "found 2"],
        ),
        (
            "csv-ragged-long",
            "a,b,label\n0,0,0,9\n",
            "2,4,2",
            &["data.csv", "line 2", "found 4"],
        ),
        (
            "csv-non-numeric",
            "a,b,label\n0,0,0\n1,abc,1\n",
            "2,4,2",
            &["data.csv", "line 3", "column 'b'", "'abc'"],
        ),
        (
            "csv-empty-cell",
            "a,b,label\n0,,0\n",
            "2,4,2",
            &["data.csv", "line 2", "empty cell"],
        ),
        (
            "csv-nan",
            "a,b,label\n0,0,0\nNaN,1,1\n",
            "2,4,2",
            &["data.csv", "line 3", "'NaN'", "not a finite number"],
        ),
        (
            "csv-infinity",
            "a,b,label\n0,0,0\n1,-inf,1\n",
            "2,4,2",
            &["data.csv", "line 3", "'-inf'", "not a finite number"],
        ),
        (
            "csv-overflow",
            "a,b,label\n1e39,0,0\n",
            "2,4,2",
            &["data.csv", "line 2", "'1e39'", "not a finite number"],
        ),
        (
            "csv-label-too-big",
            "a,b,label\n0,0,0\n1,1,2\n",
            "2,4,2",
            &["data.csv", "line 3", "label '2'", "0..=1"],
        ),
        (
            "csv-label-negative",
            "a,b,label\n0,0,-1\n",
            "2,4,2",
            &["data.csv", "line 2", "label '-1'"],
        ),
        (
            "csv-label-fraction",
            "a,b,label\n0,0,0.5\n",
            "2,4,2",
            &["data.csv", "line 2", "label '0.5'"],
        ),
        (
            "csv-quoted-newline",
            "a,b,label\n0,\"1\n2\",0\n",
            "2,4,2",
            &["data.csv", "line 2", "'1\\n2'"],
        ),
        (
            "csv-too-wide",
            "a,b,c,label\n0,0,0,0\n",
            "2,4,2",
            &[
                "data.csv",
                "3 input columns",
                "--layers 2-4-2 takes 2 inputs",
            ],
        ),
        (
            "csv-too-narrow",
            "a,label\n0,0\n",
            "2,4,2",
            &[
                "data.csv",
                "1 input columns",
                "--layers 2-4-2 takes 2 inputs",
            ],
        ),
        (
            "csv-too-narrow-regression",
            "a,b,y\n0.1,0.2,0.3\n0.4,0.5,0.6\n",
            "3,4,1",
            &[
                "data.csv",
                "2 input columns",
                "--layers 3-4-1 takes 3 inputs",
            ],
        ),
    ];
    for (test, contents, layers, expect) in cases {
        expect_clean_failure(
            test,
            &[("data.csv", contents.as_bytes().to_vec())],
            &train("@/data.csv", layers),
            expect,
        );
    }
    expect_clean_failure(
        "csv-not-utf8",
        &[("data.csv", b"a,b,label\n0,\xff\xfe,0\n".to_vec())],
        &train("@/data.csv", "2,4,2"),
        &["data.csv", "line 2", "UTF-8"],
    );
    expect_clean_failure(
        "csv-missing",
        &[],
        &train("@/missing.csv", "2,4,3"),
        &["missing.csv"],
    );
    // Three classes: a bad row after good ones, a label past the classes, a
    // target column that is not there.
    let three: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "csv-ragged-late",
            "a,b,label\n0,0,0\n1,1,1\n0.5,1\n",
            &[],
            &["data.csv", "line 4", "fields"],
        ),
        (
            "csv-inf-late",
            "a,b,label\n0,0,0\n1,1,1\n1,inf,2\n",
            &[],
            &["data.csv", "line 4", "'inf'", "finite"],
        ),
        (
            "csv-label-past-classes",
            "a,b,label\n0,0,0\n1,1,5\n",
            &[],
            &["data.csv", "line 3", "'5'"],
        ),
        (
            "csv-no-target",
            "a,b,label\n0,0,0\n1,1,1\n",
            &["--target", "nosuchcolumn"],
            &["nosuchcolumn"],
        ),
    ];
    for (test, contents, extra, expect) in three {
        let mut args = train("@/data.csv", "2,4,3");
        args.extend_from_slice(extra);
        expect_clean_failure(
            test,
            &[("data.csv", contents.as_bytes().to_vec())],
            &args,
            expect,
        );
    }
}

/// `predict` reads a CSV of inputs only; it fails the same way.
#[test]
fn bad_csv_files_for_predict() {
    let model = trained_model("predict-csv");
    let cases: &[(&str, &str, &[&str])] = &[
        ("predict-empty", "", &["data.csv", "empty"]),
        (
            "predict-header-only",
            "a,b\n",
            &["data.csv", "no data rows"],
        ),
        (
            "predict-ragged",
            "a,b\n1,2\n3\n",
            &["data.csv", "line 3", "fields"],
        ),
        (
            "predict-nan",
            "a,b\n1,nan\n",
            &["data.csv", "line 2", "'nan'", "finite"],
        ),
        (
            "predict-text",
            "a,b\n1,two\n",
            &["data.csv", "line 2", "'two'"],
        ),
    ];
    for (test, contents, expect) in cases {
        expect_clean_failure(
            test,
            &[
                ("data.csv", contents.as_bytes().to_vec()),
                ("m.safetensors", model.clone()),
            ],
            &predict("@/m.safetensors", "@/data.csv"),
            expect,
        );
    }
}

// ---------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------

/// An IDX file: header for value type `ty` and `dims`, then `body`.
fn idx(ty: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A gzip of `bytes` whose trailer claims `len` uncompressed bytes (mod 2^32).
fn gzip_claiming(bytes: &[u8], len: u64) -> Vec<u8> {
    let mut z = gzip(bytes);
    let n = z.len();
    z[n - 4..].copy_from_slice(&(len as u32).to_le_bytes());
    z
}

/// (test, images, labels, words of the error)
type IdxCase = (&'static str, Vec<u8>, Vec<u8>, Vec<&'static str>);
/// (test, files, words of the error)
type FilesCase = (
    &'static str,
    Vec<(&'static str, Vec<u8>)>,
    Vec<&'static str>,
);

const IMAGES: &str = "train-images-idx3-ubyte";
const LABELS: &str = "train-labels-idx1-ubyte";

/// Three 2×2 u8 images and their labels.
fn good_idx() -> (Vec<u8>, Vec<u8>) {
    (
        idx(0x08, &[3, 2, 2], &[0, 255, 9, 80, 1, 2, 3, 4, 200, 0, 0, 7]),
        idx(0x08, &[3], &[0, 1, 2]),
    )
}

#[test]
fn bad_idx_files() {
    let (img, lab) = good_idx();
    let cut = |v: &[u8], n: usize| v[..v.len() - n].to_vec();
    let with = |v: &[u8], at: usize, b: &[u8]| {
        let mut v = v.to_vec();
        v[at..at + b.len()].copy_from_slice(b);
        v
    };
    let cases: Vec<IdxCase> = vec![
        (
            "idx-magic-images",
            with(&img, 0, b"PK"),
            lab.clone(),
            vec![IMAGES, "not an IDX file", "50 4b"],
        ),
        (
            "idx-magic-labels",
            img.clone(),
            with(&lab, 0, b"\x89P"),
            vec![LABELS, "not an IDX file"],
        ),
        (
            "idx-value-type",
            with(&img, 2, &[0x07]),
            lab.clone(),
            vec![IMAGES, "unknown IDX value type 0x07"],
        ),
        (
            "idx-no-dims",
            with(&img, 3, &[0]),
            lab.clone(),
            vec![IMAGES, "0 dimensions"],
        ),
        (
            "idx-truncated-header",
            img[..6].to_vec(),
            lab.clone(),
            vec![IMAGES, "truncated", "header"],
        ),
        (
            "idx-truncated-values",
            cut(&img, 1),
            lab.clone(),
            vec![IMAGES, "need 28 bytes", "has 27", "truncated"],
        ),
        (
            "idx-truncated-labels",
            img.clone(),
            cut(&lab, 2),
            vec![LABELS, "need 11 bytes", "has 9"],
        ),
        (
            "idx-sizes-beyond-file",
            with(&img, 4, &100u32.to_be_bytes()),
            lab.clone(),
            vec![IMAGES, "[100, 2, 2]", "need 416 bytes", "has 28"],
        ),
        (
            "idx-extra-bytes",
            [img.clone(), vec![0]].concat(),
            lab.clone(),
            vec![IMAGES, "need 28 bytes", "has 29"],
        ),
        (
            "idx-fewer-labels",
            img.clone(),
            idx(0x08, &[2], &[0, 1]),
            vec![LABELS, "2 labels for 3 images"],
        ),
        (
            "idx-more-labels",
            img.clone(),
            idx(0x08, &[4], &[0, 1, 1, 0]),
            vec![LABELS, "4 labels for 3 images"],
        ),
        (
            "idx-labels-2d",
            img.clone(),
            idx(0x08, &[3, 1], &[0, 1, 2]),
            vec![LABELS, "1-dimensional"],
        ),
        (
            "idx-label-out-of-range",
            img.clone(),
            idx(0x08, &[3], &[0, 10, 2]),
            vec![LABELS, "label 10 of sample 1", "0..9"],
        ),
        (
            "idx-no-images",
            idx(0x08, &[0, 2, 2], &[]),
            idx(0x08, &[0], &[]),
            vec![IMAGES, "no images"],
        ),
        (
            "idx-empty-images",
            idx(0x08, &[3, 0, 2], &[]),
            lab.clone(),
            vec![IMAGES, "0 values"],
        ),
        (
            "idx-nan-pixel",
            idx(0x0D, &[1, 1, 1], &f32::NAN.to_be_bytes()),
            idx(0x08, &[1], &[0]),
            vec![IMAGES, "value 0 is not finite"],
        ),
        (
            "idx-wrong-width",
            idx(0x08, &[3, 3, 3], &[1; 27]),
            lab.clone(),
            vec!["idx-wrong-width", "9 values per image", "takes 4 inputs"],
        ),
        (
            "idx-empty-file",
            Vec::new(),
            lab.clone(),
            vec![IMAGES, "truncated", "4-byte header"],
        ),
    ];
    for (test, images, labels, expect) in cases {
        expect_clean_failure(
            test,
            &[(IMAGES, images), (LABELS, labels)],
            &train("@/", "4,4,10"),
            &expect,
        );
    }
}

/// Gzip files: broken streams, a length field that disagrees, a stream of
/// the wrong true length (whole or in members), bytes after the stream.
#[test]
fn bad_gzip_idx_files() {
    let (img, lab) = good_idx();
    let z = gzip(&img);
    let mut crc = z.clone();
    let n = crc.len();
    crc[n - 8] ^= 0xff;
    let gz_images = format!("{IMAGES}.gz");
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "gz-truncated",
            z[..z.len() / 2].to_vec(),
            vec![gz_images.as_str(), "truncated", "header"],
        ),
        (
            "gz-tiny",
            z[..3].to_vec(),
            vec![gz_images.as_str(), "truncated", "4-byte header"],
        ),
        (
            "gz-bad-crc",
            crc,
            vec![gz_images.as_str(), "cannot decompress", "checksum"],
        ),
        (
            // The trailer's length field lies; the stream itself is right.
            "gz-length-field",
            gzip_claiming(&img, 99),
            vec![gz_images.as_str(), "cannot decompress", "checksum"],
        ),
        (
            // Both lie: 30 bytes whose trailer claims the declared 28.
            "gz-extra-data-claiming",
            gzip_claiming(&[img.clone(), vec![1, 2]].concat(), 28),
            vec![gz_images.as_str(), "cannot decompress"],
        ),
        (
            // The true size, not the trailer's, is reported.
            "gz-extra-data",
            gzip(&[img.clone(), vec![1, 2]].concat()),
            vec![gz_images.as_str(), "need 28 bytes", "gzip stream holds 30"],
        ),
        (
            "gz-short-data",
            gzip(&img[..20]),
            vec![gz_images.as_str(), "need 28 bytes", "gzip stream holds 20"],
        ),
        (
            // Two members hold 30 bytes; the last member's trailer says 18.
            "gz-two-members-long",
            [gzip(&img[..10]), gzip(&[&img[10..], &[1, 2][..]].concat())].concat(),
            vec![gz_images.as_str(), "need 28 bytes", "gzip stream holds 30"],
        ),
        (
            "gz-trailing-bytes",
            [z.clone(), b"junk".to_vec()].concat(),
            vec![
                gz_images.as_str(),
                "4 bytes after the end of the gzip stream",
            ],
        ),
        (
            "gz-wrong-magic",
            gzip(&with_magic(&img, b"XY")),
            vec![gz_images.as_str(), "not an IDX file"],
        ),
    ];
    for (test, images, expect) in cases {
        expect_clean_failure(
            test,
            &[(&gz_images, images), (LABELS, lab.clone())],
            &train("@/", "4,4,10"),
            &expect,
        );
    }
}

fn with_magic(v: &[u8], m: &[u8; 2]) -> Vec<u8> {
    let mut v = v.to_vec();
    v[..2].copy_from_slice(m);
    v
}

/// Headers declaring sizes that would exhaust memory are refused from the
/// header and the file's length, before anything is allocated: the binary
/// fails at once, naming the file.
#[test]
fn huge_declared_sizes_are_refused_before_allocating() {
    let lab = idx(0x08, &[3], &[0, 1, 2]);
    let huge = idx(0x08, &[u32::MAX, u32::MAX, u32::MAX], &[]);
    let just_under = idx(0x08, &[1 << 30, 2, 2], &[]);
    let floats = idx(0x0E, &[1 << 31, 28, 28], &[]);
    // 12 + 2^32 bytes declared, which a gzip trailer (mod 2^32) records as 12.
    let lying_images = gzip_claiming(&idx(0x08, &[1 << 30, 4], &[]), 12);
    let lying_labels = gzip_claiming(&idx(0x08, &[1 << 30], &[]), 8 + (1 << 30));
    let cases: Vec<FilesCase> = vec![
        (
            "huge-product",
            vec![(IMAGES, huge), (LABELS, lab.clone())],
            vec![IMAGES, "too large"],
        ),
        (
            "huge-f64",
            vec![(IMAGES, floats), (LABELS, lab.clone())],
            vec![IMAGES, "too large"],
        ),
        (
            "huge-under-the-limit",
            vec![(IMAGES, just_under), (LABELS, lab.clone())],
            vec![IMAGES, "need 4294967312 bytes", "has 16"],
        ),
        (
            "huge-labels",
            vec![
                (IMAGES, good_idx().0),
                (LABELS, idx(0x08, &[u32::MAX], &[])),
            ],
            vec![LABELS, "need 4294967303 bytes", "has 8"],
        ),
        (
            "huge-gzip-lying",
            vec![("images.gz", lying_images), ("labels.gz", lying_labels)],
            vec!["images.gz", "need 4294967308 bytes", "gzip stream holds 12"],
        ),
    ];
    for (test, files, expect) in cases {
        let data = if files[0].0 == IMAGES {
            "@/".to_string()
        } else {
            "@/images.gz,@/labels.gz".to_string()
        };
        expect_clean_failure(test, &files, &train(&data, "4,4,10"), &expect);
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// A model trained for one epoch on the spirals, `2,4,2`.
fn trained_model(test: &str) -> Vec<u8> {
    let dir = TempDir::new(&format!("{test}-model"));
    let path = dir.path("m.safetensors").to_string_lossy().into_owned();
    run(&[
        "train",
        "--backend",
        "cpu",
        "--quiet",
        "--epochs",
        "1",
        "--layers",
        "2,4,2",
        "--save",
        &path,
    ])
    .success();
    std::fs::read(&path).unwrap()
}

/// `bytes` with metadata `key` set to `value` (the header rewritten).
fn with_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    safetensors_header::with_header(bytes, |h| {
        let mut json: serde_json::Value = serde_json::from_str(h).unwrap();
        json["__metadata__"][key] = value.into();
        json.to_string()
    })
}

fn predict<'a>(model: &'a str, data: &'a str) -> Vec<&'a str> {
    vec![
        "predict",
        "--backend",
        "cpu",
        "--model",
        model,
        "--data",
        data,
        "--out",
        "@/predictions.csv",
    ]
}

#[test]
fn bad_checkpoints() {
    let good = trained_model("bad-checkpoints");
    let n = good.len();
    let mut corrupt = good.clone();
    // Inside the header JSON: a byte that is not JSON.
    corrupt[20] = 0xff;
    let mut flipped_len = good.clone();
    flipped_len[0] ^= 0x40;
    let mut nan = good.clone();
    // The data's last 4 bytes: a float of the last tensor.
    nan[n - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "ckpt-empty",
            Vec::new(),
            vec!["not a safetensors checkpoint"],
        ),
        (
            "ckpt-not-safetensors",
            b"{\"layers\": [2, 4, 2]}\n".to_vec(),
            vec!["not a safetensors checkpoint"],
        ),
        (
            "ckpt-truncated",
            good[..n - 7].to_vec(),
            vec!["not a safetensors checkpoint"],
        ),
        (
            "ckpt-truncated-header",
            good[..40].to_vec(),
            vec!["not a safetensors checkpoint"],
        ),
        (
            "ckpt-corrupt-header",
            corrupt,
            vec!["not a safetensors checkpoint"],
        ),
        (
            "ckpt-corrupt-length",
            flipped_len,
            vec!["not a safetensors checkpoint"],
        ),
        ("ckpt-nan", nan, vec!["non-finite value"]),
        (
            "ckpt-other-architecture",
            with_meta(&good, "layers", "2,5,2"),
            vec!["'layers.0.weight' has shape [4, 2]", "needs [5, 2]"],
        ),
        (
            "ckpt-huge-architecture",
            with_meta(&good, "layers", "65535,65535"),
            vec!["needs [65535, 65535]"],
        ),
        (
            "ckpt-newer-version",
            with_meta(&good, "version", "3"),
            vec!["format version 3 is newer", "upgrade"],
        ),
        (
            "ckpt-other-format",
            with_meta(&good, "format", "pytorch"),
            vec!["format is 'pytorch'"],
        ),
        (
            "ckpt-bad-version",
            with_meta(&good, "version", "one"),
            vec!["'version' is not a valid value: 'one'"],
        ),
    ];
    let model = "@/bad.safetensors";
    let commands: [(&str, Vec<&str>); 3] = [
        (
            "resume",
            vec![
                "train",
                "--backend",
                "cpu",
                "--quiet",
                "--epochs",
                "3",
                "--resume",
                model,
                "--save",
                "@/model.safetensors",
                "--metrics",
                "@/metrics.json",
                "--plot",
                "@/plot.png",
            ],
        ),
        (
            "eval",
            vec![
                "eval",
                "--backend",
                "cpu",
                "--model",
                model,
                "--data",
                "spirals",
            ],
        ),
        ("predict", predict(model, "spirals")),
    ];
    for (test, bytes, expect) in &cases {
        for (cmd, args) in &commands {
            let mut words = vec!["bad.safetensors"];
            words.extend(expect);
            expect_clean_failure(
                &format!("{test}-{cmd}"),
                &[("bad.safetensors", bytes.clone())],
                args,
                &words,
            );
        }
    }
}

/// A good checkpoint of another architecture than the run asks for.
#[test]
fn checkpoint_of_another_architecture_than_the_data() {
    let good = trained_model("arch");
    // Three input columns for a model that takes two.
    let wide = b"a,b,c,label\n1,2,3,0\n".to_vec();
    expect_clean_failure(
        "arch-resume",
        &[("m.safetensors", good.clone())],
        &[
            "train",
            "--backend",
            "cpu",
            "--quiet",
            "--epochs",
            "3",
            "--resume",
            "@/m.safetensors",
            "--layers",
            "2,8,2",
            "--save",
            "@/model.safetensors",
        ],
        &["--layers 2-8-2", "does not match", "2-4-2"],
    );
    expect_clean_failure(
        "arch-eval",
        &[("m.safetensors", good.clone()), ("wide.csv", wide.clone())],
        &[
            "eval",
            "--backend",
            "cpu",
            "--model",
            "@/m.safetensors",
            "--data",
            "@/wide.csv",
        ],
        &["wide.csv", "3 input columns", "the model"],
    );
    expect_clean_failure(
        "arch-predict",
        &[("m.safetensors", good), ("wide.csv", wide)],
        &predict("@/m.safetensors", "@/wide.csv"),
        &["wide.csv", "3 input columns", "the model"],
    );
}
