// common.wgsl — prepended by the host (src/gpu/kernels.rs) to every kernel file
// before compiling, so the uniform layout and helpers exist once.
//
// Dims mirrors `shadertrain::gpu::Dims` (16 × u32 = 64 bytes); the naga test
// checks the sizes agree. Each layer has one Dims; a kernel reads the fields
// it needs.
struct Dims {
    rows: u32,       // samples staged in the per-sample buffers
    n_in: u32,       // inputs to the layer
    n_out: u32,      // neurons in the layer
    w_off: u32,      // offset of W (n_out, n_in), rows w_ld apart, in params / grads
    b_off: u32,      // offset of b (n_out) in params / grads
    n_next: u32,     // neurons in the next layer (delta_hidden)
    w_next_off: u32, // offset of W_next (n_next, n_out), rows w_next_ld apart (delta_hidden)
    metric: u32,     // loss_reduce scoring: 0 none, 1 threshold, 2 argmax
    splits: u32,     // K slices of the tiled gradient (1: none)
    act: u32,        // this layer's activation, ACT_* below
    loss: u32,       // the network's loss, LOSS_* below
    w_ld: u32,       // floats from one row of W to the next (>= n_in)
    w_next_ld: u32,  // floats from one row of W_next to the next (>= n_out)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Activations, mirrors `shadertrain::network::Activation` (tests/shaders.rs checks).
const ACT_SIGMOID: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_TANH: u32 = 2u;
const ACT_LINEAR: u32 = 3u;
const ACT_SOFTMAX: u32 = 4u; // output layer only, with LOSS_CE
// Losses, mirrors `shadertrain::network::Loss`.
const LOSS_MSE: u32 = 0u;
const LOSS_CE: u32 = 1u;

// The update's constants, mirrors `shadertrain::gpu::OptimUniform` (32 bytes):
// written when the optimizer is set.
struct Optim {
    count: u32,    // parameters to update
    momentum: f32, // μ (momentum_update)
    beta1: f32,    // adam_update
    beta2: f32,
    eps: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Per loaded batch, mirrors `shadertrain::gpu::BatchUniform` (16 bytes).
struct Batch {
    scale: f32,      // 1 / rows of the whole loaded batch (gradient_*_tiled)
    accumulate: u32, // 1: gradient_dense_tiled adds to grads (micro-batches)
    _pad0: u32,
    _pad1: u32,
}

// Per step, mirrors `shadertrain::gpu::StepUniform` (16 bytes): written once
// by each step, before it is submitted.
struct Step {
    lr: f32,  // learning rate
    bc1: f32, // 1 − β1^t (adam_update)
    bc2: f32, // 1 − β2^t (adam_update)
    _pad0: u32,
}

// Invocations per workgroup of the element-wise kernels.
const WG: u32 = 64u;

// One-dimensional problems are dispatched as a 2-D grid of workgroups, because
// one dimension holds at most 65535 of them; this folds the grid back.
fn linear_index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

fn sigmoid(z: f32) -> f32 {
    return 1.0 / (1.0 + exp(-z));
}

// f(z) of one element (twin: cpu::activate). Softmax is row-wise: here the
// identity, then softmax_forward (softmax.wgsl) finishes the row.
// tanh as sign(z)·(1 − e^−2|z|)/(1 + e^−2|z|), which cannot overflow.
fn activate(act: u32, z: f32) -> f32 {
    if (act == ACT_SIGMOID) {
        return sigmoid(z);
    } else if (act == ACT_RELU) {
        return max(z, 0.0);
    } else if (act == ACT_TANH) {
        let e = exp(-2.0 * abs(z));
        return sign(z) * (1.0 - e) / (1.0 + e);
    }
    return z;
}

// f'(z) through a = f(z) (twin: cpu::activation_derivative): sigmoid a(1 − a),
// tanh 1 − a², relu [a > 0], linear 1; softmax 1, as it only feeds LOSS_CE.
fn activation_derivative(act: u32, a: f32) -> f32 {
    if (act == ACT_SIGMOID) {
        return a * (1.0 - a);
    } else if (act == ACT_RELU) {
        return select(0.0, 1.0, a > 0.0);
    } else if (act == ACT_TANH) {
        return 1.0 - a * a;
    }
    return 1.0;
}

// Output delta of one element (twin: cpu::delta_output): MSE (a − y)·f'(a),
// softmax with cross-entropy a − y.
fn output_delta(act: u32, loss: u32, a: f32, y: f32) -> f32 {
    if (loss == LOSS_CE) {
        return a - y;
    }
    return (a - y) * activation_derivative(act, a);
}
