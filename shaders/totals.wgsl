// totals.wgsl — a batch added to the totals `acc`, prepended by the host to
// the kernel files that declare `acc: Acc` read_write (loss.wgsl,
// loss_finish.wgsl, output_tiled.wgsl).

// Add to `acc`, in place, a batch of `rows` samples whose losses add to
// `loss`, `correct` of them scored correct. In place, field by field, not
// through a copy of Acc: a copy is a 1 KiB private array, which llvmpipe kept
// in memory for the whole kernel (the fused output kernel ran ~3× slower).
fn totals_add(rows: u32, loss: f32, correct: u32) {
    acc.loss_slots[acc.steps % ACC_SLOTS] += loss;
    acc.samples += rows;
    acc.correct += correct;
    acc.steps += 1u;
}
