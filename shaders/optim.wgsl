// optim.wgsl — the stateful optimizers over the whole parameter buffer (the
// device layout, padding included: zero gradients keep it zero)
// in one dispatch, after the gradients are in grads (twins: cpu::momentum_update,
// cpu::adam_update). decay[i] is λ for a weight and 0 for a bias or padding.
//   momentum_update  g ← g + λ·p;  v ← μ·v + g;  p ← p − lr·v
//   adam_update      m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;
//                    p ← p − lr·((m / bc1) / (√(v / bc2) + ε) + λ·p)
// bc1 = 1 − β1^t and bc2 = 1 − β2^t come from the host (computed in f64) in
// the per-step uniform, beside lr; the constants in hyper change only with the optimizer.
//
// | binding | name   | access             | shape                               |
// |---------|--------|--------------------|-------------------------------------|
// | 0       | hyper    | uniform Optim      |                                     |
// | 1       | per_step | uniform Step       |                                     |
// | 2       | params   | storage read_write | (count)                             |
// | 3       | grads    | storage read       | (count)                             |
// | 4       | decay    | storage read       | (count)                             |
// | 5       | state    | storage read_write | momentum v (count); adam m, v (2·count) |

@group(0) @binding(0) var<uniform> hyper: Optim;
@group(0) @binding(1) var<uniform> per_step: Step;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;
@group(0) @binding(4) var<storage, read> decay: array<f32>;
@group(0) @binding(5) var<storage, read_write> state: array<f32>;

@compute @workgroup_size(WG)
fn momentum_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_index(wid, nwg, lid);
    if (i >= hyper.count) {
        return;
    }
    let p = params[i];
    let g = grads[i] + decay[i] * p;
    let v = hyper.momentum * state[i] + g;
    state[i] = v;
    params[i] = p - per_step.lr * v;
}

@compute @workgroup_size(WG)
fn adam_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = linear_index(wid, nwg, lid);
    if (i >= hyper.count) {
        return;
    }
    let p = params[i];
    let g = grads[i];
    let m = hyper.beta1 * state[i] + (1.0 - hyper.beta1) * g;
    let v = hyper.beta2 * state[hyper.count + i] + (1.0 - hyper.beta2) * (g * g);
    state[i] = m;
    state[hyper.count + i] = v;
    let step = (m / per_step.bc1) / (sqrt(v / per_step.bc2) + hyper.eps);
    params[i] = p - per_step.lr * (step + decay[i] * p);
}
