//! Checkpoints in the safetensors format, so a run can be resumed exactly
//! and a model evaluated without its training command.
//!
//! # Layout (format version 2)
//!
//! Tensors, all little-endian:
//!
//! | name | dtype | shape | holds |
//! |---|---|---|---|
//! | `layers.{l}.weight` | F32 | (out, in) | layer `l`'s weights |
//! | `layers.{l}.bias` | F32 | (out) | layer `l`'s biases |
//! | `normalize.mean`, `normalize.std` | F32 | (inputs) | the input standardisation, if any |
//! | `optimizer.state` | F32 | (n) | momentum `v`, or Adam `m` then `v`; absent for plain SGD |
//! | `history.loss` | F64 | (E) | each epoch's mean training loss |
//! | `history.accuracy` | F64 | (E) | its accuracy, NaN where there is none (regression) |
//! | `history.val_loss` | F64 | (E) | validation loss, NaN without a validation set |
//! | `history.val_accuracy` | F64 | (E) | validation accuracy, NaN where there is none |
//! | `early_stop.best` | F32 | (P) | early stopping: the parameters after the best epoch, in the parameter layout |
//!
//! Entry `i` of the history is epoch `i + 1`, and `E` equals the `epoch`
//! metadata. Wall-clock values (an epoch's seconds, samples per second) and
//! the count of clipped updates are not kept: loaded epochs have them 0; `--metrics` and the metrics sinks
//! have them. So a checkpoint grows by 32 bytes an epoch and its header not
//! at all.
//!
//! String metadata: `format` (`shadertrain`), `version`, `layers`, `epoch`,
//! `seed`, `batch`, `lr`, `lr_schedule`, `optimizer`, `momentum`, `beta1`,
//! `beta2`, `eps`, `weight_decay`, `optimizer_t`, `data`, `samples`,
//! `clip_norm` (only where the run clips its gradients), `warmup` (only
//! where it warms up), `early_stop` (the patience), `min_delta`,
//! `best_epoch`, `best_val_loss` and `stopped_epoch` (only where the run
//! stops early, the last three once known), and
//! `data_inputs_hash`, `data_targets_hash`: a 64-bit fingerprint (16 hex
//! digits) of the training rows' inputs and targets as training saw them
//! (after the validation split and the standardisation), which a resumed run
//! must match ([`DataFingerprint`]). With a validation set, `val_data`,
//! `val_samples`, `val_inputs_hash` and `val_targets_hash` record it the
//! same way ([`ValidationSet`]), and a resumed run must be validated on it.
//!
//! The writer is deterministic: metadata keys sorted, tensors in a fixed
//! order, no clock values, so the same seed, data, settings and backend give
//! the same bytes.
//!
//! Version 1 files (the history as JSON in the `history` metadata, no data
//! fingerprint) still load; a resumed run then checks the row count only.
//!
//! # What loading checks
//!
//! Besides the format (a safetensors file of this format at a version this
//! build reads, no key twice in its header, every tensor of the declared
//! architecture in F32 at its shape, no tensor it does not know), the values:
//! weights, biases, means and optimiser state finite; every `normalize.std`
//! finite and above 0; Adam's second moments not negative; an optimiser state
//! only where the optimiser keeps one; `optimizer_t` at most one update per
//! sample and epoch, counting the epoch an interrupted run stopped in; the history as long as `epoch`, its
//! losses not negative, its accuracies in \[0, 1\]. Errors name the field:
//! `normalize.std[3] is 0`.
//!
//! [`Checkpoint::load`] reads at most what the header declares: a header
//! longer than 100 MB, a file shorter or longer than its header says, or a
//! stream that does not end there (`/dev/zero`) is refused, having read no
//! more than the header and the data it declares; nor is a file declaring
//! more than the memory available read, nor a pipe or device declaring more
//! than 16 GiB whatever the memory.
//!
//! Files are written atomically: a temporary file in the same directory,
//! flushed and fsynced, then renamed over the target, so a crash leaves either
//! the old checkpoint or the new one, never half of one.

use crate::backend::Backend;
use crate::data::{Dataset, Standardizer};
use crate::early_stop::{EarlyStop, EarlyStopState};
use crate::error::{one_line, quote};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::network::{Network, Params};
use crate::optim::{check_state_len, Optimizer, OptimizerKind};
use crate::train::{EpochStats, Schedule};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::Path;

/// `format` in the metadata.
pub const FORMAT: &str = "shadertrain";
/// The format version this build writes; newer files are refused, version 1
/// (history as JSON metadata) is still read.
pub const VERSION: u32 = 2;

