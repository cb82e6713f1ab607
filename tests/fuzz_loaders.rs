//! Fuzzing every loader a user's file reaches, with proptest: the CSV loader
//! (training and `predict`'s inputs-only path), the MNIST IDX loader (plain
//! and gzip), checkpoints, and the `--layers` parser.
//!
//! Inputs are arbitrary bytes and, mostly, valid files broken on purpose: bit
//! flips, truncation anywhere, splices, header words overwritten with huge
//! sizes, and for checkpoints edits of the safetensors header JSON and its
//! metadata. Every property is the same: no panic; either `Ok` with the
//! result's invariants holding, or an error that is one non-empty line naming
//! the file. A counting global allocator also checks that no input makes a
//! loader allocate more than [`alloc_bound`] of its size: sizes are checked
//! before anything is allocated.
//!
//! The case counts keep `cargo test` short; `PROPTEST_CASES=20000 cargo test
//! --release --test fuzz_loaders` runs a long session by hand. Failures are
//! kept in `proptest-regressions/fuzz_loaders.txt` and replayed first.

mod common;

use common::npy_file::npy;
use common::safetensors_header::with_header;
use common::sample_checkpoint;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError};
use shadertrain::checkpoint::Checkpoint;
use shadertrain::data::{Dataset, Task};
use shadertrain::idx::IdxReader;
use shadertrain::network::Network;
use shadertrain::optim::{Optimizer, OptimizerKind};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;

// ---------------------------------------------------------------------------
// Counting allocations
// ---------------------------------------------------------------------------

/// Wraps the system allocator and, on a thread that asked for it, tracks the
/// bytes live and their peak. Per thread, because the harness runs tests on
/// several threads at once and each measures only its own loader.
struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Requests larger than this are refused while tracking, so a loader that
/// asks for gigabytes fails the same way on every machine, overcommit or not.
const REFUSE: usize = 4 << 30;

fn tracking() -> bool {
    TRACKING.try_with(Cell::get).unwrap_or(false)
}

fn note(delta: isize) {
    if tracking() {
        let live = LIVE.with(|l| {
            l.set(l.get() + delta);
            l.get()
        });
        PEAK.with(|p| p.set(p.get().max(live)));
    }
}

// SAFETY: every call is passed on to `System` unchanged, or refused with null.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        if layout.size() > REFUSE && tracking() {
            // The request still counts towards the peak: that is the bug.
            note(-(layout.size() as isize));
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            note(-(layout.size() as isize));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        if layout.size() > REFUSE && tracking() {
            note(-(layout.size() as isize));
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            note(-(layout.size() as isize));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Old and new blocks may both be live during the copy.
        note(new_size as isize);
        if new_size > REFUSE && tracking() {
            note(-(new_size as isize));
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            note(-(new_size as isize));
        } else {
            note(-(layout.size() as isize));
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result and the peak bytes it had allocated at
/// once (on this thread, counting from zero at the start).
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACKING.with(|t| t.set(true));
    let r = f();
    TRACKING.with(|t| t.set(false));
    (r, PEAK.with(Cell::get).max(0) as usize)
}

/// The most a loader may allocate for an input of `len` bytes: a constant
/// for buffers and bookkeeping plus a multiple of the size (u8 pixels become
/// f32, labels become one-hot rows, vectors double as they grow).
fn alloc_bound(len: usize) -> usize {
    (16 << 20) + 64 * len
}

fn check_alloc(what: &str, peak: usize, len: usize) -> Result<(), TestCaseError> {
    prop_assert!(
        peak <= alloc_bound(len),
        "{what}: allocated {peak} bytes at once for {len} bytes of input (bound {})",
        alloc_bound(len)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Common checks and mutations
// ---------------------------------------------------------------------------

/// The case count: `PROPTEST_CASES` if set, else `default` (the CI budget).
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // Shrinking a rare failure should not make CI slow.
        max_shrink_iters: 2048,
        // The default looks for lib.rs beside the test file and finds none.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/fuzz_loaders.txt"
        )))),
        ..Config::default()
    }
}

/// An error fit for the user: one non-empty line that mentions each of `names`
/// (the file) or, when `names` is empty, any text at all.
fn check_message(e: &impl Display, names: &[&str]) -> Result<(), TestCaseError> {
    let msg = e.to_string();
    prop_assert!(!msg.trim().is_empty(), "empty error message");
    prop_assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "error message spans lines: {msg:?}"
    );
    prop_assert!(
        names.is_empty() || names.iter().any(|n| msg.contains(n)),
        "error message names none of {names:?}: {msg:?}"
    );
    Ok(())
}

