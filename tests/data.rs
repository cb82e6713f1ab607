//! Datasets: built-in sets, the CSV loader and its one-line errors, shapes and batches.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use shadertrain::data::{Dataset, Task};
use shadertrain::Error;

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!(
            "shadertrain-data-{}-{}-{}",
            std::process::id(),
            nanos,
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Write `contents` to `name` in this directory and return its path.
    fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Load `contents` as a CSV file, returning the result and the file's path.
fn load(
    contents: &str,
    target: Option<&str>,
    outputs: usize,
) -> (shadertrain::Result<Dataset>, PathBuf) {
    let dir = TempDir::new();
    let path = dir.file("set.csv", contents);
    (Dataset::from_csv(&path, target, outputs), path)
}

/// Load `contents`, expecting an error; returns it and its Display text, checked to be one line naming the file.
fn load_err(contents: &str, target: Option<&str>, outputs: usize) -> (Error, String) {
    let (res, path) = load(contents, target, outputs);
    let err = match res {
        Ok(d) => panic!("expected an error, loaded {} rows", d.len()),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "message is not one line: {msg:?}");
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    (err, msg)
}

/// Assert a `DataLine` error at `line`, returning the message.
fn line_err(contents: &str, target: Option<&str>, outputs: usize, line: u64) -> String {
    let (err, msg) = load_err(contents, target, outputs);
    match err {
        Error::DataLine { line: l, .. } => assert_eq!(l, line, "{msg}"),
        other => panic!("expected DataLine, got {other:?}"),
    }
    assert!(msg.contains(&format!("line {line}")), "{msg}");
    msg
}

/// Assert a whole-file `Data` error, returning the message.
fn data_err(contents: &str, target: Option<&str>, outputs: usize) -> String {
    let (err, msg) = load_err(contents, target, outputs);
    assert!(
        matches!(err, Error::Data { .. }),
        "expected Data, got {err:?}"
    );
    msg
}

// ---------------------------------------------------------------- built-in sets

#[test]
fn spirals_shapes_and_one_hot() {
    let d = Dataset::spirals(50, 1);
    assert_eq!(d.name, "spirals");
    assert_eq!((d.len(), d.inputs, d.outputs), (100, 2, 2));
    assert_eq!((d.x.len(), d.y.len()), (200, 200));
    assert_eq!(d.task, Task::Classification { classes: 2 });
    assert!(d.is_classification());
    assert!(!d.is_empty());
    // Interleaved: class 0, 1, 0, 1, ...
    for (i, row) in d.y.chunks(2).enumerate() {
        let want: [f32; 2] = if i % 2 == 0 { [1.0, 0.0] } else { [0.0, 1.0] };
        assert_eq!(row, want, "row {i}");
    }
}

#[test]
fn spirals_values_bounded_and_spread() {
    let d = Dataset::spirals(500, 42);
    assert!(d
        .x
        .iter()
        .all(|v| v.is_finite() && (-1.0..=1.0).contains(v)));
    // The outer turn reaches near the edge of the square.
    let r_max =
        d.x.chunks(2)
            .map(|p| p[0].hypot(p[1]))
            .fold(0.0f32, f32::max);
    assert!(r_max > 0.8, "r_max {r_max}");
}

#[test]
fn spirals_second_class_is_the_first_rotated() {
    // Without noise the pair would be exact negatives; noise is small.
    let d = Dataset::spirals(200, 3);
    for pair in d.x.chunks(4) {
        assert!((pair[0] + pair[2]).abs() < 0.2, "{pair:?}");
        assert!((pair[1] + pair[3]).abs() < 0.2, "{pair:?}");
    }
}

#[test]
fn spirals_deterministic_per_seed() {
    let a = Dataset::spirals(100, 7);
    let b = Dataset::spirals(100, 7);
    let c = Dataset::spirals(100, 8);
    assert_eq!(a.x, b.x);
    assert_eq!(a.y, b.y);
    assert_ne!(a.x, c.x);
    assert_eq!(a.y, c.y);
}

#[test]
fn spirals_empty_and_single() {
    let d = Dataset::spirals(0, 1);
    assert!(d.is_empty());
    assert_eq!(d.len(), 0);
    let d = Dataset::spirals(1, 1);
    assert_eq!(d.len(), 2);
}

#[test]
fn xor_contents() {
    let d = Dataset::xor();
    assert_eq!((d.len(), d.inputs, d.outputs), (4, 2, 1));
    assert_eq!(d.x, [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]);
    assert_eq!(d.y, [0.0, 1.0, 1.0, 0.0]);
    assert_eq!(d.task, Task::Classification { classes: 2 });
    assert!(d.is_classification());
}

#[test]
fn example_contents() {
    let d = Dataset::example();
    assert_eq!((d.len(), d.inputs, d.outputs), (1, 2, 2));
    assert_eq!(d.x, [0.05, 0.10]);
    assert_eq!(d.y, [0.01, 0.99]);
    assert_eq!(d.task, Task::Regression);
    assert!(!d.is_classification());
}

// ---------------------------------------------------------------- CSV happy paths

#[test]
fn csv_target_last() {
    let (d, _) = load("a,b,label\n1,2,0\n3.5, -4 ,1\n\n5e-1,6,1\n", None, 1);
    let d = d.unwrap();
    assert_eq!(d.name, "set");
    assert_eq!((d.len(), d.inputs, d.outputs), (3, 2, 1));
    assert_eq!(d.x, [1.0, 2.0, 3.5, -4.0, 0.5, 6.0]);
    assert_eq!(d.y, [0.0, 1.0, 1.0]);
    assert_eq!(d.task, Task::Classification { classes: 2 });
}

#[test]
fn csv_target_by_name_in_the_middle() {
    let (d, _) = load(" a , y , b \n1,10,2\n3,20,4\n", Some("y"), 1);
    let d = d.unwrap();
    assert_eq!((d.len(), d.inputs, d.outputs), (2, 2, 1));
    assert_eq!(d.x, [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(d.y, [10.0, 20.0]);
    assert_eq!(d.task, Task::Regression);
    assert!(!d.is_classification());
}

#[test]
fn csv_one_hot_with_three_outputs() {
    let (d, _) = load("x1,x2,class\n0.1,0.2,2\n0.3,0.4,0\n0.5,0.6,1.0\n", None, 3);
    let d = d.unwrap();
    assert_eq!((d.len(), d.inputs, d.outputs), (3, 2, 3));
    assert_eq!(d.y, [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(d.task, Task::Classification { classes: 3 });
}

#[test]
fn csv_one_output_binary_vs_regression() {
    let (d, _) = load("a,t\n1,0\n2,1\n3,1.0\n", None, 1);
    assert_eq!(d.unwrap().task, Task::Classification { classes: 2 });
    let (d, _) = load("a,t\n1,0\n2,1\n3,0.5\n", None, 1);
    let d = d.unwrap();
    assert_eq!(d.task, Task::Regression);
    assert_eq!(d.y, [0.0, 1.0, 0.5]);
    let (d, _) = load("a,t\n1,-3\n2,7\n", None, 1);
    assert_eq!(d.unwrap().task, Task::Regression);
}

#[test]
fn csv_with_utf8_bom_and_crlf() {
    let (d, _) = load("\u{feff}a,b\r\n1,2\r\n3,4\r\n", Some("b"), 1);
    let d = d.unwrap();
    assert_eq!(d.x, [1.0, 3.0]);
    assert_eq!(d.y, [2.0, 4.0]);
}

// ---------------------------------------------------------------- CSV errors

#[test]
fn csv_missing_file() {
    let dir = TempDir::new();
    let path = dir.0.join("nope.csv");
    let err = Dataset::from_csv(&path, None, 1).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("nope.csv"), "{err}");
}

#[test]
fn csv_path_is_a_directory() {
    let dir = TempDir::new();
    let err = Dataset::from_csv(&dir.0, None, 1).unwrap_err();
    assert!(
        matches!(err, Error::Io { .. } | Error::Data { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&dir.0.display().to_string()),
        "{err}"
    );
}

#[test]
fn csv_empty_file() {
    let msg = data_err("", None, 1);
    assert!(msg.contains("empty"), "{msg}");
    let msg = data_err("\n\n", None, 1);
    assert!(msg.contains("empty"), "{msg}");
}

#[test]
fn csv_header_only() {
    let msg = data_err("a,b,c\n", None, 1);
    assert!(msg.contains("no data rows"), "{msg}");
}

#[test]
fn csv_fewer_than_two_columns() {
    let msg = data_err("only\n1\n2\n", None, 1);
    assert!(msg.contains("at least 2 columns"), "{msg}");
}

#[test]
fn csv_ragged_rows() {
    let msg = line_err("a,b,c\n1,2,3\n4,5\n", None, 1, 3);
    assert!(
        msg.contains("expected 3") && msg.contains("found 2"),
        "{msg}"
    );
    let msg = line_err("a,b\n1,2\n\n3,4,5\n", None, 1, 4);
    assert!(
        msg.contains("expected 2") && msg.contains("found 3"),
        "{msg}"
    );
}

#[test]
fn csv_non_numeric_cell() {
    let msg = line_err("x1,x2,y\n1,2,0\n1,abc,1\n", None, 1, 3);
    assert!(msg.contains("'x2'") && msg.contains("'abc'"), "{msg}");
    let msg = line_err("x1,x2,y\n1,,0\n", None, 1, 2);
    assert!(msg.contains("'x2'") && msg.contains("empty"), "{msg}");
    // The target column too.
    let msg = line_err("x1,y\n1,yes\n", None, 1, 2);
    assert!(msg.contains("'y'") && msg.contains("'yes'"), "{msg}");
}

/// Found by tests/fuzz_loaders.rs: a quoted cell or header holding a line
/// break made a message of two lines.
#[test]
fn csv_quoted_line_breaks_stay_on_one_line() {
    let msg = line_err("x,y\n\"1\n2\",0\n", None, 1, 2);
    assert!(msg.contains("'1\\n2'"), "{msg}");
    let msg = line_err("\"a\nb\",y\n1,0\nq,1\n", None, 1, 4);
    assert!(
        msg.contains("column 'a\\nb'") && msg.contains("'q'"),
        "{msg}"
    );
    let msg = data_err("a,b\n1,0\n", Some("c\nd"), 1);
    assert!(msg.contains("'c\\nd'"), "{msg}");
    // A long cell is cut short.
    let long = "z".repeat(1000);
    let msg = line_err(&format!("x,y\n{long},0\n"), None, 1, 2);
    assert!(msg.contains('…') && msg.len() < 200, "{msg}");
}

#[test]
fn csv_non_finite_cells() {
    for bad in ["NaN", "nan", "inf", "-inf", "infinity", "1e39"] {
        let msg = line_err(&format!("a,b,y\n1,2,0\n3,4,1\n5,{bad},0\n"), None, 1, 4);
        assert!(msg.contains("'b'") && msg.contains(bad), "{msg}");
    }
    let msg = line_err("a,y\n1,NaN\n", None, 1, 2);
    assert!(msg.contains("'y'") && msg.contains("not a finite"), "{msg}");
}

#[test]
fn csv_unknown_target_column() {
    let msg = data_err("alpha,beta,gamma\n1,2,3\n", Some("delta"), 1);
    assert!(msg.contains("delta"), "{msg}");
    for name in ["alpha", "beta", "gamma"] {
        assert!(msg.contains(name), "{msg}");
    }
}

#[test]
fn csv_bad_labels_with_several_outputs() {
    let msg = line_err("a,label\n1,0\n2,3\n", None, 3, 3);
    assert!(
        msg.contains("'label'") && msg.contains("'3'") && msg.contains("0..=2"),
        "{msg}"
    );
    let msg = line_err("a,label\n1,1.5\n", None, 3, 2);
    assert!(msg.contains("'1.5'") && msg.contains("integer"), "{msg}");
    let msg = line_err("a,label\n1,2\n2,-1\n", None, 3, 3);
    assert!(msg.contains("'-1'"), "{msg}");
    let msg = line_err("a,label\n1,cat\n", None, 3, 2);
    assert!(msg.contains("'cat'"), "{msg}");
}

#[test]
fn csv_invalid_utf8() {
    let dir = TempDir::new();
    let path = dir.file("bad.csv", b"a,b\n1,2\n\xff\xfe,3\n");
    let err = Dataset::from_csv(&path, None, 1).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::DataLine { line: 3, .. }), "{err:?}");
    assert!(!msg.contains('\n') && msg.contains("bad.csv"), "{msg}");
}

#[test]
fn csv_zero_outputs_is_invalid() {
    let (res, _) = load("a,b\n1,2\n", None, 0);
    assert!(matches!(res, Err(Error::Invalid(_))), "{res:?}");
}

#[test]
fn csv_error_line_numbers_count_quoted_newlines() {
    // A quoted cell spanning lines: the bad row starts on line 4.
    let msg = line_err("a,b\n\"1\n\",2\nx,3\n", None, 1, 4);
    assert!(msg.contains("'x'"), "{msg}");
}

#[test]
fn csv_line_numbers_with_crlf_and_blank_lines() {
    // The csv crate's own positions lag after CRLF or blank lines
    // (rust-csv#395); the loader must still report the file's real line.
    line_err("a,b\r\n1,2\r\nx,4\r\n", None, 1, 3);
    line_err("a,b\n1,2\n\n\n\nx,4\n", None, 1, 6);
    line_err("a,b\r\n1,2\r\n\r\n\r\nx,4\r\n", None, 1, 5);
    line_err("\n\n  \na,b\n1,2\n \t \n3\n", None, 1, 7);
    // Blank lines before the header are skipped too.
    let (d, _) = load("\n\r\n a , b \n\n1,2\n", None, 1);
    assert_eq!(d.unwrap().x, [1.0]);
}

#[test]
fn csv_line_numbers_in_a_long_file() {
    // Many blank lines and rows, so the reader's buffers refill mid-stream.
    for eol in ["\n", "\r\n"] {
        let mut text = format!("a,b,c{eol}");
        let mut line = 1;
        for i in 0..20_000 {
            text.push_str(&format!("{i},{}.5,1{eol}", i % 7));
            line += 1;
            for _ in 0..i % 3 {
                text.push_str(eol);
                line += 1;
            }
        }
        let (d, _) = load(&text, None, 1);
        let d = d.unwrap();
        assert_eq!(d.len(), 20_000);
        assert_eq!(d.x[2 * 19_999], 19_999.0);
        text.push_str(&format!("1,oops,0{eol}"));
        let msg = line_err(&text, None, 1, line + 1);
        assert!(msg.contains("'oops'") && msg.contains("'b'"), "{msg}");
    }
}

// ---------------------------------------------------------------- shapes and batches

#[test]
fn check_shape_names_both_widths() {
    let (d, _) = load("a,b,c,y\n1,2,3,0\n", None, 1);
    let d = d.unwrap();
    d.check_shape(3, 1).unwrap();
    let err = d.check_shape(2, 1).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
    assert!(
        msg.contains('3') && msg.contains('2') && msg.contains("input"),
        "{msg}"
    );
    let err = Dataset::spirals(4, 0).check_shape(2, 1).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape(_)), "{err:?}");
    assert!(
        msg.contains('2') && msg.contains('1') && msg.contains("target"),
        "{msg}"
    );
}

#[test]
fn gather_copies_rows() {
    let (d, _) = load("a,b,label\n0,1,0\n10,11,1\n20,21,2\n30,31,1\n", None, 3);
    let d = d.unwrap();
    let idx = [3, 0, 3, 2];
    let mut x = vec![f32::NAN; idx.len() * d.inputs];
    let mut y = vec![f32::NAN; idx.len() * d.outputs];
    d.gather(&idx, &mut x, &mut y);
    assert_eq!(x, [30.0, 31.0, 0.0, 1.0, 30.0, 31.0, 20.0, 21.0]);
    assert_eq!(
        y,
        [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    );
    // An empty batch touches nothing.
    d.gather(&[], &mut [], &mut []);
}

#[test]
fn gather_matches_rows_of_builtin_sets() {
    let d = Dataset::spirals(10, 5);
    let idx: Vec<usize> = (0..d.len()).rev().collect();
    let mut x = vec![0.0; idx.len() * 2];
    let mut y = vec![0.0; idx.len() * 2];
    d.gather(&idx, &mut x, &mut y);
    for (k, &i) in idx.iter().enumerate() {
        assert_eq!(x[2 * k..2 * k + 2], d.x[2 * i..2 * i + 2]);
        assert_eq!(y[2 * k..2 * k + 2], d.y[2 * i..2 * i + 2]);
    }
}

#[test]
fn validation_split_is_seeded_disjoint_and_complete() {
    let d = Dataset::spirals(50, 3);
    let (t, v) = d.split_validation(0.2, 9).unwrap();
    assert_eq!((t.len(), v.len()), (80, 20));
    assert_eq!((t.inputs, t.outputs, t.task), (d.inputs, d.outputs, d.task));
    // Every row lands on exactly one side.
    let key = |x: &[f32]| (x[0].to_bits(), x[1].to_bits());
    let mut all: Vec<_> = t.x.chunks(2).chain(v.x.chunks(2)).map(key).collect();
    let mut orig: Vec<_> = d.x.chunks(2).map(key).collect();
    all.sort();
    orig.sort();
    assert_eq!(all, orig);
    // Same seed, same split; another seed, another split.
    assert_eq!(d.split_validation(0.2, 9).unwrap().1.x, v.x);
    assert_ne!(d.split_validation(0.2, 10).unwrap().1.x, v.x);
    // At least one validation row; never all of them.
    assert_eq!(d.split_validation(0.001, 1).unwrap().1.len(), 1);
    for bad in [0.0, 1.0, -0.5, f64::NAN, 0.9999] {
        assert!(d.split_validation(bad, 1).is_err(), "{bad}");
    }
}

#[test]
fn standardizer_centres_and_scales_with_training_statistics() {
    use shadertrain::data::Standardizer;
    let mut d = Dataset::spirals(40, 1);
    // A constant column is left at scale 1, not divided by zero.
    for row in d.x.chunks_mut(2) {
        row[1] = 5.0;
    }
    let z = Standardizer::fit(&d);
    assert_eq!(z.std[1], 1.0);
    z.apply(&mut d).unwrap();
    let n = d.len() as f64;
    let col = |c: usize| d.x.chunks(2).map(move |r| r[c] as f64);
    let mean0 = col(0).sum::<f64>() / n;
    let var0 = col(0).map(|v| (v - mean0).powi(2)).sum::<f64>() / n;
    assert!(
        mean0.abs() < 1e-6 && (var0 - 1.0).abs() < 1e-5,
        "{mean0} {var0}"
    );
    assert!(col(1).all(|v| v == 0.0));
    let mut other = Dataset::xor();
    other.x.push(0.0);
    other.inputs = 3;
    assert!(z.apply(&mut other).is_err(), "width mismatch");
}