/// The longest header a checkpoint may declare (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// The most a checkpoint read from a pipe or device may declare, whatever
/// the memory available (or where it is unknown): 16 GiB, four billion f32
/// values, as for IDX data. A regular file's length bounds it instead.
const MAX_STREAM: u64 = 16 << 30;

/// The names of the history tensors, in [`EpochStats`] field order.
const HISTORY: [&str; 4] = [
    "history.loss",
    "history.accuracy",
    "history.val_loss",
    "history.val_accuracy",
];

/// A 64-bit fingerprint of a training set's rows, inputs and targets apart,
/// so that resuming on other data of the same size is noticed. Not
/// cryptographic: it tells runs apart, it does not authenticate them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataFingerprint {
    /// Of the input table (its width, rows and every value's bits).
    pub inputs: u64,
    /// Of the target table.
    pub targets: u64,
}

impl DataFingerprint {
    /// `data`'s fingerprint, as training sees it (a mapped set's rows as
    /// its batches are gathered, so the same values give the same print
    /// whether mapped or in memory).
    pub fn of(data: &Dataset) -> DataFingerprint {
        let mut x = TableHash::new(data.inputs, data.len() * data.inputs);
        let mut y = TableHash::new(data.outputs, data.len() * data.outputs);
        data.for_each_block(|bx, by| {
            x.feed(bx);
            y.feed(by);
        });
        DataFingerprint {
            inputs: x.finish(),
            targets: y.finish(),
        }
    }
}

/// FNV-1a over the width, the length and each value's 32 bits, finished
/// with splitmix64's mixer; fed in blocks.
struct TableHash(u64);

impl TableHash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new(width: usize, len: usize) -> TableHash {
        let mut h = TableHash(0xcbf2_9ce4_8422_2325);
        h.word(width as u64);
        h.word(len as u64);
        h
    }

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::PRIME);
    }

    fn feed(&mut self, v: &[f32]) {
        for x in v {
            self.word(x.to_bits() as u64);
        }
    }

    fn finish(self) -> u64 {
        let mut h = self.0;
        h ^= h >> 30;
        h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^= h >> 27;
        h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

/// A validation set as a checkpoint records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationSet {
    /// Its name, for messages.
    pub name: String,
    /// Its rows.
    pub samples: usize,
    /// Its fingerprint, as scoring saw it.
    pub fingerprint: DataFingerprint,
}

impl ValidationSet {
    /// `val`'s record.
    pub fn of(val: &Dataset) -> ValidationSet {
        ValidationSet {
            name: val.name.clone(),
            samples: val.len(),
            fingerprint: DataFingerprint::of(val),
        }
    }
}

/// Where a training run stands, enough to resume it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// The run's seed (initialisation, shuffling, validation split).
    pub seed: u64,
    /// Samples per step.
    pub batch: usize,
    /// Learning rate.
    pub lr: f32,
    /// Name of the training set, for messages.
    pub data: String,
    /// Samples in the training set.
    pub samples: usize,
    /// The training set's fingerprint; `None` in version 1 files.
    pub fingerprint: Option<DataFingerprint>,
    /// The validation set the run was scored on; `None` without one (and in
    /// files written before it was recorded).
    pub validation: Option<ValidationSet>,
    /// What every epoch so far measured (without wall-clock values), so a
    /// resumed run's metrics and plots cover the whole run.
    pub history: Vec<EpochStats>,
    /// The optimiser and its hyper-parameters.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Steps of learning-rate warmup ([`crate::TrainConfig::warmup`]).
    pub warmup: usize,
    /// Early stopping's rule and where it stands, if the run uses it.
    pub early_stop: Option<EarlyStopState>,
    /// The GPU kernels' configuration of every product
    /// ([`crate::gpu::KernelPlan`]'s text), so that a resumed run replays it
    /// bitwise; `None` off the tiled GPU kernels.
    pub kernel_config: Option<String>,
}

/// An optimiser's state: updates so far and its moments (momentum `v`, or
/// Adam `m` then `v`), in the parameter layout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OptimizerState {
    /// Updates applied so far (Adam's bias correction uses it).
    pub t: u64,
    /// The moments; empty for plain SGD.
    pub moments: Vec<f32>,
}

/// Parameters, training state and input standardisation.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Every weight and bias.
    pub params: Params<f32>,
    /// The run that produced them.
    pub state: TrainState,
    /// `--normalize` statistics, applied to any data the model sees.
    pub standardizer: Option<Standardizer>,
    /// Where the optimiser stands, so a resumed run continues it exactly.
    pub optimizer_state: OptimizerState,
}

/// `v` in the shorter of its two round-trip forms: `0.5`, but `1e-30`
/// rather than thirty zeros. Both parse back to the same bits.
pub fn shortest(v: f32) -> String {
    let plain = v.to_string();
    let sci = format!("{v:e}");
    if sci.len() < plain.len() {
        sci
    } else {
        plain
    }
}

