// delta_hidden.wgsl — delta of a hidden layer, from the next layer's delta and
// the next layer's weights as they were before the update:
//   δ[s, j] = (Σ_k W_next[k, j] · δ_next[s, k]) · f'(A[s, j])     f = dims.act
// One invocation per element (s, j); n = dims.n_out is this layer's width.
//
// | binding | name       | access             | shape            |
// |---------|------------|--------------------|------------------|
// | 0       | dims       | uniform Dims       |                  |
// | 1       | params     | storage read       | (device layout)  |
// | 2       | delta_next | storage read       | (rows, n_next)   |
// | 3       | a          | storage read       | (rows, n)        |
// | 4       | delta      | storage read_write | (rows, n)        |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> delta_next: array<f32>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read_write> delta: array<f32>;

@compute @workgroup_size(WG)
fn delta_hidden(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = dims.n_out;
    let idx = linear_index(wid, nwg, lid);
    if (idx >= dims.rows * n) {
        return;
    }
    let s = idx / n;
    let j = idx % n;
    let d0 = s * dims.n_next;
    var back = 0.0;
    for (var k = 0u; k < dims.n_next; k++) {
        back += params[dims.w_next_off + k * dims.w_next_ld + j] * delta_next[d0 + k];
    }
    delta[idx] = back * activation_derivative(dims.act, a[idx]);
}