/// One way to break a file.
#[derive(Debug, Clone)]
enum Mutation {
    /// Flip one bit.
    Flip(Index, u8),
    /// Overwrite one byte.
    Set(Index, u8),
    /// Cut the file off.
    Truncate(Index),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes.
    Remove(Index, usize),
    /// Copy a piece of the file over another place (a splice).
    Splice(Index, Index, usize),
    /// Overwrite the 4-byte word at byte `4 * k` (IDX header sizes), big-endian.
    Word(usize, u32),
    /// Overwrite the last 4 bytes, little-endian (a gzip file's length field).
    Tail(u32),
}

/// Sizes worth trying in a header: small, edges, and huge.
fn interesting_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(255),
        Just(65_535),
        Just(1 << 16),
        Just(1 << 24),
        Just(1 << 30),
        Just(1 << 31),
        Just(u32::MAX - 1),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), any::<Index>(), 1usize..32)
            .prop_map(|(a, b, n)| Mutation::Splice(a, b, n)),
        3 => (0usize..5, interesting_u32()).prop_map(|(k, v)| Mutation::Word(k, v)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 0..4)
}

fn apply(bytes: &mut Vec<u8>, muts: &[Mutation]) {
    for m in muts {
        let n = bytes.len();
        match m {
            Mutation::Flip(i, b) if n > 0 => bytes[i.index(n)] ^= 1 << b,
            Mutation::Set(i, v) if n > 0 => bytes[i.index(n)] = *v,
            Mutation::Truncate(i) => bytes.truncate(i.index(n + 1)),
            Mutation::Insert(i, v) => {
                let at = i.index(n + 1);
                bytes.splice(at..at, v.iter().copied());
            }
            Mutation::Remove(i, k) if n > 0 => {
                let at = i.index(n);
                bytes.drain(at..(at + k).min(n));
            }
            Mutation::Splice(a, b, k) if n > 0 => {
                let (from, to) = (a.index(n), b.index(n));
                let k = (*k).min(n - from).min(n - to);
                let piece = bytes[from..from + k].to_vec();
                bytes[to..to + k].copy_from_slice(&piece);
            }
            Mutation::Word(k, v) if n >= 4 * k + 4 => {
                bytes[4 * k..4 * k + 4].copy_from_slice(&v.to_be_bytes());
            }
            Mutation::Tail(v) if n >= 4 => bytes[n - 4..].copy_from_slice(&v.to_le_bytes()),
            _ => {}
        }
    }
}

/// A directory for one test's files, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Scratch {
        let d =
            std::env::temp_dir().join(format!("shadertrain-fuzz-{}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        // A fresh file, not a truncated one: ext4 flushes a file truncated
        // and rewritten on close, which made each case wait on the disk.
        let _ = std::fs::remove_file(&p);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------
// CSV
// ---------------------------------------------------------------------------

/// A cell: mostly small integers and decimals, plus every kind of bad value.
fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (-2i32..5).prop_map(|v| v.to_string()),
        2 => any::<f32>().prop_map(|v| v.to_string()),
        1 => proptest::sample::select(vec![
            "NaN", "nan", "inf", "-inf", "infinity", "1e39", "-1e39", "", " ", " 2 ",
            "0.5", "1.0", "2.5", "-0", "x", "\"1\"", "\"a\nb\"", "\"\"", "1,2", "\t3",
            "\u{feff}1", "é", "0x10", "1_000",
        ])
        .prop_map(str::to_string),
        1 => proptest::collection::vec(
            proptest::sample::select(vec!['0', '1', '.', 'e', '-', '+', 'a', ' ', '"', ',', '\n', '\r', '\0', 'é']),
            0..6,
        )
        .prop_map(|v| v.into_iter().collect()),
    ]
}

/// A header name.
fn name() -> impl Strategy<Value = String> {
    proptest::sample::select(vec![
        "a", "b", "x1", "label", "y", "", " ", "\"q\nr\"", "é", "a,b",
    ])
    .prop_map(str::to_string)
}

