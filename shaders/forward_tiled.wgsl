// forward_tiled.wgsl — forward pass of one dense layer as a tiled product,
// bias and activation fused into the epilogue (forward_product.wgsl; the core
// is tiled.wgsl or generated):
//   A = f(A_prev · Wᵀ + b)       M = rows, N = n_out, K = n_in
// f = dims.act; for softmax this writes Z and softmax_forward finishes the
// rows (in a training step output_tiled.wgsl does all of it instead).
//
// | binding | name   | access             | shape               |
// |---------|--------|--------------------|---------------------|
// | 0       | dims   | uniform Dims       |                     |
// | 1       | params | storage read       | (device layout) vec4s |
// | 2       | a_prev | storage read       | (rows, n_in) vec4s  |
// | 3       | a      | storage read_write | (rows, n_out)       |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a_prev: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;

@compute @workgroup_size(WG_X, WG_Y)
fn forward_dense_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    tile_gemm(wid, nwg, lid);
}
