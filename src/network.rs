//! The network description and its parameters.
//!
//! A [`Network`] is a list of layer sizes (`[2, 2, 2]`, `[784, 256, 256, 10]`)
//! and an [`Activation`] per dense layer, sigmoid unless `--layers` says
//! otherwise (`784,128:relu,10:softmax`). The [`Loss`] follows from the output
//! activation: softmax trains with cross-entropy, everything else with MSE.
//!
//! [`Params`] holds every weight and bias in one flat buffer shared by both
//! backends, laid out layer after layer as `W0 (out, in) row-major, b0 (out),
//! W1, b1, ...`; the GPU backend keeps its own padded copy
//! (`gpu::layout`) and maps to and from this layout on every upload and
//! read-back, so a read-back compares like with like.
//!
//! ```
//! use shadertrain::network::{Activation, Loss, Network};
//! let net = Network::parse("2,3,1").unwrap();
//! assert_eq!(net.param_count(), 2 * 3 + 3 + 3 * 1 + 1);
//! let p = net.init::<f32>(42);
//! assert_eq!(p.weights(0).len(), 6);
//!
//! let mnist = Network::parse("784,128:relu,10:softmax").unwrap();
//! assert_eq!(mnist.activation(0), Activation::Relu);
//! assert_eq!(mnist.loss(), Loss::CrossEntropy);
//! assert_eq!(Network::parse(&mnist.spec()).unwrap(), mnist);
//! ```

use crate::error::{quote, Error, Result, Setting};
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

/// The non-linearity of a dense layer, `A = f(Z)`. The number is what the
/// shaders see in `Dims.act` (the `ACT_*` constants of `shaders/common.wgsl`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Activation {
    /// `σ(z) = 1 / (1 + e^−z)`, `f' = A(1 − A)`.
    #[default]
    Sigmoid = 0,
    /// `max(0, z)`, `f' = [A > 0]`.
    Relu = 1,
    /// `tanh z`, `f' = 1 − A²`.
    Tanh = 2,
    /// `z`, `f' = 1`.
    Linear = 3,
    /// Row-wise `e^z_k / Σ_j e^z_j` (max-subtracted); output layer only, of at
    /// least 2 outputs, and trained with [`Loss::CrossEntropy`], whose delta
    /// `A − Y` needs no `f'`.
    Softmax = 4,
}

impl Activation {
    /// Every activation, in `Dims.act` order.
    pub const ALL: [Activation; 5] = [
        Activation::Sigmoid,
        Activation::Relu,
        Activation::Tanh,
        Activation::Linear,
        Activation::Softmax,
    ];

    /// The name `--layers` uses: `sigmoid`, `relu`, `tanh`, `linear`, `softmax`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Sigmoid => "sigmoid",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Linear => "linear",
            Activation::Softmax => "softmax",
        }
    }

    /// The activation called `name` (see [`Activation::name`]).
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| unknown_activation(name, name))
    }
}

/// The error for an activation `name` that does not exist, in layers `spec`.
fn unknown_activation(spec: &str, name: &str) -> Error {
    Error::setting(
        Setting::Layers,
        spec,
        format!(
            "unknown activation '{}' (expected sigmoid, relu, tanh, linear or softmax)",
            quote(name)
        ),
    )
}

/// `sizes` as a layers spec (`2,32,2`), for messages.
fn spec_of(sizes: &[usize]) -> String {
    sizes
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What training minimises, per sample, summed into [`crate::backend::Totals`].
/// A network's loss follows from its output activation ([`Network::loss`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Loss {
    /// `½ Σ_k (a_k − y_k)²`; output delta `(A − Y) ⊙ f'`.
    #[default]
    Mse = 0,
    /// `−Σ_k y_k ln max(a_k, CE_CLAMP)` after a softmax; output delta `A − Y`
    /// (for target rows that sum to 1). The clamp keeps the reported loss
    /// finite where an output underflows to 0; it does not touch the gradient.
    CrossEntropy = 1,
}