/// A CSV text: a header of `w` names, rows mostly `w` wide, assorted line
/// endings and blank lines.
fn csv_text() -> impl Strategy<Value = Vec<u8>> {
    (1usize..5).prop_flat_map(|w| {
        let row = (
            proptest::collection::vec(cell(), w..=w),
            prop_oneof![8 => Just(0i32), 1 => Just(-1), 1 => Just(1)],
            prop_oneof![6 => Just("\n"), 2 => Just("\r\n"), 1 => Just("\n\n"), 1 => Just("\n \n")],
        );
        (
            proptest::collection::vec(name(), w..=w),
            proptest::collection::vec(row, 0..7),
            any::<bool>(),
        )
            .prop_map(move |(head, rows, last_newline)| {
                let mut s = head.join(",");
                s.push('\n');
                for (k, (mut cells, ragged, end)) in rows.into_iter().enumerate() {
                    match ragged {
                        -1 => {
                            cells.pop();
                        }
                        1 => cells.push("1".into()),
                        _ => {}
                    }
                    s += &cells.join(",");
                    if k > 0 || last_newline {
                        s += end;
                    }
                }
                s.into_bytes()
            })
    })
}

fn csv_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        6 => (csv_text(), mutations()).prop_map(|(mut b, m)| {
            // Byte-level breakage on a third of the cases only: most should
            // reach the cell checks.
            if m.len() == 3 {
                apply(&mut b, &m);
            }
            b
        }),
    ]
}

/// A loaded CSV set is whole rows of finite values, labels one-hot.
fn check_dataset(d: &Dataset, outputs: usize) -> Result<(), TestCaseError> {
    let n = d.len();
    prop_assert!(n >= 1, "an Ok dataset has rows");
    prop_assert!(d.inputs >= 1);
    prop_assert_eq!(d.outputs, outputs);
    prop_assert_eq!(d.x.len(), n * d.inputs);
    prop_assert_eq!(d.y.len(), n * d.outputs);
    prop_assert!(d.x.iter().chain(&d.y).all(|v| v.is_finite()));
    match d.task {
        Task::Classification { classes } if outputs > 1 => {
            prop_assert_eq!(classes, outputs);
            for row in d.y.chunks(outputs) {
                prop_assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), 1);
                prop_assert_eq!(row.iter().filter(|&&v| v == 0.0).count(), outputs - 1);
            }
        }
        Task::Classification { classes } => {
            prop_assert_eq!(classes, 2);
            prop_assert!(d.y.iter().all(|&v| v == 0.0 || v == 1.0));
        }
        Task::Regression => prop_assert_eq!(outputs, 1),
    }
    Ok(())
}

#[test]
fn csv_loader_never_panics_and_errors_name_the_file() {
    let dir = Scratch::new("csv");
    let strategy = (csv_input(), 1usize..4, 1usize..5, prop::option::of(name()));
    proptest!(config(2000), |((bytes, outputs, inputs, target) in strategy)| {
        let path = dir.write("data.csv", &bytes);
        let shown = path.display().to_string();
        let len = bytes.len();

        let (r, peak) = measure(|| Dataset::from_csv(&path, target.as_deref(), outputs));
        check_alloc("from_csv", peak, len)?;
        match r {
            Ok(d) => check_dataset(&d, outputs)?,
            Err(e) => check_message(&e, &[&shown])?,
        }

        // `predict`'s path: the header's width, then inputs only.
        let (r, peak) = measure(|| Dataset::csv_columns(&path));
        check_alloc("csv_columns", peak, len)?;
        match r {
            Ok(w) => prop_assert!(w >= 1),
            Err(e) => check_message(&e, &[&shown])?,
        }
        let (r, peak) = measure(|| Dataset::from_csv_inputs(&path, inputs, outputs));
        check_alloc("from_csv_inputs", peak, len)?;
        match r {
            Ok(d) => {
                prop_assert_eq!(d.inputs, inputs);
                prop_assert_eq!(d.x.len(), d.len() * inputs);
                prop_assert_eq!(d.y.len(), d.len() * outputs);
                prop_assert!(!d.is_empty());
                prop_assert!(d.x.iter().all(|v| v.is_finite()));
                prop_assert!(d.y.iter().all(|&v| v == 0.0));
            }
            Err(e) => check_message(&e, &[&shown])?,
        }
    });
}

// ---------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------

/// An IDX file: header for type `ty` and `dims`, then `body`.
fn idx(ty: u8, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, ty, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

/// A valid images file (any value type, 1 to 3 dims) and a labels file of
/// u8 labels in 0..12 (the network has 10 classes), mostly as many as images.
fn idx_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let ty = proptest::sample::select(vec![
        (0x08u8, 1usize),
        (0x09, 1),
        (0x0B, 2),
        (0x0C, 4),
        (0x0D, 4),
        (0x0E, 8),
    ]);
    (
        ty,
        0u32..5,
        proptest::collection::vec(1u32..5, 0..3),
        prop_oneof![6 => Just(0i32), 1 => Just(1), 1 => Just(-1)],
        any::<u64>(),
    )
        .prop_map(|((ty, size), n, rest, skew, seed)| {
            let mut dims = vec![n];
            dims.extend(&rest);
            let values: usize = dims.iter().map(|&d| d as usize).product();
            // Cheap reproducible bytes; float types get the odd NaN, as they should.
            let mut s = seed | 1;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let body: Vec<u8> = (0..values * size).map(|_| next() as u8).collect();
            let m = (n as i64 + skew as i64).max(0) as u32;
            let labels: Vec<u8> = (0..m).map(|_| (next() % 12) as u8).collect();
            (idx(ty, &dims, &body), idx(0x08, &[m], &labels))
        })
}

