//! Datasets: a few built-in ones, a CSV loader, and [`Source`], which
//! resolves where a dataset comes from (built-in, CSV, IDX, `.npy`) in one
//! place.
//!
//! A [`Dataset`] is two flat row-major `f32` tables: inputs `x` of shape
//! `(len, inputs)` and targets `y` of shape `(len, outputs)`. Class labels are
//! one-hot encoded when the network has more than one output neuron, so `y`
//! always has exactly the width of the network's last layer.
//!
//! A set read from `.npy` arrays ([`Dataset::from_npy`]) is *mapped*: its
//! tables stay in the files and `x`, `y` are empty. Its rows are converted,
//! one-hot encoded and standardised when a batch is gathered
//! ([`Dataset::gather`]); a validation split or a standardisation is a list
//! of row numbers or statistics, never a copy. Read rows of any set through
//! [`Dataset::gather`], [`Dataset::for_each_block`] or [`Dataset::targets`].
//!
//! ```
//! use shadertrain::data::{Dataset, Task};
//!
//! let d = Dataset::spirals(100, 7);
//! assert_eq!((d.len(), d.inputs, d.outputs), (200, 2, 2));
//! assert_eq!(d.task, Task::Classification { classes: 2 });
//! d.check_shape(2, 2).unwrap();
//!
//! // A shuffled batch is gathered from row indices.
//! let idx = [3, 0];
//! let mut x = vec![0.0; idx.len() * d.inputs];
//! let mut y = vec![0.0; idx.len() * d.outputs];
//! d.gather(&idx, &mut x, &mut y);
//! assert_eq!(&x[2..4], &d.x[0..2]);
//! ```

mod npy;
mod source;
pub use source::{Builtin, Recipe, Source, FILE_RECIPE};

use std::borrow::Cow;
use std::f64::consts::PI;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{quote, Error, Result, Setting};

/// How far a load has come, for a progress display
/// ([`Source::load_observed`]): bytes of the files read or checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loading {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all, where known (not for a pipe).
    pub total: Option<u64>,
}

/// A dataset width that does not fit a network ([`Dataset::mismatch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// The set has this many input columns, and the network takes another number.
    Inputs(usize),
    /// The set has this many target columns, and the network another number of outputs.
    Outputs(usize),
}

/// What the targets mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// Class labels: with `classes > 2` or outputs > 1 the targets are one-hot rows of width `classes`;
    /// with one output neuron (binary), the target is 0.0 or 1.0.
    Classification {
        /// Number of classes.
        classes: usize,
    },
    /// Real-valued targets used as they are.
    Regression,
}

/// A dataset: two row-major tables in memory, or rows mapped from `.npy`
/// files (see the module docs). Build one with [`Dataset::from_vecs`] or a
/// loader.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Short name for messages: `spirals`, `xor`, `example`, or the CSV file's stem.
    pub name: String,
    /// Width of one input row.
    pub inputs: usize,
    /// Width of one target row (after one-hot encoding).
    pub outputs: usize,
    /// Inputs, `(len, inputs)` row-major; empty for a mapped set.
    pub x: Vec<f32>,
    /// Targets, `(len, outputs)` row-major; empty for a mapped set.
    pub y: Vec<f32>,
    /// What the targets mean.
    pub task: Task,
    /// Where the rows live.
    rows: Rows,
}

/// Where a [`Dataset`]'s rows live.
#[derive(Debug, Clone)]
enum Rows {
    /// In `x` and `y`, counted against the memory limit by the reservation.
    Memory(#[allow(dead_code)] crate::memory::Held),
    /// In mapped arrays.
    Mapped(Mapped),
}

/// Rows read from `.npy` arrays per batch.
#[derive(Debug, Clone)]
struct Mapped {
    /// Inputs: `(n, ...)`, `row_len() == inputs`.
    x: Arc<crate::npy::NpyArray>,
    /// Targets: integer labels `(n)` or `(n, 1)`, or values `(n, outputs)`.
    y: Arc<crate::npy::NpyArray>,
    /// Each input value times this (1/255 for u8, as IDX).
    scale: f32,
    /// Integer labels one-hot over `outputs` classes (else values as they are).
    one_hot: bool,
    /// The arrays' rows this set holds, in its order; `None`: all, in order.
    index: Option<Arc<[usize]>>,
    /// Standardisations applied to the inputs, in order.
    z: Vec<Standardizer>,
}

impl Mapped {
    fn len(&self) -> usize {
        self.index.as_ref().map_or(self.x.rows(), |i| i.len())
    }

