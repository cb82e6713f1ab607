//! Every GPU kernel against its CPU twin (computed in f64) on random data,
//! driven by one table of kernel sets and products: the simple kernels, and
//! the tiled ones with the small (CPU adapter) and the discrete-GPU tile
//! sizes. Products are odd sizes that are not multiples of any workgroup or
//! tile, smaller and larger than one block, with batch 1, K = 1 and one
//! neuron; every activation and both losses. Outputs start poisoned with NaN
//! (see `gpu::runner`), so an element a kernel never wrote fails, and every
//! comparison is `abs + rel·|ref|` and names where and by how much.
//! Every set runs twice, its modules built with naga's runtime checks and
//! without (the default; `GpuOptions::checked`), set through the library so
//! that no test depends on `SHADERTRAIN_CHECKED`.
//! Special cases (argmax ties, grids beyond one dimension, tile limits) are
//! their own tests at the end.

mod common;

use common::*;
use shadertrain::backend::Metric;
use shadertrain::cpu;
use shadertrain::gpu::{Acc, KernelConfig, KernelRunner, TileConfig};
use shadertrain::network::{Activation, Loss};

/// A matrix product `(M, N, K)`: each kernel reads it in its own roles,
/// forward `(batch, n_out, n_in)`, δ_hidden `(batch, n, n_next)`, gradients
/// `(n_out, n_in, batch)`, so that K is always the summed dimension.
type Product = (usize, usize, usize);

/// Which kernels a runner is asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Set {
    Simple,
    Tiled(&'static str, KernelConfig),
}

/// Lavapipe's choice: 16×8 per invocation on 8×8 invocations (128×64
/// blocks), two bias rows per invocation.
const WIDE: TileConfig = TileConfig {
    wg_x: 8,
    wg_y: 8,
    tm: 16,
    tn: 8,
    bk: 8,
};

/// A generated configuration unlike the built-in ones: 4×8 per invocation
/// on 8×16 invocations (64×32 blocks), K steps of 16.
const TALL: TileConfig = TileConfig {
    wg_x: 4,
    wg_y: 16,
    tm: 4,
    tn: 8,
    bk: 16,
};

/// A generated configuration whose blocks have an item of 4 k for every
/// invocation in both operands (8×16 × 16 on 4×4 invocations): the only one
/// in the table whose forward product reads W as `vec4`s along K
/// (codegen's transposed loads), at a padded stride or an aligned width.
const NARROW: TileConfig = TileConfig {
    wg_x: 4,
    wg_y: 4,
    tm: 4,
    tn: 8,
    bk: 16,
};

/// The layer sizes and batches the simple kernels were always checked on:
/// one neuron, two, and odd widths up to 257, batch 1 to 64.
const LAYERS: &[&[usize]] = &[
    &[1, 1, 1],
    &[2, 2, 2],
    &[3, 7, 5],
    &[17, 33, 9],
    &[100, 257, 10],
];
const BATCHES: &[usize] = &[1, 7, 64];

/// Tiled products: one element, K = 1, inside one block, across blocks in M
/// and N (the discrete block is 128 × 128), K over several BK steps.
const TILED: &[Product] = &[
    (1, 1, 1),
    (7, 5, 3),
    (33, 17, 1),
    (1, 131, 70),
    (130, 129, 9),
    (65, 40, 203),
    // Both widths multiples of 4 (of no tile): the gradient's vec4 loads.
    (36, 44, 37),
];

/// Products run again with W's rows padded with NaN (`with_padded_rows`,
/// the alignment beside each): a stride of a multiple of 4, as the
/// backend's device layout has, where the products read W as vec4s (widths
/// odd and multiples of 4), and an odd stride, read a float at a time.
const PADDED: &[(Product, usize)] = &[((7, 5, 3), 4), ((36, 44, 37), 4), ((33, 17, 2), 1)];

/// Per kernel set: its products and its tolerances `(abs, abs_forward, rel)`
/// for f32 against an f64 reference. Forward outputs get a wider `abs`: the
/// rounding of a sum that cancels near 0 reaches a few 1e-6, which sigmoid's
/// slope (≤ 1/4) hides and relu, tanh and linear pass through.
struct Row {
    set: Set,
    /// Modules built with naga's runtime checks.
    checked: bool,
    products: Vec<Product>,
    abs: f64,
    abs_forward: f64,
}
const REL: f64 = 1e-4;

