//! The CPU side: the reference twin of every WGSL kernel and two
//! [`Backend`](crate::backend::Backend)s built on the same state.
//!
//! | file | holds |
//! | --- | --- |
//! | `reference.rs` | the readable twins of every kernel, generic over `f32`/`f64`, in the order a step runs them (forward, loss, output delta, hidden delta, gradients, optimiser updates), then [`CpuBackend`], the reference backend that drives them |
//! | `fast.rs` | [`FastCpuBackend`]: the same maths in `f32`, matrix products by the `gemm` crate on a rayon pool, element-wise work fused; what `--backend cpu` trains with |
//! | `state.rs` | what both backends hold (network, buffers, optimiser and its state, totals) and the [`Backend`](crate::backend::Backend) methods they share |
//!
//! The GPU kernels in `shaders/` compute exactly the twins' formulas, and the
//! tests compare the two on random data; [`FastCpuBackend`] is checked
//! against [`CpuBackend`] the same way.
//!
//! ```
//! use shadertrain::backend::Backend;
//! use shadertrain::cpu::{forward_dense, CpuBackend, FastCpuBackend};
//! use shadertrain::network::{Activation, Network};
//!
//! // One twin: one sample, 2 inputs, 1 neuron: sigmoid(0.5*1 + 0.25*2 + 0) = sigmoid(1).
//! let mut a = [0.0f64];
//! forward_dense(&[1.0, 2.0], &[0.5, 0.25], &[0.0], &mut a, 1, 2, 1, Activation::Sigmoid);
//! assert!((a[0] - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-15);
//!
//! // The two backends take the same step on the same batch.
//! let net = Network::parse("2,2,2").unwrap();
//! let mut reference = CpuBackend::<f64>::new(&net, 1).unwrap();
//! let mut fast = FastCpuBackend::new(&net, 1, 1).unwrap();
//! reference.set_params(&net.init(7)).unwrap();
//! fast.set_params(&net.init(7)).unwrap();
//! reference.load_batch(&[0.05, 0.10], &[0.01, 0.99]).unwrap();
//! fast.load_batch(&[0.05, 0.10], &[0.01, 0.99]).unwrap();
//! reference.step(0.5).unwrap();
//! fast.step(0.5).unwrap();
//! let (r, f) = (reference.take_totals().unwrap(), fast.take_totals().unwrap());
//! assert!((r.loss() - f.loss()).abs() < 1e-6);
//! ```

mod fast;
mod reference;
mod state;

pub use fast::{FastCpuBackend, MAX_THREADS};
pub use reference::{
    activate, activation_derivative, adam_update, clip_gradients, delta_hidden, delta_output,
    delta_output_loss, dropout_apply, forward_dense, forward_output_loss, grad_norm, gradient_bias,
    gradient_dense, gradient_sgd, gradient_weights, hash32, loss_reduce, loss_term,
    momentum_update, sample_loss, score, sgd_update, sigmoid, softmax_forward, CpuBackend,
    DropoutKey,
};