    /// The arrays' row of this set's row `i`.
    fn row(&self, i: usize) -> usize {
        self.index.as_ref().map_or(i, |ix| ix[i])
    }

    /// Row `i` into `x` (`inputs`) and `y` (`outputs`), standardised.
    fn read(&self, i: usize, x: &mut [f32], y: &mut [f32]) {
        let r = self.row(i);
        self.x.row_f32(r, self.scale, x);
        for z in &self.z {
            for ((v, m), s) in x.iter_mut().zip(&z.mean).zip(&z.std) {
                *v = (*v - m) / s;
            }
        }
        if self.one_hot {
            y.fill(0.0);
            // Labels were checked in range when the set was opened.
            let label = self.y.int_at(r).unwrap_or_default();
            y[label as usize] = 1.0;
        } else {
            self.y.row_f32(r, 1.0, y);
        }
    }
}

/// Turns the spirals make: t runs over [0, 3.5π].
const SPIRAL_TURNS: f64 = 1.25;
/// Largest radius before noise; leaves room for the noise inside [-1, 1].
const SPIRAL_RADIUS: f64 = 0.95;
/// Standard deviation of the Gaussian noise added to each coordinate.
const SPIRAL_NOISE: f64 = 0.02;

impl Dataset {
    /// Number of samples (rows).
    pub fn len(&self) -> usize {
        if let Rows::Mapped(m) = &self.rows {
            return m.len();
        }
        // Either table gives the count; a zero width gives no answer.
        self.x
            .len()
            .checked_div(self.inputs)
            .or_else(|| self.y.len().checked_div(self.outputs))
            .unwrap_or(0)
    }

    /// True if the set has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A set from row-major tables: `x (len, inputs)`, `y (len, outputs)`.
    /// Refuses tables that are not whole rows, disagree on the count, or
    /// hold NaN or infinity.
    pub fn from_vecs(
        name: &str,
        (inputs, outputs): (usize, usize),
        x: Vec<f32>,
        y: Vec<f32>,
        task: Task,
    ) -> Result<Dataset> {
        let bad = |msg: String| Error::Shape(format!("dataset '{name}': {msg}"));
        if inputs == 0 || outputs == 0 {
            return Err(bad("inputs and outputs must be at least 1 wide".into()));
        }
        if !x.len().is_multiple_of(inputs) || !y.len().is_multiple_of(outputs) {
            return Err(bad(format!(
                "{} inputs are not rows of {inputs}, or {} targets not rows of {outputs}",
                x.len(),
                y.len()
            )));
        }
        if x.len() / inputs != y.len() / outputs {
            return Err(bad(format!(
                "{} input rows but {} target rows",
                x.len() / inputs,
                y.len() / outputs
            )));
        }
        if let Some(i) = x.iter().chain(&y).position(|v| !v.is_finite()) {
            return Err(bad(format!("value {i} is not finite")));
        }
        Ok(Dataset::in_memory(name, (inputs, outputs), x, y, task))
    }

    /// A set of tables already checked, counted as held in memory.
    pub(crate) fn in_memory(
        name: &str,
        (inputs, outputs): (usize, usize),
        x: Vec<f32>,
        y: Vec<f32>,
        task: Task,
    ) -> Dataset {
        let bytes = (x.len() as u64 + y.len() as u64) * 4;
        Dataset {
            name: name.into(),
            inputs,
            outputs,
            x,
            y,
            task,
            rows: Rows::Memory(crate::memory::Held::new(bytes)),
        }
    }