/// The table. The simple kernels' products are every layer of [`LAYERS`] at
/// every batch of [`BATCHES`], in each kernel's roles.
fn table() -> Vec<Row> {
    let mut simple = Vec::new();
    for sizes in LAYERS {
        for w in sizes.windows(2) {
            for &batch in BATCHES {
                for p in [
                    (batch, w[1], w[0]), // forward
                    (batch, w[0], w[1]), // δ_hidden
                    (w[1], w[0], batch), // gradients
                ] {
                    if !simple.contains(&p) {
                        simple.push(p);
                    }
                }
            }
        }
    }
    let loops = KernelConfig::loops;
    let tiled = |name, config, checked| Row {
        set: Set::Tiled(name, config),
        checked,
        products: TILED.to_vec(),
        abs: 5e-6,
        abs_forward: 2e-5,
    };
    [false, true]
        .into_iter()
        .flat_map(|checked| {
            [
                Row {
                    set: Set::Simple,
                    checked,
                    products: simple.clone(),
                    abs: 2e-6,
                    abs_forward: 1e-5,
                },
                tiled("loops small", loops(TileConfig::SMALL), checked),
                tiled("loops discrete", loops(TileConfig::DISCRETE), checked),
                tiled(
                    "gen small",
                    KernelConfig::generated(TileConfig::SMALL),
                    checked,
                ),
                tiled(
                    "gen discrete",
                    KernelConfig::generated(TileConfig::DISCRETE),
                    checked,
                ),
                tiled("gen 4x8 k16", KernelConfig::generated(TALL), checked),
                tiled("gen 16x8", KernelConfig::generated(WIDE), checked),
                tiled("gen 4x8 wg16", KernelConfig::generated(NARROW), checked),
                // Double-buffered: the same sums (bitwise: db_matches_single_buffer).
                tiled(
                    "gen small db",
                    KernelConfig::generated(TileConfig::SMALL).with_double_buffer(true),
                    checked,
                ),
                tiled(
                    "gen discrete db",
                    KernelConfig::generated(TileConfig::DISCRETE).with_double_buffer(true),
                    checked,
                ),
                tiled(
                    "gen 4x8 k16 db",
                    KernelConfig::generated(TALL).with_double_buffer(true),
                    checked,
                ),
                tiled(
                    "gen 16x8 db",
                    KernelConfig::generated(WIDE).with_double_buffer(true),
                    checked,
                ),
                // Transposed vec4 loads along K in blocks with idle
                // invocations (:v4; bitwise the same sums as without).
                tiled(
                    "gen small v4",
                    KernelConfig::generated(TileConfig::SMALL).with_k_vec4(true),
                    checked,
                ),
                tiled(
                    "gen discrete db v4",
                    KernelConfig::generated(TileConfig::DISCRETE)
                        .with_double_buffer(true)
                        .with_k_vec4(true),
                    checked,
                ),
            ]
        })
        .collect()
}

/// One case of the table, as a comparison function sees it.
struct Case<'a> {
    r: &'a KernelRunner,
    set: Set,
    p: Product,
    abs: f64,
    abs_forward: f64,
    label: String,
}

impl Case<'_> {
    fn tiled(&self) -> bool {
        matches!(self.set, Set::Tiled(..))
    }
}

/// The runner of row `i` of the table, compiled once for every test of this
/// binary (the generated cores take LLVM a while on lavapipe).
fn runner(
    ctx: &std::sync::Arc<shadertrain::GpuContext>,
    i: usize,
    row: &Row,
) -> std::sync::Arc<KernelRunner> {
    static RUNNERS: std::sync::Mutex<Vec<Option<std::sync::Arc<KernelRunner>>>> =
        std::sync::Mutex::new(Vec::new());
    let mut all = RUNNERS.lock().unwrap_or_else(|e| e.into_inner());
    if all.len() <= i {
        all.resize(i + 1, None);
    }
    let config = match row.set {
        Set::Simple => None,
        Set::Tiled(_, config) => Some(config),
    };
    all[i]
        .get_or_insert_with(|| {
            std::sync::Arc::new(
                KernelRunner::with_checks(ctx.clone(), config, row.checked).unwrap(),
            )
        })
        .clone()
}

/// Run `check` on every product of every kernel set in `sets` (`None`: all).
fn twins(test: &str, sets: Option<fn(Set) -> bool>, mut check: impl FnMut(&Case)) {
    let Some(ctx) = gpu_or_skip(test) else { return };
    for (i, row) in table().into_iter().enumerate() {
        if !sets.is_none_or(|keep| keep(row.set)) {
            continue;
        }
        let r = runner(&ctx, i, &row);
        assert_eq!(r.checked(), row.checked);
        let checks = if row.checked { "checked" } else { "unchecked" };
        let set = match row.set {
            Set::Simple => format!("simple {checks}"),
            Set::Tiled(name, _) => format!("tiled {name} {checks}"),
        };
        let plain = row.products.iter().map(|&p| (p, None));
        let padded = PADDED.iter().map(|&(p, align)| (p, Some(align)));
        for (p, align) in plain.chain(padded) {
            let (r, rows) = match align {
                None => ((*r).clone(), String::new()),
                Some(a) => (r.with_padded_rows(a), format!(" W rows padded to {a}")),
            };
            check(&Case {
                r: &r,
                set: row.set,
                p,
                abs: row.abs,
                abs_forward: row.abs_forward,
                label: format!("{test} {set}{rows} (M, N, K) {p:?}"),
            });
        }
    }
}

const SIMPLE_ONLY: Option<fn(Set) -> bool> = Some(|s| s == Set::Simple);
const TILED_ONLY: Option<fn(Set) -> bool> = Some(|s| s != Set::Simple);

/// Every activation; softmax runs `softmax_forward` after the product.
#[test]
fn forward_dense_matches_cpu() {
    twins("forward_dense", None, |c| {
        let (batch, n_out, n_in) = c.p;
        for act in Activation::ALL {
            let label = format!("{} {act:?} A ({n_in}->{n_out})", c.label);
            let mut g = rng(&label);
            let x = random(&mut g, batch * n_in, -1.0, 1.0);
            let w = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let got = if c.tiled() {
                c.r.forward_dense_tiled(&x, &w, &b, batch, n_in, n_out, act)
            } else {
                c.r.forward_dense(&x, &w, &b, batch, n_in, n_out, act)
            }
            .unwrap();
            let mut want = vec![0.0; batch * n_out];
            let (x, w, b) = (f64s(&x), f64s(&w), f64s(&b));
            cpu::forward_dense(&x, &w, &b, &mut want, batch, n_in, n_out, act);
            assert_close(&label, &got, &want, c.abs_forward, REL);
        }
    });
}

