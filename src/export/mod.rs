//! A checkpoint as other tools read it: an ONNX model ([`onnx`]) or a
//! PyTorch `nn.Sequential`'s weights plus the Python that builds it
//! ([`torch`]).
//!
//! Both start from [`dense_layers`]: each layer's weights `(out, in)`
//! row-major, bias and activation, with the checkpoint's input
//! standardisation folded into the first layer so the exported model takes
//! raw inputs. With `x̂ = (x − mean) / std` (population std, as training used),
//! `W·x̂ + b = W'·x + b'` for
//!
//! ```text
//! W'[o][i] = W[o][i] / std[i]
//! b'[o]    = b[o] − Σ_i W'[o][i] · mean[i]
//! ```
//!
//! computed in f64 and stored in f32. A model without standardisation is
//! exported with its weights as they are.
//!
//! ```
//! use shadertrain::checkpoint::Checkpoint;
//! use shadertrain::export;
//! # fn demo(ckpt: &Checkpoint) -> shadertrain::Result<()> {
//! let onnx: Vec<u8> = export::onnx::to_onnx(ckpt)?;
//! let torch = export::torch::to_torch(ckpt, "model.torch.safetensors")?;
//! println!("{}", torch.python);
//! # Ok(())
//! # }
//! ```

pub mod onnx;
pub mod torch;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::network::Activation;

/// One dense layer as exported: `A = act(x·Wᵀ + b)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLayer {
    /// Inputs to the layer.
    pub n_in: usize,
    /// Outputs of the layer.
    pub n_out: usize,
    /// `(n_out, n_in)` row-major.
    pub weight: Vec<f32>,
    /// `(n_out)`.
    pub bias: Vec<f32>,
    /// Its non-linearity (softmax: over the last axis, output layer only).
    pub act: Activation,
}

/// The checkpoint's layers with its standardisation, if any, folded into the
/// first (see the module docs). An [`Error::Invalid`] when a folded value is
/// not finite in f32 (a tiny `std` under a large weight).
pub fn dense_layers(ckpt: &Checkpoint) -> Result<Vec<DenseLayer>> {
    let net = ckpt.params.network();
    let mut layers: Vec<DenseLayer> = net
        .layers()
        .iter()
        .enumerate()
        .map(|(l, ly)| DenseLayer {
            n_in: ly.n_in,
            n_out: ly.n_out,
            weight: ckpt.params.weights(l).to_vec(),
            bias: ckpt.params.bias(l).to_vec(),
            act: ly.act,
        })
        .collect();
    if let (Some(z), Some(first)) = (&ckpt.standardizer, layers.first_mut()) {
        fold(first, &z.mean, &z.std)?;
    }
    Ok(layers)
}

/// `W' = W / std` per input column, `b' = b − W'·mean`.
fn fold(ly: &mut DenseLayer, mean: &[f32], std: &[f32]) -> Result<()> {
    let n_in = ly.n_in;
    if mean.len() != n_in || std.len() != n_in {
        return Err(Error::Shape(format!(
            "standardisation of {} columns for a first layer of {n_in} inputs",
            mean.len()
        )));
    }
    for (o, (row, b)) in ly
        .weight
        .chunks_exact_mut(n_in)
        .zip(&mut ly.bias)
        .enumerate()
    {
        let mut shift = 0.0f64;
        for (i, w) in row.iter_mut().enumerate() {
            let folded = *w as f64 / std[i] as f64;
            shift += folded * mean[i] as f64;
            *w = finite(folded, || format!("weight ({o}, {i})"))?;
        }
        *b = finite(*b as f64 - shift, || format!("bias {o}"))?;
    }
    Ok(())
}

/// `v` in f32, or why it cannot be exported.
fn finite(v: f64, what: impl FnOnce() -> String) -> Result<f32> {
    let f = v as f32;
    if f.is_finite() {
        Ok(f)
    } else {
        Err(Error::Invalid(format!(
            "the input standardisation cannot be folded into the first layer: its {} becomes {v:e}, beyond f32",
            what()
        )))
    }
}
