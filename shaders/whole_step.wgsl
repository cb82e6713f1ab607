// whole_step.wgsl — a whole training step of a tiny network (at most 3 dense
// layers) in one workgroup, for networks where launching the ~5 dispatches of
// the fused tiled step costs more than their work (W0: 2-2-2 at batch 1).
// It computes what the fused step computes (schedule.rs: forward_dense_tiled,
// forward_output_loss_tiled, delta_hidden_tiled, gradient_sgd_tiled), in its
// order, each phase over the workgroup's invocations and a barrier between:
//   per layer, bottom up:  A = f(A_prev · Wᵀ + b)          (rows, n_out)
//   per output row:        softmax, δ = output_delta(A, Y), loss and score
//   acc += the rows' losses and scores (per invocation in row order, then
//          the invocations in index order)
//   per layer, top down:   δ_below = (δ · W) ⊙ f'(A_below)  (W before its update)
//                          W −= lr · scale · δᵀ · A_prev,  b −= lr · scale · Σ_s δ
// Each sum runs over its K in index order. Layers are counted from the top:
// level 0 is the output layer (dims, a, delta), level 1 the one below it
// (dims_mid, a_mid, delta_mid), level 2 the next (dims_low, a_low,
// delta_low); the bottom layer reads x. Slots past the network's layers are
// bound to placeholders and never read. The host (src/gpu/whole_step.rs)
// builds this only where the network fits its bounds.
//
// | binding | name      | access             | shape                           |
// |---------|-----------|--------------------|---------------------------------|
// | 0       | dims      | uniform Dims       | the output layer                |
// | 1       | dims_mid  | uniform Dims       | level 1 (or a placeholder)      |
// | 2       | dims_low  | uniform Dims       | level 2 (or a placeholder)      |
// | 3       | per_batch | uniform Batch      | (scale)                         |
// | 4       | per_step  | uniform Step       | (lr)                            |
// | 5       | params    | storage read_write | (device layout)                 |
// | 6       | x         | storage read       | (rows, sizes[0])                |
// | 7       | y         | storage read       | (rows, outputs)                 |
// | 8       | acc       | storage read_write | Acc                             |
// | 9       | a         | storage read_write | (rows, outputs)                 |
// | 10      | delta     | storage read_write | (rows, outputs)                 |
// | 11      | a_mid     | storage read_write | (rows, n_out of level 1)        |
// | 12      | delta_mid | storage read_write | (rows, n_out of level 1)        |
// | 13      | a_low     | storage read_write | (rows, n_out of level 2)        |
// | 14      | delta_low | storage read_write | (rows, n_out of level 2)        |
@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<uniform> dims_mid: Dims;
@group(0) @binding(2) var<uniform> dims_low: Dims;
@group(0) @binding(3) var<uniform> per_batch: Batch;
@group(0) @binding(4) var<uniform> per_step: Step;
@group(0) @binding(5) var<storage, read_write> params: array<f32>;
@group(0) @binding(6) var<storage, read> x: array<f32>;
@group(0) @binding(7) var<storage, read> y: array<f32>;
@group(0) @binding(8) var<storage, read_write> acc: Acc;
@group(0) @binding(9) var<storage, read_write> a: array<f32>;
@group(0) @binding(10) var<storage, read_write> delta: array<f32>;
@group(0) @binding(11) var<storage, read_write> a_mid: array<f32>;
@group(0) @binding(12) var<storage, read_write> delta_mid: array<f32>;
@group(0) @binding(13) var<storage, read_write> a_low: array<f32>;
@group(0) @binding(14) var<storage, read_write> delta_low: array<f32>;

// Each invocation's rows: loss sum and count scored correct.
var<workgroup> w_rows: array<Partial, WG>;

// The Dims of level j.
fn dims_at(j: u32) -> Dims {
    if (j == 0u) {
        return dims;
    } else if (j == 1u) {
        return dims_mid;
    }
    return dims_low;
}

// Element i of level j's outputs.
fn out_get(j: u32, i: u32) -> f32 {
    if (j == 0u) {
        return a[i];
    } else if (j == 1u) {
        return a_mid[i];
    }
    return a_low[i];
}

fn out_set(j: u32, i: u32, v: f32) {
    if (j == 0u) {
        a[i] = v;
    } else if (j == 1u) {
        a_mid[i] = v;
    } else {
        a_low[i] = v;
    }
}