/// How one IDX file reaches the loader: plain, gzip of the (broken) file,
/// or the gzip stream itself broken (its trailer's length and checksum).
#[derive(Debug, Clone, Copy)]
enum Packing {
    Plain,
    Gzip,
    GzipBroken,
    /// Gzip of the broken file, its length field rewritten to what the
    /// (perhaps huge) declared sizes need, mod 2^32, as a crafted file's would be.
    GzipLying,
}

fn packing() -> impl Strategy<Value = Packing> {
    prop_oneof![
        3 => Just(Packing::Plain),
        2 => Just(Packing::Gzip),
        1 => Just(Packing::GzipBroken),
        1 => Just(Packing::GzipLying),
    ]
}

fn pack(mut bytes: Vec<u8>, p: Packing, muts: &[Mutation]) -> Vec<u8> {
    match p {
        Packing::Plain => {
            apply(&mut bytes, muts);
            bytes
        }
        Packing::Gzip => {
            apply(&mut bytes, muts);
            gzip(&bytes)
        }
        Packing::GzipLying => {
            apply(&mut bytes, muts);
            let mut z = gzip(&bytes);
            if let Some(want) = declared_len(&bytes) {
                apply(&mut z, &[Mutation::Tail(want as u32)]);
            }
            z
        }
        Packing::GzipBroken => {
            let mut z = gzip(&bytes);
            // Word mutations aim at the IDX header; here they overwrite the
            // gzip trailer's uncompressed length, which the loader checks.
            let muts: Vec<Mutation> = muts
                .iter()
                .map(|m| match m {
                    Mutation::Word(_, v) => Mutation::Tail(*v),
                    other => other.clone(),
                })
                .collect();
            apply(&mut z, &muts);
            z
        }
    }
}

/// The length an IDX header says its file has, if it can be read.
fn declared_len(bytes: &[u8]) -> Option<u64> {
    let size = match bytes.get(2)? {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        _ => return None,
    };
    let ndim = *bytes.get(3)? as usize;
    let mut values = 1u64;
    for k in 0..ndim {
        let word = bytes.get(4 + 4 * k..8 + 4 * k)?;
        values = values.wrapping_mul(u32::from_be_bytes(word.try_into().ok()?) as u64);
    }
    Some((4 + 4 * ndim as u64).wrapping_add(values.wrapping_mul(size)))
}

fn idx_inputs() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        1 => (
            proptest::collection::vec(any::<u8>(), 0..48),
            proptest::collection::vec(any::<u8>(), 0..24),
        ),
        6 => (idx_pair(), mutations(), mutations(), packing(), packing()).prop_map(
            |((img, lab), mi, ml, pi, pl)| (pack(img, pi, &mi), pack(lab, pl, &ml)),
        ),
    ]
}

#[test]
fn idx_loader_never_panics_and_checks_sizes_before_allocating() {
    let dir = Scratch::new("idx");
    proptest!(config(2000), |((img, lab) in idx_inputs())| {
        let images = dir.write("train-images-idx3-ubyte", &img);
        let labels = dir.write("train-labels-idx1-ubyte", &lab);
        let (si, sl) = (images.display().to_string(), labels.display().to_string());
        let (r, peak) = measure(|| Dataset::from_idx(&images, &labels, 10));
        check_alloc("from_idx", peak, img.len() + lab.len())?;
        match r {
            Ok(d) => {
                // The header's sizes are the data's.
                let dims = IdxReader::open(&images).unwrap().dims;
                prop_assert_eq!(d.len(), dims[0]);
                prop_assert_eq!(d.inputs, dims[1..].iter().product::<usize>());
                prop_assert_eq!(IdxReader::open(&labels).unwrap().dims, vec![dims[0]]);
                check_dataset(&d, 10)?;
            }
            Err(e) => check_message(&e, &[&si, &sl])?,
        }
    });
}

// ---------------------------------------------------------------------------
// NumPy arrays
// ---------------------------------------------------------------------------