    /// Whether the rows are mapped from `.npy` files (`x` and `y` empty).
    pub fn is_mapped(&self) -> bool {
        matches!(self.rows, Rows::Mapped(_))
    }

    /// The same rows held in memory (a copy of a mapped set; a clone of
    /// one in memory), refused when the memory available cannot hold them.
    pub fn to_memory(&self) -> Result<Dataset> {
        if !self.is_mapped() {
            return Ok(self.clone());
        }
        let n = self.len();
        let need = crate::memory::bytes(&[(n, self.inputs.saturating_add(self.outputs) * 4)]);
        crate::memory::ensure(need, &format!("'{}' in memory", self.name), &[])?;
        let mut x = crate::memory::zeroed(n * self.inputs, "the inputs", &[])?;
        let mut y = crate::memory::zeroed(n * self.outputs, "the targets", &[])?;
        let all: Vec<usize> = (0..n).collect();
        self.gather(&all, &mut x, &mut y);
        Ok(Dataset::in_memory(
            &self.name,
            (self.inputs, self.outputs),
            x,
            y,
            self.task,
        ))
    }

    /// Calls `f` with consecutive blocks of rows, in order, as
    /// `(x (k, inputs), y (k, outputs))`: the tables themselves for a set in
    /// memory, blocks of a few thousand rows gathered from a mapped one.
    pub fn for_each_block(&self, mut f: impl FnMut(&[f32], &[f32])) {
        const BLOCK: usize = 4096;
        if !self.is_mapped() {
            return f(&self.x, &self.y);
        }
        let n = self.len();
        let (mut x, mut y) = (Vec::new(), Vec::new());
        let mut idx = Vec::with_capacity(BLOCK);
        for start in (0..n).step_by(BLOCK) {
            idx.clear();
            idx.extend(start..(start + BLOCK).min(n));
            x.resize(idx.len() * self.inputs, 0.0);
            y.resize(idx.len() * self.outputs, 0.0);
            self.gather(&idx, &mut x, &mut y);
            f(&x, &y);
        }
    }

    /// Every target row, `(len, outputs)`: the table itself, or gathered
    /// from a mapped set.
    pub fn targets(&self) -> Cow<'_, [f32]> {
        if !self.is_mapped() {
            return Cow::Borrowed(&self.y);
        }
        let mut all = Vec::with_capacity(self.len() * self.outputs);
        self.for_each_block(|_, y| all.extend_from_slice(y));
        Cow::Owned(all)
    }

    /// Two interleaved spirals in 2-D, `n_per_class` points each, seeded
    /// (`ChaCha8Rng::seed_from_u64`), one-hot targets width 2,
    /// `Classification { classes: 2 }`.
    ///
    /// Point `i` of each class sits at angle `t = 3.5π · i/(n-1)` and radius
    /// `0.95 · t/3.5π`; class 1 is class 0 rotated by π. Each coordinate gets
    /// N(0, 0.02²) noise and is clamped to [-1, 1]. Rows alternate class 0, 1,
    /// 0, 1, ...; x is `(2n, 2)`, y is `(2n, 2)`.
    pub fn spirals(n_per_class: usize, seed: u64) -> Dataset {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let t_max = SPIRAL_TURNS * 2.0 * PI;
        let steps = n_per_class.saturating_sub(1).max(1) as f64;
        let mut x = Vec::with_capacity(n_per_class * 4);
        let mut y = Vec::with_capacity(n_per_class * 4);
        for i in 0..n_per_class {
            let t = t_max * i as f64 / steps;
            let r = SPIRAL_RADIUS * t / t_max;
            for class in 0..2 {
                let angle = t + PI * class as f64;
                let (nx, ny) = gaussian_pair(&mut rng);
                let px = r * angle.cos() + SPIRAL_NOISE * nx;
                let py = r * angle.sin() + SPIRAL_NOISE * ny;
                x.push(px.clamp(-1.0, 1.0) as f32);
                x.push(py.clamp(-1.0, 1.0) as f32);
                y.extend_from_slice(if class == 0 { &[1.0, 0.0] } else { &[0.0, 1.0] });
            }
        }
        Dataset::in_memory("spirals", (2, 2), x, y, Task::Classification { classes: 2 })
    }

