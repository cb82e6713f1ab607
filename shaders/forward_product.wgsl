// forward_product.wgsl — the product of a dense layer's forward pass, as the
// tiled core wants it, shared by forward_tiled.wgsl and output_tiled.wgsl (each
// declares dims, params, a_prev, a):
//   A = f(A_prev · Wᵀ + b)       M = rows, N = n_out, K = n_in
// f = dims.act; for softmax this writes Z and the row pass finishes it.
// Both operands are contiguous along K: a_prev (rows, n_in), W (n_out, n_in).

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