/// An `.npy` pair of `rows` rows: inputs of a dtype and shape drawn, with
/// finite values (or any bytes), and labels or float targets for 3 outputs.
fn npy_pair() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    let x = (
        prop::sample::select(vec!["|u1", "<f4", ">f4", "<f8", "<i4"]),
        1usize..6,
        prop::sample::select(vec![vec![], vec![3], vec![2, 2]]),
        any::<bool>(),
    );
    let y = (
        prop::sample::select(vec!["<i8", "|u1", "<f4"]),
        any::<bool>(),
    );
    (x, y, any::<u64>()).prop_map(|((xd, rows, inner, raw), (yd, wide), seed)| {
        let mut shape = vec![rows];
        shape.extend(&inner);
        let n: usize = shape.iter().product();
        let size = if xd.ends_with('1') {
            1
        } else {
            xd[2..].parse::<usize>().unwrap()
        };
        let mut g = seed;
        let mut next = || {
            g = g
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (g >> 33) as u32
        };
        let xb: Vec<u8> = if raw || size == 1 || xd == "<i4" {
            (0..n * size).map(|_| next() as u8).collect()
        } else if size == 4 {
            let f = |v: f32| {
                if xd.starts_with('>') {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            (0..n).flat_map(|_| f(next() as f32 / 1e9)).collect()
        } else {
            (0..n)
                .flat_map(|_| (next() as f64 / 1e9).to_le_bytes())
                .collect()
        };
        let (yshape, yb): (Vec<usize>, Vec<u8>) = match yd {
            "<i8" => (
                vec![rows],
                (0..rows)
                    .flat_map(|_| i64::from(next() % 4).to_le_bytes())
                    .collect(),
            ),
            "|u1" => (vec![rows], (0..rows).map(|_| (next() % 3) as u8).collect()),
            _ if wide => (
                vec![rows, 3],
                (0..rows * 3)
                    .flat_map(|_| ((next() % 2) as f32).to_le_bytes())
                    .collect(),
            ),
            _ => (
                vec![rows],
                (0..rows)
                    .flat_map(|_| (next() as f32).to_le_bytes())
                    .collect(),
            ),
        };
        (npy(xd, &shape, false, &xb), npy(yd, &yshape, false, &yb))
    })
}

fn npy_inputs() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    prop_oneof![
        1 => (
            proptest::collection::vec(any::<u8>(), 0..160),
            proptest::collection::vec(any::<u8>(), 0..100),
        ),
        6 => (npy_pair(), mutations(), mutations()).prop_map(|((mut x, mut y), mx, my)| {
            apply(&mut x, &mx);
            apply(&mut y, &my);
            (x, y)
        }),
    ]
}

/// Arbitrary and spoilt `.npy` pairs: no panic, one-line errors naming a
/// file, allocation bounded by the input (a mapped array allocates nothing
/// for its values), and a set that opens gives finite rows of its widths.
#[test]
fn npy_loader_never_panics_and_checks_shapes_before_allocating() {
    let dir = Scratch::new("npy");
    proptest!(config(2000), |((xb, yb) in npy_inputs())| {
        let x = dir.write("x.npy", &xb);
        let y = dir.write("y.npy", &yb);
        let (sx, sy) = (x.display().to_string(), y.display().to_string());
        let (r, peak) = measure(|| Dataset::from_npy(&x, &y, 3));
        check_alloc("from_npy", peak, xb.len() + yb.len())?;
        match r {
            Ok(d) => {
                prop_assert!(d.is_mapped() && !d.is_empty() && d.inputs >= 1);
                let m = d.to_memory().unwrap();
                prop_assert_eq!(m.x.len(), d.len() * d.inputs);
                prop_assert_eq!(m.y.len(), d.len() * 3);
                prop_assert!(m.x.iter().chain(&m.y).all(|v| v.is_finite()));
                if let Task::Classification { classes } = d.task {
                    prop_assert_eq!(classes, 3);
                    for row in m.y.chunks(3) {
                        prop_assert_eq!(row.iter().filter(|&&v| v == 1.0).count(), 1);
                    }
                }
            }
            Err(e) => check_message(&e, &[&sx, &sy])?,
        }
    });
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// A valid checkpoint of a small network (see [`sample_checkpoint`]), with
/// or without optimiser state and standardisation.
fn checkpoint(spec: &str, kind: OptimizerKind, norm: bool) -> Checkpoint {
    sample_checkpoint(spec, Optimizer::new(kind), norm)
}

fn valid_checkpoint() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(vec![
            "2,3,2",
            "3,4:relu,2:softmax",
            "1,1",
            "2,2:tanh,1:linear",
        ]),
        proptest::sample::select(vec![
            OptimizerKind::Sgd,
            OptimizerKind::Momentum,
            OptimizerKind::Adam,
        ]),
        any::<bool>(),
    )
        .prop_map(|(spec, kind, norm)| checkpoint(spec, kind, norm).to_bytes().unwrap())
}

