//! Every GPU kernel against its CPU twin (computed in f64) on random data:
//! odd shapes that are not multiples of the workgroup, batch 1, one neuron.
//! Outputs start poisoned with NaN (see `gpu::runner`), so an element the
//! kernel never wrote fails. Every activation, and both losses.

mod common;

use common::*;
use shadertrain::backend::Metric;
use shadertrain::cpu;
use shadertrain::gpu::KernelRunner;
use shadertrain::network::{Activation, Loss};

const SHAPES: &[&[usize]] = &[
    &[1, 1, 1],
    &[2, 2, 2],
    &[3, 7, 5],
    &[17, 33, 9],
    &[100, 257, 10],
];
const BATCHES: &[usize] = &[1, 7, 64];
// f32 against an f64 reference: sums of up to 257 products.
const ABS: f64 = 2e-6;
const REL: f64 = 1e-4;
/// Forward outputs: the rounding of a sum of 257 products of magnitude ≤ 1
/// reaches a few 1e-6 where the sum cancels near 0; sigmoid's slope (≤ 1/4)
/// hid it, relu, tanh and linear pass it through.
const ABS_FORWARD: f64 = 1e-5;

/// Run `f(runner, case label, sizes, batch)` for every shape and batch.
fn each_case(test: &str, mut f: impl FnMut(&KernelRunner, &str, &[usize], usize)) {
    let Some(ctx) = gpu_or_skip(test) else { return };
    let runner = KernelRunner::new(ctx).unwrap();
    for sizes in SHAPES {
        for &batch in BATCHES {
            let label = format!("{test} {sizes:?} batch {batch}");
            f(&runner, &label, sizes, batch);
        }
    }
}

/// Every activation; softmax runs `softmax_forward` after the product.
#[test]
fn forward_dense_matches_cpu() {
    each_case("forward_dense", |r, label, sizes, batch| {
        let mut g = rng(label);
        for (w, act) in sizes
            .windows(2)
            .flat_map(|w| Activation::ALL.map(|a| (w, a)))
        {
            let (n_in, n_out) = (w[0], w[1]);
            let x = random(&mut g, batch * n_in, -1.0, 1.0);
            let wt = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let got = r
                .forward_dense(&x, &wt, &b, batch, n_in, n_out, act)
                .unwrap();
            let mut want = vec![0.0; batch * n_out];
            let (x, wt, b) = (f64s(&x), f64s(&wt), f64s(&b));
            cpu::forward_dense(&x, &wt, &b, &mut want, batch, n_in, n_out, act);
            let what = format!("{label} {act:?} A ({n_in}->{n_out})");
            assert_close(&what, &got, &want, ABS_FORWARD, REL);
        }
    });
}

/// Logits far apart (e^80 overflows f32): the max subtraction keeps rows finite.
#[test]
fn softmax_forward_matches_cpu() {
    each_case("softmax_forward", |r, label, sizes, batch| {
        let mut g = rng(label);
        for &n in sizes {
            let z = random(&mut g, batch * n, -50.0, 80.0);
            let got = r.softmax_forward(&z, batch, n).unwrap();
            let mut want = f64s(&z);
            cpu::softmax_forward(&mut want, batch, n);
            assert_close(&format!("{label} softmax ({n})"), &got, &want, 1e-7, REL);
        }
    });
}

/// MSE after every activation but softmax, and softmax with cross-entropy.
#[test]
fn delta_output_matches_cpu() {
    each_case("delta_output", |r, label, sizes, batch| {
        let mut g = rng(label);
        let n = sizes[sizes.len() - 1];
        for (act, loss) in OUTPUTS {
            let a = activated(&mut g, act, batch, n);
            let y = random(&mut g, batch * n, 0.0, 1.0);
            let got = r.delta_output(&a, &y, batch, n, act, loss).unwrap();
            let mut want = vec![0.0; batch * n];
            cpu::delta_output(&f64s(&a), &f64s(&y), &mut want, act, loss);
            assert_close(&format!("{label} {act:?} δ_out"), &got, &want, 1e-7, REL);
        }
    });
}

