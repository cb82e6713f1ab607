// common.wgsl — prepended by the host (src/gpu/kernels.rs) to every kernel file
// before compiling, so the uniform layout and helpers exist once.
//
// Dims mirrors `shadertrain::gpu::Dims` (12 × u32 = 48 bytes); the naga test
// checks the sizes agree. Each layer has one Dims; a kernel reads the fields
// it needs.
struct Dims {
    batch: u32,      // samples in the batch
    n_in: u32,       // inputs to the layer
    n_out: u32,      // neurons in the layer
    w_off: u32,      // offset of W (n_out, n_in) in params / grads
    b_off: u32,      // offset of b (n_out) in params / grads
    n_next: u32,     // neurons in the next layer (delta_hidden)
    w_next_off: u32, // offset of W_next (n_next, n_out) in params (delta_hidden)
    metric: u32,     // loss_reduce scoring: 0 none, 1 threshold, 2 argmax
    splits: u32,     // K slices of the tiled gradient (1: none)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// SGD and gradient scaling, mirrors `shadertrain::gpu::SgdUniform` (16 bytes).
struct Sgd {
    count: u32,      // parameters to update (sgd_update)
    lr: f32,         // learning rate
    scale: f32,      // 1 / samples in the whole batch (gradient_*_tiled)
    accumulate: u32, // 1: gradient_dense_tiled adds to grads (micro-batches)
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
