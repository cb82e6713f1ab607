// reduce.wgsl — what the loss kernels share, prepended by the host (after
// common.wgsl) to loss.wgsl, loss_partial.wgsl and loss_finish.wgsl: the totals
// struct, the partial sums, and a fixed-order tree reduction, so every loss
// is deterministic (no float atomics).

// Slots of the loss totals (mirrors `ACC_SLOTS` in src/gpu/kernels.rs).
const ACC_SLOTS: u32 = 256u;

// Mirrors `shadertrain::gpu::Acc` (16 + 4·ACC_SLOTS bytes). Step t adds its
// loss to loss_slots[t % ACC_SLOTS]; the host adds the slots in f64, so a long
// epoch is a few dozen f32 adds per slot rather than one long f32 sum.
struct Acc {
    samples: u32,
    correct: u32,
    steps: u32,
    _pad0: u32,
    loss_slots: array<f32, ACC_SLOTS>,
}

// One workgroup's share of a batch's loss (loss_partial.wgsl), 8 bytes.
struct Partial {
    loss: f32,
    correct: u32,
}

// The smallest output cross-entropy takes the log of (mirrors network::CE_CLAMP).
const CE_CLAMP: f32 = 1e-12;

// One output's share of a sample's loss (twin: cpu::loss_term):
// MSE ½(a − y)², cross-entropy −y ln max(a, CE_CLAMP).
fn loss_term(loss: u32, a: f32, y: f32) -> f32 {
    if (loss == LOSS_CE) {
        return -y * log(max(a, CE_CLAMP));
    }
    let d = a - y;
    return 0.5 * d * d;
}

// Invocations per workgroup of the loss kernels; mirrored by `LOSS_WG` in
// src/gpu/kernels.rs.
const LOSS_WG: u32 = 256u;

var<workgroup> w_loss: array<f32, LOSS_WG>;
var<workgroup> w_count: array<u32, LOSS_WG>;

// Most invocations sharing one sample row in delta_output_loss (mirrors
// `LOSS_LANES` in src/gpu/kernels.rs): a wide row takes a few elements per
// lane rather than a workgroup per row, whose 16 barrier rounds cost more
// than the row (a 512-wide output on lavapipe: 24 ms a step at 256 lanes).
const LOSS_LANES: u32 = 32u;

// Invocations that share one sample row in delta_output_loss: the smallest
// power of two >= n, at most LOSS_LANES. Mirrored by `loss_lanes` on the host.
fn loss_lanes(n: u32) -> u32 {
    var lanes = 1u;
    while (lanes < n && lanes < LOSS_LANES) {
        lanes *= 2u;
    }
    return lanes;
}

// Workgroups (and partials) of delta_output_loss for a batch.
fn loss_groups(rows: u32, n: u32) -> u32 {
    let per_group = LOSS_WG / loss_lanes(n);
    return (rows + per_group - 1u) / per_group;
}

// Sum w_loss and w_count over the workgroup into element 0, in a fixed order.
// Call from uniform control flow, after each invocation wrote its own element.
fn reduce_totals(lid: u32) {
    workgroupBarrier();
    for (var stride = LOSS_WG / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            w_loss[lid] += w_loss[lid + stride];
            w_count[lid] += w_count[lid + stride];
        }
        workgroupBarrier();
    }
}

// A lane with no element holds NONE as its argmax.
const NONE: u32 = 0xffffffffu;

// Whether (j, vj) beats (i, vi) as the first largest element.
fn beats(j: u32, vj: f32, i: u32, vi: f32) -> bool {
    return j != NONE && (i == NONE || vj > vi || (vj == vi && j < i));
}