#[test]
fn delta_hidden_matches_cpu() {
    twins("delta_hidden", None, |c| {
        let (batch, n, n_next) = c.p;
        for act in HIDDEN {
            let label = format!("{} {act:?} δ_hidden ({n}<-{n_next})", c.label);
            let mut g = rng(&label);
            let w_next = random(&mut g, n_next * n, -1.0, 1.0);
            let dn = random(&mut g, batch * n_next, -0.25, 0.25);
            let a = activated(&mut g, act, batch, n);
            let got = if c.tiled() {
                c.r.delta_hidden_tiled(&w_next, &dn, &a, batch, n, n_next, act)
            } else {
                c.r.delta_hidden(&w_next, &dn, &a, batch, n, n_next, act)
            }
            .unwrap();
            let mut want = vec![0.0; batch * n];
            let (w_next, dn, a) = (f64s(&w_next), f64s(&dn), f64s(&a));
            cpu::delta_hidden(&w_next, &dn, &a, &mut want, batch, n, n_next, act);
            assert_close(&label, &got, &want, c.abs, REL);
        }
    });
}

/// K slices of the tiled gradient products: none, and three (some of them
/// empty where K is short), added by the reduce kernels.
const SPLITS: [u32; 2] = [1, 3];

/// The simple kernels compute ∂W and ∂b apart; the tiled ones together,
/// stored and accumulated onto earlier values (micro-batches), K split or not.
#[test]
fn gradients_match_cpu() {
    twins("gradients", None, |c| {
        let (n_out, n_in, batch) = c.p;
        let mut g = rng(&c.label);
        let d = random(&mut g, batch * n_out, -0.25, 0.25);
        let a = random(&mut g, batch * n_in, 0.01, 0.99);
        let mut want = vec![0.0; n_out * n_in + n_out];
        let (gw, gb) = want.split_at_mut(n_out * n_in);
        cpu::gradient_dense(&f64s(&d), &f64s(&a), gw, gb, batch, n_in, n_out);
        let label = format!("{} ({n_in}->{n_out})", c.label);
        if !c.tiled() {
            let got = c.r.gradient_weights(&d, &a, batch, n_in, n_out).unwrap();
            assert_close(&format!("{label} ∂W"), &got, gw, c.abs, REL);
            let got = c.r.gradient_bias(&d, batch, n_out).unwrap();
            assert_close(&format!("{label} ∂b"), &got, gb, c.abs, REL);
            return;
        }
        let onto = random(&mut g, n_out * n_in + n_out, -1.0, 1.0);
        let summed: Vec<f64> = want.iter().zip(&onto).map(|(w, &o)| w + o as f64).collect();
        for splits in SPLITS {
            let label = format!("{label} splits {splits}");
            let got =
                c.r.gradient_dense_tiled(&d, &a, batch, n_in, n_out, None, splits);
            assert_close(&format!("{label} ∂W, ∂b"), &got.unwrap(), &want, c.abs, REL);
            let got =
                c.r.gradient_dense_tiled(&d, &a, batch, n_in, n_out, Some(&onto), splits);
            let what = format!("{label} onto + ∂W, ∂b");
            assert_close(&what, &got.unwrap(), &summed, c.abs, REL);
        }
    });
}

/// The tiled gradient product fused with the SGD step.
#[test]
fn gradient_sgd_matches_cpu() {
    twins("gradient_sgd", TILED_ONLY, |c| {
        let (n_out, n_in, batch) = c.p;
        for splits in SPLITS {
            let label = format!("{} ({n_in}->{n_out}) splits {splits}", c.label);
            let mut g = rng(&label);
            let d = random(&mut g, batch * n_out, -0.25, 0.25);
            let a = random(&mut g, batch * n_in, 0.01, 0.99);
            let w = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let lr = 0.7f32;
            let got =
                c.r.gradient_sgd_tiled(&d, &a, &w, &b, lr, batch, n_in, n_out, splits)
                    .unwrap();
            let (mut ww, mut wb) = (f64s(&w), f64s(&b));
            let (d, a) = (f64s(&d), f64s(&a));
            cpu::gradient_sgd(&d, &a, &mut ww, &mut wb, lr as f64, batch, n_in, n_out);
            ww.extend(wb);
            assert_close(&format!("{label} W, b after SGD"), &got, &ww, c.abs, REL);
        }
    });
}

/// Logits far apart (e^80 overflows f32): the max subtraction keeps rows
/// finite. Rows of width N, M of them.
#[test]
fn softmax_forward_matches_cpu() {
    twins("softmax_forward", SIMPLE_ONLY, |c| {
        let (batch, n, _) = c.p;
        let mut g = rng(&c.label);
        let z = random(&mut g, batch * n, -50.0, 80.0);
        let got = c.r.softmax_forward(&z, batch, n).unwrap();
        let mut want = f64s(&z);
        cpu::softmax_forward(&mut want, batch, n);
        assert_close(
            &format!("{} softmax ({n})", c.label),
            &got,
            &want,
            1e-7,
            REL,
        );
    });
}

/// MSE after every activation but softmax, and softmax with cross-entropy.
#[test]
fn delta_output_matches_cpu() {
    twins("delta_output", SIMPLE_ONLY, |c| {
        let (batch, n, _) = c.p;
        let mut g = rng(&c.label);
        for (act, loss) in OUTPUTS {
            let a = activated(&mut g, act, batch, n);
            let y = random(&mut g, batch * n, 0.0, 1.0);
            let got = c.r.delta_output(&a, &y, batch, n, act, loss).unwrap();
            let mut want = vec![0.0; batch * n];
            cpu::delta_output(&f64s(&a), &f64s(&y), &mut want, act, loss);
            let what = format!("{} {act:?} δ_out", c.label);
            assert_close(&what, &got, &want, 1e-7, REL);
        }
    });
}

/// Over a layer's parameters `N·K + N`.
#[test]
fn sgd_update_matches_cpu() {
    twins("sgd_update", SIMPLE_ONLY, |c| {
        let (_, n, k) = c.p;
        let mut g = rng(&c.label);
        let count = n * k + n;
        let p = random(&mut g, count, -1.0, 1.0);
        let gr = random(&mut g, count, -0.1, 0.1);
        let lr = 0.37f32;
        let got = c.r.sgd_update(&p, &gr, lr).unwrap();
        let mut want = f64s(&p);
        cpu::sgd_update(&mut want, &f64s(&gr), lr as f64);
        assert_close(&format!("{} params", c.label), &got, &want, 1e-7, 1e-6);
    });
}

