// dropout.wgsl — inverted dropout of one hidden layer while training
// (twin: cpu::dropout_apply): after the layer's forward pass on its outputs,
// and after its hidden delta on its deltas, the same mask:
//   v[r, j] = keep(r, j) ? v[r, j] / (1 − p) : 0
// keep(r, j) hashes (seed, update t, row0 + r, layer, unit j), so the mask is
// the same on every backend and does not depend on how the batch is split.
//
// dropout_keep.wgsl, appended to this file, adds the entry that also keeps
// the values from before the mask.
//
// | binding | name   | access             | shape        |
// |---------|--------|--------------------|--------------|
// | 0       | drop   | uniform Drop       |              |
// | 1       | values | storage read_write | (rows, n)    |

// Mirrors `shadertrain::gpu::dropout::DropUniform` (48 bytes).
struct Drop {
    rows: u32,    // rows staged now
    n: u32,       // the layer's width
    row0: u32,    // the staged rows' first row in the whole batch
    keep_at: u32, // kept where the 24-bit hash >= keep_at = round(p·2^24)
    scale: f32,   // 1 / (1 − p)
    layer: u32,   // dense layer index
    seed_lo: u32,
    seed_hi: u32,
    t: u32,       // the update the step applies (low 32 bits)
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> drop: Drop;
@group(0) @binding(1) var<storage, read_write> values: array<f32>;

// Wellons' lowbias32 (twin: cpu::hash32).
fn hash32(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

// Whether unit j of row r (of the staged rows) is kept.
fn keeps(r: u32, j: u32) -> bool {
    var h = hash32(j);
    h = hash32(h ^ drop.layer);
    h = hash32(h ^ (drop.row0 + r));
    h = hash32(h ^ drop.t);
    h = hash32(h ^ drop.seed_lo);
    h = hash32(h ^ drop.seed_hi);
    return (h >> 8u) >= drop.keep_at;
}

// values[idx] masked and rescaled, idx < rows·n.
fn mask(idx: u32) {
    if (keeps(idx / drop.n, idx % drop.n)) {
        values[idx] = values[idx] * drop.scale;
    } else {
        values[idx] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn dropout_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= drop.rows * drop.n) {
        return;
    }
    mask(idx);
}
