// gradient_tiled.wgsl — weight and bias gradients of one layer as one tiled
// product (the core is tiled.wgsl), with the bias fused in as the row sums of
// δᵀ, which the workgroups of the first N-tile take from their staged blocks:
//   g_W[o, i] = scale · Σ_s δ[s, o] · A_prev[s, i]   M = n_out, N = n_in, K = rows
//   g_b[o]    = scale · Σ_s δ[s, o]
// scale is 1/B for the whole loaded batch (per_batch.scale). Both operands are contiguous
// along M or N, not K: δ (rows, n_out), A_prev (rows, n_in).
// Two entry points share the product and differ in where g goes:
//   gradient_dense_tiled  grads[p] = g, or grads[p] += g when per_batch.accumulate
//   gradient_sgd_tiled    params[p] −= lr · g (SGD fused; grads untouched)
// The fused form is safe because nothing in the dispatch reads this layer's
// parameters; the host computes the layer below's delta (from the old W) first.
// With dims.splits > 1 (a long batch and few blocks: split K) each K slice
// writes its sums to scratch, and the last slice of a block to finish
// (last_group.wgsl, counters[block]) adds the block's slices in order and
// puts g as above: no second dispatch.
// δ and A_prev are read as vec4s (their buffers are whole vec4s long, the
// host rounds every storage buffer up to 16 bytes): a generated core loads 4
// neighbours along M (N) at once where n_out (n_in) is a multiple of 4, so
// that a row's groups start on a vec4 (a_vec4, b_vec4 and the *_at4 reads).
//
// | binding | name      | access             | shape                     |
// |---------|-----------|--------------------|---------------------------|
// | 0       | dims      | uniform Dims       |                           |
// | 1       | per_batch | uniform Batch      |                           |
// | 2       | per_step  | uniform Step       |                           |
// | 3       | delta     | storage read       | (rows, n_out) as vec4s    |
// | 4       | a_prev    | storage read       | (rows, n_in) as vec4s     |
// | 5       | params    | storage read_write | (device layout)           |
// | 6       | grads     | storage read_write | (device layout)           |
// | 7       | scratch   | storage read_write | (splits, n_out, n_in + 1) |
// | 8       | counters  | storage read_write | (blocks) u32, zero between dispatches |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> per_batch: Batch;
@group(0) @binding(2) var<uniform> per_step: Step;
@group(0) @binding(3) var<storage, read> delta: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> a_prev: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> params: array<f32>;
@group(0) @binding(6) var<storage, read_write> grads: array<f32>;
@group(0) @binding(7) var<storage, read_write> scratch: array<f32>;
@group(0) @binding(8) var<storage, read_write> counters: array<atomic<u32>>;

const A_ALONG_K: bool = false;
const B_ALONG_K: bool = false;
const ROW_SUMS: bool = true;

// Set by the entry point: apply SGD instead of storing the gradient.
var<private> fused_sgd: bool;

fn tile_shape() -> vec3<u32> {
    return vec3<u32>(dims.n_out, dims.n_in, dims.rows);
}

// A[o, s] = δ[s, o]
fn a_at(m: u32, k: u32) -> f32 {
    let i = k * dims.n_out + m;
    return delta[i >> 2u][i & 3u];
}

fn b_at(k: u32, n: u32) -> f32 {
    let i = k * dims.n_in + n;
    return a_prev[i >> 2u][i & 3u];
}

// Whether rows of δ (A_prev) start on a vec4, so that a_at4 (b_at4) may
// read the group of 4 at any m (n) that is a multiple of 4.
fn a_vec4() -> bool {
    return dims.n_out % 4u == 0u;
}

fn b_vec4() -> bool {
    return dims.n_in % 4u == 0u;
}

// A[m..m+4, k], for m % 4 == 0 and m + 3 < n_out where a_vec4().
fn a_at4(m: u32, k: u32) -> vec4<f32> {
    return delta[(k * dims.n_out + m) >> 2u];
}

// B[k, n..n+4], for n % 4 == 0 and n + 3 < n_in where b_vec4().
fn b_at4(k: u32, n: u32) -> vec4<f32> {
    return a_prev[(k * dims.n_in + n) >> 2u];
}

// Gradient g of parameter p: store, accumulate, or step.
fn put(p: u32, g: f32) {
    if (fused_sgd) {
        params[p] -= per_step.lr * g;
    } else if (per_batch.accumulate != 0u) {
        grads[p] += g;
    } else {
        grads[p] = g;
    }
}

// Put the gradient of sum (m, n); column n_in of a row stands for the bias.
fn put_sum(m: u32, n: u32, sum: f32) {
    if (n < dims.n_in) {
        put(dims.w_off + m * dims.w_ld + n, sum * per_batch.scale);
    } else {
        put(dims.b_off + m, sum * per_batch.scale);
    }
}

// A product's sum (m, n): straight to put_sum, or this slice's part to scratch.
fn keep_sum(m: u32, n: u32, sum: f32) {
    if (dims.splits > 1u) {
        scratch[(tile_slice * dims.n_out + m) * (dims.n_in + 1u) + n] = sum;
    } else {
        put_sum(m, n, sum);
    }
}

fn tile_store(m: u32, n: u32, c: f32) {
    keep_sum(m, n, c);
}

fn row_sum_store(m: u32, s: f32) {
    keep_sum(m, dims.n_in, s);
}

// Add the K slices of scratch element idx (< n_out·(n_in + 1)) in order; put the gradient.
fn reduce_slices(idx: u32) {
    let row = dims.n_in + 1u;
    let len = dims.n_out * row;
    var sum = 0.0;
    for (var s = 0u; s < dims.splits; s++) {
        sum += scratch[s * len + idx];
    }
    put_sum(idx / row, idx % row, sum);
}

// The product, then (split K, the last slice of a block) the block's slices
// added: its BM × BN sums and, in the first N-tile, the bias column n_in.
fn gradient(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    tile_gemm(wid, nwg, lid);
    if (dims.splits <= 1u) {
        return;
    }
    let tiles_n = (dims.n_in + BN - 1u) / BN;
    let blocks = tiles_n * ((dims.n_out + BM - 1u) / BM);
    let block = wid.y * nwg.x + wid.x;
    if (block >= blocks) {
        return;
    }
    if (!last_to_finish(block, dims.splits, lid)) {
        return;
    }
    let m0 = (block / tiles_n) * BM;
    let n0 = (block % tiles_n) * BN;
    // Column c < BN of the block is n0 + c; column BN stands for the bias.
    let width = BN + 1u;
    for (var e = lid; e < BM * width; e += WG_X * WG_Y) {
        let m = m0 + e / width;
        let c = e % width;
        var n = n0 + c;
        var inside = c < BN && n < dims.n_in;
        if (c == BN) {
            n = dims.n_in;
            inside = n0 == 0u;
        }
        if (m < dims.n_out && inside) {
            reduce_slices(m * (dims.n_in + 1u) + n);
        }
    }
}

@compute @workgroup_size(WG_X, WG_Y)
fn gradient_dense_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    fused_sgd = false;
    gradient(wid, nwg, lid);
}

@compute @workgroup_size(WG_X, WG_Y)
fn gradient_sgd_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    fused_sgd = true;
    gradient(wid, nwg, lid);
}
