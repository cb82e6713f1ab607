// tile_span.wgsl — the output block and K slice one workgroup of a tiled
// product owns, shared by both cores (tiled.wgsl and the generated ones of
// src/gpu/codegen.rs, which declare BM, BN and BK); the host launches them
// with grid_tiled (blocks folded into x·y) and k_splits (slices along z).
struct TileSpan {
    // False for a whole workgroup past the last block (grid folding).
    live: bool,
    // The block's first row and column.
    m0: u32,
    n0: u32,
    // This slice's K range: whole BK steps, the last slice shorter or empty.
    k_begin: u32,
    k_end: u32,
}

// shape: (M, N, K) of the product.
fn tile_span(shape: vec3<u32>, wid: vec3<u32>, nwg: vec3<u32>) -> TileSpan {
    let tiles_n = (shape.y + BN - 1u) / BN;
    let tiles_m = (shape.x + BM - 1u) / BM;
    let tile = wid.y * nwg.x + wid.x;
    let k_step = ((shape.z + nwg.z - 1u) / nwg.z + BK - 1u) / BK * BK;
    let k_begin = min(shape.z, wid.z * k_step);
    return TileSpan(
        tile < tiles_n * tiles_m,
        (tile / tiles_n) * BM,
        (tile % tiles_n) * BN,
        k_begin,
        min(shape.z, k_begin + k_step),
    );
}
