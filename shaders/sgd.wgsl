// sgd.wgsl — plain SGD over the whole parameter buffer (the device layout,
// padding included: its gradients are zero) in one dispatch:
//   p −= lr · g
// Params and grads share one layout, so every layer is updated at once.
//
// | binding | name     | access             | shape         |
// |---------|----------|--------------------|---------------|
// | 0       | hyper    | uniform Optim      | (count only)  |
// | 1       | per_step | uniform Step       | (lr only)     |
// | 2       | params   | storage read_write | (device count) |
// | 3       | grads    | storage read       | (device count) |

@group(0) @binding(0) var<uniform> hyper: Optim;
@group(0) @binding(1) var<uniform> per_step: Step;
@group(0) @binding(2) var<storage, read_write> params: array<f32>;
@group(0) @binding(3) var<storage, read> grads: array<f32>;

@compute @workgroup_size(WG)
fn sgd_update(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= hyper.count) {
        return;
    }
    params[idx] -= per_step.lr * grads[idx];
}
