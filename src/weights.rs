//! Weights in: a network's starting parameters from a safetensors file made
//! elsewhere. Three kinds of file load:
//! - a shadertrain checkpoint (`layers.{l}.weight`, `layers.{l}.bias`);
//! - its torch export, or any PyTorch `nn.Sequential` state dict saved with
//!   safetensors (`0.weight`, `0.bias`, `2.weight`, …: activations take indices
//!   but hold no tensors);
//! - a `ModuleList` or a module holding one (`net.0.weight`, `layers.3.bias`).
//!
//! Every 2-D `*.weight` tensor is a linear layer, `(out, in)` as PyTorch
//! stores it; its bias is the `*.bias` beside it. Layers are taken in the
//! order of the numbers in their names (`10.weight` after `2.weight`), and
//! their count, shapes and values are checked against the network before any
//! is used. Other tensors (`normalize.*`, `optimizer.state`) are ignored.
//!
//! ```
//! use shadertrain::{network::Network, weights};
//! let net = Network::parse("2,3,1").unwrap();
//! let params = net.init(1);
//! // A PyTorch-style file: Sequential(Linear(2, 3), Sigmoid(), Linear(3, 1)).
//! let t = |v: &[f32], shape: Vec<usize>| (v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), shape);
//! let tensors = [
//!     ("0.weight", t(params.weights(0), vec![3, 2])),
//!     ("0.bias", t(params.bias(0), vec![3])),
//!     ("2.weight", t(params.weights(1), vec![1, 3])),
//!     ("2.bias", t(params.bias(1), vec![1])),
//! ];
//! let views: Vec<_> = tensors.iter().map(|(n, (b, s))| {
//!     (n.to_string(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
//! }).collect();
//! let bytes = safetensors::serialize(views, None).unwrap();
//! assert_eq!(weights::from_bytes(&bytes, &net).unwrap(), params);
//! ```

use crate::error::{one_line, quote, Error, Result};
use crate::network::{Network, Params};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::cmp::Ordering;
use std::path::Path;

/// The parameters of `net` from the safetensors file at `path`.
pub fn load(path: &Path, net: &Network) -> Result<Params<f32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    from_bytes(&bytes, net).map_err(|msg| Error::Data {
        path: path.display().to_string(),
        msg,
    })
}

/// [`load`] from memory; the error is the reason alone, one line.
pub fn from_bytes(bytes: &[u8], net: &Network) -> std::result::Result<Params<f32>, String> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| one_line(&format!("not a safetensors file ({e})"), 300))?;
    let mut layers: Vec<(&str, TensorView<'_>)> = Vec::new();
    for (name, t) in st.iter() {
        let Some(prefix) = name
            .strip_suffix(".weight")
            .or((name == "weight").then_some(""))
        else {
            continue;
        };
        if t.shape().len() != 2 {
            return Err(format!(
                "tensor '{}' has {} dimensions: not a linear layer's weight (only linear layers load)",
                quote(name),
                t.shape().len()
            ));
        }
        layers.push((prefix, t));
    }
    layers.sort_by(|a, b| natural(a.0, b.0));
    let want = net.layers().len();
    if layers.len() != want {
        let names: Vec<String> = layers.iter().map(|(p, _)| weight_name(p)).collect();
        return Err(format!(
            "holds {} linear layers ({}), but {} has {want}",
            layers.len(),
            quote(&names.join(", ")),
            net.describe()
        ));
    }
    let mut data = Vec::with_capacity(net.param_count());
    for (l, ((prefix, w), ly)) in layers.iter().zip(net.layers()).enumerate() {
        let name = weight_name(prefix);
        let need = [ly.n_out, ly.n_in];
        if w.shape() != need {
            return Err(format!(
                "'{}' has shape {:?}, but layer {} of {} needs {need:?} (out, in)",
                quote(&name),
                w.shape(),
                l + 1,
                net.describe()
            ));
        }
        decode(&name, w, &mut data)?;
        let bias = if prefix.is_empty() {
            "bias".to_string()
        } else {
            format!("{prefix}.bias")
        };
        let b = st.tensor(&bias).map_err(|_| {
            format!(
                "'{}' has no bias '{}' (every layer here has one)",
                quote(&name),
                quote(&bias)
            )
        })?;
        if b.shape() != [ly.n_out] {
            return Err(format!(
                "'{}' has shape {:?}, but layer {} of {} needs [{}]",
                quote(&bias),
                b.shape(),
                l + 1,
                net.describe(),
                ly.n_out
            ));
        }
        decode(&bias, &b, &mut data)?;
    }
    Params::from_vec(net, data).map_err(|e| e.to_string())
}

fn weight_name(prefix: &str) -> String {
    if prefix.is_empty() {
        "weight".into()
    } else {
        format!("{prefix}.weight")
    }
}

/// Compares dotted names segment by segment, numbers as numbers.
fn natural(a: &str, b: &str) -> Ordering {
    let key = |s: &str| -> Vec<(u8, u64, String)> {
        s.split('.')
            .map(|seg| match seg.parse::<u64>() {
                Ok(n) => (0, n, String::new()),
                Err(_) => (1, 0, seg.to_string()),
            })
            .collect()
    };
    key(a).cmp(&key(b))
}

/// Appends tensor `name`'s values as f32 (from F32, F64, F16 or BF16);
/// refuses other types and non-finite values, naming the element.
pub(crate) fn decode(
    name: &str,
    t: &TensorView<'_>,
    out: &mut Vec<f32>,
) -> std::result::Result<(), String> {
    let start = out.len();
    let bytes = t.data();
    match t.dtype() {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        Dtype::F64 => {
            out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        Dtype::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        other => {
            return Err(format!(
                "tensor '{}' is {other:?}; weights load from F32, F64, F16 or BF16",
                quote(name)
            ))
        }
    }
    if let Some(i) = out[start..].iter().position(|v| !v.is_finite()) {
        return Err(format!(
            "{}[{i}] is {}, a non-finite value",
            quote(name),
            out[start + i]
        ));
    }
    Ok(())
}
