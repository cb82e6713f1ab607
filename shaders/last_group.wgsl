// last_group.wgsl — the last-workgroup pattern, prepended by the host to the
// kernel files that declare `counters: array<atomic<u32>>` (output_tiled.wgsl,
// gradient_tiled.wgsl): of `total` workgroups that each stored their share,
// the last to count itself at counters[slot] finishes the work (adds the
// shares in a fixed order), so no second dispatch and no float atomics are
// needed. The last one resets the counter to 0 for the next dispatch.

var<workgroup> w_last: u32;

// Whether this workgroup is the last of `total` at counters[slot]. Call from
// uniform control flow after this workgroup's shares are stored: the first
// barrier makes them visible before the count (naga emits storageBarrier with
// device memory scope), the second makes the others' visible to the last.
fn last_to_finish(slot: u32, total: u32, lid: u32) -> bool {
    storageBarrier();
    if (lid == 0u) {
        let done = atomicAdd(&counters[slot], 1u) + 1u;
        w_last = select(0u, 1u, done == total);
        if (done == total) {
            atomicStore(&counters[slot], 0u);
        }
    }
    let last = workgroupUniformLoad(&w_last) == 1u;
    storageBarrier();
    return last;
}