#[test]
fn delta_hidden_matches_cpu() {
    each_case("delta_hidden", |r, label, sizes, batch| {
        let mut g = rng(label);
        for (w, act) in sizes[1..].windows(2).flat_map(|w| HIDDEN.map(|a| (w, a))) {
            let (n, n_next) = (w[0], w[1]);
            let w_next = random(&mut g, n_next * n, -1.0, 1.0);
            let dn = random(&mut g, batch * n_next, -0.25, 0.25);
            let a = activated(&mut g, act, batch, n);
            let got = r
                .delta_hidden(&w_next, &dn, &a, batch, n, n_next, act)
                .unwrap();
            let mut want = vec![0.0; batch * n];
            let (w_next, dn, a) = (f64s(&w_next), f64s(&dn), f64s(&a));
            cpu::delta_hidden(&w_next, &dn, &a, &mut want, batch, n, n_next, act);
            let what = format!("{label} {act:?} δ_hidden ({n}<-{n_next})");
            assert_close(&what, &got, &want, ABS, REL);
        }
    });
}

#[test]
fn gradient_weights_matches_cpu() {
    each_case("gradient_weights", |r, label, sizes, batch| {
        let mut g = rng(label);
        for w in sizes.windows(2) {
            let (n_in, n_out) = (w[0], w[1]);
            let d = random(&mut g, batch * n_out, -0.25, 0.25);
            let a = random(&mut g, batch * n_in, 0.01, 0.99);
            let got = r.gradient_weights(&d, &a, batch, n_in, n_out).unwrap();
            let mut want = vec![0.0; n_out * n_in];
            cpu::gradient_weights(&f64s(&d), &f64s(&a), &mut want, batch, n_in, n_out);
            assert_close(
                &format!("{label} ∂W ({n_in}->{n_out})"),
                &got,
                &want,
                ABS,
                REL,
            );
        }
    });
}

#[test]
fn gradient_bias_matches_cpu() {
    each_case("gradient_bias", |r, label, sizes, batch| {
        let mut g = rng(label);
        for &n_out in &sizes[1..] {
            let d = random(&mut g, batch * n_out, -0.25, 0.25);
            let got = r.gradient_bias(&d, batch, n_out).unwrap();
            let mut want = vec![0.0; n_out];
            cpu::gradient_bias(&f64s(&d), &mut want, batch, n_out);
            assert_close(&format!("{label} ∂b ({n_out})"), &got, &want, ABS, REL);
        }
    });
}

#[test]
fn sgd_update_matches_cpu() {
    each_case("sgd_update", |r, label, sizes, _batch| {
        let mut g = rng(label);
        let count: usize = sizes.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
        let p = random(&mut g, count, -1.0, 1.0);
        let gr = random(&mut g, count, -0.1, 0.1);
        let lr = 0.37f32;
        let got = r.sgd_update(&p, &gr, lr).unwrap();
        let mut want = f64s(&p);
        cpu::sgd_update(&mut want, &f64s(&gr), lr as f64);
        assert_close(&format!("{label} params"), &got, &want, 1e-7, 1e-6);
    });
}

/// MSE on sigmoid outputs; cross-entropy on softmax rows, one of them with
/// an output that underflowed to 0 (the clamp).
#[test]
fn loss_reduce_matches_cpu() {
    each_case("loss_reduce", |r, label, sizes, batch| {
        let mut g = rng(label);
        let n = sizes[sizes.len() - 1];
        for (act, loss) in [OUTPUTS[0], OUTPUTS[4]] {
            let mut a = activated(&mut g, act, batch, n);
            let (y, metric) = scored_targets(&a, batch, n);
            if loss == Loss::CrossEntropy {
                a[y.iter().position(|&v| v == 1.0).unwrap_or(0)] = 0.0;
            }
            for m in [Metric::None, metric] {
                let got = r
                    .loss_reduce(&a, &y, batch, n, m, loss, START_TOTALS)
                    .unwrap();
                let (want, correct) = cpu::loss_reduce(&f64s(&a), &f64s(&y), batch, n, m, loss);
                let what = format!("{label} {loss:?} {m:?}");
                assert_totals(&what, got, want, correct, batch);
            }
        }
    });
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
