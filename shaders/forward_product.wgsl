// forward_product.wgsl — the product of a dense layer's forward pass, as the
// tiled core wants it, shared by forward_tiled.wgsl and output_tiled.wgsl (each
// declares dims, params, a_prev, a):
//   A = f(A_prev · Wᵀ + b)       M = rows, N = n_out, K = n_in
// f = dims.act; for softmax this writes Z and the row pass finishes it.
// Both operands are contiguous along K: a_prev (rows, n_in), W (n_out, n_in)
// with rows w_ld apart, and read as vec4s (every storage buffer is whole
// vec4s long): a generated core loads 4 elements along K at once where rows
// start on a vec4 (a_vec4: n_in a multiple of 4; b_vec4: w_ld and W's offset,
// always so in the backend's padded device layout).

const A_ALONG_K: bool = true;
const B_ALONG_K: bool = true;
const ROW_SUMS: bool = false;

fn tile_shape() -> vec3<u32> {
    return vec3<u32>(dims.rows, dims.n_out, dims.n_in);
}

fn a_at(m: u32, k: u32) -> f32 {
    let i = m * dims.n_in + k;
    return a_prev[i >> 2u][i & 3u];
}

// B[k, n] = W[n, k]
fn b_at(k: u32, n: u32) -> f32 {
    let i = dims.w_off + n * dims.w_ld + k;
    return params[i >> 2u][i & 3u];
}

fn a_vec4() -> bool {
    return dims.n_in % 4u == 0u;
}

fn b_vec4() -> bool {
    return dims.w_ld % 4u == 0u && dims.w_off % 4u == 0u;
}

// A[m, k..k+4], for k % 4 == 0 and k + 3 < n_in where a_vec4().
fn a_at4(m: u32, k: u32) -> vec4<f32> {
    return a_prev[(m * dims.n_in + k) >> 2u];
}

// B[k..k+4, n] = W[n, k..k+4], for k % 4 == 0 and k + 3 < n_in where b_vec4().
fn b_at4(k: u32, n: u32) -> vec4<f32> {
    return params[(dims.w_off + n * dims.w_ld + k) >> 2u];
}

fn tile_store(m: u32, n: u32, c: f32) {
    let i = dims.b_off + n;
    a[m * dims.n_out + n] = activate(dims.act, c + params[i >> 2u][i & 3u]);
}

fn row_sum_store(m: u32, s: f32) {}
