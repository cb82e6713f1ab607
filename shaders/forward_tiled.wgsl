// forward_tiled.wgsl — forward pass of one dense layer as a tiled product,
// bias and activation fused into the epilogue (the core is tiled.wgsl):
//   A = f(A_prev · Wᵀ + b)       M = rows, N = n_out, K = n_in
// f = dims.act; for softmax this writes Z and softmax_forward finishes the rows.
// Both operands are contiguous along K: a_prev (rows, n_in), W (n_out, n_in).
//
// | binding | name   | access             | shape          |
// |---------|--------|--------------------|----------------|
// | 0       | dims   | uniform Dims       |                |
// | 1       | params | storage read       | (param_count)  |
// | 2       | a_prev | storage read       | (rows, n_in)   |
// | 3       | a      | storage read_write | (rows, n_out)  |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<f32>;
@group(0) @binding(2) var<storage, read> a_prev: array<f32>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = true;
const ROW_SUMS: bool = false;

fn tile_shape() -> vec3<u32> {
    return vec3<u32>(dims.rows, dims.n_out, dims.n_in);
}

fn a_at(m: u32, k: u32) -> f32 {
    return a_prev[m * dims.n_in + k];
}

// B[k, n] = W[n, k]
fn b_at(k: u32, n: u32) -> f32 {
    return params[dims.w_off + n * dims.n_in + k];
}

fn tile_store(m: u32, n: u32, c: f32) {
    a[m * dims.n_out + n] = activate(dims.act, c + params[dims.b_off + n]);
}

fn row_sum_store(m: u32, s: f32) {}

@compute @workgroup_size(WG_X, WG_Y)
fn forward_dense_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    tile_gemm(wid, nwg, lid);
}
