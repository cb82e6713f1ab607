// gradient.wgsl — weight and bias gradients of one layer, averaged over the batch:
//   ∂L/∂W[o, i] = (1/B) Σ_s δ[s, o] · A_prev[s, i]     (gradient_weights)
//   ∂L/∂b[o]    = (1/B) Σ_s δ[s, o]                    (gradient_bias)
// written into grads at the layer's offsets (the parameter layout).
//
// | binding | name   | access             | shape          |
// |---------|--------|--------------------|----------------|
// | 0       | dims   | uniform Dims       |                |
// | 1       | delta  | storage read       | (rows, n_out)  |
// | 2       | a_prev | storage read       | (rows, n_in)   |
// | 3       | grads  | storage read_write | (device layout) |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> delta: array<f32>;
@group(0) @binding(2) var<storage, read> a_prev: array<f32>;
@group(0) @binding(3) var<storage, read_write> grads: array<f32>;

// One invocation per weight (o, i).
@compute @workgroup_size(WG)
fn gradient_weights(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= dims.n_out * dims.n_in) {
        return;
    }
    let o = idx / dims.n_in;
    let i = idx % dims.n_in;
    var sum = 0.0;
    for (var s = 0u; s < dims.rows; s++) {
        sum += delta[s * dims.n_out + o] * a_prev[s * dims.n_in + i];
    }
    grads[dims.w_off + o * dims.w_ld + i] = sum * (1.0 / f32(dims.rows));
}

// One invocation per bias o.
@compute @workgroup_size(WG)
fn gradient_bias(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let o = linear_index(wid, nwg, lid);
    if (o >= dims.n_out) {
        return;
    }
    var sum = 0.0;
    for (var s = 0u; s < dims.rows; s++) {
        sum += delta[s * dims.n_out + o];
    }
    grads[dims.b_off + o] = sum * (1.0 / f32(dims.rows));
}