    /// The 4 XOR points, one output (0/1), `Classification { classes: 2 }`.
    pub fn xor() -> Dataset {
        Dataset::in_memory(
            "xor",
            (2, 1),
            vec![0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
            vec![0.0, 1.0, 1.0, 0.0],
            Task::Classification { classes: 2 },
        )
    }

    /// The single sample of the classic worked example: x=(0.05,0.10),
    /// y=(0.01,0.99), Regression, outputs 2.
    pub fn example() -> Dataset {
        Dataset::in_memory(
            "example",
            (2, 2),
            vec![0.05, 0.10],
            vec![0.01, 0.99],
            Task::Regression,
        )
    }

    /// Load a CSV with a header row. The target is the last column, or the
    /// column whose header is the `target` argument (`--target NAME`). Every
    /// other column is an input, in file order.
    ///
    /// `outputs` is the width of the network's output layer: if `outputs > 1`,
    /// target cells must be integer labels `0..outputs-1` and are one-hot
    /// encoded (`Classification { classes: outputs }`); if `outputs == 1` the
    /// value is used as it is: the task is `Classification { classes: 2 }` if
    /// every target is exactly 0 or 1, else `Regression`.
    ///
    /// Cells are trimmed; blank lines are skipped. Errors name the file and,
    /// for a bad row, its 1-based line (the header is line 1).
    pub fn from_csv(path: &Path, target: Option<&str>, outputs: usize) -> Result<Dataset> {
        Self::parse_csv(path, Some(target), outputs)
    }

    /// [`Dataset::from_csv`], telling `on` how many bytes it has read (every
    /// few megabytes, and at the end).
    pub fn from_csv_observed(
        path: &Path,
        target: Option<&str>,
        outputs: usize,
        on: &mut dyn FnMut(Loading),
    ) -> Result<Dataset> {
        Ok(Self::read_csv(path, Some(target), outputs, None, on)?.0)
    }

    /// The number of columns of a CSV file's header row.
    pub fn csv_columns(path: &Path) -> Result<usize> {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_path(path)
            .map_err(|e| csv_error(path, e))?;
        match r.records().next() {
            Some(rec) => Ok(rec.map_err(|e| csv_error(path, e))?.len()),
            None => Err(Error::Data {
                path: path.display().to_string(),
                msg: "the file is empty (expected a header row)".into(),
            }),
        }
    }

    /// A CSV file of inputs only (a header, then `inputs` numbers per row),
    /// as `predict` takes it; the targets are zeros of width `outputs`.
    pub fn from_csv_inputs(path: &Path, inputs: usize, outputs: usize) -> Result<Dataset> {
        let d = Self::parse_csv(path, None, outputs)?;
        if d.inputs != inputs {
            return Err(Error::Data {
                path: path.display().to_string(),
                msg: format!(
                    "{} columns, but the network takes {inputs} inputs",
                    d.inputs
                ),
            });
        }
        Ok(d)
    }

    /// A CSV file read once, as `predict` takes it: a header of exactly
    /// `inputs` columns means inputs alone (zero targets, and `false`),
    /// anything else a target in the last column (and `true`). Works on a
    /// pipe such as `/dev/stdin`, which can be read only once.
    pub fn from_csv_for_prediction(
        path: &Path,
        inputs: usize,
        outputs: usize,
    ) -> Result<(Dataset, bool)> {
        Self::read_csv(path, Some(None), outputs, Some(inputs), &mut |_| ())
    }

    /// `target`: `Some(None)` the last column, `Some(Some(name))` that
    /// column, `None` no target (every column an input, zero targets).
    fn parse_csv(path: &Path, target: Option<Option<&str>>, outputs: usize) -> Result<Dataset> {
        Ok(Self::read_csv(path, target, outputs, None, &mut |_| ())?.0)
    }

    /// [`Dataset::parse_csv`]; with `inputs_only`, a header of that many
    /// columns means no target whatever `target` says. Also says whether a
    /// target column was read. The file is read once, as a stream bounded by
    /// the memory available ([`Bounded`]), telling `on` how far it is.
    fn read_csv(
        path: &Path,
        target: Option<Option<&str>>,
        outputs: usize,
        inputs_only: Option<usize>,
        on: &mut dyn FnMut(Loading),
    ) -> Result<(Dataset, bool)> {
        if outputs == 0 {
            return Err(Error::Invalid(
                "the network must have at least one output".into(),
            ));
        }
        let shown = path.display().to_string();
        let data_err = |msg: String| Error::Data {
            path: shown.clone(),
            msg,
        };
        let file = Bounded::open(path, on)?;
        // The header is read as an ordinary record so that blank lines before
        // it are skipped the same way as blank lines between rows. Only '\n'
        // ends a record (a '\r' before it is trimmed away with the cell), and
        // `PadBlankLines` keeps csv from skipping blank lines itself: csv then
        // consumes each line's '\n' with its record, so `position().line()`
        // is exact (rust-csv#395: it lags after CRLF endings or blank lines).
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .trim(csv::Trim::All)
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(PadBlankLines::new(BufReader::new(file)));
        let mut record = csv::StringRecord::new();
        let mut next_row = |record: &mut csv::StringRecord| -> Result<bool> {
            loop {
                if !reader.read_record(record).map_err(|e| csv_error(path, e))? {
                    return Ok(false);
                }
                if !is_blank(record) {
                    return Ok(true);
                }
            }
        };

        if !next_row(&mut record)? {
            return Err(data_err("the file is empty (expected a header row)".into()));
        }
        let headers = record.clone();
        let width = headers.len();
        let target = match inputs_only {
            Some(n) if n == width => None,
            _ => target,
        };
        if width < 2 && target.is_some() {
            return Err(data_err(format!(
                "need at least 2 columns (one or more inputs and the target), found {width}"
            )));
        }
        // usize::MAX: no column is the target.
        let target_col = match target {
            None => usize::MAX,
            Some(None) => width - 1,
            Some(Some(name)) => headers.iter().position(|h| h == name).ok_or_else(|| {
                let names: Vec<String> = headers.iter().map(quote).collect();
                data_err(format!(
                    "no column named '{}' for the target; columns are: {}",
                    quote(name),
                    crate::error::one_line(&names.join(", "), 200)
                ))
            })?,
        };
        let column = |j: usize| -> String {
            match headers.get(j) {
                Some(h) if !h.is_empty() => format!("column '{}'", quote(h)),
                _ => format!("column {}", j + 1),
            }
        };

        let inputs = if target.is_some() { width - 1 } else { width };
        let mut x: Vec<f32> = Vec::new();
        let mut y: Vec<f32> = Vec::new();
        let mut all_binary = true;
        let mut rows = 0usize;
        // Stream record by record into x/y through one reused record buffer.
        while next_row(&mut record)? {
            let line = record.position().map_or(0, |p| p.line());
            let line_err = |msg: String| Error::DataLine {
                path: shown.clone(),
                line,
                msg,
            };
            if record.len() != width {
                return Err(line_err(format!(
                    "expected {width} fields (as in the header), found {}",
                    record.len()
                )));
            }
            for (j, cell) in record.iter().enumerate() {
                let v = parse_cell(cell).map_err(|m| line_err(format!("{}: {m}", column(j))))?;
                if j != target_col {
                    x.push(v);
                } else if outputs > 1 {
                    // Label -> one-hot row of width `outputs`.
                    if v.fract() != 0.0 || v < 0.0 || v >= outputs as f32 {
                        return Err(line_err(format!(
                            "{}: label '{}' is not an integer class in 0..={} \
                             (the network has {outputs} outputs)",
                            column(j),
                            quote(cell),
                            outputs - 1
                        )));
                    }
                    let k = v as usize;
                    y.extend((0..outputs).map(|c| if c == k { 1.0 } else { 0.0 }));
                } else {
                    all_binary &= v == 0.0 || v == 1.0;
                    y.push(v);
                }
            }
            if target.is_none() {
                y.extend(std::iter::repeat_n(0.0, outputs));
            }
            rows += 1;
        }
        if rows == 0 {
            return Err(data_err("the file has a header but no data rows".into()));
        }

        let task = if outputs > 1 {
            Task::Classification { classes: outputs }
        } else if all_binary {
            Task::Classification { classes: 2 }
        } else {
            Task::Regression
        };
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| shown.clone());
        let d = Dataset::in_memory(&name, (inputs, outputs), x, y, task);
        Ok((d, target.is_some()))
    }

