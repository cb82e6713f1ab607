// tiled.wgsl — the tiled matrix-product core shared by every *_tiled kernel,
// prepended by the host (after common.wgsl). It computes C = A·B, with
// A (M, K) and B (K, N), and hands each C[m, n] to the kernel's epilogue.
// A kernel file supplies, at module scope:
//   fn tile_shape() -> vec3<u32>            (M, N, K)
//   fn a_at(m: u32, k: u32) -> f32          A[m, k]; called only in range
//   fn b_at(k: u32, n: u32) -> f32          B[k, n]; called only in range
//   const A_ALONG_K: bool                   A's memory is contiguous along k (else along m)
//   const B_ALONG_K: bool                   B's memory is contiguous along k (else along n)
//   fn tile_store(m: u32, n: u32, c: f32)   the epilogue for C[m, n]
//   const ROW_SUMS: bool                    also compute Σ_k A[m, k] ...
//   fn row_sum_store(m: u32, s: f32)        ... and hand it here (first N-tile only)
//
// A workgroup of WG_X × WG_Y invocations computes a BM × BN block of C
// (BM = WG_Y·TM, BN = WG_X·TN), stepping through K by BK with both operand
// blocks staged in workgroup memory. Each invocation keeps a TM × TN block of C
// in registers, its rows WG_Y apart and its columns WG_X apart, so neighbouring
// invocations read neighbouring workgroup-memory words and store neighbouring
// outputs. Blocks are numbered along N first and the numbers folded into a 2-D
// grid, because one grid dimension holds at most 65535 workgroups.
//
// Split K: the grid's z dimension cuts K into that many slices (whole BK
// steps), one workgroup per block and slice; tile_slice tells the epilogue
// which slice its partial sums belong to, for a fixed-order reduction after.
//
// Tile sizes are pipeline-overridable; the host sets them per adapter
// (`TileConfig` in src/gpu/kernels.rs).

override WG_X: u32 = 8u; // invocations along N
override WG_Y: u32 = 8u; // invocations along M
override TM: u32 = 4u;   // outputs per invocation along M (at most MAX_T)
override TN: u32 = 4u;   // outputs per invocation along N (at most MAX_T)
override BK: u32 = 8u;   // depth of one K step

// Register blocks are sized for the largest TM, TN; loops run to TM, TN.
const MAX_T: u32 = 8u;

override BM: u32 = WG_Y * TM;
override BN: u32 = WG_X * TN;
// Row strides of the staged blocks: one word of padding, so that a run of
// stores along k does not land on one memory bank.
override SA: u32 = WG_Y * TM + 1u;
override SB: u32 = WG_X * TN + 1u;

var<workgroup> tile_a: array<f32, BK * SA>; // A block, (BK, BM) at stride SA
var<workgroup> tile_b: array<f32, BK * SB>; // B block, (BK, BN) at stride SB

// The K slice this workgroup sums (wid.z of nwg.z).
var<private> tile_slice: u32;

fn tile_gemm(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {
    let shape = tile_shape();
    let m_len = shape.x;
    let n_len = shape.y;
    let span = tile_span(shape, wid, nwg);
    // Whole workgroups past the last block (grid folding) leave together.
    if (!span.live) {
        return;
    }
    tile_slice = wid.z;
    let k_begin = span.k_begin;
    let k_end = span.k_end;
    let m0 = span.m0;
    let n0 = span.n0;
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let threads = WG_X * WG_Y;
    // Invocation `lid` of a first-N-tile block sums row m0 + lid of A.
    let row_sums = ROW_SUMS && n0 == 0u && lid < BM;

    var acc: array<f32, MAX_T * MAX_T>; // C block, (TM, TN) at stride MAX_T
    var ar: array<f32, MAX_T>;
    var br: array<f32, MAX_T>;
    var rsum = 0.0;
    for (var k0 = k_begin; k0 < k_end; k0 += BK) {
        // Stage A (BM × BK) and B (BK × BN), zero outside the matrices.
        // Consecutive invocations take consecutive addresses of global memory.
        for (var e = lid; e < BM * BK; e += threads) {
            var m = e % BM;
            var k = e / BM;
            if (A_ALONG_K) {
                k = e % BK;
                m = e / BK;
            }
            var v = 0.0;
            if (m0 + m < m_len && k0 + k < k_end) {
                v = a_at(m0 + m, k0 + k);
            }
            tile_a[k * SA + m] = v;
        }
        for (var e = lid; e < BN * BK; e += threads) {
            var n = e % BN;
            var k = e / BN;
            if (B_ALONG_K) {
                k = e % BK;
                n = e / BK;
            }
            var v = 0.0;
            if (n0 + n < n_len && k0 + k < k_end) {
                v = b_at(k0 + k, n0 + n);
            }
            tile_b[k * SB + n] = v;
        }
        workgroupBarrier();
        if (row_sums) {
            for (var kk = 0u; kk < BK; kk++) {
                rsum += tile_a[kk * SA + lid];
            }
        }
        for (var kk = 0u; kk < BK; kk++) {
            for (var i = 0u; i < TM; i++) {
                ar[i] = tile_a[kk * SA + ty + i * WG_Y];
            }
            for (var j = 0u; j < TN; j++) {
                br[j] = tile_b[kk * SB + tx + j * WG_X];
            }
            for (var i = 0u; i < TM; i++) {
                for (var j = 0u; j < TN; j++) {
                    acc[i * MAX_T + j] += ar[i] * br[j];
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM; i++) {
        let m = m0 + ty + i * WG_Y;
        for (var j = 0u; j < TN; j++) {
            let n = n0 + tx + j * WG_X;
            if (m < m_len && n < n_len) {
                tile_store(m, n, acc[i * MAX_T + j]);
            }
        }
    }
    if (row_sums && m0 + lid < m_len) {
        row_sum_store(m0 + lid, rsum);
    }
}
