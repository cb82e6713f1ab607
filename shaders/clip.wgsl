// clip.wgsl — gradient clipping by global L2 norm, before any optimiser
// update, in a fixed order (no float atomics), so the same gradients always
// give the same bits (twin: cpu::clip_gradients):
//   clip_partial: workgroup g sums g_i² over i = g·CLIP_WG + lid + k·groups·CLIP_WG,
//                 then a tree in workgroup memory          → partials[g]
//   clip_finish:  one workgroup adds the partials the same way; ‖g‖ = √Σ,
//                 scale = min(1, max_norm / (‖g‖ + 1e-6)); counts the update,
//                 and a clipped one in stats.fired
//   clip_apply:   g_i *= scale, where scale < 1
//
// | binding | name     | access             | shape                     |
// |---------|----------|--------------------|---------------------------|
// | 0       | clip     | uniform Clip       |                           |
// | 1       | grads    | storage read_write | (count) device layout     |
// | 2       | partials | storage read_write | (groups)                  |
// | 3       | stats    | storage read_write | ClipStats                 |

// Mirrors `shadertrain::gpu::clip::ClipUniform` (16 bytes).
struct Clip {
    count: u32,    // gradients (the device layout's floats)
    groups: u32,   // workgroups of clip_partial, at most CLIP_WG
    max_norm: f32, // the norm clipping scales down to
    _pad0: u32,
}

// Mirrors `shadertrain::gpu::clip::ClipStats` (16 bytes).
struct ClipStats {
    norm: f32,    // ‖g‖ of the last update, before clipping
    scale: f32,   // its factor (1: not clipped)
    fired: u32,   // updates clipped since the host last reset it
    updates: u32, // updates since then
}

const CLIP_WG: u32 = 256u;

@group(0) @binding(0) var<uniform> clip: Clip;
@group(0) @binding(1) var<storage, read_write> grads: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: ClipStats;

var<workgroup> w_sum: array<f32, CLIP_WG>;

// w_sum[0] = Σ w_sum, by halves: the same pairs in the same order every time.
fn tree_sum(lid: u32) {
    for (var s = CLIP_WG / 2u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (lid < s) {
            w_sum[lid] += w_sum[lid + s];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(CLIP_WG)
fn clip_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let stride = clip.groups * CLIP_WG;
    var acc = 0.0;
    for (var i = wid.x * CLIP_WG + lid; i < clip.count; i += stride) {
        let g = grads[i];
        acc += g * g;
    }
    w_sum[lid] = acc;
    tree_sum(lid);
    if (lid == 0u) {
        partials[wid.x] = w_sum[0];
    }
}

@compute @workgroup_size(CLIP_WG)
fn clip_finish(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var g = lid; g < clip.groups; g += CLIP_WG) {
        acc += partials[g];
    }
    w_sum[lid] = acc;
    tree_sum(lid);
    if (lid == 0u) {
        let norm = sqrt(w_sum[0]);
        let s = clip.max_norm / (norm + 1e-6);
        // A NaN norm compares false: the update is not scaled (as on the CPU).
        let scale = select(1.0, s, s < 1.0);
        stats.norm = norm;
        stats.scale = scale;
        stats.updates += 1u;
        if (scale < 1.0) {
            stats.fired += 1u;
        }
    }
}

@compute @workgroup_size(WG)
fn clip_apply(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    let scale = stats.scale;
    if (idx >= clip.count || !(scale < 1.0)) {
        return;
    }
    grads[idx] *= scale;
}
