//! Tiled product cores generated on the host, one per [`TileConfig`]: the
//! same contract as `shaders/tiled.wgsl` (the kernel file supplies
//! `tile_shape`, `a_at`, `b_at`, `tile_store`, the `*_ALONG_K` and `ROW_SUMS`
//! constants and `row_sum_store`), written as straight-line WGSL:
//! - tile sizes are constants, not pipeline overrides, so every index below is
//!   a constant expression plus the invocation's offset;
//! - the register block is unrolled into `tm · tn/4` `vec4` accumulators, and
//!   each K step into `bk` blocks of `tm/4 + tn/4` `vec4` workgroup reads and
//!   `tm · tn/4` `vec4` multiply-adds (a quarter of the scalar core's reads);
//! - each invocation owns groups of 4 contiguous rows and 4 contiguous columns
//!   (`vec4` number `ty + i·WG_Y` along M, `tx + j·WG_X` along N), so
//!   neighbouring invocations read neighbouring 16-byte words;
//! - the staged blocks are rows of `vec4` along M (A) and N (B), each padded
//!   by one `vec4`, so that a run of stores along K does not land on one bank;
//! - the staging loops are unrolled to `⌈bm·bk / threads⌉` guarded stores;
//! - global memory is read as `vec4`s where an operand's rows start on a
//!   `vec4` (its row length, and W's offset, multiples of 4: the kernel
//!   file's `a_vec4`, `b_vec4`) and the 4 elements lie inside the matrix and
//!   the K slice: an operand contiguous along M or N (the gradient's δ and
//!   A_prev, the hidden delta's W_next) one global `vec4` per staged `vec4`;
//!   one contiguous along K (the forward's A_prev and W, the hidden delta's
//!   δ_next) 4 global `vec4`s along K for 4 neighbouring rows, transposed in
//!   registers into 4 staged `vec4`s, where the block has such an item for
//!   every invocation (else idle invocations cost more than the loads
//!   save, as on lavapipe), or in every block with `:v4` (the tuner weighs
//!   it on GPUs, where a 16-byte load may be worth idle lanes); elsewhere
//!   guarded scalars;
//! - with register double buffering (`:db`), each invocation loads its share
//!   of the next K step into `vec4` registers right after the barrier that
//!   follows this step's stores, so that those global loads are in flight
//!   while it does this step's multiply-adds, and stores them into the
//!   tiles at the top of the next step. One set of tiles, two barriers per
//!   step as without: two sets would drop one barrier but double the
//!   workgroup memory, which the large tiles (a 128×128 block at BK 16 takes
//!   16.5 KiB) do not have within the 16 KiB of `Limits::default()`.
//!
//! Each output element still sums its K terms in ascending order, one
//! multiply-add each, as the scalar core and the CPU twin do. Configurations
//! need `tm` and `tn` multiples of 4 up to 16 ([`check`]); with more rows in
//! a block than invocations, each invocation sums several rows for the bias.

use super::kernels::{KernelConfig, KernelSpec, TileConfig};
use crate::error::{Error, Result};
use std::fmt::Write;

/// Largest `tm` and `tn` of a generated core.
pub const MAX_GEN_T: u32 = 16;

/// Whether `tiles` can be generated (safety condition 1 of unchecked
/// modules for a generated core): [`TileConfig::bounds`] up to
/// [`MAX_GEN_T`], `tm` and `tn` multiples of 4 (the `vec4` groups), `bk` a
/// multiple of 4 (operands along K are staged 4 k at a time).
pub fn check(tiles: &TileConfig) -> Result<()> {
    tiles.bounds(MAX_GEN_T)?;
    if !tiles.tm.is_multiple_of(4) || !tiles.tn.is_multiple_of(4) {
        return Err(Error::Invalid(format!(
            "tile configuration {tiles:?}: the generated kernels need tm and tn of 4, 8, 12 or 16"
        )));
    }
    if !tiles.bk.is_multiple_of(4) {
        return Err(Error::Invalid(format!(
            "tile configuration {tiles:?}: the generated kernels need bk a multiple of 4"
        )));
    }
    Ok(())
}

/// Bytes of workgroup memory of a generated core: both staged blocks, each
/// row padded by one `vec4`.
pub fn workgroup_bytes(t: &TileConfig) -> u32 {
    16 * t.bk * (t.bm() / 4 + 1 + t.bn() / 4 + 1)
}

/// The files of a tiled spec besides common.wgsl and tiled.wgsl (the
/// epilogue and what it shares), in the order of the spec's source.
macro_rules! files {
    ($($file:literal),+) => {
        concat!($(include_str!(concat!("../../shaders/", $file)), "\n"),+)
    };
}

