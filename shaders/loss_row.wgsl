// loss_row.wgsl — one output element's share of the output delta and the loss,
// shared by the kernel files that declare dims, a, y (rows, n_out) and delta
// (loss_partial.wgsl, output_tiled.wgsl), prepended by the host after reduce.wgsl.

// A running share of a row: its loss, and the first largest a and y so far.
struct RowLoss {
    loss: f32,
    ia: u32,
    va: f32,
    iy: u32,
    vy: f32,
}

// Nothing added yet.
fn row_loss_start() -> RowLoss {
    return RowLoss(0.0, NONE, 0.0, NONE, 0.0);
}

// Element k of the row at base: δ written, its loss term and argmax candidates added to r.
fn row_loss_add(r: RowLoss, base: u32, k: u32) -> RowLoss {
    let ak = a[base + k];
    let yk = y[base + k];
    delta[base + k] = output_delta(dims.act, dims.loss, ak, yk);
    var t = r;
    t.loss += loss_term(dims.loss, ak, yk);
    if (beats(k, ak, t.ia, t.va)) {
        t.ia = k;
        t.va = ak;
    }
    if (beats(k, yk, t.iy, t.vy)) {
        t.iy = k;
        t.vy = yk;
    }
    return t;
}
