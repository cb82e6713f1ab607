//! The network description and its parameters.
//!
//! A [`Network`] is a list of layer sizes (`[2, 2, 2]`, `[784, 256, 256, 10]`),
//! sigmoid on every layer. [`Params`] holds every weight and bias in one flat
//! buffer shared by both backends, laid out layer after layer as
//! `W0 (out, in) row-major, b0 (out), W1, b1, ...`, so the GPU uploads it with
//! `bytemuck` and a read-back compares like with like.
//!
//! ```
//! use shadertrain::network::Network;
//! let net = Network::parse("2,3,1").unwrap();
//! assert_eq!(net.param_count(), 2 * 3 + 3 + 3 * 1 + 1);
//! let p = net.init::<f32>(42);
//! assert_eq!(p.weights(0).len(), 6);
//! ```

use crate::{Error, Result};
use num_traits::Float;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A float type the CPU backend can compute in: `f32` for training, `f64` for the reference.
pub trait Real:
    Float + num_traits::NumCast + bytemuck::Pod + std::fmt::Debug + Send + Sync + 'static
{
}
impl Real for f32 {}
impl Real for f64 {}

/// The shape of one dense layer and where its parameters live in the flat buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layer {
    /// Inputs to the layer (the previous layer's width).
    pub n_in: usize,
    /// Neurons in the layer.
    pub n_out: usize,
    /// Offset of `W (n_out, n_in)` in the flat parameter buffer.
    pub w_off: usize,
    /// Offset of `b (n_out)` in the flat parameter buffer.
    pub b_off: usize,
}

/// A fully connected sigmoid network, described by its layer sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    sizes: Vec<usize>,
    layers: Vec<Layer>,
}

impl Network {
    /// A network from layer sizes, inputs first. Needs at least two sizes, none zero.
    pub fn new(sizes: &[usize]) -> Result<Self> {
        if sizes.len() < 2 {
            return Err(Error::Invalid(format!(
                "--layers needs at least two sizes (inputs and outputs), got {}",
                sizes.len()
            )));
        }
        if let Some(i) = sizes.iter().position(|&s| s == 0) {
            return Err(Error::Invalid(format!(
                "--layers: size {} (position {}) is 0; every layer needs at least one neuron",
                sizes[i],
                i + 1
            )));
        }
        let mut layers = Vec::with_capacity(sizes.len() - 1);
        let mut off = 0usize;
        for w in sizes.windows(2) {
            let (n_in, n_out) = (w[0], w[1]);
            let w_off = off;
            let b_off = w_off + n_in * n_out;
            off = b_off + n_out;
            layers.push(Layer {
                n_in,
                n_out,
                w_off,
                b_off,
            });
        }
        if off > u32::MAX as usize {
            return Err(Error::Invalid(format!(
                "--layers: {off} parameters is more than the 2^32 a GPU buffer can index"
            )));
        }
        Ok(Network {
            sizes: sizes.to_vec(),
            layers,
        })
    }

