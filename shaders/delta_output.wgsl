// delta_output.wgsl — delta of the output layer:
//   MSE: δ = (A − Y) ⊙ f'(A)      softmax + cross-entropy: δ = A − Y
// One invocation per element.
//
// | binding | name  | access             | shape          |
// |---------|-------|--------------------|----------------|
// | 0       | dims  | uniform Dims       |                |
// | 1       | a     | storage read       | (rows, n_out)  |
// | 2       | y     | storage read       | (rows, n_out)  |
// | 3       | delta | storage read_write | (rows, n_out)  |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> delta: array<f32>;

@compute @workgroup_size(WG)
fn delta_output(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= dims.rows * dims.n_out) {
        return;
    }
    delta[idx] = output_delta(dims.act, dims.loss, a[idx], y[idx]);
}
