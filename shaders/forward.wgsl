// forward.wgsl — forward pass of one dense layer, matmul + bias + activation fused:
//   A = f(A_prev · Wᵀ + b)       f = dims.act (softmax: Z here, softmax_forward after)
// One invocation per output element (s, o).
//
// | binding | name   | access             | shape          |
// |---------|--------|--------------------|----------------|
// | 0       | dims   | uniform Dims       |                |
// | 1       | params | storage read       | (device layout) |
// | 2       | a_prev | storage read       | (rows, n_in)   |
// | 3       | a      | storage read_write | (rows, n_out)  |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> a_prev: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(WG)
fn forward_dense(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= dims.rows * dims.n_out) {
        return;
    }
    let s = idx / dims.n_out;
    let o = idx % dims.n_out;
    let x0 = s * dims.n_in;
    let w0 = dims.w_off + o * dims.w_ld;
    var z = params[dims.b_off + o];
    for (var i = 0u; i < dims.n_in; i++) {
        z += a_prev[x0 + i] * params[w0 + i];
    }
    a[idx] = activate(dims.act, z);
}
