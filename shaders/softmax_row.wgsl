// softmax_row.wgsl — the softmax of one row of `a` in place, shared by the
// kernel files that declare `a (rows, n_out)` read_write (softmax.wgsl,
// output_tiled.wgsl), prepended by the host:
//   a[base + k] = e^(z_k − m) / Σ_j e^(z_j − m),   m = max_j z_j,  k < n
// summed in index order (deterministic), no exponent overflowing.
fn softmax_row(base: u32, n: u32) {
    var m = a[base];
    for (var k = 1u; k < n; k++) {
        m = max(m, a[base + k]);
    }
    var sum = 0.0;
    for (var k = 0u; k < n; k++) {
        let e = exp(a[base + k] - m);
        a[base + k] = e;
        sum += e;
    }
    let inv = 1.0 / sum;
    for (var k = 0u; k < n; k++) {
        a[base + k] *= inv;
    }
}
