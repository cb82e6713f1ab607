// finish_row.wgsl — the end of one output row, shared by the kernels that
// finish rows themselves (output_tiled.wgsl, whole_step.wgsl; each declares
// dims, a, y and delta for the output layer), prepended after reduce.wgsl,
// loss_row.wgsl and softmax_row.wgsl.

// Row s: softmax (a softmax layer), δ, and its loss and score.
fn finish_row(s: u32) -> Partial {
    let n = dims.n_out;
    let base = s * n;
    if (dims.act == ACT_SOFTMAX) {
        softmax_row(base, n);
    }
    var r = row_loss_start();
    for (var k = 0u; k < n; k++) {
        r = row_loss_add(r, base, k);
    }
    var ok = false;
    if (dims.metric == 1u) {
        ok = (a[base] > 0.5) == (y[base] > 0.5);
    } else if (dims.metric == 2u) {
        ok = r.ia == r.iy;
    }
    return Partial(r.loss, select(0u, 1u, ok));
}