    /// Parse `"784,256,10"` (spaces allowed) into a network.
    pub fn parse(spec: &str) -> Result<Self> {
        let sizes = spec
            .split(',')
            .map(|s| {
                let s = s.trim();
                s.parse::<usize>().map_err(|_| {
                    Error::Invalid(format!(
                        "--layers: '{s}' is not a layer size (expected e.g. 2,32,32,2)"
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(&sizes)
    }

    /// Layer sizes, inputs first.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// Width of the input.
    pub fn inputs(&self) -> usize {
        self.sizes[0]
    }

    /// Width of the output layer.
    pub fn outputs(&self) -> usize {
        self.sizes[self.sizes.len() - 1]
    }

    /// Dense layers (one fewer than sizes).
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Total weights and biases.
    pub fn param_count(&self) -> usize {
        self.layers.last().map_or(0, |l| l.b_off + l.n_out)
    }

    /// The architecture as `--layers` writes it, `"784,128,10"`, which
    /// [`Network::parse`] reads back (checkpoints store this).
    pub fn spec(&self) -> String {
        self.join(",")
    }

    /// `"2-32-32-2"`, for messages and metrics.
    pub fn describe(&self) -> String {
        self.join("-")
    }

    fn join(&self, sep: &str) -> String {
        self.sizes
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(sep)
    }

    /// Seeded Xavier (Glorot) uniform weights, `U(-r, r)` with `r = sqrt(6 / (in + out))`,
    /// which keeps sigmoid layers out of saturation; biases start at zero.
    /// The same seed gives the same parameters on every machine (ChaCha8).
    pub fn init<T: Real>(&self, seed: u64) -> Params<T> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params::zeros(self);
        for l in &self.layers {
            let r = (6.0 / (l.n_in + l.n_out) as f64).sqrt();
            for w in &mut p.data[l.w_off..l.b_off] {
                // Draw in f32 so f32 and f64 parameters start from the same values.
                let v: f32 = rng.random_range(-r as f32..r as f32);
                *w = T::from(v).unwrap_or_else(T::zero);
            }
        }
        p
    }
}

/// Every weight and bias of a [`Network`] in one flat buffer (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Params<T = f32> {
    net: Network,
    /// `W0 (out, in), b0 (out), W1, b1, ...`
    pub data: Vec<T>,
}

impl<T: Real> Params<T> {
    /// All zeros.
    pub fn zeros(net: &Network) -> Self {
        Params {
            net: net.clone(),
            data: vec![T::zero(); net.param_count()],
        }
    }

    /// Wrap a flat buffer; its length must be the network's parameter count.
    pub fn from_vec(net: &Network, data: Vec<T>) -> Result<Self> {
        if data.len() != net.param_count() {
            return Err(Error::Shape(format!(
                "network {} has {} parameters, got {}",
                net.describe(),
                net.param_count(),
                data.len()
            )));
        }
        Ok(Params {
            net: net.clone(),
            data,
        })
    }

    /// The network these parameters belong to.
    pub fn network(&self) -> &Network {
        &self.net
    }

    /// Layer `l`'s weights, `(n_out, n_in)` row-major.
    pub fn weights(&self, l: usize) -> &[T] {
        let ly = self.net.layers[l];
        &self.data[ly.w_off..ly.b_off]
    }

    /// Layer `l`'s weights, mutable.
    pub fn weights_mut(&mut self, l: usize) -> &mut [T] {
        let ly = self.net.layers[l];
        &mut self.data[ly.w_off..ly.b_off]
    }

    /// Layer `l`'s biases, `(n_out)`.
    pub fn bias(&self, l: usize) -> &[T] {
        let ly = self.net.layers[l];
        &self.data[ly.b_off..ly.b_off + ly.n_out]
    }

    /// Layer `l`'s biases, mutable.
    pub fn bias_mut(&mut self, l: usize) -> &mut [T] {
        let ly = self.net.layers[l];
        &mut self.data[ly.b_off..ly.b_off + ly.n_out]
    }

    /// The same parameters in another float type.
    pub fn cast<U: Real>(&self) -> Params<U> {
        Params {
            net: self.net.clone(),
            data: self
                .data
                .iter()
                .map(|&v| U::from(v).unwrap_or_else(U::nan))
                .collect(),
        }
    }

    /// Weights as `[layer][out][in]` and biases as `[layer][out]`, in f64, for printing and JSON.
    pub fn nested(&self) -> (Vec<Vec<Vec<f64>>>, Vec<Vec<f64>>) {
        let f = |v: &T| v.to_f64().unwrap_or(f64::NAN);
        let mut ws = Vec::new();
        let mut bs = Vec::new();
        for (l, ly) in self.net.layers.iter().enumerate() {
            ws.push(
                self.weights(l)
                    .chunks(ly.n_in)
                    .map(|row| row.iter().map(f).collect())
                    .collect(),
            );
            bs.push(self.bias(l).iter().map(f).collect());
        }
        (ws, bs)
    }

    /// True if every parameter is finite.
    pub fn all_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }
}