/// A layer spec for the metadata or `--layers`: sizes from small to past
/// every limit, activations right and wrong.
fn layer_spec() -> impl Strategy<Value = String> {
    let size = proptest::sample::select(vec![
        "0",
        "1",
        "2",
        "3",
        "784",
        "65535",
        "65536",
        "100000",
        "4294967295",
        "4294967296",
        "18446744073709551615",
        "18446744073709551616",
        "-1",
        " 3 ",
        "",
        "x",
        "2\n",
    ]);
    let act = proptest::option::weighted(
        0.4,
        proptest::sample::select(vec![
            "relu",
            "sigmoid",
            "tanh",
            "linear",
            "softmax",
            "",
            "RELU",
            "relu:tanh",
            "soft\nmax",
        ]),
    );
    prop_oneof![
        4 => proptest::collection::vec((size, act), 0..5).prop_map(|items| {
            items
                .iter()
                .map(|(s, a)| match a {
                    Some(a) => format!("{s}:{a}"),
                    None => s.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        }),
        1 => any::<String>(),
    ]
}

/// A change to the safetensors header JSON.
#[derive(Debug, Clone)]
enum HeaderEdit {
    /// Set a metadata key.
    Meta(&'static str, String),
    /// Remove a metadata key.
    DropMeta(&'static str),
    /// Give tensor `k` (in name order) another shape.
    Shape(Index, Vec<u64>),
    /// Give tensor `k` another dtype.
    Dtype(Index, &'static str),
    /// Give tensor `k` other data offsets.
    Offsets(Index, u64, u64),
    /// Remove tensor `k`.
    DropTensor(Index),
    /// Replace the whole header with this text.
    Text(String),
}

const META_KEYS: [&str; 20] = [
    "format",
    "version",
    "layers",
    "epoch",
    "seed",
    "batch",
    "lr",
    "optimizer",
    "momentum",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "optimizer_t",
    "lr_schedule",
    "data",
    "samples",
    "history",
    "data_inputs_hash",
    "data_targets_hash",
];

fn meta_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => proptest::sample::select(vec![
            "0", "1", "2", "-1", "99999999999999999999", "1.5", "", "NaN", "inf", "adam",
            "sgd", "momentum", "nesterov", "shadertrain", "pytorch", "constant", "cosine",
            "step:3:0.5", "step:0:0.5", "[]", "[{}]", "{", "2\nline", "1e-8", "0.999",
            "4294967295", "4294967296", "18446744073709551615", "18446744073709551616",
            "0123456789abcdef", "ffffffffffffffff", "0x12345678abcdef",
        ])
        .prop_map(str::to_string),
        2 => layer_spec(),
        1 => any::<String>(),
    ]
}

fn header_edit() -> impl Strategy<Value = HeaderEdit> {
    let huge = prop_oneof![
        3 => 0u64..6,
        1 => Just(1u64 << 32),
        1 => Just(u64::MAX),
        1 => Just(1u64 << 62),
        1 => any::<u64>(),
    ];
    prop_oneof![
        3 => (proptest::sample::select(META_KEYS.to_vec()), meta_value())
            .prop_map(|(k, v)| HeaderEdit::Meta(k, v)),
        4 => layer_spec().prop_map(|v| HeaderEdit::Meta("layers", v)),
        2 => meta_value().prop_map(|v| HeaderEdit::Meta("version", v)),
        1 => proptest::sample::select(META_KEYS.to_vec()).prop_map(HeaderEdit::DropMeta),
        2 => (any::<Index>(), proptest::collection::vec(huge.clone(), 0..4))
            .prop_map(|(i, s)| HeaderEdit::Shape(i, s)),
        1 => (any::<Index>(), proptest::sample::select(vec!["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F4", "XX"]))
            .prop_map(|(i, d)| HeaderEdit::Dtype(i, d)),
        1 => (any::<Index>(), huge.clone(), huge).prop_map(|(i, a, b)| HeaderEdit::Offsets(i, a, b)),
        1 => any::<Index>().prop_map(HeaderEdit::DropTensor),
        1 => any::<String>().prop_map(HeaderEdit::Text),
    ]
}

/// `bytes` (a valid safetensors file) with its header JSON edited; the
/// length prefix is rewritten to match.
fn edit_header(bytes: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    with_header(bytes, |head| edit_json(head, edits))
}

/// The header text `head` with `edits` made.
fn edit_json(head: &str, edits: &[HeaderEdit]) -> String {
    let mut json: serde_json::Value = serde_json::from_str(head).unwrap();
    let mut text = None;
    for e in edits {
        let obj = json.as_object_mut().unwrap();
        let mut names: Vec<String> = obj
            .keys()
            .filter(|k| *k != "__metadata__")
            .cloned()
            .collect();
        names.sort();
        let tensor = |i: &Index| names.get(i.index(names.len().max(1))).cloned();
        match e {
            HeaderEdit::Meta(k, v) => {
                obj["__metadata__"][*k] = serde_json::Value::String(v.clone());
            }
            HeaderEdit::DropMeta(k) => {
                if let Some(m) = obj.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
                    m.remove(*k);
                }
            }
            HeaderEdit::Shape(i, s) => {
                if let Some(t) = tensor(i) {
                    obj[&t]["shape"] = serde_json::json!(s);
                }
            }
            HeaderEdit::Dtype(i, d) => {
                if let Some(t) = tensor(i) {
                    obj[&t]["dtype"] = serde_json::json!(d);
                }
            }
            HeaderEdit::Offsets(i, a, b) => {
                if let Some(t) = tensor(i) {
                    obj[&t]["data_offsets"] = serde_json::json!([a, b]);
                }
            }
            HeaderEdit::DropTensor(i) => {
                if let Some(t) = tensor(i) {
                    obj.remove(&t);
                }
            }
            HeaderEdit::Text(s) => text = Some(s.clone()),
        }
    }
    text.unwrap_or_else(|| json.to_string())
}

fn checkpoint_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        2 => (valid_checkpoint(), mutations()).prop_map(|(mut b, m)| {
            // Word mutations aim at the IDX header; here they land on the
            // 8-byte length prefix and the start of the JSON.
            apply(&mut b, &m);
            b
        }),
        5 => (valid_checkpoint(), proptest::collection::vec(header_edit(), 1..4), mutations())
            .prop_map(|(b, e, m)| {
                let mut b = edit_header(&b, &e);
                if m.len() == 3 {
                    apply(&mut b, &m);
                }
                b
            }),
    ]
}

