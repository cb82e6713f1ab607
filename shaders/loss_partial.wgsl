// loss_partial.wgsl — output delta and the loss of one batch in one parallel
// pass, first of two stages (loss_finish.wgsl is the second):
//   δ[s, k] = output_delta(A, Y): MSE (A − Y) ⊙ f'(A), softmax + cross-entropy A − Y
//   partials[g] = (Σ over group g's samples of Σ_k loss_term(A, Y), samples scored correct)
// A row of n outputs is shared by `lanes = loss_lanes(n)` invocations, so a
// workgroup takes LOSS_WG / lanes consecutive samples. Each lane sums its
// strided share of the row; lanes, then rows, are combined by fixed-order trees,
// so the result does not depend on scheduling.
//
// | binding | name     | access             | shape                           |
// |---------|----------|--------------------|---------------------------------|
// | 0       | dims     | uniform Dims       |                                 |
// | 1       | a        | storage read       | (rows, n_out)                   |
// | 2       | y        | storage read       | (rows, n_out)                   |
// | 3       | delta    | storage read_write | (rows, n_out)                   |
// | 4       | partials | storage read_write | (loss_groups(rows, n_out)) Partial  |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> delta: array<f32>;
@group(0) @binding(4) var<storage, read_write> partials: array<Partial>;

// Per invocation: the first largest a and y of its share, index and value.
var<workgroup> w_ia: array<u32, LOSS_WG>;
var<workgroup> w_va: array<f32, LOSS_WG>;
var<workgroup> w_iy: array<u32, LOSS_WG>;
var<workgroup> w_vy: array<f32, LOSS_WG>;

@compute @workgroup_size(LOSS_WG)
fn delta_output_loss(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let n = dims.n_out;
    let lanes = loss_lanes(n);
    let group = wid.y * nwg.x + wid.x;
    let s = group * (LOSS_WG / lanes) + lid / lanes;
    let lane = lid % lanes;
    let live = s < dims.rows;
    let base = s * n;
    var r = row_loss_start();
    if (live) {
        for (var k = lane; k < n; k += lanes) {
            r = row_loss_add(r, base, k);
        }
    }
    w_loss[lid] = r.loss;
    w_ia[lid] = r.ia;
    w_va[lid] = r.va;
    w_iy[lid] = r.iy;
    w_vy[lid] = r.vy;
    workgroupBarrier();
    // Combine the lanes of each row into its lane 0.
    for (var stride = lanes / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            let o = lid + stride;
            w_loss[lid] += w_loss[o];
            if (beats(w_ia[o], w_va[o], w_ia[lid], w_va[lid])) {
                w_ia[lid] = w_ia[o];
                w_va[lid] = w_va[o];
            }
            if (beats(w_iy[o], w_vy[o], w_iy[lid], w_vy[lid])) {
                w_iy[lid] = w_iy[o];
                w_vy[lid] = w_vy[o];
            }
        }
        workgroupBarrier();
    }
    var row_loss = 0.0;
    var ok = false;
    if (live && lane == 0u) {
        row_loss = w_loss[lid];
        if (dims.metric == 1u) {
            ok = (a[base] > 0.5) == (y[base] > 0.5);
        } else if (dims.metric == 2u) {
            ok = w_ia[lid] == w_iy[lid];
        }
    }
    workgroupBarrier();
    w_loss[lid] = row_loss;
    w_count[lid] = select(0u, 1u, ok);
    reduce_totals(lid);
    if (lid == 0u && group < loss_groups(dims.rows, n)) {
        partials[group] = Partial(w_loss[0], w_count[0]);
    }
}
