//! The fast kernels against their CPU twins (computed in f64) on random data,
//! with both the small (CPU adapter) and the discrete-GPU tile sizes: shapes
//! smaller and larger than one block, none a multiple of any tile size, batch
//! 1 and K = 1, every activation and both losses. Outputs start poisoned
//! with NaN (see `gpu::runner`).

mod common;

use common::*;
use shadertrain::backend::Metric;
use shadertrain::cpu;
use shadertrain::gpu::{Acc, KernelRunner, TileConfig};
use shadertrain::network::Activation;

/// Products `(M, N, K)`: one element, K = 1, inside one block, across
/// blocks in M and N (the discrete block is 128 × 128), K over several BK steps.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (7, 5, 3),
    (33, 17, 1),
    (1, 131, 70),
    (130, 129, 9),
    (65, 40, 203),
];
// f32 against an f64 reference: sums of up to 203 products.
const ABS: f64 = 5e-6;
const REL: f64 = 1e-4;
/// Forward outputs: sums that cancel near 0 keep their rounding, which
/// relu, tanh and linear pass through at slope 1 (sigmoid at ≤ 1/4).
const ABS_FORWARD: f64 = 2e-5;

/// Run `f(runner, label)` once per tile configuration.
fn each_config(test: &str, mut f: impl FnMut(&KernelRunner, &str)) {
    let Some(ctx) = gpu_or_skip(test) else { return };
    for (name, tiles) in [
        ("small", TileConfig::SMALL),
        ("discrete", TileConfig::DISCRETE),
    ] {
        let runner = KernelRunner::with_tiles(ctx.clone(), tiles).unwrap();
        f(&runner, &format!("{test} {name} tiles"));
    }
}

#[test]
fn forward_dense_tiled_matches_cpu() {
    each_config("forward_dense_tiled", |r, label| {
        for (&(batch, n_out, n_in), act) in
            SHAPES.iter().flat_map(|s| Activation::ALL.map(|a| (s, a)))
        {
            let label = format!("{label} batch {batch} {n_in}->{n_out} {act:?}");
            let mut g = rng(&label);
            let x = random(&mut g, batch * n_in, -1.0, 1.0);
            let w = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let got = r
                .forward_dense_tiled(&x, &w, &b, batch, n_in, n_out, act)
                .unwrap();
            let mut want = vec![0.0; batch * n_out];
            let (x, w, b) = (f64s(&x), f64s(&w), f64s(&b));
            cpu::forward_dense(&x, &w, &b, &mut want, batch, n_in, n_out, act);
            assert_close(&format!("{label} A"), &got, &want, ABS_FORWARD, REL);
        }
    });
}

#[test]
fn delta_hidden_tiled_matches_cpu() {
    each_config("delta_hidden_tiled", |r, label| {
        for (&(batch, n, n_next), act) in SHAPES.iter().flat_map(|s| HIDDEN.map(|a| (s, a))) {
            let label = format!("{label} batch {batch} {n}<-{n_next} {act:?}");
            let mut g = rng(&label);
            let w_next = random(&mut g, n_next * n, -1.0, 1.0);
            let dn = random(&mut g, batch * n_next, -0.25, 0.25);
            let a = activated(&mut g, act, batch, n);
            let got = r
                .delta_hidden_tiled(&w_next, &dn, &a, batch, n, n_next, act)
                .unwrap();
            let mut want = vec![0.0; batch * n];
            let (w_next, dn, a) = (f64s(&w_next), f64s(&dn), f64s(&a));
            cpu::delta_hidden(&w_next, &dn, &a, &mut want, batch, n, n_next, act);
            assert_close(&format!("{label} δ"), &got, &want, ABS, REL);
        }
    });
}

/// K slices of the gradient products: none, and three (some of them empty
/// where K is short), added by the reduce kernels.
const SPLITS: [u32; 2] = [1, 3];

/// Stored, and accumulated onto earlier values (micro-batches).
#[test]
fn gradient_dense_tiled_matches_cpu() {
    each_config("gradient_dense_tiled", |r, label| {
        for (&(n_out, n_in, batch), splits) in SHAPES.iter().flat_map(|s| SPLITS.map(|k| (s, k))) {
            let label = format!("{label} batch {batch} {n_in}->{n_out} splits {splits}");
            let mut g = rng(&label);
            let d = random(&mut g, batch * n_out, -0.25, 0.25);
            let a = random(&mut g, batch * n_in, 0.01, 0.99);
            let onto = random(&mut g, n_out * n_in + n_out, -1.0, 1.0);
            let mut want = vec![0.0; n_out * n_in + n_out];
            let (gw, gb) = want.split_at_mut(n_out * n_in);
            cpu::gradient_dense(&f64s(&d), &f64s(&a), gw, gb, batch, n_in, n_out);
            let got = r
                .gradient_dense_tiled(&d, &a, batch, n_in, n_out, None, splits)
                .unwrap();
            assert_close(&format!("{label} ∂W, ∂b"), &got, &want, ABS, REL);
            let got = r
                .gradient_dense_tiled(&d, &a, batch, n_in, n_out, Some(&onto), splits)
                .unwrap();
            let summed: Vec<f64> = want.iter().zip(&onto).map(|(w, &o)| w + o as f64).collect();
            assert_close(&format!("{label} onto + ∂W, ∂b"), &got, &summed, ABS, REL);
        }
    });
}

#[test]
fn gradient_sgd_tiled_matches_cpu() {
    each_config("gradient_sgd_tiled", |r, label| {
        for (&(n_out, n_in, batch), splits) in SHAPES.iter().flat_map(|s| SPLITS.map(|k| (s, k))) {
            let label = format!("{label} batch {batch} {n_in}->{n_out} splits {splits}");
            let mut g = rng(&label);
            let d = random(&mut g, batch * n_out, -0.25, 0.25);
            let a = random(&mut g, batch * n_in, 0.01, 0.99);
            let w = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let lr = 0.7f32;
            let got = r
                .gradient_sgd_tiled(&d, &a, &w, &b, lr, batch, n_in, n_out, splits)
                .unwrap();
            let (mut ww, mut wb) = (f64s(&w), f64s(&b));
            let (d, a) = (f64s(&d), f64s(&a));
            cpu::gradient_sgd(&d, &a, &mut ww, &mut wb, lr as f64, batch, n_in, n_out);
            ww.extend(wb);
            assert_close(&format!("{label} W, b after SGD"), &got, &ww, ABS, REL);
        }
    });
}

/// Output widths below, at and above the loss's 256 lanes; batches within one
/// workgroup and across many; every output activation with its loss.
#[test]
fn delta_output_loss_matches_cpu() {
    let Some(ctx) = gpu_or_skip("delta_output_loss") else {
        return;
    };
    let r = KernelRunner::new(ctx).unwrap();
    for n in [1, 2, 5, 256, 300] {
        for batch in [1, 7, 600] {
            for (act, loss) in OUTPUTS {
                let label = format!("delta_output_loss n {n} batch {batch} {act:?}");
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
}