/// A loaded checkpoint is whole: every tensor of its architecture, finite,
/// and it writes back to bytes that load as the same checkpoint.
fn check_checkpoint(c: &Checkpoint) -> Result<(), TestCaseError> {
    let net = c.params.network();
    prop_assert_eq!(c.params.data.len(), net.param_count());
    prop_assert!(c.params.all_finite());
    prop_assert_eq!(
        c.optimizer_state.moments.len(),
        c.state.optimizer.state_len(net.param_count())
    );
    if let Some(z) = &c.standardizer {
        prop_assert_eq!(z.mean.len(), net.inputs());
        prop_assert_eq!(z.std.len(), net.inputs());
    }
    let again = Checkpoint::from_bytes(&c.to_bytes().unwrap());
    prop_assert!(
        again.is_ok(),
        "a loaded checkpoint does not reload: {:?}",
        again.err()
    );
    Ok(())
}

#[test]
fn checkpoint_loader_never_panics_and_checks_sizes_before_allocating() {
    let dir = Scratch::new("ckpt");
    proptest!(config(2000), |(bytes in checkpoint_input(), through_file in proptest::bool::weighted(0.2))| {
        let (r, peak) = if through_file {
            let path = dir.write("model.safetensors", &bytes);
            let shown = path.display().to_string();
            let (r, peak) = measure(|| Checkpoint::load(&path));
            if let Err(e) = &r {
                check_message(e, &[&shown])?;
            }
            (r.map_err(|e| e.to_string()), peak)
        } else {
            measure(|| Checkpoint::from_bytes(&bytes))
        };
        check_alloc("checkpoint", peak, bytes.len())?;
        match r {
            Ok(c) => check_checkpoint(&c)?,
            Err(e) => check_message(&e, &[])?,
        }
    });
}

// ---------------------------------------------------------------------------
// Layer specs
// ---------------------------------------------------------------------------