    /// The first of this set's widths that differs from a network's:
    /// [`Width::Inputs`] or [`Width::Outputs`] with this set's value.
    pub fn mismatch(&self, inputs: usize, outputs: usize) -> Option<Width> {
        if inputs != self.inputs {
            Some(Width::Inputs(self.inputs))
        } else if outputs != self.outputs {
            Some(Width::Outputs(self.outputs))
        } else {
            None
        }
    }

    /// `Error::Shape` unless `inputs == self.inputs && outputs == self.outputs`,
    /// with a message naming both widths.
    pub fn check_shape(&self, inputs: usize, outputs: usize) -> Result<()> {
        let name = &self.name;
        match self.mismatch(inputs, outputs) {
            None => Ok(()),
            Some(Width::Inputs(n)) => Err(Error::Shape(format!(
                "'{name}' has {n} input columns but the network takes {inputs} inputs"
            ))),
            Some(Width::Outputs(n)) => Err(Error::Shape(format!(
                "'{name}' has {n} target columns but the network has {outputs} outputs"
            ))),
        }
    }

    /// Copy rows `idx` (indices into the set) into `x`, shape
    /// `(idx.len(), inputs)`, and `y`, shape `(idx.len(), outputs)`, which the
    /// caller sized. Used to build shuffled batches.
    ///
    /// # Panics
    /// If an index is out of range or a buffer is too small: both are the
    /// caller's bug, never the user's.
    pub fn gather(&self, idx: &[usize], x: &mut [f32], y: &mut [f32]) {
        let (ni, no) = (self.inputs, self.outputs);
        if let Rows::Mapped(m) = &self.rows {
            for (k, &i) in idx.iter().enumerate() {
                m.read(
                    i,
                    &mut x[k * ni..(k + 1) * ni],
                    &mut y[k * no..(k + 1) * no],
                );
            }
            return;
        }
        for (k, &i) in idx.iter().enumerate() {
            x[k * ni..(k + 1) * ni].copy_from_slice(&self.x[i * ni..(i + 1) * ni]);
            y[k * no..(k + 1) * no].copy_from_slice(&self.y[i * no..(i + 1) * no]);
        }
    }

