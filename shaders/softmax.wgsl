// softmax.wgsl — the row-wise half of a softmax output layer, after
// forward_dense / forward_dense_tiled wrote the logits Z into a:
//   a[s, k] = e^(z_k − m) / Σ_j e^(z_j − m),   m = max_j z_j
// One invocation per sample row, summing in index order, so the result is
// deterministic and no exponent overflows; n = dims.n_out.
//
// | binding | name | access             | shape          |
// |---------|------|--------------------|----------------|
// | 0       | dims | uniform Dims       |                |
// | 1       | a    | storage read_write | (rows, n_out)  |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(WG)
fn softmax_forward(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let s = linear_index(wid, nwg, lid);
    if (s >= dims.rows) {
        return;
    }
    softmax_row(s * dims.n_out, dims.n_out);
}