impl Loss {
    /// `mse` or `cross-entropy`, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Loss::Mse => "mse",
            Loss::CrossEntropy => "cross-entropy",
        }
    }
}

/// The smallest output cross-entropy takes the log of (`CE_CLAMP` in
/// `shaders/reduce.wgsl`): a sample's loss is at most `−ln 1e-12 ≈ 27.6` per target unit.
pub const CE_CLAMP: f64 = 1e-12;

/// The shape of one dense layer and where its parameters live in the flat buffer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Layer {
    /// Inputs to the layer (the previous layer's width).
    pub n_in: usize,
    /// Neurons in the layer.
    pub n_out: usize,
    /// Offset of `W (n_out, n_in)` in the flat parameter buffer.
    pub w_off: usize,
    /// Offset of `b (n_out)` in the flat parameter buffer.
    pub b_off: usize,
    /// Its non-linearity.
    pub act: Activation,
    /// Dropout probability of its outputs while training, in `[0, 1)`; 0
    /// for none (see [`crate::cpu::dropout_apply`]). Hidden layers only
    /// ([`Network::with_dropout`]).
    pub dropout: f32,
}

impl Layer {
    /// Whether a training step keeps this layer's outputs from before the
    /// dropout mask: its activation's derivative is taken from the output
    /// (`A(1 − A)`, `1 − A²`), which the mask's rescaling would change. A
    /// relu or linear layer's derivative from the dropped output is the
    /// derivative wherever the unit is kept, and the mask zeroes the rest.
    pub fn keeps_undropped(&self) -> bool {
        self.dropout > 0.0 && !matches!(self.act, Activation::Relu | Activation::Linear)
    }
}

// The dropout probability is validated finite, so equality is total.
impl Eq for Layer {}

/// A fully connected network: layer sizes and each dense layer's activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    sizes: Vec<usize>,
    layers: Vec<Layer>,
}

impl Network {
    /// A sigmoid network from layer sizes, inputs first. Needs at least two sizes, none zero.
    pub fn new(sizes: &[usize]) -> Result<Self> {
        let acts = vec![Activation::Sigmoid; sizes.len().saturating_sub(1)];
        Self::with_activations(sizes, &acts)
    }

    /// A network from layer sizes, inputs first, and one activation per dense
    /// layer (`sizes.len() − 1` of them); softmax only on the output layer.
    pub fn with_activations(sizes: &[usize], acts: &[Activation]) -> Result<Self> {
        if sizes.len() < 2 {
            return Err(Error::setting(
                Setting::Layers,
                spec_of(sizes),
                format!(
                    "needs at least two sizes (inputs and outputs), got {}",
                    sizes.len()
                ),
            ));
        }
        if let Some(i) = sizes.iter().position(|&s| s == 0) {
            return Err(Error::setting(
                Setting::Layers,
                spec_of(sizes),
                format!(
                    "size {} (position {}) is 0; every layer needs at least one neuron",
                    sizes[i],
                    i + 1
                ),
            ));
        }
        if acts.len() != sizes.len() - 1 {
            return Err(Error::setting(
                Setting::Layers,
                spec_of(sizes),
                format!(
                    "{} sizes make {} layers, but {} activations were given",
                    sizes.len(),
                    sizes.len() - 1,
                    acts.len()
                ),
            ));
        }
        if let Some(i) = acts[..acts.len() - 1]
            .iter()
            .position(|&a| a == Activation::Softmax)
        {
            return Err(Error::setting(
                Setting::Layers,
                spec_of(sizes),
                format!(
                    "softmax on hidden layer {} (size {}); softmax is for the output layer only",
                    i + 1,
                    sizes[i + 1]
                ),
            ));
        }
        if acts[acts.len() - 1] == Activation::Softmax && sizes[sizes.len() - 1] < 2 {
            return Err(Error::setting(
                Setting::Layers,
                spec_of(sizes),
                "softmax over 1 output is always 1; it needs at least 2",
            ));
        }
        let mut layers = Vec::with_capacity(sizes.len() - 1);
        let mut off = 0usize;
        for (w, &act) in sizes.windows(2).zip(acts) {
            let (n_in, n_out) = (w[0], w[1]);
            let w_off = off;
            // Checked: sizes come from users and checkpoints, up to usize::MAX.
            let (b_off, end) = n_in
                .checked_mul(n_out)
                .and_then(|w| w.checked_add(w_off))
                .and_then(|b| Some((b, b.checked_add(n_out)?)))
                .filter(|&(_, end)| end <= u32::MAX as usize)
                .ok_or_else(|| {
                    // In u128 one layer (at most 2^128 - 2^64) cannot overflow.
                    let total = sizes.windows(2).fold(0u128, |acc, w| {
                        acc.saturating_add((w[0] as u128) * (w[1] as u128) + w[1] as u128)
                    });
                    Error::setting(
                        Setting::Layers,
                        spec_of(sizes),
                        format!("{total} parameters is more than the 2^32 a GPU buffer can index"),
                    )
                })?;
            off = end;
            layers.push(Layer {
                n_in,
                n_out,
                w_off,
                b_off,
                act,
                dropout: 0.0,
            });
        }
        Ok(Network {
            sizes: sizes.to_vec(),
            layers,
        })
    }

