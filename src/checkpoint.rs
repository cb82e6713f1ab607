//! Checkpoints in the safetensors format: one f32 tensor per weight matrix and
//! bias (`layers.{l}.weight (out, in)`, `layers.{l}.bias (out)`), the input
//! standardisation if any (`normalize.mean`, `normalize.std`), and the
//! architecture and training state in the string metadata, so a run can be
//! resumed exactly and a model evaluated without its training command.
//!
//! Files are written atomically: a temporary file in the same directory,
//! flushed and fsynced, then renamed over the target, so a crash leaves either
//! the old checkpoint or the new one, never half of one.

use crate::backend::Backend;
use crate::data::Standardizer;
use crate::error::{one_line, quote};
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::network::{Network, Params};
use crate::optim::{check_state_len, Optimizer, OptimizerKind};
use crate::train::{EpochStats, Schedule};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// `format` in the metadata.
pub const FORMAT: &str = "shadertrain";
/// The format version this build writes; newer files are refused.
pub const VERSION: u32 = 1;

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
    /// Name of the training set, for a warning on resume.
    pub data: String,
    /// Samples in the training set.
    pub samples: usize,
    /// What every epoch so far measured, so a resumed run's metrics and
    /// plots cover the whole run.
    pub history: Vec<EpochStats>,
    /// The optimiser and its hyper-parameters.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
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

/// `(name, shape, little-endian f32 bytes)` tensors and string metadata as
/// a safetensors file; `what` names it in errors.
pub(crate) fn f32_safetensors(
    tensors: &[(String, Vec<usize>, Vec<u8>)],
    meta: HashMap<String, String>,
    what: &str,
) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid(format!("cannot build {what} tensors: {e}")))?;
    safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Invalid(format!("cannot serialise {what}: {e}")))
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

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let net = self.params.network();
        // (name, shape, little-endian bytes)
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (l, ly) in net.layers().iter().enumerate() {
            tensors.push((
                format!("layers.{l}.weight"),
                vec![ly.n_out, ly.n_in],
                le_bytes(self.params.weights(l)),
            ));
            tensors.push((
                format!("layers.{l}.bias"),
                vec![ly.n_out],
                le_bytes(self.params.bias(l)),
            ));
        }
        if !self.optimizer_state.moments.is_empty() {
            tensors.push((
                "optimizer.state".into(),
                vec![self.optimizer_state.moments.len()],
                le_bytes(&self.optimizer_state.moments),
            ));
        }
        if let Some(z) = &self.standardizer {
            tensors.push((
                "normalize.mean".into(),
                vec![z.mean.len()],
                le_bytes(&z.mean),
            ));
            tensors.push(("normalize.std".into(), vec![z.std.len()], le_bytes(&z.std)));
        }
        let s = &self.state;
        let meta: HashMap<String, String> = [
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
            (
                "history",
                serde_json::to_string(&s.history).unwrap_or_else(|_| "[]".into()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        f32_safetensors(&tensors, meta, "checkpoint")
    }

    /// Writes the checkpoint to `path` atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads and checks a checkpoint: a safetensors file written by this
    /// format at a version this build understands, with every tensor of the
    /// architecture it declares.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes).map_err(|msg| Error::Data {
            path: path.display().to_string(),
            msg,
        })
    }

    /// [`Checkpoint::load`] from memory; the error is the reason alone, one line.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
        // Messages from elsewhere (safetensors, serde_json, the parsers) may
        // quote metadata text, which may hold newlines.
        Self::parse_bytes(bytes).map_err(|e| one_line(&e, 500))
    }

    fn parse_bytes(bytes: &[u8]) -> std::result::Result<Checkpoint, String> {
        let (_, header) = SafeTensors::read_metadata(bytes)
            .map_err(|e| format!("not a safetensors checkpoint ({e})"))?;
        let st = SafeTensors::deserialize(bytes)
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
        let net = Network::parse(&get("layers")?).map_err(|e| format!("metadata layers: {e}"))?;
        // Every tensor is found and its shape checked before anything is
        // allocated for it: the metadata may declare billions of parameters,
        // but tensors that are in the file are no larger than the file.
        let mut tensors = Vec::with_capacity(2 * net.layers().len());
        for (l, ly) in net.layers().iter().enumerate() {
            let weight = format!("layers.{l}.weight");
            tensors.push(f32_tensor(&st, &weight, &[ly.n_out, ly.n_in])?);
            let bias = format!("layers.{l}.bias");
            tensors.push(f32_tensor(&st, &bias, &[ly.n_out])?);
        }
        let mut data = Vec::with_capacity(net.param_count());
        for t in &tensors {
            decode_f32(t, &mut data)?;
        }
        let params = Params::from_vec(&net, data).map_err(|e| e.to_string())?;
        let standardizer = match st.tensor("normalize.mean") {
            Ok(_) => {
                let n = net.inputs();
                Some(Standardizer {
                    mean: read_f32(&st, "normalize.mean", &[n])?,
                    std: read_f32(&st, "normalize.std", &[n])?,
                })
            }
            Err(_) => None,
        };
        let optimizer = Optimizer {
            kind: OptimizerKind::parse(&get("optimizer")?).map_err(|e| format!("metadata: {e}"))?,
            momentum: parse(&get("momentum")?, "momentum")?,
            beta1: parse(&get("beta1")?, "beta1")?,
            beta2: parse(&get("beta2")?, "beta2")?,
            eps: parse(&get("eps")?, "eps")?,
            weight_decay: parse(&get("weight_decay")?, "weight_decay")?,
        };
        optimizer
            .validate()
            .map_err(|e| format!("metadata optimizer: {e}"))?;
        let len = optimizer.state_len(net.param_count());
        let moments = if len > 0 {
            read_f32(&st, "optimizer.state", &[len])?
        } else {
            Vec::new()
        };
        check_state_len(&optimizer, net.param_count(), moments.len()).map_err(|e| e.to_string())?;
        let optimizer_state = OptimizerState {
            t: parse(&get("optimizer_t")?, "optimizer_t")?,
            moments,
        };
        let schedule =
            Schedule::parse(&get("lr_schedule")?).map_err(|e| format!("metadata: {e}"))?;
        let state = TrainState {
            epoch: parse(&get("epoch")?, "epoch")?,
            seed: parse(&get("seed")?, "seed")?,
            batch: parse(&get("batch")?, "batch")?,
            lr: parse(&get("lr")?, "lr")?,
            data: get("data")?,
            samples: parse(&get("samples")?, "samples")?,
            history: match meta.get("history") {
                Some(h) => serde_json::from_str(h)
                    .map_err(|e| format!("metadata 'history' is not valid: {e}"))?,
                None => Vec::new(),
            },
            optimizer,
            schedule,
        };
        Ok(Checkpoint {
            params,
            state,
            standardizer,
            optimizer_state,
        })
    }
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
/// and infinity.
fn decode_f32(
    (name, t): &(String, TensorView<'_>),
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    let start = out.len();
    out.extend(
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
    if let Some(i) = out[start..].iter().position(|v| !v.is_finite()) {
        return Err(format!("tensor '{name}' holds a non-finite value at {i}"));
    }
    Ok(())
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
