//! A [`Dataset`] over two `.npy` arrays, inputs and targets, mapped from
//! their files ([`crate::npy`]): opening one checks shapes, dtypes and every
//! value, and copies nothing.

use super::{Dataset, Loading, Mapped, Rows, Task};
use crate::error::{Error, Result};
use crate::npy::{Elem, NpyArray};
use std::path::Path;
use std::sync::Arc;

impl Dataset {
    /// Inputs from `x`, shape `(n, ...)` (each row flattened): `float32`,
    /// `float64`, or `uint8` scaled to \[0, 1\] (÷ 255, as IDX images).
    /// Targets from `y`, `n` rows: integer class labels, shape `(n)` or
    /// `(n, 1)`, one-hot over `outputs` classes when `outputs > 1` (each
    /// label below it); or floats, shape `(n)` or `(n, outputs)`, used as
    /// they are. The task is classification for labels, for 0/1 targets of
    /// one output, and for one-hot rows; regression otherwise.
    ///
    /// Shapes and dtypes are checked before anything is allocated, then
    /// every label and every float value (finite) in one pass over the files.
    pub fn from_npy(x: &Path, y: &Path, outputs: usize) -> Result<Dataset> {
        Self::from_npy_observed(x, y, outputs, &mut |_| ())
    }

    /// [`Dataset::from_npy`], telling `on` how much of the files the check
    /// has read.
    pub fn from_npy_observed(
        x: &Path,
        y: &Path,
        outputs: usize,
        on: &mut dyn FnMut(Loading),
    ) -> Result<Dataset> {
        if outputs == 0 {
            return Err(Error::Invalid(
                "the network must have at least one output".into(),
            ));
        }
        let xa = NpyArray::open(x)?;
        let x_err = |msg: String| Error::Data {
            path: x.display().to_string(),
            msg,
        };
        let y_err = |msg: String| Error::Data {
            path: y.display().to_string(),
            msg,
        };
        let scale = match xa.elem {
            Elem::U8 => 1.0 / 255.0,
            Elem::F32 | Elem::F64 => 1.0,
            other => {
                return Err(x_err(format!(
                    "inputs of dtype {} are not supported: use float32, float64 or uint8 (scaled to [0, 1])",
                    other.name()
                )))
            }
        };
        let (n, inputs) = (xa.rows(), xa.row_len());
        if n == 0 {
            return Err(x_err(format!("shape {:?} holds no rows", xa.shape)));
        }
        if inputs == 0 {
            return Err(x_err(format!("shape {:?}: rows of 0 values", xa.shape)));
        }
        let ya = NpyArray::open(y)?;
        if ya.rows() != n {
            return Err(y_err(format!(
                "{} rows of targets (shape {:?}) for {n} rows of inputs in {}",
                ya.rows(),
                ya.shape,
                x.display()
            )));
        }
        let width = ya.row_len();
        let one_hot = !ya.elem.is_float() && outputs > 1;
        if !ya.elem.is_float() && width != 1 {
            return Err(y_err(format!(
                "integer labels must be one per row, shape ({n},) or ({n}, 1), not {:?}",
                ya.shape
            )));
        }
        if ya.elem.is_float() && width != outputs {
            let hint = if width == 1 {
                "; class labels belong in an integer array (y.astype(np.int64))"
            } else {
                ""
            };
            return Err(y_err(format!(
                "targets of width {width} (shape {:?}), but the network has {outputs} outputs{hint}",
                ya.shape
            )));
        }

        // One pass over the targets: labels in range, values finite, and
        // what the task is; then over float inputs, which must be finite.
        let total = (n as u64) * ((inputs * xa.elem.size() + width * ya.elem.size()) as u64);
        let mut done = 0u64;
        let mut report = |bytes: u64, on: &mut dyn FnMut(Loading)| {
            done += bytes;
            on(Loading {
                done,
                total: Some(total),
            });
        };
        let (mut binary, mut rows_one_hot) = (true, true);
        let mut row = vec![0.0f32; width];
        for r in 0..n {
            if let Some(label) = ya.int_at(r) {
                if outputs > 1 && !(0..outputs as i128).contains(&label) {
                    return Err(y_err(format!(
                        "label {label} of row {r} is not a class 0..={} of the network's {outputs} outputs",
                        outputs - 1
                    )));
                }
                binary &= label == 0 || label == 1;
            } else {
                ya.row_f32(r, 1.0, &mut row);
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    return Err(y_err(format!(
                        "the value at row {r}, column {c} is not finite"
                    )));
                }
                binary &= row.iter().all(|&v| v == 0.0 || v == 1.0);
                rows_one_hot &= row.iter().filter(|&&v| v == 1.0).count() == 1
                    && row.iter().all(|&v| v == 0.0 || v == 1.0);
            }
        }
        report((n * width * ya.elem.size()) as u64, on);
        let task = if one_hot {
            Task::Classification { classes: outputs }
        } else if outputs == 1 && binary {
            Task::Classification { classes: 2 }
        } else if outputs > 1 && rows_one_hot {
            Task::Classification { classes: outputs }
        } else {
            Task::Regression
        };
        if xa.elem.is_float() {
            xa.advise_sequential(true);
            let mut row = vec![0.0f32; inputs];
            // Progress every 64 MiB or so.
            let every = ((64 << 20) / (inputs * xa.elem.size())).max(1);
            for r in 0..n {
                xa.row_f32(r, 1.0, &mut row);
                if let Some(c) = row.iter().position(|v| !v.is_finite()) {
                    return Err(x_err(format!(
                        "the value at row {r}, column {c} is not finite"
                    )));
                }
                if (r + 1) % every == 0 {
                    report((every * inputs * xa.elem.size()) as u64, on);
                }
            }
        }
        // Training reads rows in shuffled order.
        xa.advise_sequential(false);
        on(Loading {
            done: total,
            total: Some(total),
        });
        let name = x
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| x.display().to_string());
        Ok(Dataset {
            name,
            inputs,
            outputs,
            x: Vec::new(),
            y: Vec::new(),
            task,
            rows: Rows::Mapped(Mapped {
                x: Arc::new(xa),
                y: Arc::new(ya),
                scale,
                one_hot,
                index: None,
                z: Vec::new(),
            }),
        })
    }
}