// Element i of level j's inputs: x for the bottom of `layers` levels.
fn in_get(j: u32, layers: u32, i: u32) -> f32 {
    if (j + 1u == layers) {
        return x[i];
    }
    return out_get(j + 1u, i);
}

fn delta_get(j: u32, i: u32) -> f32 {
    if (j == 0u) {
        return delta[i];
    } else if (j == 1u) {
        return delta_mid[i];
    }
    return delta_low[i];
}

fn delta_set(j: u32, i: u32, v: f32) {
    if (j == 0u) {
        delta[i] = v;
    } else if (j == 1u) {
        delta_mid[i] = v;
    } else {
        delta_low[i] = v;
    }
}

// Every invocation's writes to storage and workgroup memory seen by all.
fn phase_end() {
    storageBarrier();
    workgroupBarrier();
}

// Level j's forward, element by element: A = f(A_prev · Wᵀ + b); softmax
// leaves Z for the row pass.
fn forward(j: u32, layers: u32, lid: u32) {
    let d = dims_at(j);
    for (var e = lid; e < d.rows * d.n_out; e += WG) {
        let s = e / d.n_out;
        let o = e % d.n_out;
        var c = 0.0;
        for (var k = 0u; k < d.n_in; k++) {
            c += in_get(j, layers, s * d.n_in + k) * params[d.w_off + o * d.w_ld + k];
        }
        out_set(j, e, activate(d.act, c + params[d.b_off + o]));
    }
}

// The delta of level j + 1 from level j's: δ_below = (δ · W_j) ⊙ f'(A_below).
fn delta_below(j: u32, lid: u32) {
    let d = dims_at(j);
    let below = dims_at(j + 1u);
    let n = d.n_in;
    for (var e = lid; e < d.rows * n; e += WG) {
        let s = e / n;
        let i = e % n;
        var c = 0.0;
        for (var o = 0u; o < d.n_out; o++) {
            c += delta_get(j, s * d.n_out + o) * params[d.w_off + o * d.w_ld + i];
        }
        delta_set(j + 1u, e, c * activation_derivative(below.act, out_get(j + 1u, e)));
    }
}

// Level j's gradient applied as SGD: column n_in of a row stands for the bias.
fn update(j: u32, layers: u32, lid: u32) {
    let d = dims_at(j);
    let row = d.n_in + 1u;
    for (var e = lid; e < d.n_out * row; e += WG) {
        let o = e / row;
        let i = e % row;
        var sum = 0.0;
        for (var s = 0u; s < d.rows; s++) {
            var v = 1.0;
            if (i < d.n_in) {
                v = in_get(j, layers, s * d.n_in + i);
            }
            sum += delta_get(j, s * d.n_out + o) * v;
        }
        var p = d.b_off + o;
        if (i < d.n_in) {
            p = d.w_off + o * d.w_ld + i;
        }
        params[p] -= per_step.lr * (sum * per_batch.scale);
    }
}

// The step of a network of `layers` dense layers.
fn whole_step(layers: u32, lid: u32) {
    for (var j = layers; j > 0u; j--) {
        forward(j - 1u, layers, lid);
        phase_end();
    }
    var mine = Partial(0.0, 0u);
    for (var s = lid; s < dims.rows; s += WG) {
        let r = finish_row(s);
        mine.loss += r.loss;
        mine.correct += r.correct;
    }
    w_rows[lid] = mine;
    phase_end();
    if (lid == 0u) {
        var sum = Partial(0.0, 0u);
        for (var i = 0u; i < WG; i++) {
            sum.loss += w_rows[i].loss;
            sum.correct += w_rows[i].correct;
        }
        totals_add(dims.rows, sum.loss, sum.correct);
    }
    for (var j = 0u; j < layers; j++) {
        if (j + 1u < layers) {
            delta_below(j, lid);
            phase_end();
        }
        update(j, layers, lid);
        phase_end();
    }
}

@compute @workgroup_size(WG)
fn whole_step_1(@builtin(local_invocation_index) lid: u32) {
    whole_step(1u, lid);
}

@compute @workgroup_size(WG)
fn whole_step_2(@builtin(local_invocation_index) lid: u32) {
    whole_step(2u, lid);
}

@compute @workgroup_size(WG)
fn whole_step_3(@builtin(local_invocation_index) lid: u32) {
    whole_step(3u, lid);
}