    /// This network with dropout probability `p[l]` on the outputs of dense
    /// layer `l` while training (one per layer; 0 for none), after any
    /// activation. Refused: a `p` outside `[0, 1)` and dropout on the output
    /// layer.
    pub fn with_dropout(mut self, p: &[f32]) -> Result<Self> {
        let spec = self.spec();
        let bad = |msg: String| Err(Error::setting(Setting::Dropout, &spec, msg));
        if p.len() != self.layers.len() {
            return bad(format!(
                "{} dropout probabilities for {} layers",
                p.len(),
                self.layers.len()
            ));
        }
        let last = self.layers.len() - 1;
        for (l, (ly, &p)) in self.layers.iter_mut().zip(p).enumerate() {
            if !(p.is_finite() && (0.0..1.0).contains(&p)) {
                return bad(format!("dropout={p} on layer {} must be in [0, 1)", l + 1));
            }
            if p > 0.0 && l == last {
                return bad(
                    "dropout on the output layer is refused; put it on a hidden layer".into(),
                );
            }
            ly.dropout = p;
        }
        Ok(self)
    }

    /// Whether any layer has dropout.
    pub fn has_dropout(&self) -> bool {
        self.layers.iter().any(|l| l.dropout > 0.0)
    }

    /// Parse `"784,256,10"` (spaces allowed) into a sigmoid network, or with
    /// activations, `"784,128:relu,64:tanh,10:softmax"`: a suffix names the
    /// activation of the layer producing that size (sigmoid without one); the
    /// input size takes none. A hidden layer may add dropout,
    /// `"784,256:relu:dropout=0.2,10:softmax"` ([`Network::with_dropout`]).
    pub fn parse(spec: &str) -> Result<Self> {
        let mut sizes = Vec::new();
        let mut acts = Vec::new();
        let mut drops = Vec::new();
        for (i, item) in spec.split(',').enumerate() {
            let item = item.trim();
            let (item, drop) = match item.split_once(":dropout=") {
                Some((rest, p)) => {
                    let p: f32 = p.trim().parse().map_err(|_| {
                        Error::setting(
                            Setting::Dropout,
                            spec,
                            format!(
                                "'dropout={}' is not a probability, e.g. dropout=0.2",
                                quote(p)
                            ),
                        )
                    })?;
                    (rest.trim(), p)
                }
                None => (item, 0.0),
            };
            if i > 0 {
                drops.push(drop);
            } else if drop != 0.0 {
                return Err(Error::setting(
                    Setting::Dropout,
                    spec,
                    "dropout on the inputs is refused; put it on a hidden layer",
                ));
            }
            let (size, act) = match item.split_once(':') {
                Some((size, act)) => (size.trim(), Some(act.trim())),
                None => (item, None),
            };
            let size = size.parse::<usize>().map_err(|_| {
                Error::setting(
                    Setting::Layers,
                    spec,
                    format!(
                        "'{}' is not a layer size (expected e.g. 2,32,32,2 or 784,128:relu,10:softmax)",
                        quote(item)
                    ),
                )
            })?;
            match (i, act) {
                (0, Some(a)) => {
                    return Err(Error::setting(
                        Setting::Layers,
                        spec,
                        format!(
                            "the input size '{}' takes no activation ('{}'); put it on the layers after",
                            quote(item),
                            quote(a)
                        ),
                    ))
                }
                (0, None) => {}
                (_, None) => acts.push(Activation::Sigmoid),
                (_, Some(a)) => {
                    acts.push(Activation::parse(a).map_err(|_| unknown_activation(spec, a))?)
                }
            }
            sizes.push(size);
        }
        if sizes.len() < 2 {
            return Self::new(&sizes);
        }
        Self::with_activations(&sizes, &acts)?.with_dropout(&drops)
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

    /// The activation of dense layer `l` (`0..layers().len()`).
    pub fn activation(&self, l: usize) -> Activation {
        self.layers[l].act
    }

    /// The output layer's activation.
    pub fn output_activation(&self) -> Activation {
        self.layers.last().map_or(Activation::Sigmoid, |l| l.act)
    }

    /// The loss this network trains with: [`Loss::CrossEntropy`] after a
    /// softmax output, [`Loss::Mse`] otherwise.
    pub fn loss(&self) -> Loss {
        match self.output_activation() {
            Activation::Softmax => Loss::CrossEntropy,
            _ => Loss::Mse,
        }
    }

    /// Total weights and biases.
    pub fn param_count(&self) -> usize {
        self.layers.last().map_or(0, |l| l.b_off + l.n_out)
    }

    /// The architecture as `--layers` writes it, `"784,128,10"` or
    /// `"784,128:relu,10:softmax"` (sigmoid layers carry no suffix), which
    /// [`Network::parse`] reads back (checkpoints store this).
    pub fn spec(&self) -> String {
        self.join(",")
    }

    /// `"2-32-32-2"`, or `"784-128:relu-10:softmax"`, for messages and metrics.
    pub fn describe(&self) -> String {
        self.join("-")
    }

    fn join(&self, sep: &str) -> String {
        let mut out = self.sizes[0].to_string();
        for l in &self.layers {
            out.push_str(sep);
            out.push_str(&l.n_out.to_string());
            if l.act != Activation::Sigmoid {
                out.push(':');
                out.push_str(l.act.name());
            }
            if l.dropout > 0.0 {
                out.push_str(":dropout=");
                out.push_str(&crate::checkpoint::shortest(l.dropout));
            }
        }
        out
    }

    /// Seeded uniform weights `U(-r, r)` fitted to each layer's activation,
    /// biases at zero: Xavier (Glorot), `r = sqrt(6 / (in + out))`, for
    /// sigmoid, tanh, linear and softmax, which keeps them out of saturation;
    /// He uniform, `r = sqrt(6 / in)` (variance `2 / in`), for relu, which
    /// zeroes half its inputs. One stream for all layers, so sigmoid networks
    /// start exactly where they always have. The same seed gives the same
    /// parameters on every machine (ChaCha8).
    pub fn init<T: Real>(&self, seed: u64) -> Params<T> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut p = Params::zeros(self);
        for l in &self.layers {
            let fan = match l.act {
                Activation::Relu => l.n_in,
                _ => l.n_in + l.n_out,
            };
            let r = (6.0 / fan as f64).sqrt();
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
