//! JSON Lines: one object per record, appended to a file and flushed as the
//! run goes, so a tracker (MLflow, W&B) or a script tailing it sees each as it
//! happens:
//!
//! ```text
//! {"kind":"run","backend":"gpu","adapter":"…","layers":[2,16,1],…,"kernel_config":"gen:8x8:4x4:k8","kernel_configs":[{"product":"forward layer 0","shape":[8,16,2],"config":"gen:8x8:4x4:k8","source":"heuristic"},…],"checked":false}
//! {"kind":"step","epoch":1,"step":10,"global_step":10,"loss":0.61,"lr":0.1}
//! {"kind":"epoch","epoch":1,"loss":0.58,"accuracy":0.71,"seconds":0.02,"samples_per_s":1e5,"val_loss":null,"val_accuracy":null}
//! ```
//!
//! The run object ([`super::RunRecord`]) comes first, once per run: on a
//! GPU it says which kernel configuration each product ran and where it
//! came from (`tuned`, `cache`, `heuristic`, `given`), with the keys
//! `bench --json` uses (absent on the CPU). The epoch objects hold
//! [`EpochStats`]'s fields, as `train --metrics` writes them; a non-finite
//! loss is `null`. A resumed run appends to the same file, starting with
//! its own run object.

use super::{MetricsSink, StepRecord};
use crate::error::{Error, Result, Setting};
use crate::train::EpochStats;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A JSON Lines file of step and epoch records.
pub struct JsonLines {
    out: File,
    path: PathBuf,
    line: Vec<u8>,
}

/// A line: the record's kind, then its fields.
#[derive(Serialize)]
struct Line<'a, T> {
    kind: &'static str,
    #[serde(flatten)]
    record: &'a T,
}

impl JsonLines {
    /// Opens `path` for appending, creating it if needed (through a symbolic
    /// link, to the file it names). A path [`crate::fsutil::check_output`]
    /// refuses, or one that cannot be opened, is an [`Error::Setting`] for
    /// [`Setting::MetricsLog`].
    pub fn create(path: impl AsRef<Path>) -> Result<JsonLines> {
        let path = path.as_ref();
        let refuse = |why: String| Error::setting(Setting::MetricsLog, path.display(), why);
        crate::fsutil::check_output(path).map_err(|e| match e {
            Error::Io { source, .. } => refuse(source.to_string()),
            e => e,
        })?;
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| refuse(format!("cannot write it: {e}")))?;
        Ok(JsonLines {
            out,
            path: path.to_path_buf(),
            line: Vec::new(),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `record` as one line, in one write (unbuffered: each line reaches
    /// the file as it is written).
    fn write<T: Serialize>(&mut self, kind: &'static str, record: &T) -> Result<()> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, &Line { kind, record })
            .map_err(|e| Error::Invalid(format!("cannot encode a metrics record: {e}")))?;
        self.line.push(b'\n');
        self.out
            .write_all(&self.line)
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl MetricsSink for JsonLines {
    fn run(&mut self, r: &super::RunRecord) -> Result<()> {
        self.write("run", r)
    }

    fn step(&mut self, r: &StepRecord) -> Result<()> {
        self.write("step", r)
    }

    fn epoch(&mut self, s: &EpochStats) -> Result<()> {
        self.write("epoch", s)
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}