    /// True if the task is classification.
    pub fn is_classification(&self) -> bool {
        matches!(self.task, Task::Classification { .. })
    }

    /// The rows `idx`, in that order, as a new set named `name`: a copy for
    /// a set in memory, a list of row numbers for a mapped one.
    ///
    /// # Panics
    /// If an index is out of range (the caller's bug).
    pub fn subset(&self, idx: &[usize], name: &str) -> Dataset {
        if let Rows::Mapped(m) = &self.rows {
            assert!(
                idx.iter().all(|&i| i < m.len()),
                "subset index out of range"
            );
            let index: Arc<[usize]> = idx.iter().map(|&i| m.row(i)).collect();
            let mut d = self.clone();
            d.name = name.into();
            d.rows = Rows::Mapped(Mapped {
                index: Some(index),
                ..m.clone()
            });
            return d;
        }
        let mut x = vec![0.0; idx.len() * self.inputs];
        let mut y = vec![0.0; idx.len() * self.outputs];
        self.gather(idx, &mut x, &mut y);
        Dataset::in_memory(name, (self.inputs, self.outputs), x, y, self.task)
    }

    /// Splits off a validation set of `fraction` of the rows (rounded, at
    /// least one), chosen by a seeded shuffle: `(train, validation)`.
    pub fn split_validation(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if !(fraction > 0.0 && fraction < 1.0) {
            return Err(Error::setting(
                Setting::ValSplit,
                fraction,
                "must be between 0 and 1 (exclusive)",
            ));
        }
        let n = self.len();
        let n_val = ((n as f64 * fraction).round() as usize).max(1);
        if n_val >= n {
            return Err(Error::setting(
                Setting::ValSplit,
                fraction,
                format!("holding out that fraction of {n} samples leaves none to train on"),
            ));
        }
        let mut order: Vec<usize> = (0..n).collect();
        // A stream of its own, so the split does not move with the shuffling.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::MAX);
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let (val, train) = order.split_at(n_val);
        Ok((
            self.subset(train, &self.name),
            self.subset(val, &format!("{} (validation)", self.name)),
        ))
    }
}