/// Whether each operand of `spec`'s product, A then B, is contiguous
/// along K in memory (mirrors the kernel file's `A_ALONG_K`, `B_ALONG_K`):
/// it decides how a global `vec4` becomes staged `vec4`s ([`Operand`]).
fn along_k(spec: &KernelSpec) -> Result<[bool; 2]> {
    Ok(match spec.file {
        "forward_tiled.wgsl" | "output_tiled.wgsl" => [true, true],
        "delta_hidden_tiled.wgsl" => [true, false],
        "gradient_tiled.wgsl" => [false, false],
        other => {
            return Err(Error::Invalid(format!(
                "{other} has no generated product core"
            )))
        }
    })
}

/// The kernel files of a tiled spec (its epilogue, without tiled.wgsl).
fn kernel_file(spec: &KernelSpec) -> Result<&'static str> {
    Ok(match spec.file {
        "forward_tiled.wgsl" => files!("forward_product.wgsl", "forward_tiled.wgsl"),
        "output_tiled.wgsl" => files!(
            "reduce.wgsl",
            "totals.wgsl",
            "loss_row.wgsl",
            "softmax_row.wgsl",
            "finish_row.wgsl",
            "last_group.wgsl",
            "forward_product.wgsl",
            "output_tiled.wgsl"
        ),
        "delta_hidden_tiled.wgsl" => files!("delta_hidden_tiled.wgsl"),
        "gradient_tiled.wgsl" => files!("last_group.wgsl", "gradient_tiled.wgsl"),
        other => {
            return Err(Error::Invalid(format!(
                "{other} has no generated product core"
            )))
        }
    })
}

/// The whole source of `spec` with a core generated for `config`'s tiles,
/// its staging double-buffered in registers or not, its along-K operands
/// loaded transposed in every block (`:v4`) or where each invocation has an
/// item: common.wgsl, the core, the kernel file.
pub fn source(spec: &KernelSpec, config: &KernelConfig) -> Result<String> {
    let tiles = &config.tiles;
    check(tiles)?;
    let staging = Staging {
        double_buffer: config.double_buffer,
        k_vec4: config.k_vec4,
    };
    Ok(format!(
        "{}\n{}\n{}\n{}",
        include_str!("../../shaders/common.wgsl"),
        include_str!("../../shaders/tile_span.wgsl"),
        core(tiles, staging, along_k(spec)?),
        kernel_file(spec)?
    ))
}