/// MSE on sigmoid outputs; cross-entropy on softmax rows, one of them with
/// an output that underflowed to 0 (the clamp).
#[test]
fn loss_reduce_matches_cpu() {
    twins("loss_reduce", SIMPLE_ONLY, |c| {
        let (batch, n, _) = c.p;
        let mut g = rng(&c.label);
        for (act, loss) in [OUTPUTS[0], OUTPUTS[4]] {
            let mut a = activated(&mut g, act, batch, n);
            let (y, metric) = scored_targets(&a, batch, n);
            if loss == Loss::CrossEntropy {
                a[y.iter().position(|&v| v == 1.0).unwrap_or(0)] = 0.0;
            }
            for m in [Metric::None, metric] {
                let got =
                    c.r.loss_reduce(&a, &y, batch, n, m, loss, START_TOTALS)
                        .unwrap();
                let (want, correct) = cpu::loss_reduce(&f64s(&a), &f64s(&y), batch, n, m, loss);
                let what = format!("{} {loss:?} {m:?}", c.label);
                assert_totals(&what, got, want, correct, batch);
            }
        }
    });
}

/// The fused δ_out and loss kernel, on the adapter's own tiles: output widths
/// below, at and above the loss's 256 lanes; batches within one workgroup and
/// across many; every output activation with its loss.
#[test]
fn delta_output_loss_matches_cpu() {
    let Some(ctx) = gpu_or_skip("delta_output_loss") else {
        return;
    };
    for checked in [false, true] {
        let r = KernelRunner::with_checks(ctx.clone(), None, checked).unwrap();
        delta_output_loss_cases(&r, checked);
    }
}

fn delta_output_loss_cases(r: &KernelRunner, checked: bool) {
    for n in [1, 2, 5, 256, 300] {
        for batch in [1, 7, 600] {
            for (act, loss) in OUTPUTS {
                let label =
                    format!("delta_output_loss checked {checked} n {n} batch {batch} {act:?}");
                let mut g = rng(&label);
                let a = activated(&mut g, act, batch, n);
                let (y, metric) = scored_targets(&a, batch, n);
                for m in [Metric::None, metric] {
                    let (delta, got) = r
                        .delta_output_loss(&a, &y, batch, n, m, act, loss, START_TOTALS)
                        .unwrap();
                    let mut want = vec![0.0; batch * n];
                    let (a, y) = (f64s(&a), f64s(&y));
                    let (total, correct) =
                        cpu::delta_output_loss(&a, &y, &mut want, batch, n, m, act, loss);
                    assert_close(&format!("{label} δ"), &delta, &want, 1e-7, REL);
                    assert_totals(&format!("{label} {m:?}"), got, total, correct, batch);
                }
            }
        }
    }
}