/// Per-input-column mean and standard deviation, fitted on a training set
/// and applied to it and to its validation set alike (`--normalize`).
#[derive(Debug, Clone, PartialEq)]
pub struct Standardizer {
    /// Column means, `(inputs)`.
    pub mean: Vec<f32>,
    /// Column standard deviations, `(inputs)`; 1 where a column is constant.
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits the columns of `data`'s inputs, accumulating in f64.
    pub fn fit(data: &Dataset) -> Standardizer {
        let (n, w) = (data.len().max(1), data.inputs);
        let mut sum = vec![0.0f64; w];
        let mut sq = vec![0.0f64; w];
        data.for_each_block(|x, _| {
            for row in x.chunks(w.max(1)) {
                for ((s, q), &v) in sum.iter_mut().zip(&mut sq).zip(row) {
                    *s += v as f64;
                    *q += (v as f64) * (v as f64);
                }
            }
        });
        let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let var = (q / n as f64 - m * m).max(0.0);
                if var > 1e-12 {
                    var.sqrt() as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer {
            mean: mean.iter().map(|&m| m as f32).collect(),
            std,
        }
    }

    /// `x ← (x − mean) / std`, column by column: in place for a set in
    /// memory, as each batch is gathered for a mapped one.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        if data.inputs != self.mean.len() {
            return Err(Error::Shape(format!(
                "normalising {} inputs with statistics of {}",
                data.inputs,
                self.mean.len()
            )));
        }
        if let Rows::Mapped(m) = &mut data.rows {
            m.z.push(self.clone());
            return Ok(());
        }
        for row in data.x.chunks_mut(data.inputs.max(1)) {
            for ((v, m), s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *v = (*v - m) / s;
            }
        }
        Ok(())
    }
}

/// One trimmed cell as a finite `f32`, or why not.
fn parse_cell(cell: &str) -> std::result::Result<f32, String> {
    if cell.is_empty() {
        return Err("empty cell".into());
    }
    match cell.parse::<f32>() {
        // Rust parses "NaN" and "inf"; a huge value like 1e39 becomes inf.
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(format!("value '{}' is not a finite number", quote(cell))),
        Err(_) => Err(format!("cannot parse '{}' as a number", quote(cell))),
    }
}

/// A record from a blank or whitespace-only line: one field, empty once trimmed.
fn is_blank(record: &csv::StringRecord) -> bool {
    record.len() == 1 && record.get(0).is_some_and(str::is_empty)
}

/// Puts a space at the start of every empty line (`"\n\n"` -> `"\n \n"`), so
/// that the csv parser reads it as a one-field record rather than skipping it
/// without counting the line at the right time. [`is_blank`] then drops it.
struct PadBlankLines<R> {
    inner: R,
    /// The last byte passed on was '\n' (or nothing has been passed on yet).
    at_line_start: bool,
    /// The pad for the '\n' now at the front of `inner` was already written.
    padded: bool,
}

impl<R> PadBlankLines<R> {
    fn new(inner: R) -> Self {
        PadBlankLines {
            inner,
            at_line_start: true,
            padded: false,
        }
    }
}

