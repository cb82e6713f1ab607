//! PyTorch export: a weights-only safetensors file keyed as an
//! `nn.Sequential`'s `state_dict`, and the Python that builds that
//! Sequential and loads the file with `load_state_dict(strict=True)`.
//!
//! Each layer is an `nn.Linear` at the next index, followed, unless it is
//! linear, by its activation module at the index after (`nn.Sigmoid`,
//! `nn.ReLU`, `nn.Tanh`, `nn.Softmax(dim=-1)`): `2,16:relu,8:linear,3:softmax`
//! gives `0.weight`, `0.bias` (Linear), `1` (ReLU), `2.*` (Linear), `3.*`
//! (Linear), `4` (Softmax). A softmax output keeps its `nn.Softmax`, so the
//! Sequential's outputs are the probabilities the library predicts; the
//! snippet says how to drop it for logits. Weights are `(out, in)` as
//! `nn.Linear` stores them, f32, with the standardisation folded into the
//! first Linear ([`super::dense_layers`]).

use super::dense_layers;
use crate::checkpoint::{f32_safetensors, le_bytes, Checkpoint};
use crate::error::Result;
use crate::network::Activation;
use std::collections::HashMap;

/// What [`to_torch`] makes.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchExport {
    /// The safetensors file: `{i}.weight (out, in)` and `{i}.bias (out)` for
    /// the Linear at Sequential index `i`, f32; metadata `format: pt`.
    pub weights: Vec<u8>,
    /// The Sequential's modules in order, as Python (`nn.Linear(2, 16)`).
    pub modules: Vec<String>,
    /// Python that builds the Sequential and loads `weights` from the file
    /// named when it was made.
    pub python: String,
}

/// The checkpoint as a PyTorch Sequential's weights and the Python that
/// builds it; the snippet loads the weights from `weights_file`.
pub fn to_torch(ckpt: &Checkpoint, weights_file: &str) -> Result<TorchExport> {
    let layers = dense_layers(ckpt)?;
    let mut modules = Vec::new();
    // (key, shape, bytes)
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for ly in &layers {
        let i = modules.len();
        tensors.push((
            format!("{i}.weight"),
            vec![ly.n_out, ly.n_in],
            le_bytes(&ly.weight),
        ));
        tensors.push((format!("{i}.bias"), vec![ly.n_out], le_bytes(&ly.bias)));
        modules.push(format!("nn.Linear({}, {})", ly.n_in, ly.n_out));
        if let Some(m) = module(ly.act) {
            modules.push(m.to_string());
        }
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let weights = f32_safetensors(&tensors, meta, "PyTorch export")?;
    let python = snippet(ckpt, &modules, weights_file);
    Ok(TorchExport {
        weights,
        modules,
        python,
    })
}

/// The module after a layer's Linear, if any.
fn module(act: Activation) -> Option<&'static str> {
    match act {
        Activation::Sigmoid => Some("nn.Sigmoid()"),
        Activation::Relu => Some("nn.ReLU()"),
        Activation::Tanh => Some("nn.Tanh()"),
        Activation::Linear => None,
        Activation::Softmax => Some("nn.Softmax(dim=-1)"),
    }
}

fn snippet(ckpt: &Checkpoint, modules: &[String], weights_file: &str) -> String {
    let net = ckpt.params.network();
    let mut py = format!(
        "# shadertrain model {} as a PyTorch nn.Sequential.\n",
        net.spec()
    );
    if ckpt.standardizer.is_some() {
        py += "# It takes raw inputs: the input standardisation ((x - mean) / std) is folded into module 0.\n";
    }
    if net.output_activation() == Activation::Softmax {
        py += "# It ends in nn.Softmax(dim=-1), so it outputs probabilities as shadertrain's predict does;\n\
               # model[:-1] gives the logits (for nn.CrossEntropyLoss).\n";
    }
    py += "import torch\nfrom torch import nn\nfrom safetensors.torch import load_file\n\nmodel = nn.Sequential(\n";
    for (i, m) in modules.iter().enumerate() {
        py += &format!("    {m},  # {i}\n");
    }
    py += &format!(
        ")\nmodel.load_state_dict(load_file(\"{}\"), strict=True)\nmodel.eval()\n",
        py_str(weights_file)
    );
    py
}

/// `s` escaped to sit inside a double-quoted Python string.
fn py_str(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            '\\' => out += "\\\\",
            '"' => out += "\\\"",
            c if c.is_control() => out += &format!("\\u{:04x}", c as u32),
            c => out.push(c),
        }
    }
    out
}
