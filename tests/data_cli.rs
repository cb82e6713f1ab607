//! Data through the command line: `.npy` pairs train as their CSV twins,
//! mapped arrays train past `SHADERTRAIN_MEMORY_LIMIT`, data held in memory
//! (pipes, IDX, built-ins) counts against it, checkpoint streams are bounded,
//! validation sets are fingerprinted, long CSV loads show progress.

mod cli_support;
#[path = "common/npy_file.rs"]
mod npy_file;

use cli_support::{expect_error, expect_error_env, run, run_env, run_stdin, TempDir};
use npy_file::{le_f32, le_i64, npy};

/// `n` rows of `w` inputs (multiples of 1/8, exact in CSV) and labels below
/// 3: as `x.npy`/`y.npy` and as `d.csv`; returns the two `--data` arguments.
fn twins(dir: &TempDir, n: usize, w: usize) -> (String, String) {
    let x: Vec<f32> = (0..n * w)
        .map(|i| ((i * 13 % 29) as f32 - 14.0) / 8.0)
        .collect();
    let y: Vec<i64> = (0..n)
        .map(|r| i64::from(x[r * w] + x[r * w + 1] > 0.0) + i64::from(x[r * w + 2] > 0.5))
        .collect();
    let xp = dir.path("x.npy");
    let yp = dir.path("y.npy");
    std::fs::write(&xp, npy("<f4", &[n, w], false, &le_f32(&x))).unwrap();
    std::fs::write(&yp, npy("<i8", &[n], false, &le_i64(&y))).unwrap();
    let mut csv: String = (0..w).map(|c| format!("c{c},")).collect::<String>() + "label\n";
    for r in 0..n {
        for v in &x[r * w..(r + 1) * w] {
            csv += &format!("{v},");
        }
        csv += &format!("{}\n", y[r]);
    }
    let csv = dir.file("d.csv", &csv);
    (format!("{},{}", xp.display(), yp.display()), csv)
}

/// The lines of a run's figures, without the wall-clock ones.
fn figures(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| !l.starts_with("throughput"))
        .map(String::from)
        .collect()
}

/// The same values as `.npy` arrays and as CSV give the same run, with a
/// validation split and standardisation; eval reads the pair too, and no
/// output may replace one of the arrays.
#[test]
fn npy_pairs_train_as_their_csv_twins() {
    let dir = TempDir::new("npy-csv");
    let (pair, csv) = twins(&dir, 61, 5);
    let ck = dir.path("m.safetensors").display().to_string();
    let train = |data: &str, save: Option<&str>| {
        let mut args = vec![
            "train",
            "--data",
            data,
            "--layers",
            "5,8:relu,3:softmax",
            "--epochs",
            "3",
            "--batch",
            "8",
            "--lr",
            "0.2",
            "--val-split",
            "0.2",
            "--normalize",
            "--backend",
            "cpu",
            "--quiet",
            "--seed",
            "3",
        ];
        if let Some(s) = save {
            args.extend(["--save", s]);
        }
        run(&args).success().stdout()
    };
    let from_npy = train(&pair, Some(&ck));
    let from_csv = train(&csv, None);
    assert_eq!(figures(&from_npy), figures(&from_csv));
    assert!(from_npy.contains("validation accuracy"), "{from_npy}");
    let eval = run(&["eval", "--model", &ck, "--data", &pair, "--backend", "cpu"]).success();
    assert!(eval.stdout().contains("61 samples"), "{}", eval.stdout());
    let x = pair.split(',').next().unwrap();
    expect_error(
        &[
            "train",
            "--data",
            &pair,
            "--layers",
            "5,3:softmax",
            "--save",
            x,
        ],
        &["--save", "is the --data file"],
    );
}

/// A mapped set trains under a memory limit smaller than the set: its pages
/// are the kernel's, not the process's. The same bytes through a pipe, or
/// the same values as CSV, must be held in memory and are refused.
#[test]
fn mapped_arrays_train_past_the_memory_limit() {
    let dir = TempDir::new("npy-limit");
    // 3,000 rows of 40 f32: 480,000 bytes of inputs, under a 300,000-byte limit.
    let (n, w) = (3000, 40);
    let x: Vec<f32> = (0..n * w).map(|i| (i % 7) as f32 / 7.0).collect();
    let y: Vec<i64> = (0..n as i64).map(|i| i % 2).collect();
    let xp = dir.path("big.npy");
    let yp = dir.path("lab.npy");
    let xbytes = npy("<f4", &[n, w], false, &le_f32(&x));
    std::fs::write(&xp, &xbytes).unwrap();
    std::fs::write(&yp, npy("<i8", &[n], false, &le_i64(&y))).unwrap();
    let limit = [("SHADERTRAIN_MEMORY_LIMIT", "300000")];
    let pair = format!("{},{}", xp.display(), yp.display());
    let args = |data: &str| {
        [
            "train",
            "--data",
            data,
            "--layers",
            "40,4:relu,2:softmax",
            "--epochs",
            "1",
            "--batch",
            "50",
            "--backend",
            "cpu",
            "--quiet",
        ]
        .map(String::from)
    };
    let r = run_env(&args(&pair), &limit).success();
    assert!(r.stdout().contains("accuracy"), "{}", r.stdout());
    let piped = format!("/dev/stdin,{}", yp.display());
    let out = run_stdin(
        &args(&piped).each_ref().map(String::as_str),
        &xbytes,
        &limit,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not enough memory") && err.contains("/dev/stdin read from a stream"),
        "{err}"
    );
}