/// The generated core for `t` (see the module docs). Shapes: A (M, K) staged
/// as `tile_a (BK, BM/4 + 1)` vec4, B (K, N) as `tile_b (BK, BN/4 + 1)` vec4;
/// accumulator `c{i}_{j}` holds rows `m0 + 4·(ty + (i/4)·WG_Y) + i%4` and
/// columns `n0 + 4·(tx + j·WG_X) + 0..4`. With `double_buffer`, staging
/// registers `s{a|b}{run}…` hold run `run`'s share of the next K step.
/// `along_k` says for A and B whether the operand is contiguous along K
/// (the private `Operand` gives how each is loaded).
pub fn core(t: &TileConfig, staging: Staging, along_k: [bool; 2]) -> String {
    let double_buffer = staging.double_buffer;
    let (wx, wy, tm, tn, bk) = (t.wg_x, t.wg_y, t.tm, t.tn, t.bk);
    let (bm, bn) = (t.bm(), t.bn());
    let threads = wx * wy;
    let (sa, sb) = (bm / 4 + 1, bn / 4 + 1);
    let (gm, gn) = (tm / 4, tn / 4);
    let mut s = String::new();
    let w = &mut s;
    // write! to a String cannot fail.
    let _ = writeln!(
        w,
        "// Generated tiled core: WG {wx}x{wy}, {tm}x{tn} per invocation, BK {bk}, double buffering {double_buffer} (src/gpu/codegen.rs).
const WG_X: u32 = {wx}u;
const WG_Y: u32 = {wy}u;
const BM: u32 = {bm}u;
const BN: u32 = {bn}u;
const BK: u32 = {bk}u;
var<workgroup> tile_a: array<vec4<f32>, {}>; // (BK, BM/4 + 1)
var<workgroup> tile_b: array<vec4<f32>, {}>; // (BK, BN/4 + 1)
var<private> tile_slice: u32;

fn tile_gemm(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) {{
    let shape = tile_shape();
    let m_len = shape.x;
    let n_len = shape.y;
    let span = tile_span(shape, wid, nwg);
    if (!span.live) {{
        return;
    }}
    tile_slice = wid.z;
    let k_begin = span.k_begin;
    let k_end = span.k_end;
    let m0 = span.m0;
    let n0 = span.n0;
    let tx = lid % WG_X;
    let ty = lid / WG_X;
    let row_sums = ROW_SUMS && n0 == 0u;",
        bk * sa,
        bk * sb
    );
    // Whether rows of each operand start on a vec4 (uniform).
    let _ = writeln!(
        w,
        "    let a_aligned = a_vec4();\n    let b_aligned = b_vec4();"
    );
    // Row sums: invocation lid sums rows lid + r·threads of the block.
    let sums = bm.div_ceil(threads);
    for r in 0..sums {
        let _ = writeln!(w, "    var rsum{r} = 0.0;");
    }
    for i in 0..tm {
        for j in 0..gn {
            let _ = writeln!(w, "    var c{i}_{j} = vec4<f32>();");
        }
    }
    let ops = [
        Operand {
            x: "a",
            idx: "m",
            len: bm,
            stride: sa,
            mode: Mode::of(along_k[0], bm, bk, threads, staging.k_vec4),
        },
        Operand {
            x: "b",
            idx: "n",
            len: bn,
            stride: sb,
            mode: Mode::of(along_k[1], bn, bk, threads, staging.k_vec4),
        },
    ];
    if double_buffer {
        // The staging registers, loaded one K step ahead.
        for op in &ops {
            for it in 0..op.runs(bk, threads) {
                for r in 0..op.regs() {
                    let _ = writeln!(w, "    var s{}{it}_{r} = vec4<f32>();", op.x);
                }
            }
        }
        let _ = writeln!(w, "    {{\n        let kb = k_begin;");
        for op in &ops {
            op.stage(w, bk, threads, Stage::Load);
        }
        let _ = writeln!(w, "    }}");
    }
    let _ = writeln!(w, "    for (var k0 = k_begin; k0 < k_end; k0 += BK) {{");
    if double_buffer {
        for op in &ops {
            op.stage(w, bk, threads, Stage::Store);
        }
        let _ = writeln!(w, "        workgroupBarrier();");
        // The next step's global loads, in flight during this step's FMAs.
        let _ = writeln!(w, "        {{\n        let kb = k0 + BK;");
        for op in &ops {
            op.stage(w, bk, threads, Stage::Load);
        }
        let _ = writeln!(w, "        }}");
    } else {
        let _ = writeln!(w, "        let kb = k0;");
        for op in &ops {
            op.stage(w, bk, threads, Stage::Through);
        }
        let _ = writeln!(w, "        workgroupBarrier();");
    }
    let _ = writeln!(w, "        if (row_sums) {{");
    for r in 0..sums {
        let _ = writeln!(
            w,
            "            let row{r} = min(lid + {}u, BM - 1u);",
            r * threads
        );
        for kk in 0..bk {
            let _ = writeln!(
                w,
                "            rsum{r} += tile_a[{}u + row{r} / 4u][row{r} % 4u];",
                kk * sa
            );
        }
    }
    let _ = writeln!(w, "        }}");
    let comp = ["x", "y", "z", "w"];
    for kk in 0..bk {
        let _ = writeln!(w, "        {{");
        for i in 0..gm {
            let _ = writeln!(
                w,
                "            let a{i} = tile_a[{}u + ty + {}u];",
                kk * sa,
                i * wy
            );
        }
        for j in 0..gn {
            let _ = writeln!(
                w,
                "            let b{j} = tile_b[{}u + tx + {}u];",
                kk * sb,
                j * wx
            );
        }
        for i in 0..tm {
            for j in 0..gn {
                let _ = writeln!(
                    w,
                    "            c{i}_{j} += a{}.{} * b{j};",
                    i / 4,
                    comp[(i % 4) as usize]
                );
            }
        }
        let _ = writeln!(w, "        }}");
    }
    let _ = writeln!(w, "        workgroupBarrier();\n    }}");
    for i in 0..tm {
        let _ = writeln!(
            w,
            "    {{\n        let m = m0 + 4u * (ty + {}u) + {}u;",
            (i / 4) * wy,
            i % 4
        );
        for j in 0..gn {
            for (c, name) in comp.iter().enumerate() {
                let _ = writeln!(
                    w,
                    "        {{ let n = n0 + 4u * (tx + {}u) + {c}u; if (m < m_len && n < n_len) {{ tile_store(m, n, c{i}_{j}.{name}); }} }}",
                    j * wx
                );
            }
        }
        let _ = writeln!(w, "    }}");
    }
    // Rows past the block (clamped above) are not stored.
    for r in 0..sums {
        let _ = writeln!(
            w,
            "    if (row_sums && lid + {o}u < BM && m0 + lid + {o}u < m_len) {{
        row_sum_store(m0 + lid + {o}u, rsum{r});
    }}",
            o = r * threads
        );
    }
    let _ = writeln!(w, "}}");
    s
}

