//! TensorBoard event files, written by hand: TFRecord framing around
//! `Event` protobufs with the field numbers of TensorFlow's
//! `tensorflow/core/util/event.proto` and `framework/summary.proto`. Our own
//! few dozen lines rather than the `tensorboard-rs` crate, whose last release
//! (2022) depends on protobuf 2.x, which has an open advisory.
//!
//! A TFRecord is `len: u64 LE, masked_crc32c(len bytes): u32 LE, data,
//! masked_crc32c(data): u32 LE`; the first record of a file is an `Event`
//! holding only `file_version` ([`FILE_VERSION`]).
//!
//! Tags, each a scalar (`simple_value`) in the groups TensorBoard draws them:
//!
//! | tag | step axis | value |
//! |---|---|---|
//! | `loss/step` | global step | the epoch's running mean loss so far ([`super::StepRecord::loss`]) |
//! | `lr/step` | global step | the learning rate |
//! | `loss/epoch`, `accuracy/epoch` | epoch | the epoch's training figures |
//! | `loss/val`, `accuracy/val` | epoch | the validation figures, when there is a validation set |
//! | `samples_per_s/epoch` | epoch | training throughput |
//!
//! and, once per run at the global step it starts from, two text summaries
//! (the `text` plugin's: a scalar `DT_STRING` tensor holding Markdown, under
//! `SummaryMetadata.plugin_data.plugin_name = "text"`), which TensorBoard's
//! Text dashboard shows:
//!
//! | tag | value |
//! |---|---|
//! | `run/config` | backend, adapter, network and settings ([`super::RunRecord`]) |
//! | `run/kernels` | GPU only: a table of every product's kernel configuration, shape and source (tuned, cache, heuristic, given) |

use super::{MetricsSink, RunRecord, StepRecord};
use crate::error::{Error, Result, Setting};
use crate::train::EpochStats;
use prost::Message;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `file_version` of the first event: TensorBoard's current format.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `tensorflow.Event`, the fields we write.
#[derive(Clone, PartialEq, prost::Message)]
struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    wall_time: f64,
    /// The x coordinate of the summary's values.
    #[prost(int64, tag = "2")]
    step: i64,
    /// Only in the first event of a file: [`FILE_VERSION`].
    #[prost(string, optional, tag = "3")]
    file_version: Option<String>,
    /// The values of this step.
    #[prost(message, optional, tag = "5")]
    summary: Option<Summary>,
}

/// `tensorflow.Summary`.
#[derive(Clone, PartialEq, prost::Message)]
struct Summary {
    /// The values, one per tag.
    #[prost(message, repeated, tag = "1")]
    value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: a scalar, or a text plugin's tensor.
#[derive(Clone, PartialEq, prost::Message)]
struct Value {
    /// The series, e.g. `loss/step`.
    #[prost(string, tag = "1")]
    tag: String,
    /// The scalar (written even when 0, which proto3 would otherwise omit).
    #[prost(float, optional, tag = "2")]
    simple_value: Option<f32>,
    /// A text summary's string.
    #[prost(message, optional, tag = "8")]
    tensor: Option<TensorProto>,
    /// Which plugin reads `tensor`.
    #[prost(message, optional, tag = "9")]
    metadata: Option<SummaryMetadata>,
}

/// `tensorflow.TensorProto` (framework/tensor.proto), as a string scalar.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    /// `DataType`: [`DT_STRING`].
    #[prost(int32, tag = "1")]
    dtype: i32,
    /// No dimensions: a scalar.
    #[prost(message, optional, tag = "2")]
    tensor_shape: Option<TensorShapeProto>,
    /// The one string, UTF-8.
    #[prost(bytes = "vec", repeated, tag = "8")]
    string_val: Vec<Vec<u8>>,
}

/// `tensorflow.TensorShapeProto` with no `dim` (2): rank 0.
#[derive(Clone, PartialEq, prost::Message)]
struct TensorShapeProto {}

/// `tensorflow.SummaryMetadata`: the plugin a value is for.
#[derive(Clone, PartialEq, prost::Message)]
struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    plugin_data: Option<PluginData>,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
struct PluginData {
    /// `text` for the text dashboard.
    #[prost(string, tag = "1")]
    plugin_name: String,
}

/// `tensorflow.DataType.DT_STRING` (framework/types.proto).
const DT_STRING: i32 = 7;

/// CRC-32C as TFRecord stores it: rotated right by 15 bits plus a constant,
/// so that a CRC of data holding CRCs is not trivially related to them.
fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// A TensorBoard event file in a log directory, `events.out.tfevents.<secs>.<host>`.
pub struct TensorBoard {
    out: BufWriter<File>,
    path: PathBuf,
}