#[test]
fn layer_spec_parser_never_panics() {
    proptest!(config(5000), |(spec in layer_spec())| {
        let (r, peak) = measure(|| Network::parse(&spec));
        check_alloc("Network::parse", peak, spec.len())?;
        match r {
            Ok(net) => {
                let sizes = net.sizes();
                prop_assert!(sizes.len() >= 2 && sizes.iter().all(|&s| s > 0));
                let count: usize = sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
                prop_assert_eq!(net.param_count(), count);
                prop_assert!(count <= u32::MAX as usize);
                prop_assert_eq!(Network::parse(&net.spec()).unwrap(), net);
            }
            Err(e) => check_message(&e, &["layers"])?,
        }
    });
}

// ---------------------------------------------------------------------------
// Regressions the fuzzing found, as plain tests
// ---------------------------------------------------------------------------

/// Headers that declare gigabytes in a few bytes: refused, having allocated
/// next to nothing. A gzip file's length field is only mod 2^32, so one can
/// pass the size check; the loader used to reserve for every declared value.
#[test]
fn huge_declared_sizes_allocate_little() {
    let dir = Scratch::new("huge");
    let labels = dir.write("labels", &idx(0x08, &[2], &[0, 1]));
    let header = idx(0x08, &[1 << 31, 2], &[]);
    let mut lying = gzip(&header);
    // 12 + 2^32 bytes are declared: 12 mod 2^32.
    apply(&mut lying, &[Mutation::Tail(12)]);
    for (name, bytes) in [("plain", header.clone()), ("lying.gz", lying)] {
        let images = dir.write(name, &bytes);
        let (r, peak) = measure(|| Dataset::from_idx(&images, &labels, 10));
        let e = r.unwrap_err().to_string();
        assert!(peak < 1 << 20, "{name}: allocated {peak} bytes ({e})");
        assert!(e.contains(name), "{e}");
    }

    // A checkpoint whose metadata declares 65535² parameters.
    let mut bytes = checkpoint("2,3,2", OptimizerKind::Adam, true)
        .to_bytes()
        .unwrap();
    bytes = edit_header(&bytes, &[HeaderEdit::Meta("layers", "65535,65535".into())]);
    let (r, peak) = measure(|| Checkpoint::from_bytes(&bytes));
    let e = r.unwrap_err();
    assert!(peak < 1 << 20, "allocated {peak} bytes ({e})");
    assert!(e.contains("the architecture needs [65535, 65535]"), "{e}");
}

/// Every count in the metadata (epoch, batch, samples, optimizer_t, seed)
/// across the integer range, alone and together: each file loads or is
/// refused in one line, and none allocates in proportion to the count.
#[test]
fn metadata_counts_across_the_integer_range_allocate_little() {
    let base = checkpoint("2,3,2", OptimizerKind::Adam, true)
        .to_bytes()
        .unwrap();
    let values = [
        "0",
        "1",
        "2",
        "600",
        "601",
        "4294967295",
        "4294967296",
        "9223372036854775807",
        "18446744073709551615",
        "18446744073709551616",
    ];
    for key in ["epoch", "batch", "samples", "optimizer_t", "seed"] {
        for v in values {
            let bytes = edit_header(&base, &[HeaderEdit::Meta(key, v.into())]);
            let (r, peak) = measure(|| Checkpoint::from_bytes(&bytes));
            assert!(peak < 1 << 20, "{key}={v}: allocated {peak} bytes");
            match r {
                Ok(c) => check_checkpoint(&c).unwrap(),
                Err(e) => {
                    assert!(!e.contains('\n'), "{key}={v}: {e}");
                    assert!(e.contains(key) || key == "samples", "{key}={v}: {e}");
                }
            }
        }
    }
    // All of them at u64::MAX, and history tensors declaring u64::MAX epochs.
    let all: Vec<HeaderEdit> = ["epoch", "batch", "samples", "optimizer_t"]
        .iter()
        .map(|k| HeaderEdit::Meta(k, u64::MAX.to_string()))
        .collect();
    let bytes = edit_header(&base, &all);
    let (r, peak) = measure(|| Checkpoint::from_bytes(&bytes));
    assert!(peak < 1 << 20, "allocated {peak} bytes");
    assert!(r.unwrap_err().contains("the history holds 2 epochs"));
    for name in ["history.loss", "history.accuracy", "history.val_loss"] {
        let bytes = with_header(&base, |h| {
            let mut json: serde_json::Value = serde_json::from_str(h).unwrap();
            json[name]["shape"] = serde_json::json!([u64::MAX]);
            json.to_string()
        });
        let (r, peak) = measure(|| Checkpoint::from_bytes(&bytes));
        assert!(peak < 1 << 20, "allocated {peak} bytes");
        let e = r.unwrap_err();
        assert!(!e.contains('\n'), "{e}");
    }
}
