// delta_hidden_tiled.wgsl — delta of a hidden layer as a tiled product, the
// activation's derivative fused into the epilogue (the core is tiled.wgsl or
// generated):
//   δ = (δ_next · W_next) ⊙ f'(A)     M = rows, N = n = dims.n_out, K = n_next
// with W_next as it was before the update. δ_next (rows, n_next) is contiguous
// along K, W_next (n_next, n, rows w_next_ld apart) along N; both are read as
// vec4s (every storage buffer is whole vec4s long), 4 at once where rows
// start on a vec4 (a_vec4: n_next a multiple of 4; b_vec4: w_next_ld and
// W_next's offset multiples of 4, always so in the padded device layout).
//
// | binding | name       | access             | shape                |
// |---------|------------|--------------------|----------------------|
// | 0       | dims       | uniform Dims       |                      |
// | 1       | params     | storage read       | (device layout) vec4s|
// | 2       | delta_next | storage read       | (rows, n_next) vec4s |
// | 3       | a          | storage read       | (rows, n)            |
// | 4       | delta      | storage read_write | (rows, n)            |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> delta_next: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> a: array<f32>;
@group(0) @binding(4) var<storage, read_write> delta: array<f32>;

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = false;
const ROW_SUMS: bool = false;

fn tile_shape() -> vec3<u32> {
    return vec3<u32>(dims.rows, dims.n_out, dims.n_next);
}

fn a_at(m: u32, k: u32) -> f32 {
    let i = m * dims.n_next + k;
    return delta_next[i >> 2u][i & 3u];
}

fn b_at(k: u32, n: u32) -> f32 {
    let i = dims.w_next_off + k * dims.w_next_ld + n;
    return params[i >> 2u][i & 3u];
}

fn a_vec4() -> bool {
    return dims.n_next % 4u == 0u;
}

fn b_vec4() -> bool {
    return dims.w_next_ld % 4u == 0u && dims.w_next_off % 4u == 0u;
}

// A[m, k..k+4], for k % 4 == 0 and k + 3 < n_next where a_vec4().
fn a_at4(m: u32, k: u32) -> vec4<f32> {
    return delta_next[(m * dims.n_next + k) >> 2u];
}

// B[k, n..n+4], for n % 4 == 0 and n + 3 < n_out where b_vec4().
fn b_at4(k: u32, n: u32) -> vec4<f32> {
    return params[(dims.w_next_off + k * dims.w_next_ld + n) >> 2u];
}

fn tile_store(m: u32, n: u32, c: f32) {
    let idx = m * dims.n_out + n;
    delta[idx] = c * activation_derivative(dims.act, a[idx]);
}

fn row_sum_store(m: u32, s: f32) {}

@compute @workgroup_size(WG_X, WG_Y)
fn delta_hidden_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    tile_gemm(wid, nwg, lid);
}