/// `v` as little-endian bytes, as safetensors and ONNX's `raw_data` store it.
pub(crate) fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
type Raw = (String, Dtype, Vec<usize>, Vec<u8>);

/// `(name, shape, little-endian f32 bytes)` tensors and string metadata as
/// a safetensors file; `what` names it in errors.
pub(crate) fn f32_safetensors(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
    what: &str,
) -> Result<Vec<u8>> {
    let raw = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), Dtype::F32, s.clone(), b.clone()))
        .collect();
    safetensors_bytes(raw, &meta.into_iter().collect(), what)
}

/// A safetensors file, the same bytes for the same tensors and metadata:
/// metadata keys sorted, tensors by decreasing alignment then name (as
/// safetensors orders them), the header padded with spaces to 8 bytes.
fn safetensors_bytes(
    mut tensors: Vec<Raw>,
    meta: &BTreeMap<String, String>,
    what: &str,
) -> Result<Vec<u8>> {
    tensors.sort_by(|a, b| {
        (std::cmp::Reverse(a.1.bitsize()), &a.0).cmp(&(std::cmp::Reverse(b.1.bitsize()), &b.0))
    });
    let mut head = String::from("{");
    if !meta.is_empty() {
        head += &format!("\"__metadata__\":{}", json(meta));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, bytes) in &tensors {
        // Checked here rather than trusted: a view of the wrong size is a bug.
        TensorView::new(*dtype, shape.clone(), bytes)
            .map_err(|e| Error::Invalid(format!("cannot build {what} tensor '{name}': {e}")))?;
        if head.len() > 1 {
            head.push(',');
        }
        let end = offset + bytes.len();
        head += &format!(
            "{}:{{\"dtype\":\"{dtype:?}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            json(name),
            json(shape)
        );
        offset = end;
    }
    head.push('}');
    while !head.len().is_multiple_of(8) {
        head.push(' ');
    }
    let mut out = Vec::with_capacity(8 + head.len() + offset);
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(head.as_bytes());
    for (_, _, _, bytes) in &tensors {
        out.extend_from_slice(bytes);
    }
    Ok(out)
}