/// IDX images from a pipe are read once and count against the limit; so
/// does a built-in set.
#[test]
fn data_in_memory_counts_against_the_limit() {
    let dir = TempDir::new("held-data");
    let (n, side) = (30, 4);
    let mut img = vec![0, 0, 8, 3];
    for s in [n, side, side] {
        img.extend((s as u32).to_be_bytes());
    }
    img.extend((0..n * side * side).map(|i| (i * 31 % 256) as u8));
    let mut lab = vec![0, 0, 8, 1];
    lab.extend((n as u32).to_be_bytes());
    lab.extend((0..n).map(|i| (i % 3) as u8));
    let labels = dir.path("labels.idx");
    std::fs::write(&labels, &lab).unwrap();
    let data = format!("/dev/stdin,{}", labels.display());
    let args = [
        "train",
        "--data",
        &data,
        "--layers",
        "16,3:softmax",
        "--epochs",
        "2",
        "--backend",
        "cpu",
        "--quiet",
    ];
    let ok = run_stdin(&args, &img, &[]);
    assert!(ok.status.success(), "{ok:?}");
    // 30 rows of 16 inputs and 3 targets, and 30 raw labels: 2,400 bytes.
    let out = run_stdin(&args, &img, &[("SHADERTRAIN_MEMORY_LIMIT", "2000")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not enough memory: the data in /dev/stdin needs 2.3 KiB"),
        "{err}"
    );
    expect_error_env(
        &["train", "--data", "spirals", "--backend", "cpu"],
        &[("SHADERTRAIN_MEMORY_LIMIT", "20000")],
        &[
            "not enough memory",
            "the built-in set 'spirals' needs 31.2 KiB",
        ],
    );
}

/// A checkpoint from a pipe is read no further than a fixed bound, however
/// much memory the machine has.
#[test]
fn checkpoint_streams_are_bounded_whatever_the_memory() {
    let head = br#"{"w":{"dtype":"F32","shape":[4294967296,5],"data_offsets":[0,85899345920]}}"#;
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend(head);
    bytes.extend([0u8; 4096]);
    let out = run_stdin(
        &["eval", "--model", "/dev/stdin", "--data", "xor"],
        &bytes,
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("more than the 16.0 GiB a checkpoint read from a pipe or device may hold"),
        "{err}"
    );
}

/// The checkpoint records the validation set; resuming on another one is
/// refused naming it, and on the same one (or none) goes on.
#[test]
fn resuming_needs_the_same_validation_set() {
    let dir = TempDir::new("val-fingerprint");
    let rows = |shift: f32| {
        let mut s = String::from("a,b,y\n");
        for i in 0..12 {
            let (a, b) = (i as f32 / 4.0 - shift, (i % 3) as f32);
            s += &format!("{a},{b},{}\n", i % 2);
        }
        s
    };
    let train = dir.file("train.csv", &rows(0.0));
    let val = dir.file("val.csv", &rows(0.5));
    let other = dir.file("other.csv", &rows(0.25));
    let ck = dir.path("m.safetensors").display().to_string();
    let args = |epochs: &str, val: Option<&str>, resume: bool| {
        let mut a = vec![
            "train",
            "--data",
            &train,
            "--layers",
            "2,4:relu,1:sigmoid",
            "--epochs",
            epochs,
            "--batch",
            "4",
            "--backend",
            "cpu",
            "--quiet",
            "--save",
            &ck,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        if let Some(v) = val {
            a.extend(["--val".into(), v.into()]);
        }
        if resume {
            a.extend(["--resume".into(), ck.clone()]);
        }
        a
    };
    run(&args("2", Some(&val), false)).success();
    let saved = shadertrain::checkpoint::Checkpoint::load(std::path::Path::new(&ck)).unwrap();
    let v = saved
        .state
        .validation
        .expect("the validation set is recorded");
    assert_eq!((v.name.as_str(), v.samples), ("val", 12));
    expect_error(
        &args("3", Some(&other), true),
        &[
            "the validation set is 'other', the same 12 samples but other values",
            "validated on 'val'",
        ],
    );
    run(&args("3", Some(&val), true)).success();
    // Going on without a validation set is allowed.
    run(&args("4", None, true)).success();
}

/// A CSV load reports the bytes read as it goes, with the file's length,
/// and ends at the whole file (the command line draws a bar from it when
/// the load takes more than a second).
#[test]
fn csv_loads_report_progress() {
    let dir = TempDir::new("csv-progress");
    let mut csv = String::from("a,b,y\n");
    for i in 0..400_000 {
        csv += &format!("{}.25,{},{}\n", i % 97, i % 13, i % 2);
    }
    let path = dir.file("big.csv", &csv);
    let mut seen: Vec<shadertrain::data::Loading> = Vec::new();
    let d = shadertrain::data::Source::parse(&path)
        .unwrap()
        .load_observed(None, 1, 0, &mut |l| seen.push(l))
        .unwrap();
    assert_eq!(d.len(), 400_000);
    let size = csv.len() as u64;
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.iter().all(|l| l.total == Some(size)), "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].done < w[1].done), "{seen:?}");
    assert_eq!(seen.last().unwrap().done, size);
}
