//! The classic 2-2-2 worked example (inputs 0.05, 0.10; targets 0.01, 0.99;
//! learning rate 0.5), run for one SGD step on any [`Backend`].
//!
//! The numbers it must reproduce are in `tests/reference/worked-examples.md`,
//! section A: the widely published step-by-step backpropagation example.

use crate::backend::{Backend, Metric};
use crate::error::Result;
use crate::network::{Network, Params, Real};
use serde::Serialize;

/// The example's input.
pub const INPUT: [f64; 2] = [0.05, 0.10];
/// The example's target.
pub const TARGET: [f64; 2] = [0.01, 0.99];
/// The example's learning rate.
pub const LEARNING_RATE: f32 = 0.5;

/// The 2-2-2 network.
pub fn network() -> Network {
    // Two sizes, none zero: cannot fail.
    Network::new(&[2, 2, 2]).unwrap_or_else(|_| unreachable!())
}

/// The example's starting weights (w1..w8) and biases (0.35 hidden, 0.60 output).
pub fn params<T: Real>() -> Params<T> {
    let v: [f64; 12] = [
        0.15, 0.20, 0.25, 0.30, // hidden W (out, in): rows h1, h2
        0.35, 0.35, // hidden b
        0.40, 0.45, 0.50, 0.55, // output W: rows o1, o2
        0.60, 0.60, // output b
    ];
    let data = v
        .iter()
        .map(|&x| T::from(x).unwrap_or_else(T::nan))
        .collect();
    Params::from_vec(&network(), data).unwrap_or_else(|_| unreachable!())
}

/// Forward values of the example.
#[derive(Debug, Clone, Serialize)]
pub struct Forward {
    /// out_h1, out_h2.
    pub hidden: Vec<f64>,
    /// out_o1, out_o2.
    pub output: Vec<f64>,
}

/// Deltas of the example.
#[derive(Debug, Clone, Serialize)]
pub struct Deltas {
    /// δ_o1, δ_o2.
    pub output: Vec<f64>,
    /// δ_h1, δ_h2.
    pub hidden: Vec<f64>,
}

/// Weights `[layer][out][in]` and biases `[layer][out]`.
#[derive(Debug, Clone, Serialize)]
pub struct Tensors {
    /// `[layer][out][in]`.
    pub weights: Vec<Vec<Vec<f64>>>,
    /// `[layer][out]`.
    pub biases: Vec<Vec<f64>>,
}

/// Everything one step of the example computes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Which backend ran it.
    pub backend: String,
    /// Forward values.
    pub forward: Forward,
    /// `E_total = ½ Σ (target − out)²`.
    pub error: f64,
    /// Deltas.
    pub deltas: Deltas,
    /// `∂E/∂W`, `∂E/∂b`.
    pub gradients: Tensors,
    /// Parameters after the step.
    pub updated: Tensors,
}

fn to_f64<T: Real>(v: Vec<T>) -> Vec<f64> {
    v.into_iter()
        .map(|x| x.to_f64().unwrap_or(f64::NAN))
        .collect()
}

fn tensors<T: Real>(p: &Params<T>) -> Tensors {
    let (weights, biases) = p.nested();
    Tensors { weights, biases }
}

/// Run one SGD step of the example on `backend`, which must be built for
/// [`network`] with capacity ≥ 1, and report every intermediate value.
pub fn run<B: Backend>(backend: &mut B, name: &str) -> Result<Report> {
    let cast = |v: &[f64]| -> Vec<B::Scalar> {
        v.iter()
            .map(|&x| {
                <B::Scalar as num_traits::NumCast>::from(x).unwrap_or_else(num_traits::Float::nan)
            })
            .collect()
    };
    backend.set_params(&params())?;
    backend.set_metric(Metric::None)?;
    backend.take_totals()?;
    backend.load_batch(&cast(&INPUT), &cast(&TARGET))?;
    backend.forward()?;
    let forward = Forward {
        hidden: to_f64(backend.read_activations(1)?),
        output: to_f64(backend.read_activations(2)?),
    };
    let error = backend.take_totals()?.loss();
    backend.backward()?;
    let deltas = Deltas {
        output: to_f64(backend.read_deltas(2)?),
        hidden: to_f64(backend.read_deltas(1)?),
    };
    let gradients = tensors(&backend.read_gradients()?);
    backend.update(LEARNING_RATE)?;
    let updated = tensors(&backend.params()?);
    Ok(Report {
        backend: name.to_string(),
        forward,
        error,
        deltas,
        gradients,
        updated,
    })
}