/// JSON text of a value that cannot fail to serialise (strings, string
/// maps, integers).
fn json<T: serde::Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A JSON value with no key twice in any object, checked while parsing.
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeys {
    type Value = NoDuplicateKeys;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self, E> {
        Ok(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut s: A,
    ) -> std::result::Result<Self, A::Error> {
        while s.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut m: A,
    ) -> std::result::Result<Self, A::Error> {
        let mut seen = HashSet::new();
        while let Some(k) = m.next_key::<String>()? {
            if seen.contains(&k) {
                return Err(serde::de::Error::custom(format!(
                    "key '{}' appears twice",
                    quote(&k)
                )));
            }
            m.next_value::<NoDuplicateKeys>()?;
            seen.insert(k);
        }
        Ok(self)
    }
}

impl Checkpoint {
    /// `backend`'s parameters and optimiser state, with `state` describing the run.
    pub fn capture<B: Backend<Scalar = f32> + ?Sized>(
        backend: &mut B,
        state: TrainState,
        standardizer: Option<Standardizer>,
    ) -> Result<Checkpoint> {
        let (t, moments) = backend.optimizer_state()?;
        let params = backend.params()?;
        // Never replace a good checkpoint with a diverged state.
        if !params.data.iter().chain(&moments).all(|v| v.is_finite()) {
            return Err(Error::Diverged {
                what: format!(
                    "the parameters are not finite after epoch {}, so it was not saved (an earlier checkpoint is kept)",
                    state.epoch
                ),
                lr: state.lr,
                inputs: None,
                weight_decay: None,
                targets: None,
            });
        }
        Ok(Checkpoint {
            params,
            state,
            standardizer,
            optimizer_state: OptimizerState { t, moments },
        })
    }

    /// Puts the parameters, the optimiser and its state on `backend`, so
    /// training continues where it stopped.
    pub fn restore<B: Backend<Scalar = f32> + ?Sized>(&self, backend: &mut B) -> Result<()> {
        backend.set_params(&self.params)?;
        backend.set_optimizer(&self.state.optimizer)?;
        backend.set_optimizer_state(self.optimizer_state.t, &self.optimizer_state.moments)
    }

    /// The file's bytes (format [`VERSION`], laid out as the module says).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let net = self.params.network();
        let f32s =
            |name: String, shape: Vec<usize>, v: &[f32]| (name, Dtype::F32, shape, le_bytes(v));
        let mut tensors: Vec<Raw> = Vec::new();
        for (l, ly) in net.layers().iter().enumerate() {
            tensors.push(f32s(
                format!("layers.{l}.weight"),
                vec![ly.n_out, ly.n_in],
                self.params.weights(l),
            ));
            tensors.push(f32s(
                format!("layers.{l}.bias"),
                vec![ly.n_out],
                self.params.bias(l),
            ));
        }
        let moments = &self.optimizer_state.moments;
        if !moments.is_empty() {
            tensors.push(f32s("optimizer.state".into(), vec![moments.len()], moments));
        }
        if let Some(z) = &self.standardizer {
            tensors.push(f32s("normalize.mean".into(), vec![z.mean.len()], &z.mean));
            tensors.push(f32s("normalize.std".into(), vec![z.std.len()], &z.std));
        }
        let s = &self.state;
        let h = &s.history;
        let columns: [Vec<f64>; 4] = [
            h.iter().map(|e| e.loss).collect(),
            h.iter().map(|e| e.accuracy.unwrap_or(f64::NAN)).collect(),
            h.iter().map(|e| e.val_loss.unwrap_or(f64::NAN)).collect(),
            h.iter()
                .map(|e| e.val_accuracy.unwrap_or(f64::NAN))
                .collect(),
        ];
        for (name, col) in HISTORY.iter().zip(columns) {
            let bytes = col.iter().flat_map(|v| v.to_le_bytes()).collect();
            tensors.push((name.to_string(), Dtype::F64, vec![col.len()], bytes));
        }
        let mut meta: BTreeMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("version", VERSION.to_string()),
            ("layers", net.spec()),
            ("epoch", s.epoch.to_string()),
            ("seed", s.seed.to_string()),
            ("batch", s.batch.to_string()),
            ("lr", shortest(s.lr)),
            ("optimizer", s.optimizer.name().to_string()),
            ("momentum", shortest(s.optimizer.momentum)),
            ("beta1", shortest(s.optimizer.beta1)),
            ("beta2", shortest(s.optimizer.beta2)),
            ("eps", shortest(s.optimizer.eps)),
            ("weight_decay", shortest(s.optimizer.weight_decay)),
            ("optimizer_t", self.optimizer_state.t.to_string()),
            ("lr_schedule", s.schedule.spec()),
            ("data", s.data.clone()),
            ("samples", s.samples.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(c) = s.optimizer.clip_norm {
            meta.insert("clip_norm".into(), shortest(c));
        }
        if s.warmup > 0 {
            meta.insert("warmup".into(), s.warmup.to_string());
        }
        if let Some(es) = &s.early_stop {
            meta.insert("early_stop".into(), es.rule.patience.to_string());
            meta.insert("min_delta".into(), es.rule.min_delta.to_string());
            if let Some((epoch, loss)) = es.best {
                meta.insert("best_epoch".into(), epoch.to_string());
                meta.insert("best_val_loss".into(), loss.to_string());
            }
            if let Some(e) = es.stopped {
                meta.insert("stopped_epoch".into(), e.to_string());
            }
            if let Some(p) = &es.best_params {
                tensors.push(f32s("early_stop.best".into(), vec![p.data.len()], &p.data));
            }
        }
        if let Some(k) = &s.kernel_config {
            meta.insert("kernel_config".into(), k.clone());
        }
        if let Some(fp) = s.fingerprint {
            meta.insert("data_inputs_hash".into(), format!("{:016x}", fp.inputs));
            meta.insert("data_targets_hash".into(), format!("{:016x}", fp.targets));
        }
        if let Some(v) = &s.validation {
            let fp = v.fingerprint;
            meta.insert("val_data".into(), v.name.clone());
            meta.insert("val_samples".into(), v.samples.to_string());
            meta.insert("val_inputs_hash".into(), format!("{:016x}", fp.inputs));
            meta.insert("val_targets_hash".into(), format!("{:016x}", fp.targets));
        }
        safetensors_bytes(tensors, &meta, "checkpoint")
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads and checks a checkpoint (see the module's "What loading
    /// checks"), reading no more than its header declares.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let data = |msg| Error::Data {
            path: path.display().to_string(),
            msg,
        };
        let bytes = read_bounded(path)?.map_err(data)?;
        Self::from_bytes(&bytes).map_err(data)
    }

    /// [`Checkpoint::load`] from memory; the error is the reason alone, one line.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
        // Messages from elsewhere (safetensors, serde_json, the parsers) may
        // quote metadata text, which may hold newlines.
        Self::parse_bytes(bytes).map_err(|e| one_line(&e, 500))
    }

    fn parse_bytes(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
        let n = header_len(bytes)?;
        if n > (bytes.len() - 8) as u64 {
            return Err(format!(
                "not a safetensors checkpoint (its header declares {n} bytes, the file has {} after the length)",
                bytes.len() - 8
            ));
        }
        let head = &bytes[8..8 + n as usize];
        serde_json::from_slice::<NoDuplicateKeys>(head)
            .map_err(|e| format!("not a safetensors checkpoint (header: {e})"))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| format!("not a safetensors checkpoint ({e})"))?;
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors checkpoint ({e})"))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| format!("metadata lacks '{k}' (not a shadertrain checkpoint?)"))
        };
        let format = get("format")?;
        if format != FORMAT {
            return Err(format!(
                "metadata format is '{}', not '{FORMAT}'",
                quote(&format)
            ));
        }
        let version: u32 = parse(&get("version")?, "version")?;
        if version > VERSION {
            return Err(format!(
                "format version {version} is newer than this build reads ({VERSION}); upgrade shadertrain"
            ));
        }
        if version == 0 {
            return Err("metadata 'version' is 0; versions start at 1".into());
        }
        let net = Network::parse(&get("layers")?).map_err(|e| format!("metadata layers: {e}"))?;
        let optimizer = Optimizer {
            kind: OptimizerKind::parse(&get("optimizer")?).map_err(|e| format!("metadata: {e}"))?,
            momentum: parse(&get("momentum")?, "momentum")?,
            beta1: parse(&get("beta1")?, "beta1")?,
            beta2: parse(&get("beta2")?, "beta2")?,
            eps: parse(&get("eps")?, "eps")?,
            weight_decay: parse(&get("weight_decay")?, "weight_decay")?,
            clip_norm: meta
                .get("clip_norm")
                .map(|v| parse(v, "clip_norm"))
                .transpose()?,
        };
        optimizer
            .validate()
            .map_err(|e| format!("metadata optimizer: {e}"))?;
        let len = optimizer.state_len(net.param_count());
        let mut tensors = Vec::with_capacity(2 * net.layers().len());
        for (l, ly) in net.layers().iter().enumerate() {
            let weight = format!("layers.{l}.weight");
            tensors.push(f32_tensor(&st, &weight, &[ly.n_out, ly.n_in])?);
            let bias = format!("layers.{l}.bias");
            tensors.push(f32_tensor(&st, &bias, &[ly.n_out])?);
        }
        // Every tensor in the file is one this format has, so none is
        // ignored; each is found and its shape checked before anything is
        // allocated for it: the metadata may declare billions of
        // parameters, but tensors that are in the file are no larger than it.
        let norm = st.tensor("normalize.mean").is_ok() || st.tensor("normalize.std").is_ok();
        for name in st.names() {
            let known = match name.strip_prefix("layers.") {
                Some(rest) => rest
                    .split_once('.')
                    .and_then(|(l, w)| Some((l.parse::<usize>().ok()?, w)))
                    .is_some_and(|(l, w)| {
                        l < net.layers().len()
                            && (w == "weight" || w == "bias")
                            && rest == format!("{l}.{w}")
                    }),
                None => match name {
                    "normalize.mean" | "normalize.std" => true,
                    "optimizer.state" => len > 0,
                    "early_stop.best" => meta.contains_key("best_epoch"),
                    h => version >= 2 && HISTORY.contains(&h),
                },
            };
            if !known {
                let why = match name {
                    "optimizer.state" => {
                        format!(", and optimizer '{}' keeps no state", optimizer.name())
                    }
                    _ => String::new(),
                };
                return Err(format!(
                    "tensor '{}' is not part of a version {version} checkpoint of layers {}{why}",
                    quote(name),
                    net.spec()
                ));
            }
        }
        let mut data = Vec::with_capacity(net.param_count());
        for t in &tensors {
            decode_f32(t, &mut data)?;
        }
        let params = Params::from_vec(&net, data).map_err(|e| e.to_string())?;
        let standardizer = if norm {
            let n = net.inputs();
            let z = Standardizer {
                mean: read_f32(&st, "normalize.mean", &[n])?,
                std: read_f32(&st, "normalize.std", &[n])?,
            };
            if let Some(i) = z.std.iter().position(|&s| s <= 0.0) {
                return Err(format!(
                    "normalize.std[{i}] is {}; a standard deviation must be above 0",
                    z.std[i]
                ));
            }
            Some(z)
        } else {
            None
        };
        let moments = if len > 0 {
            read_f32(&st, "optimizer.state", &[len])?
        } else {
            Vec::new()
        };
        check_state_len(&optimizer, net.param_count(), moments.len()).map_err(|e| e.to_string())?;
        if optimizer.kind == OptimizerKind::Adam {
            let n = net.param_count();
            if let Some(i) = moments[n..].iter().position(|&v| v < 0.0) {
                return Err(format!(
                    "optimizer.state[{}] is {}; Adam's second moments (from {n} on) cannot be negative",
                    n + i,
                    moments[n + i]
                ));
            }
        }
        let epoch: usize = parse(&get("epoch")?, "epoch")?;
        let samples: usize = parse(&get("samples")?, "samples")?;
        let t: u64 = parse(&get("optimizer_t")?, "optimizer_t")?;
        // A step takes at least one sample, so an epoch takes at most
        // `samples` steps (whatever the batch was, which a resumed run may
        // have changed); an interrupted run also holds the steps of the
        // epoch it stopped in.
        let most = (epoch as u64)
            .saturating_add(1)
            .saturating_mul(samples as u64);
        if t > most {
            return Err(format!(
                "metadata 'optimizer_t' is {t}, but {epoch} epochs of {samples} samples (and part of one more, if interrupted) take at most {most} updates"
            ));
        }
        let lr: f32 = parse(&get("lr")?, "lr")?;
        if !lr.is_finite() {
            return Err(format!("metadata 'lr' is {lr}, not a finite number"));
        }
        let history = if version >= 2 {
            if meta.contains_key("history") {
                return Err(format!(
                    "metadata 'history' belongs to version 1; version {version} keeps it in the history.* tensors"
                ));
            }
            read_history(&st)?
        } else {
            match meta.get("history") {
                Some(h) => serde_json::from_str::<Vec<EpochStats>>(h)
                    .map_err(|e| format!("metadata 'history' is not valid: {e}"))?
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| {
                        if e.epoch != i + 1 {
                            return Err(format!(
                                "history[{i}] is epoch {}, not {}",
                                e.epoch,
                                i + 1
                            ));
                        }
                        Ok(EpochStats {
                            seconds: 0.0,
                            samples_per_s: 0.0,
                            ..e
                        })
                    })
                    .collect::<std::result::Result<_, _>>()?,
                None => Vec::new(),
            }
        };
        if history.len() != epoch {
            return Err(format!(
                "the history holds {} epochs, but metadata 'epoch' is {epoch}",
                history.len()
            ));
        }
        check_history(&history)?;
        let fingerprint = match (meta.get("data_inputs_hash"), meta.get("data_targets_hash")) {
            (None, None) => None,
            (Some(i), Some(t)) => Some(DataFingerprint {
                inputs: hash(i, "data_inputs_hash")?,
                targets: hash(t, "data_targets_hash")?,
            }),
            (Some(_), None) => return Err("metadata lacks 'data_targets_hash'".into()),
            (None, Some(_)) => return Err("metadata lacks 'data_inputs_hash'".into()),
        };
        const VAL: [&str; 4] = [
            "val_data",
            "val_samples",
            "val_inputs_hash",
            "val_targets_hash",
        ];
        let validation = match VAL.map(|k| meta.get(k)) {
            [None, None, None, None] => None,
            [Some(name), Some(n), Some(i), Some(t)] => Some(ValidationSet {
                name: name.clone(),
                samples: parse(n, "val_samples")?,
                fingerprint: DataFingerprint {
                    inputs: hash(i, "val_inputs_hash")?,
                    targets: hash(t, "val_targets_hash")?,
                },
            }),
            some => {
                let k = VAL[some.iter().position(Option::is_none).unwrap_or(0)];
                return Err(format!("metadata lacks '{k}' (it has other val_ keys)"));
            }
        };
        let schedule =
            Schedule::parse(&get("lr_schedule")?).map_err(|e| format!("metadata: {e}"))?;
        let optional = |k: &str| meta.get(k).map(|v| parse::<usize>(v, k)).transpose();
        let warmup = optional("warmup")?.unwrap_or(0);
        let early_stop = match optional("early_stop")? {
            None => None,
            Some(patience) => {
                let min_delta: f64 = parse(&get("min_delta")?, "min_delta")?;
                let rule = EarlyStop {
                    patience,
                    min_delta,
                };
                rule.validate().map_err(|e| format!("metadata: {e}"))?;
                let mut es = EarlyStopState::new(rule);
                if let Some(b) = optional("best_epoch")? {
                    let loss: f64 = parse(&get("best_val_loss")?, "best_val_loss")?;
                    if b == 0 || b > epoch || !loss.is_finite() {
                        return Err(format!(
                            "metadata 'best_epoch' {b} (loss {loss}) is not an epoch of the {epoch} trained"
                        ));
                    }
                    es.best = Some((b, loss));
                    let best = read_f32(&st, "early_stop.best", &[net.param_count()])?;
                    if let Some(i) = best.iter().position(|v| !v.is_finite()) {
                        return Err(format!("early_stop.best[{i}] is {}, not finite", best[i]));
                    }
                    es.best_params = Some(Params::from_vec(&net, best).map_err(|e| e.to_string())?);
                }
                if let Some(e) = optional("stopped_epoch")? {
                    if e != epoch {
                        return Err(format!(
                            "metadata 'stopped_epoch' is {e}, but the run trained {epoch} epochs"
                        ));
                    }
                    es.stopped = Some(e);
                }
                Some(es)
            }
        };
        let state = TrainState {
            epoch,
            seed: parse(&get("seed")?, "seed")?,
            batch: parse(&get("batch")?, "batch")?,
            lr,
            data: get("data")?,
            samples,
            fingerprint,
            validation,
            history,
            optimizer,
            schedule,
            warmup,
            early_stop,
            kernel_config: meta.get("kernel_config").cloned(),
        };
        Ok(Checkpoint {
            params,
            state,
            standardizer,
            optimizer_state: OptimizerState { t, moments },
        })
    }
}