impl TensorBoard {
    /// Creates `dir` if needed and a new event file in it holding the
    /// version record. A `dir` that is a file, or where nothing can be
    /// written, is an [`Error::Setting`] for [`Setting::LogDir`]. An existing
    /// file is never overwritten: a second run in the same second gets a
    /// `.N` suffix, and TensorBoard reads every event file of a directory.
    pub fn create(dir: impl AsRef<Path>) -> Result<TensorBoard> {
        let dir = dir.as_ref();
        let refuse = |why: String| Error::setting(Setting::LogDir, dir.display(), why);
        if dir.exists() && !dir.is_dir() {
            return Err(refuse("is a file, not a directory".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot create it: {e}")))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host: String = gethostname::gethostname()
            .to_string_lossy()
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let base = format!("events.out.tfevents.{now}.{host}");
        let mut n = 0;
        let (file, path) = loop {
            let name = match n {
                0 => base.clone(),
                n => format!("{base}.{n}"),
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(refuse(format!("cannot write there: {e}"))),
            }
        };
        let mut tb = TensorBoard {
            out: BufWriter::new(file),
            path,
        };
        tb.write(&Event {
            wall_time: wall_time(),
            file_version: Some(FILE_VERSION.into()),
            ..Default::default()
        })?;
        tb.flush()?;
        Ok(tb)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `values` at `step` as one event.
    pub fn scalars(&mut self, step: i64, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|&(tag, v)| Value {
                tag: tag.into(),
                simple_value: Some(v as f32),
                ..Default::default()
            })
            .collect();
        self.write(&Event {
            wall_time: wall_time(),
            step,
            file_version: None,
            summary: Some(Summary { value }),
        })
    }

    /// Writes `markdown` at `step` as a text summary under `tag`, which
    /// TensorBoard's Text dashboard renders.
    pub fn text(&mut self, step: i64, tag: &str, markdown: &str) -> Result<()> {
        let value = Value {
            tag: tag.into(),
            simple_value: None,
            tensor: Some(TensorProto {
                dtype: DT_STRING,
                tensor_shape: Some(TensorShapeProto {}),
                string_val: vec![markdown.as_bytes().to_vec()],
            }),
            metadata: Some(SummaryMetadata {
                plugin_data: Some(PluginData {
                    plugin_name: "text".into(),
                }),
            }),
        };
        self.write(&Event {
            wall_time: wall_time(),
            step,
            file_version: None,
            summary: Some(Summary { value: vec![value] }),
        })
    }

    /// One TFRecord holding `event`, written whole (one buffered write).
    fn write(&mut self, event: &Event) -> Result<()> {
        let data = event.encode_to_vec();
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        rec.extend_from_slice(&data);
        rec.extend_from_slice(&masked_crc32c(&data).to_le_bytes());
        self.out
            .write_all(&rec)
            .map_err(|e| Error::io(&self.path, e))
    }
}

impl MetricsSink for TensorBoard {
    fn run(&mut self, r: &RunRecord) -> Result<()> {
        let step = i64::try_from(r.global_step).unwrap_or(i64::MAX);
        let config = format!(
            "| | |\n|---|---|\n| backend | {} |\n| adapter | {} |\n| network | `{}` |\n| epochs | {} to {} |\n| batch | {} |\n| lr | {} |\n| optimizer | {} |\n| seed | {} |\n",
            r.backend,
            r.adapter.replace('|', "\\|"),
            r.network,
            r.first_epoch,
            r.epochs,
            r.batch,
            r.lr,
            r.optimizer,
            r.seed
        );
        self.text(step, "run/config", &config)?;
        if let Some(k) = &r.kernels {
            self.text(step, "run/kernels", &k.markdown())?;
        }
        self.flush()
    }

    fn step(&mut self, r: &StepRecord) -> Result<()> {
        let step = i64::try_from(r.global_step).unwrap_or(i64::MAX);
        self.scalars(step, &[("loss/step", r.loss), ("lr/step", r.lr as f64)])
    }

    fn epoch(&mut self, s: &EpochStats) -> Result<()> {
        let mut v = vec![("loss/epoch", s.loss)];
        v.extend(s.accuracy.map(|a| ("accuracy/epoch", a)));
        v.extend(s.val_loss.map(|l| ("loss/val", l)));
        v.extend(s.val_accuracy.map(|a| ("accuracy/val", a)));
        v.push(("samples_per_s/epoch", s.samples_per_s));
        self.scalars(s.epoch as i64, &v)?;
        self.flush()
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// Seconds since the Unix epoch, as events record them.
fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
