// dropout_keep.wgsl — appended to dropout.wgsl (its uniform, `values` and
// `mask`): `dropout_apply` that first copies each value to `undropped`. A
// layer whose activation derivative is taken from its output (sigmoid,
// tanh) keeps its outputs from before the mask this way, and a training
// step's hidden delta binds `undropped` as its A.
//
// | binding | name      | access             | shape     |
// |---------|-----------|--------------------|-----------|
// | 0       | drop      | uniform Drop       |           |
// | 1       | values    | storage read_write | (rows, n) |
// | 2       | undropped | storage read_write | (rows, n) |

@group(0) @binding(2) var<storage, read_write> undropped: array<f32>;

@compute @workgroup_size(WG)
fn dropout_keep(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = linear_index(wid, nwg, lid);
    if (idx >= drop.rows * drop.n) {
        return;
    }
    undropped[idx] = values[idx];
    mask(idx);
}