/// One operand of the product as the staging sees it: its block of `len`
/// rows (`idx` = m of A, n of B) by `bk` at K step `kb` (a `let` in scope),
/// staged into `tile_{x}` as rows of `stride` `vec4`s, each `vec4` 4
/// neighbours along M or N at one k. Loads read the kernel file's
/// `{x}_at` (one element) and, where `{x}_aligned`, `{x}_at4` (4 contiguous
/// elements: along K where `along_k`, else along M or N), never outside
/// the matrix or the K slice; stores are whole `vec4`s, where a scalar one
/// into a lane-dependent component took llvmpipe a read-modify-write each.
/// How the items of the block are loaded ([`Mode`]).
struct Operand {
    x: &'static str,
    idx: &'static str,
    len: u32,
    stride: u32,
    mode: Mode,
}

/// How a generated core stages its operands (the optional fields of a
/// [`KernelConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Staging {
    /// `:db`: register double buffering.
    pub double_buffer: bool,
    /// `:v4`: operands contiguous along K loaded as transposed `vec4`s in
    /// every block, some invocations idle where the block has fewer items.
    pub k_vec4: bool,
}

/// How an operand's block is loaded, by its orientation.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Contiguous along M or N: item `e` is group `g = e % (len/4)` at
    /// `k = e / (len/4)` (neighbouring invocations read neighbouring
    /// words): one global `vec4` where aligned and the group is inside,
    /// else 4 guarded scalars; one store.
    Across,
    /// Contiguous along K, with an item of 4 k for every invocation: item
    /// `e` is group `g = e / (bk/4)` at `k = 4·(e % (bk/4))`, its 4 rows' 4
    /// elements along K, one global `vec4` per row where aligned and whole
    /// (else guarded scalars), transposed in registers into 4 stores.
    Transposed,
    /// Contiguous along K, with fewer such items than invocations (small
    /// blocks): item `e` is group `g = e / bk` at `k = e % bk`, 4 guarded
    /// scalars; one store. On lavapipe W1's 32×32-block output layer took
    /// 11.5 ms transposed against 8.0 with every invocation loading.
    Scalar,
}

impl Mode {
    /// The mode of a `len × bk` block, contiguous `along_k` or not, staged
    /// by `threads` invocations; `transposed` whatever the idle lanes.
    fn of(along_k: bool, len: u32, bk: u32, threads: u32, transposed: bool) -> Mode {
        if !along_k {
            Mode::Across
        } else if transposed || len / 4 * (bk / 4) >= threads {
            Mode::Transposed
        } else {
            Mode::Scalar
        }
    }
}

/// What a run of staging code does with each item of a K step.
#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// Load from global memory and store into the tile.
    Through,
    /// Load into the staging registers `s{x}{run}_{r}` (double buffering).
    Load,
    /// Store the staging registers into the tile.
    Store,
}

impl Operand {
    /// `vec4`s of loaded values per item.
    fn regs(&self) -> u32 {
        if self.mode == Mode::Transposed {
            4
        } else {
            1
        }
    }

    /// Items of a block: `vec4` groups by k (by 4 k along K).
    fn items(&self, bk: u32) -> u32 {
        let groups = self.len / 4;
        if self.mode == Mode::Transposed {
            groups * (bk / 4)
        } else {
            groups * bk
        }
    }

    /// Runs of `threads` items that stage a block.
    fn runs(&self, bk: u32, threads: u32) -> u32 {
        self.items(bk).div_ceil(threads)
    }

    /// Element `(i, k)` of the operand, `i` along its block (m or n).
    fn at(&self, i: &str, k: &str) -> String {
        match self.x {
            "a" => format!("a_at(m0 + {i}, {k})"),
            _ => format!("b_at({k}, n0 + {i})"),
        }
    }

    /// The 4 contiguous elements from `(i, k)`.
    fn at4(&self, i: &str, k: &str) -> String {
        match self.x {
            "a" => format!("a_at4(m0 + {i}, {k})"),
            _ => format!("b_at4({k}, n0 + {i})"),
        }
    }