/// The output layer fused with its softmax, delta and loss (tiled only): where
/// one block holds a whole row (`n_out ≤ bn`), every output activation with
/// its loss, both metrics; a product wider than a block is refused. Each
/// product at batch 1 also runs at 300 rows (several blocks: the last one
/// adds their partials).
#[test]
fn forward_output_loss_matches_cpu() {
    twins("forward_output_loss", TILED_ONLY, |c| {
        let Set::Tiled(_, config) = c.set else {
            return;
        };
        let (batch, n_out, n_in) = c.p;
        let shapes = match batch {
            1 => vec![(1, n_out, n_in), (300, n_out, n_in)],
            _ => vec![(batch, n_out, n_in)],
        };
        for (batch, n_out, n_in) in shapes {
            for (act, loss) in OUTPUTS {
                let label = format!("{} {act:?} batch {batch} ({n_in}->{n_out})", c.label);
                let mut g = rng(&label);
                let x = random(&mut g, batch * n_in, -1.0, 1.0);
                let w = random(&mut g, n_out * n_in, -1.0, 1.0);
                let b = random(&mut g, n_out, -0.5, 0.5);
                let (x64, w64, b64) = (f64s(&x), f64s(&w), f64s(&b));
                let mut a_want = vec![0.0; batch * n_out];
                cpu::forward_dense(&x64, &w64, &b64, &mut a_want, batch, n_in, n_out, act);
                let a32: Vec<f32> = a_want.iter().map(|&v| v as f32).collect();
                let (y, metric) = scored_targets(&a32, batch, n_out);
                let shape = (batch, n_in, n_out);
                // Metric::None once: it only skips the score.
                let metrics = match act {
                    Activation::Sigmoid => &[Metric::None, metric][..],
                    _ => &[metric][..],
                };
                for &m in metrics {
                    let got = c.r.forward_output_loss_tiled(
                        &x,
                        &w,
                        &b,
                        &y,
                        shape,
                        m,
                        act,
                        loss,
                        START_TOTALS,
                    );
                    if n_out > config.tiles.bn() as usize {
                        assert!(got.is_err(), "{label}: {n_out} outputs over one block");
                        continue;
                    }
                    let (a, delta, totals) = got.unwrap();
                    let (mut a_ref, mut d_ref) =
                        (vec![0.0; batch * n_out], vec![0.0; batch * n_out]);
                    let (total, _) = cpu::forward_output_loss(
                        &x64,
                        &w64,
                        &b64,
                        &f64s(&y),
                        &mut a_ref,
                        &mut d_ref,
                        shape,
                        m,
                        act,
                        loss,
                    );
                    assert_close(&format!("{label} A"), &a, &a_ref, c.abs_forward, REL);
                    assert_close(&format!("{label} δ"), &delta, &d_ref, c.abs_forward, REL);
                    // The score is a step function: count it on the A the
                    // kernel computed (close to the reference, checked above),
                    // so that a near tie rounded the other way does not count.
                    let (_, scored) = cpu::loss_reduce(&f64s(&a), &f64s(&y), batch, n_out, m, loss);
                    let tol = c.abs_forward + REL;
                    scores_differ_only_at_ties(&label, &a, &a_ref, &y, n_out, m, tol);
                    assert_totals(&format!("{label} {m:?}"), totals, total, scored, batch);
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Special cases
// ---------------------------------------------------------------------------

/// Ties in argmax go to the first largest output, as on the CPU, even when
/// the tied outputs fall to different lanes.
#[test]
fn delta_output_loss_argmax_ties_take_the_first() {
    let Some(ctx) = gpu_or_skip("delta_output_loss ties") else {
        return;
    };
    let r = KernelRunner::new(ctx).unwrap();
    let n = 40;
    // Sample 0: a ties at 3 and 35 (y's maximum at 3: correct); sample 1:
    // a ties at 2 and 39 (y's maximum at 39: wrong).
    let mut a = vec![0.25f32; 2 * n];
    let mut y = vec![0.0f32; 2 * n];
    for (s, i, j, t) in [(0, 3, 35, 3), (1, 2, 39, 39)] {
        a[s * n + i] = 0.75;
        a[s * n + j] = 0.75;
        y[s * n + t] = 1.0;
    }
    let (_, got) = r
        .delta_output_loss(&a, &y, 2, n, Metric::Argmax, SIG, MSE, Acc::default())
        .unwrap();
    let mut delta = vec![0.0; 2 * n];
    let (_, want) = cpu::delta_output_loss(
        &f64s(&a),
        &f64s(&y),
        &mut delta,
        2,
        n,
        Metric::Argmax,
        SIG,
        MSE,
    );
    assert_eq!(want, 1);
    assert_eq!(got.correct as u64, want);
}

/// A 1-D problem larger than 65535 workgroups in one dimension is folded into
/// two (`grid_1d`); the fold must cover every element exactly once.
#[test]
fn sgd_update_beyond_one_grid_dimension() {
    let Some(ctx) = gpu_or_skip("sgd_update_beyond_one_grid_dimension") else {
        return;
    };
    let r = KernelRunner::new(ctx.clone()).unwrap();
    let max = ctx.limits.max_compute_workgroups_per_dimension as usize;
    let count = max * 64 + 1000; // needs a second row of workgroups
    let mut g = rng("sgd big");
    let p = random(&mut g, count, -1.0, 1.0);
    let gr = random(&mut g, count, -0.1, 0.1);
    let got = r.sgd_update(&p, &gr, 0.5).unwrap();
    let mut want = f64s(&p);
    cpu::sgd_update(&mut want, &f64s(&gr), 0.5);
    assert_close("sgd_update big params", &got, &want, 1e-7, 1e-6);
}

#[test]
fn grid_folds_within_limits() {
    use shadertrain::gpu::kernels::grid_1d;
    assert_eq!(grid_1d(1, 65535).unwrap(), (1, 1, 1));
    assert_eq!(grid_1d(64, 65535).unwrap(), (1, 1, 1));
    assert_eq!(grid_1d(65, 65535).unwrap(), (2, 1, 1));
    let (x, y, _) = grid_1d(65535 * 64 + 1, 65535).unwrap();
    assert!(x <= 65535 && y == 2, "{x} {y}");
    assert!((x as u64 * y as u64) * 64 > 65535 * 64);
    assert!(grid_1d(u64::MAX / 2, 65535).is_err());
}

#[test]
fn tile_configs_fit_the_default_limits() {
    let limits = wgpu::Limits::default();
    for t in [TileConfig::SMALL, TileConfig::MEDIUM, TileConfig::DISCRETE] {
        t.check(&limits).unwrap();
    }
    let too_big = TileConfig {
        tm: 9,
        ..TileConfig::SMALL
    };
    assert!(too_big.check(&limits).is_err());
    let no_row_sums = TileConfig {
        wg_x: 2,
        ..TileConfig::SMALL
    };
    assert!(no_row_sums.check(&limits).is_err());
}

/// The safety conditions of unchecked modules: tile sizes whose arrays an
/// index could overrun, or whose loops could not end, are refused before
/// any module is made, and a Dims past the bound is refused before it is
/// written.
#[test]
fn unsafe_tiles_and_dims_are_refused_on_the_host() {
    use shadertrain::gpu::kernels::DIMS_BOUND;
    use shadertrain::gpu::Dims;
    let s = TileConfig::SMALL;
    for bad in [
        TileConfig { tm: 0, ..s },
        TileConfig { tn: 9, ..s },
        TileConfig { bk: 0, ..s },
        TileConfig { wg_y: 0, ..s },
        TileConfig { wg_x: 4096, ..s },
    ] {
        let err = bad.safety().unwrap_err().to_string();
        assert!(err.contains("tile configuration"), "{bad:?}: {err}");
    }
    for t in [TileConfig::SMALL, TileConfig::MEDIUM, TileConfig::DISCRETE] {
        t.safety().unwrap();
    }
    let ok = Dims {
        rows: 7,
        n_in: 3,
        n_out: 5,
        splits: 1,
        w_ld: 4,
        ..Dims::default()
    };
    ok.check().unwrap();
    // A next layer's rows are at least n_out long.
    Dims {
        n_next: 2,
        w_next_ld: 8,
        ..ok
    }
    .check()
    .unwrap();
    for bad in [
        Dims {
            rows: DIMS_BOUND,
            ..ok
        },
        Dims {
            w_off: u32::MAX,
            ..ok
        },
        Dims { n_out: 0, ..ok },
        Dims { splits: 0, ..ok },
        Dims { w_ld: 2, ..ok },
        Dims {
            w_ld: DIMS_BOUND,
            ..ok
        },
        Dims {
            n_next: 2,
            w_next_ld: 4,
            ..ok
        },
    ] {
        assert!(bad.check().is_err(), "{bad:?}");
    }
    let Some(ctx) = gpu_or_skip("unsafe tiles") else {
        return;
    };
    for checked in [false, true] {
        let bad = KernelConfig::generated(TileConfig { tm: 9, ..s });
        assert!(KernelRunner::with_checks(ctx.clone(), Some(bad), checked).is_err());
        // The generated core needs vec4 groups.
        let odd = KernelConfig::generated(TileConfig { tm: 3, ..s });
        assert!(KernelRunner::with_checks(ctx.clone(), Some(odd), checked).is_err());
    }
}

/// Split K only where a layer has few output blocks and a long batch, and
/// never past the scratch it is given.
#[test]
fn k_splits_fill_the_device_within_scratch() {
    use shadertrain::gpu::kernels::k_splits;
    let t = TileConfig::DISCRETE;
    assert_eq!(k_splits(17, 3, 100, &t, u64::MAX), 1, "short batch");
    assert_eq!(
        k_splits(4096, 4096, 4096, &t, u64::MAX),
        1,
        "1024 blocks already"
    );
    let s = k_splits(17, 3, 200_000, &t, u64::MAX);
    assert!(s > 100 && s <= 1024, "{s}");
    assert_eq!(
        k_splits(17, 3, 200_000, &t, 17 * 4 * 10),
        10,
        "scratch for 10"
    );
    // A CPU adapter runs a workgroup per thread: W1's 256×784 gradient (14
    // blocks of 128×128) is not split there, where a GPU splits it 4 ways.
    use shadertrain::gpu::kernels::{k_splits_to, split_fill};
    let w1 = TileConfig {
        wg_x: 8,
        wg_y: 8,
        tm: 16,
        tn: 16,
        bk: 8,
    };
    let cpu = split_fill(wgpu::DeviceType::Cpu);
    assert!(cpu >= 4, "{cpu}");
    assert_eq!(split_fill(wgpu::DeviceType::DiscreteGpu), 1024);
    assert_eq!(k_splits(256, 784, 1024, &w1, u64::MAX), 4, "GPU");
    let on_cpu = k_splits_to(256, 784, 1024, &w1, u64::MAX, cpu);
    assert_eq!(on_cpu, (cpu / 14).clamp(1, 4) as u32, "CPU adapter");
    assert_eq!(
        k_splits_to(17, 3, 2_000_000, &t, u64::MAX, 2000),
        1024,
        "at most 1024"
    );
}

/// Whole steps of a backend built with and without naga's runtime checks:
/// the checks only guard indices the host keeps in range, so parameters and
/// totals agree to the bit, for both kernel sets and a stateful optimizer,
/// and so do two runs of one build (at 600 rows too, where the tiled
/// gradients split K and the last slice of each block adds the slices).
#[test]
fn checked_and_unchecked_steps_are_bitwise_equal() {
    use shadertrain::backend::Backend;
    use shadertrain::gpu::{GpuBackend, GpuOptions, KernelSet};
    use shadertrain::network::Network;
    use shadertrain::optim::{Optimizer, OptimizerKind};
    let Some(ctx) = gpu_or_skip("checked_and_unchecked_steps") else {
        return;
    };
    let net = Network::parse("5,17,3:softmax").unwrap();
    // 600 rows: the tiled gradients split K (the last slice adds the slices).
    for (batch, kernels) in [
        (9, KernelSet::Simple),
        (9, KernelSet::Tiled),
        (600, KernelSet::Tiled),
    ] {
        let (x, y) = batch_for(&net, batch, "checked vs unchecked");
        let adam = Optimizer {
            kind: OptimizerKind::Adam,
            ..Optimizer::default()
        };
        for opt in [Optimizer::default(), adam] {
            let run = |checked: bool| {
                let options = GpuOptions {
                    kernels,
                    checked,
                    ..GpuOptions::default()
                };
                let mut b = GpuBackend::with_options(ctx.clone(), &net, batch, options).unwrap();
                assert_eq!(b.checked(), checked);
                b.set_params(&net.init(3)).unwrap();
                b.set_optimizer(&opt).unwrap();
                b.load_batch(&x, &y).unwrap();
                for _ in 0..3 {
                    b.step(0.3).unwrap();
                }
                let loss = b.take_totals().unwrap().loss();
                (b.params().unwrap(), loss)
            };
            let (p_off, l_off) = run(false);
            let (p_on, l_on) = run(true);
            // And run to run: the same build twice.
            let (p_again, l_again) = run(false);
            let label = format!("{kernels:?} batch {batch} {opt:?}");
            for (what, l, p) in [("checked", l_on, &p_on), ("again", l_again, &p_again)] {
                assert_eq!(l_off.to_bits(), l.to_bits(), "{label} loss {what}");
                let (a, b) = (&p_off.data, &p.data);
                if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
                    panic!("{label}: param {i} unchecked {} {what} {}", a[i], b[i]);
                }
            }
        }
    }
}

/// `:db` is an optional trailing field of a generated configuration:
/// written after the tile sizes, parsed back, refused twice or on
/// tiled.wgsl's loops core (which has no double buffering).
#[test]
fn double_buffering_is_a_generated_configuration_field() {
    let db = KernelConfig::generated(TALL).with_double_buffer(true);
    assert_eq!(db.to_string(), "gen:4x16:4x8:k16:db");
    assert_eq!(KernelConfig::parse("gen:4x16:4x8:k16:db").unwrap(), db);
    assert!(
        !KernelConfig::parse("gen:4x16:4x8:k16")
            .unwrap()
            .double_buffer
    );
    let limits = wgpu::Limits::default();
    db.check(&limits).unwrap();
    for bad in [
        "gen:4x16:4x8:k16:db:db",
        "gen:4x16:4x8:k16:dbx",
        "gen:4x16:4x8:k16:",
        "loops:8x8:4x4:k8:db",
    ] {
        let err = KernelConfig::parse(bad).unwrap_err().to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
    let err = KernelConfig::parse("loops:8x8:4x4:k8:db").unwrap_err();
    assert!(err.to_string().contains("loops core"), "{err}");
    let loops_db = KernelConfig::loops(TileConfig::SMALL).with_double_buffer(true);
    assert!(loops_db.check(&limits).is_err());
    // :v4 likewise, in any order with :db and :sN, written in one order.
    let all = db.with_k_vec4(true).with_splits(Some(4));
    assert_eq!(all.to_string(), "gen:4x16:4x8:k16:db:v4:s4");
    for text in ["gen:4x16:4x8:k16:s4:v4:db", "gen:4x16:4x8:k16:v4:db:s4"] {
        assert_eq!(KernelConfig::parse(text).unwrap(), all, "{text}");
    }
    for bad in ["gen:4x16:4x8:k16:v4:v4", "loops:8x8:4x4:k8:v4"] {
        let err = KernelConfig::parse(bad).unwrap_err().to_string();
        assert!(err.contains(bad), "{bad}: {err}");
    }
    let err = KernelConfig::parse("loops:8x8:4x4:k8:v4").unwrap_err();
    assert!(err.to_string().contains("loops core"), "{err}");
}

/// Register double buffering changes when each K step's operands are
/// loaded, not what is summed: whole training steps of every product
/// (forward, hidden delta, gradient with split K at 600 rows, fused SGD and
/// Adam's separate gradient) give bitwise the parameters and loss of the
/// same configuration without it, on widths that are no multiple of 4 or
/// of any tile, at batch 1, 9 and 600.
#[test]
fn double_buffered_steps_are_bitwise_equal() {
    use shadertrain::backend::Backend;
    use shadertrain::gpu::{GpuBackend, GpuOptions, KernelPlan, Source};
    use shadertrain::network::Network;
    use shadertrain::optim::{Optimizer, OptimizerKind};
    let Some(ctx) = gpu_or_skip("double_buffered_steps") else {
        return;
    };
    let net = Network::parse("37,19,23,11:softmax").unwrap();
    let adam = Optimizer {
        kind: OptimizerKind::Adam,
        ..Optimizer::default()
    };
    let data: Vec<_> = [1, 9, 600]
        .map(|rows| (rows, batch_for(&net, rows, "double buffering")))
        .into();
    // K steps of 8 and 16, full and partial staging runs (the twins table
    // checks every configuration, db or not, against the CPU).
    for tiles in [TileConfig::SMALL, TALL] {
        let run = |db: bool, v4: bool| {
            let config = KernelConfig::generated(tiles)
                .with_double_buffer(db)
                .with_k_vec4(v4);
            let plan = KernelPlan::uniform(&net, config, Source::Given);
            let options = GpuOptions::default().with_plan(plan);
            let mut b = GpuBackend::with_options(ctx.clone(), &net, 600, options).unwrap();
            let mut out = Vec::new();
            for opt in [Optimizer::default(), adam] {
                for (rows, (x, y)) in &data {
                    b.set_params(&net.init(5)).unwrap();
                    b.set_optimizer(&opt).unwrap();
                    b.load_batch(x, y).unwrap();
                    for _ in 0..2 {
                        b.step(0.3).unwrap();
                    }
                    let loss = b.take_totals().unwrap().loss();
                    out.push((format!("{opt:?} batch {rows}"), loss, b.params().unwrap()));
                }
            }
            out
        };
        let plain = run(false, false);
        for (db, v4) in [(true, false), (false, true), (true, true)] {
            for ((label, l_single, p_single), (_, l_db, p_db)) in plain.iter().zip(run(db, v4)) {
                let label = format!("{tiles:?} {label} db {db} v4 {v4}");
                assert_eq!(l_single.to_bits(), l_db.to_bits(), "{label}: loss");
                let (a, b) = (&p_single.data, &p_db.data);
                if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
                    panic!("{label}: param {i} plain {} variant {}", a[i], b[i]);
                }
            }
        }
    }
}

/// The tiled products read global memory as `vec4`s where an operand's
/// rows start on one, and as scalars elsewhere: whole steps agree with the
/// f64 reference on networks whose layers take each path, with W aligned
/// and not (2-3-4-8-4: layers 2 and 3 have 4 and 8 inputs at offsets 25
/// and 65), at 37 rows (partial blocks) and 600 (split K), with K steps of
/// 8 and 16, double-buffered or not (the twins table runs every
/// configuration on aligned and unaligned widths).
#[test]
fn vec4_and_scalar_loads_train_like_the_reference() {
    use shadertrain::gpu::{GpuBackend, GpuOptions, KernelPlan, Source};
    use shadertrain::network::Network;
    let Some(ctx) = gpu_or_skip("vec4_and_scalar_loads") else {
        return;
    };
    for spec in ["2,3,4,8,4:softmax", "8,12,16,4"] {
        let net = Network::parse(spec).unwrap();
        let layers = net.layers();
        assert!(
            spec.starts_with('8') || (layers[2].w_off % 4 == 1 && layers[2].n_in == 4),
            "{spec}: an aligned width at a misaligned offset"
        );
        for tiles in [TileConfig::SMALL, TALL] {
            for db in [false, true] {
                let config = KernelConfig::generated(tiles).with_double_buffer(db);
                let plan = KernelPlan::uniform(&net, config, Source::Given);
                let options = GpuOptions::default().with_plan(plan);
                let mut b = GpuBackend::with_options(ctx.clone(), &net, 600, options).unwrap();
                for rows in [37, 600] {
                    let label = format!("{spec} {config} rows {rows}");
                    steps_match_reference(&mut b, &net, rows, 2, 0.5, &label);
                }
            }
        }
    }
}

/// The configuration chosen without a tuned cache: large blocks where the
/// widest product fills the device with little padding, small ones for
/// narrow layers and small products, always one that fits the limits.
#[test]
fn heuristic_fills_the_device_with_little_padding() {
    use shadertrain::gpu::heuristic;
    use shadertrain::network::Network;
    use wgpu::DeviceType::{Cpu, DiscreteGpu, IntegratedGpu};
    let limits = wgpu::Limits::default();
    let net = |s: &str| Network::parse(s).unwrap();
    let gen = KernelConfig::generated;
    let w1 = net("784,256,256,10");
    assert_eq!(
        heuristic(Cpu, &limits, &w1, 1024),
        gen(TileConfig::CPU_LARGE)
    );
    // 17 of every 128 columns would be real work.
    let narrow = net("3,17,5");
    assert_eq!(
        heuristic(Cpu, &limits, &narrow, 200_000),
        gen(TileConfig::SMALL)
    );
    let w3 = net("4096,4096,4096");
    assert_eq!(
        heuristic(DiscreteGpu, &limits, &w3, 4096),
        gen(TileConfig::DISCRETE)
    );
    // W1 has 16 blocks of 128×128: too few for a large GPU.
    assert_eq!(
        heuristic(DiscreteGpu, &limits, &w1, 1024),
        gen(TileConfig::SMALL)
    );
    assert_eq!(
        heuristic(IntegratedGpu, &limits, &w1, 1024),
        gen(TileConfig::MEDIUM)
    );
    for device in [Cpu, DiscreteGpu, IntegratedGpu] {
        let tiny = heuristic(device, &limits, &net("2,2,2"), 1);
        tiny.check(&limits).unwrap();
        assert_eq!(tiny, gen(TileConfig::SMALL), "{device:?}");
        // Within small limits, what fits.
        let small = wgpu::Limits {
            max_compute_workgroup_storage_size: 4096,
            ..wgpu::Limits::downlevel_defaults()
        };
        heuristic(device, &small, &w3, 4096).check(&small).unwrap();
    }
}

/// The loss totals of a 10,000-step epoch: the same batch stepped with a
/// zero learning rate, so every step's loss is the same on both sides; the
/// GPU's per-step losses spread over f32 slots that the host adds in f64 stay
/// within a few f32 roundings of the f64 reference, where one plain f32 sum
/// drifted by 1e-4 (7628.198 for 7628.983).
#[test]
fn loss_totals_of_a_long_epoch_match_the_cpu() {
    use shadertrain::backend::Backend;
    use shadertrain::cpu::CpuBackend;
    use shadertrain::gpu::GpuBackend;
    use shadertrain::network::Network;
    let Some(ctx) = gpu_or_skip("loss_totals_of_a_long_epoch") else {
        return;
    };
    let net = Network::parse("3,5,2").unwrap();
    let batch = 7;
    let steps = 10_000;
    let (x, y) = batch_for(&net, batch, "long epoch");
    let mut gpu = GpuBackend::new(ctx, &net, batch).unwrap();
    let mut cpu = CpuBackend::<f64>::new(&net, batch).unwrap();
    gpu.set_params(&net.init(5)).unwrap();
    cpu.set_params(&net.init(5)).unwrap();
    gpu.load_batch(&x, &y).unwrap();
    let (x64, y64) = (f64s(&x), f64s(&y));
    cpu.load_batch(&x64, &y64).unwrap();
    for _ in 0..steps {
        gpu.step(0.0).unwrap();
    }
    cpu.step(0.0).unwrap();
    let one = cpu.take_totals().unwrap().loss_sum;
    let got = gpu.take_totals().unwrap();
    assert_eq!(got.samples, (steps * batch) as u64);
    let want = one * steps as f64;
    // One step's f32 loss is within ~1e-7 of the f64 one; the sum keeps that.
    assert_close64("10,000-step loss_sum", &[got.loss_sum], &[want], 0.0, 1e-6);
}

/// Every row the kernel's A (`a`) scores differently from the reference's
/// (`a_ref`) is a near tie in the reference, within `tol`: saturated outputs
/// (tanh at ±1 in f32) tie exactly in f32 and not in f64, so the argmax may
/// fall on another index, which is rounding, not a bug. Any other
/// difference fails, naming the row.
// a, a_ref, y: (rows, n)
fn scores_differ_only_at_ties(
    label: &str,
    a: &[f32],
    a_ref: &[f64],
    y: &[f32],
    n: usize,
    m: Metric,
    tol: f64,
) {
    for (s, ((ar, rr), yr)) in a
        .chunks(n)
        .zip(a_ref.chunks(n))
        .zip(y.chunks(n))
        .enumerate()
    {
        let (ar, yr) = (f64s(ar), f64s(yr));
        if cpu::score(m, &ar, &yr) == cpu::score(m, rr, &yr) {
            continue;
        }
        let gap = match m {
            Metric::Argmax => {
                let (i, j) = (
                    shadertrain::backend::argmax(&ar),
                    shadertrain::backend::argmax(rr),
                );
                rr[j] - rr[i]
            }
            Metric::Threshold => (rr[0] - 0.5).abs(),
            Metric::None => 0.0,
        };
        assert!(
            gap <= tol,
            "{label}: row {s} scores differently, and its reference is no tie (gap {gap:e} > {tol:e})"
        );
    }
}
