// loss_finish.wgsl — second stage of the parallel loss: one workgroup adds the
// partials of delta_output_loss (loss_partial.wgsl) in a fixed order to the
// running totals that the host reads when it asks:
//   acc.loss_slots[steps % ACC_SLOTS] += Σ_g partials[g].loss;  acc.correct += Σ_g partials[g].correct
//   acc.samples  += rows;                  acc.steps += 1
//
// | binding | name     | access             | shape                               |
// |---------|----------|--------------------|-------------------------------------|
// | 0       | dims     | uniform Dims       |                                     |
// | 1       | partials | storage read       | (loss_groups(rows, n_out)) Partial  |
// | 2       | acc      | storage read_write | Acc                                 |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> partials: array<Partial>;
@group(0) @binding(2) var<storage, read_write> acc: Acc;

@compute @workgroup_size(LOSS_WG)
fn loss_finish(@builtin(local_invocation_index) lid: u32) {
    let groups = loss_groups(dims.rows, dims.n_out);
    var loss = 0.0;
    var correct = 0u;
    for (var g = lid; g < groups; g += LOSS_WG) {
        loss += partials[g].loss;
        correct += partials[g].correct;
    }
    w_loss[lid] = loss;
    w_count[lid] = correct;
    reduce_totals(lid);
    if (lid == 0u) {
        totals_add(dims.rows, w_loss[0], w_count[0]);
    }
}
