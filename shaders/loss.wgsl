// loss.wgsl — loss and score of one batch, reduced on the GPU and added to a
// running total that the host reads only when it asks (end of an epoch):
//   acc.loss_slots[steps % ACC_SLOTS] += Σ_s Σ_k loss_term(A[s, k], Y[s, k])   (MSE or CE, dims.loss)
//   acc.samples  += rows;   acc.correct += samples scored correct (dims.metric)
// One workgroup of LOSS_WG invocations: each sums a strided share of the
// samples, then a fixed-order tree reduction (reduce.wgsl), so the result is
// deterministic. The simple reference for delta_output_loss + loss_finish.
//
// | binding | name | access             | shape          |
// |---------|------|--------------------|----------------|
// | 0       | dims | uniform Dims       |                |
// | 1       | a    | storage read       | (rows, n_out)  |
// | 2       | y    | storage read       | (rows, n_out)  |
// | 3       | acc  | storage read_write | Acc            |

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> acc: Acc;

@compute @workgroup_size(LOSS_WG)
fn loss_reduce(@builtin(local_invocation_index) lid: u32) {
    let n = dims.n_out;
    var loss = 0.0;
    var correct = 0u;
    for (var s = lid; s < dims.rows; s += LOSS_WG) {
        let base = s * n;
        var sample = 0.0;
        var best_a = 0u;
        var best_y = 0u;
        for (var k = 0u; k < n; k++) {
            let ak = a[base + k];
            let yk = y[base + k];
            sample += loss_term(dims.loss, ak, yk);
            if (ak > a[base + best_a]) {
                best_a = k;
            }
            if (yk > y[base + best_y]) {
                best_y = k;
            }
        }
        loss += sample;
        if (dims.metric == 1u) {
            correct += select(0u, 1u, (a[base] > 0.5) == (y[base] > 0.5));
        } else if (dims.metric == 2u) {
            correct += select(0u, 1u, best_a == best_y);
        }
    }
    w_loss[lid] = loss;
    w_count[lid] = correct;
    reduce_totals(lid);
    if (lid == 0u) {
        totals_add(dims.rows, w_loss[0], w_count[0]);
    }
}