/// The header length a safetensors file starts with.
fn header_len(bytes: &[u8]) -> std::result::Result<u64, String> {
    let Some(b) = bytes.get(..8) else {
        return Err(format!(
            "not a safetensors checkpoint ({} bytes, shorter than the 8-byte header length)",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(b.try_into().unwrap_or_default());
    if n == 0 {
        return Err("not a safetensors checkpoint (its header length is 0)".into());
    }
    if n > MAX_HEADER {
        return Err(format!(
            "not a safetensors checkpoint (its header length {n} is past the {MAX_HEADER}-byte limit)"
        ));
    }
    Ok(n)
}

/// The bytes of the file at `path`, read no further than its header
/// declares: the outer error is the file's, the inner one a reason that the
/// file is not a checkpoint.
fn read_bounded(path: &Path) -> Result<std::result::Result<Vec<u8>, String>> {
    let io = |e| Error::io(path, e);
    let mut f = std::fs::File::open(path).map_err(io)?;
    let meta = f.metadata().map_err(io)?;
    let size = meta.is_file().then_some(meta.len());
    let mut bytes = Vec::new();
    (&mut f).take(8).read_to_end(&mut bytes).map_err(io)?;
    let n = match header_len(&bytes) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    if let Some(size) = size {
        if 8 + n > size {
            return Ok(Err(format!(
                "not a safetensors checkpoint (its header declares {n} bytes, the file has {} after the length)",
                size.saturating_sub(8)
            )));
        }
    }
    bytes.reserve_exact(n as usize);
    (&mut f).take(n).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 != 8 + n {
        return Ok(Err(format!(
            "not a safetensors checkpoint (it ends inside its {n}-byte header)"
        )));
    }
    let declared = match data_len(&bytes[8..]) {
        Ok(d) => d,
        Err(e) => return Ok(Err(e)),
    };
    let total = (8 + n).saturating_add(declared);
    if size.is_none() && total > MAX_STREAM {
        return Ok(Err(format!(
            "its header declares {}, more than the {} a checkpoint read from a pipe or device may hold (save it to a file)",
            crate::memory::human(total),
            crate::memory::human(MAX_STREAM)
        )));
    }
    if let Some(have) = crate::memory::available() {
        if total > have {
            return Ok(Err(format!(
                "its header declares {}, more than the {} of memory available",
                crate::memory::human(total),
                crate::memory::human(have)
            )));
        }
    }
    if let Some(size) = size {
        if size != total {
            return Ok(Err(format!(
                "not a safetensors checkpoint (the file is {size} bytes, its header declares {total})"
            )));
        }
    }
    // Within the memory available (and, for a stream, MAX_STREAM): the
    // bytes are reserved once instead of doubling as a stream arrives.
    bytes.try_reserve_exact(declared as usize).map_err(|_| {
        Error::memory(
            format!(
                "cannot allocate {} for {}",
                crate::memory::human(declared),
                path.display()
            ),
            &[],
        )
    })?;
    (&mut f)
        .take(declared)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if (bytes.len() as u64) < total {
        return Ok(Err(format!(
            "not a safetensors checkpoint (it ends after {} bytes, its header declares {total})",
            bytes.len()
        )));
    }
    let mut more = [0u8; 1];
    if f.read(&mut more).map_err(io)? > 0 {
        return Ok(Err(format!(
            "not a safetensors checkpoint (it goes on past the {total} bytes its header declares)"
        )));
    }
    Ok(Ok(bytes))
}

/// The data bytes a safetensors header declares: the furthest end offset.
fn data_len(head: &[u8]) -> std::result::Result<u64, String> {
    #[derive(serde::Deserialize)]
    struct Info {
        data_offsets: (u64, u64),
    }
    let map: HashMap<String, serde_json::Value> = serde_json::from_slice(head)
        .map_err(|e| format!("not a safetensors checkpoint (header: {e})"))?;
    let mut end = 0;
    for (k, v) in map {
        if k != "__metadata__" {
            let info: Info = serde_json::from_value(v).map_err(|e| {
                format!("not a safetensors checkpoint (tensor '{}': {e})", quote(&k))
            })?;
            end = end.max(info.data_offsets.1);
        }
    }
    Ok(end)
}

/// The `history.*` tensors as epochs 1 to E.
fn read_history(st: &SafeTensors<'_>) -> std::result::Result<Vec<EpochStats>, String> {
    let loss = st
        .tensor(HISTORY[0])
        .map_err(|_| format!("tensor '{}' is missing", HISTORY[0]))?;
    let e = loss.data().len() / 8;
    let mut cols = Vec::with_capacity(4);
    for name in HISTORY {
        let t = st
            .tensor(name)
            .map_err(|_| format!("tensor '{name}' is missing"))?;
        if t.dtype() != Dtype::F64 {
            return Err(format!("tensor '{name}' is {:?}, expected F64", t.dtype()));
        }
        if t.shape() != [e] {
            return Err(format!(
                "tensor '{name}' has shape {:?}, the history needs [{e}]",
                t.shape()
            ));
        }
        cols.push(
            t.data()
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().unwrap_or_default()))
                .collect::<Vec<f64>>(),
        );
    }
    let some = |v: f64| (!v.is_nan()).then_some(v);
    Ok((0..e)
        .map(|i| EpochStats {
            epoch: i + 1,
            loss: cols[0][i],
            accuracy: some(cols[1][i]),
            seconds: 0.0,
            samples_per_s: 0.0,
            val_loss: some(cols[2][i]),
            val_accuracy: some(cols[3][i]),
            clipped: 0,
        })
        .collect())
}

/// Losses not negative (nor NaN), accuracies in [0, 1].
fn check_history(h: &[EpochStats]) -> std::result::Result<(), String> {
    for (i, e) in h.iter().enumerate() {
        let fields = [
            ("loss", Some(e.loss), false),
            ("accuracy", e.accuracy, true),
            ("val_loss", e.val_loss, false),
            ("val_accuracy", e.val_accuracy, true),
        ];
        for (name, v, fraction) in fields {
            let Some(v) = v else { continue };
            let ok = v >= 0.0 && (!fraction || v <= 1.0);
            if !ok {
                let want = if fraction {
                    "a fraction in [0, 1]"
                } else {
                    "a loss, not negative"
                };
                return Err(format!("history.{name}[{i}] is {v}, not {want}"));
            }
        }
    }
    Ok(())
}

/// A fingerprint: 16 hex digits.
fn hash(v: &str, key: &str) -> std::result::Result<u64, String> {
    if v.len() != 16 {
        return Err(format!(
            "metadata '{key}' is '{}', not 16 hex digits",
            quote(v)
        ));
    }
    u64::from_str_radix(v, 16)
        .map_err(|_| format!("metadata '{key}' is '{}', not 16 hex digits", quote(v)))
}

fn parse<T: std::str::FromStr>(v: &str, key: &str) -> std::result::Result<T, String> {
    v.parse()
        .map_err(|_| format!("metadata '{key}' is not a valid value: '{}'", quote(v)))
}

/// Tensor `name`, which must be f32 of `shape`, with its name for messages.
fn f32_tensor<'a>(
    st: &SafeTensors<'a>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<(String, TensorView<'a>), String> {
    let t = st
        .tensor(name)
        .map_err(|_| format!("tensor '{name}' is missing"))?;
    if t.dtype() != Dtype::F32 {
        return Err(format!("tensor '{name}' is {:?}, expected F32", t.dtype()));
    }
    if t.shape() != shape {
        return Err(format!(
            "tensor '{name}' has shape {:?}, the architecture needs {shape:?}",
            t.shape()
        ));
    }
    Ok((name.to_string(), t))
}

/// Appends the values of a tensor from [`f32_tensor`] to `out`; refuses NaN
/// and infinity, naming the element.
fn decode_f32(
    (name, t): &(String, TensorView<'_>),
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    crate::weights::decode(name, t, out)
}

/// Tensor `name`, which must be f32 of `shape`, decoded.
fn read_f32(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
) -> std::result::Result<Vec<f32>, String> {
    let t = f32_tensor(st, name, shape)?;
    let mut out = Vec::with_capacity(t.1.data().len() / 4);
    decode_f32(&t, &mut out)?;
    Ok(out)
}
