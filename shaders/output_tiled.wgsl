// output_tiled.wgsl — the output layer of a training step in one dispatch: its
// forward product (forward_product.wgsl; the core is tiled.wgsl or generated),
// the softmax over each row, the output delta and the batch's loss:
//   A = f(A_prev · Wᵀ + b)       M = rows, N = n_out ≤ BN, K = n_in
//   δ = output_delta(A, Y)       (twin: forward_dense, then delta_output_loss)
//   partials[t] = (Σ loss_term over block t's rows, rows of block t scored correct)
//   acc += Σ_t partials[t]       by the last block to finish (last_group.wgsl)
// The host builds it only where one block holds whole rows (n_out ≤ BN): after
// the product each invocation finishes rows lid, lid + WG_X·WG_Y, … of its
// block in index order; the block's rows, then the blocks, are added in a
// fixed order, so the totals do not depend on scheduling.
//
// | binding | name     | access             | shape                    |
// |---------|----------|--------------------|--------------------------|
// | 0       | dims     | uniform Dims       |                          |
// | 1       | params   | storage read       | (device layout) vec4s    |
// | 2       | a_prev   | storage read       | (rows, n_in) vec4s       |
// | 3       | a        | storage read_write | (rows, n_out)            |
// | 4       | y        | storage read       | (rows, n_out)            |
// | 5       | delta    | storage read_write | (rows, n_out)            |
// | 6       | partials | storage read_write | (⌈rows / BM⌉) Partial    |
// | 7       | acc      | storage read_write | Acc                      |
// | 8       | counters | storage read_write | (1+) u32, zero between dispatches |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> params: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> a_prev: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> a: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> partials: array<Partial>;
@group(0) @binding(7) var<storage, read_write> acc: Acc;
@group(0) @binding(8) var<storage, read_write> counters: array<atomic<u32>>;

// Each invocation's rows: loss sum and count scored correct.
var<workgroup> w_rows: array<Partial, WG_X * WG_Y>;

@compute @workgroup_size(WG_X, WG_Y)
fn forward_output_loss_tiled(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    tile_gemm(wid, nwg, lid);
    let threads = WG_X * WG_Y;
    // One block per BM rows (n_out ≤ BN).
    let blocks = (dims.rows + BM - 1u) / BM;
    let block = wid.y * nwg.x + wid.x;
    if (block >= blocks) {
        return;
    }
    // The block's outputs, stored by its other invocations, are read below.
    storageBarrier();
    var mine = Partial(0.0, 0u);
    // A loop the same for every invocation (cheaper where invocations are
    // vector lanes); rows past the batch are skipped inside.
    for (var r0 = 0u; r0 < BM; r0 += threads) {
        let s = block * BM + r0 + lid;
        if (r0 + lid < BM && s < dims.rows) {
            let row = finish_row(s);
            mine.loss += row.loss;
            mine.correct += row.correct;
        }
    }
    w_rows[lid] = mine;
    workgroupBarrier();
    if (lid == 0u) {
        var sum = Partial(0.0, 0u);
        for (var i = 0u; i < threads; i++) {
            sum.loss += w_rows[i].loss;
            sum.correct += w_rows[i].correct;
        }
        partials[block] = sum;
    }
    if (!last_to_finish(0u, blocks, lid)) {
        return;
    }
    if (lid == 0u) {
        var total = Partial(0.0, 0u);
        for (var t = 0u; t < blocks; t++) {
            total.loss += partials[t].loss;
            total.correct += partials[t].correct;
        }
        totals_add(dims.rows, total.loss, total.correct);
    }
}