    /// Whether `i` along the block is inside the matrix.
    fn inside(&self, i: &str) -> String {
        match self.x {
            "a" => format!("m0 + {i} < m_len"),
            _ => format!("n0 + {i} < n_len"),
        }
    }

    /// The unrolled staging of the block at K step `kb`, zero outside the
    /// matrix and the slice (see [`Operand`]).
    fn stage(&self, w: &mut String, bk: u32, threads: u32, what: Stage) {
        let Operand { x, len, stride, .. } = self;
        let groups = len / 4;
        let total = self.items(bk);
        for it in 0..self.runs(bk, threads) {
            let _ = writeln!(
                w,
                "        {{\n            let e = lid + {}u;",
                it * threads
            );
            let guard = (it + 1) * threads > total;
            if guard {
                let _ = writeln!(w, "            if (e < {total}u) {{");
            }
            let _ = match self.mode {
                Mode::Across => writeln!(
                    w,
                    "            let g = e % {groups}u;\n            let k = e / {groups}u;"
                ),
                Mode::Transposed => writeln!(
                    w,
                    "            let g = e / {q}u;\n            let k = 4u * (e % {q}u);",
                    q = bk / 4
                ),
                Mode::Scalar => writeln!(
                    w,
                    "            let g = e / {bk}u;\n            let k = e % {bk}u;"
                ),
            };
            let regs = self.regs();
            let reg = |r: u32| match what {
                Stage::Through => format!("v{r}"),
                _ => format!("s{x}{it}_{r}"),
            };
            if what != Stage::Store {
                for r in 0..regs {
                    if what == Stage::Through {
                        let _ = writeln!(w, "            var v{r} = vec4<f32>();");
                    } else {
                        let _ = writeln!(w, "            {} = vec4<f32>();", reg(r));
                    }
                }
                self.load(w, &reg);
            }
            if what == Stage::Load {
                // Stored at the top of the next step.
            } else if self.mode == Mode::Transposed {
                // Row r of item g holds (4g + r, k..k+4): lane j of each
                // row is the vec4 of the 4 rows at k + j.
                for j in 0..4 {
                    let _ = writeln!(
                        w,
                        "            tile_{x}[(k + {j}u) * {stride}u + g] = vec4<f32>({}[{j}], {}[{j}], {}[{j}], {}[{j}]);",
                        reg(0),
                        reg(1),
                        reg(2),
                        reg(3)
                    );
                }
            } else {
                let _ = writeln!(w, "            tile_{x}[k * {stride}u + g] = {};", reg(0));
            }
            if guard {
                let _ = writeln!(w, "            }}");
            }
            let _ = writeln!(w, "        }}");
        }
    }

    /// The loads of one item into `reg(r)`, zero-initialised.
    fn load(&self, w: &mut String, reg: &dyn Fn(u32) -> String) {
        let Operand { x, idx, .. } = self;
        if self.mode == Mode::Transposed {
            // Rows 4g + r, k..k+4: a vec4 each where the 4 are in the slice.
            let _ = writeln!(
                w,
                "            let kk = kb + k;\n            let whole = {x}_aligned && kk + 3u < k_end;"
            );
            for r in 0..4 {
                let i = format!("4u * g + {r}u");
                let _ = writeln!(w, "            if ({}) {{", self.inside(&i));
                let _ = writeln!(
                    w,
                    "                if (whole) {{ {} = {}; }} else {{",
                    reg(r),
                    self.at4(&i, "kk")
                );
                for j in 0..4 {
                    let _ = writeln!(
                        w,
                        "                    if (kk + {j}u < k_end) {{ {}[{j}] = {}; }}",
                        reg(r),
                        self.at(&i, &format!("kk + {j}u"))
                    );
                }
                let _ = writeln!(w, "                }}\n            }}");
            }
        } else {
            // Group g at k: (Across) a vec4 where its 4 are inside the matrix.
            let _ = writeln!(w, "            if (kb + k < k_end) {{");
            let across = self.mode == Mode::Across;
            if across {
                let _ = writeln!(
                    w,
                    "                if ({x}_aligned && {}) {{ {} = {}; }} else {{",
                    self.inside("4u * g + 3u"),
                    reg(0),
                    self.at4("4u * g", "kb + k")
                );
            }
            for c in 0..4 {
                let _ = writeln!(
                    w,
                    "                    {{ let {idx} = 4u * g + {c}u; if ({}) {{ {}[{c}] = {}; }} }}",
                    self.inside(idx),
                    reg(0),
                    self.at(idx, "kb + k")
                );
            }
            if across {
                let _ = writeln!(w, "                }}");
            }
            let _ = writeln!(w, "            }}");
        }
    }
}