impl<R: BufRead> Read for PadBlankLines<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let src = self.inner.fill_buf()?;
        let (mut used, mut n) = (0, 0);
        while used < src.len() && n < out.len() {
            let b = src[used];
            if b == b'\n' && self.at_line_start && !self.padded {
                out[n] = b' ';
                self.padded = true;
            } else {
                out[n] = b;
                used += 1;
                self.at_line_start = b == b'\n';
                self.padded = false;
            }
            n += 1;
        }
        self.inner.consume(used);
        Ok(n)
    }
}

/// A data file read as a stream: refuses a NUL byte (binary data such as
/// `/dev/zero`, never a text CSV file) at once, and more bytes than half the
/// memory available ([`crate::memory::available`], which
/// `SHADERTRAIN_MEMORY_LIMIT` caps): each text cell of at least two bytes
/// becomes a 4-byte value, so a longer file's dataset could not fit. Pipes
/// and devices are bounded the same way as regular files.
struct Bounded<'a> {
    file: File,
    read: u64,
    limit: Option<u64>,
    /// The file's length, where it has one.
    total: Option<u64>,
    /// Told every [`Bounded::EVERY`] bytes.
    on: &'a mut dyn FnMut(Loading),
    told: u64,
}

impl<'a> Bounded<'a> {
    /// Bytes between progress reports.
    const EVERY: u64 = 1 << 20;

    fn open(path: &Path, on: &'a mut dyn FnMut(Loading)) -> Result<Bounded<'a>> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let limit = crate::memory::available().map(|a| a / 2);
        let meta = file.metadata().ok().filter(|m| m.is_file());
        if let (Some(limit), Some(m)) = (limit, &meta) {
            if m.len() > limit {
                return Err(Self::too_big(path, limit));
            }
        }
        Ok(Bounded {
            file,
            read: 0,
            limit,
            total: meta.map(|m| m.len()),
            on,
            told: 0,
        })
    }
    fn too_big(path: &Path, limit: u64) -> Error {
        Error::memory(
            format!(
                "the data in {} is larger than {}, half the memory available, so its values would not fit",
                path.display(),
                crate::memory::human(limit)
            ),
            &[],
        )
    }
}

impl Read for Bounded<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Error as IoError, ErrorKind};
        let n = self.file.read(out)?;
        if let Some(at) = out[..n].iter().position(|&b| b == 0) {
            return Err(IoError::new(
                ErrorKind::InvalidData,
                format!(
                    "a NUL byte at byte {}: binary data, not a text CSV file",
                    self.read + at as u64 + 1
                ),
            ));
        }
        self.read += n as u64;
        if self.read >= self.told + Self::EVERY || n == 0 {
            self.told = self.read;
            (self.on)(Loading {
                done: self.read,
                total: self.total,
            });
        }
        match self.limit {
            Some(limit) if self.read > limit => Err(IoError::new(
                ErrorKind::OutOfMemory,
                format!(
                    "more than {} (half the memory available) to read: its values would not fit",
                    crate::memory::human(limit)
                ),
            )),
            _ => Ok(n),
        }
    }
}

/// A `csv` crate error as our one-line [`Error`].
fn csv_error(path: &Path, e: csv::Error) -> Error {
    let shown = path.display().to_string();
    let line = e.position().map(|p| p.line());
    let msg = match e.kind() {
        csv::ErrorKind::Utf8 { err, .. } => {
            format!("field {} is not valid UTF-8", err.field() + 1)
        }
        _ => e.to_string(),
    };
    match (e.into_kind(), line) {
        (csv::ErrorKind::Io(io), _) => Error::io(path, io),
        (_, Some(line)) => Error::DataLine {
            path: shown,
            line,
            msg,
        },
        (_, None) => Error::Data { path: shown, msg },
    }
}

/// Two independent N(0, 1) samples by the Box-Muller transform.
fn gaussian_pair(rng: &mut impl Rng) -> (f64, f64) {
    // u1 in (0, 1] so ln(u1) is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    let r = (-2.0 * u1.ln()).sqrt();
    let theta = 2.0 * PI * u2;
    (r * theta.cos(), r * theta.sin())
}
