//! Every GPU kernel against its CPU twin (computed in f64) on random data:
//! odd shapes that are not multiples of the workgroup, batch 1, one neuron.
//! Outputs start poisoned with NaN (see `gpu::runner`), so an element the
//! kernel never wrote fails.

mod common;

use common::*;
use shadertrain::backend::Metric;
use shadertrain::cpu;
use shadertrain::gpu::KernelRunner;

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

/// Run `f(runner, case label, sizes, batch)` for every shape and batch.
fn each_case(test: &str, mut f: impl FnMut(&KernelRunner, &str, &[usize], usize)) {
    let Some(ctx) = gpu_or_skip(test) else { return };
    let runner = KernelRunner::new(ctx);
    for sizes in SHAPES {
        for &batch in BATCHES {
            let label = format!("{test} {sizes:?} batch {batch}");
            f(&runner, &label, sizes, batch);
        }
    }
}

#[test]
fn forward_dense_matches_cpu() {
    each_case("forward_dense", |r, label, sizes, batch| {
        let mut g = rng(label);
        for w in sizes.windows(2) {
            let (n_in, n_out) = (w[0], w[1]);
            let x = random(&mut g, batch * n_in, -1.0, 1.0);
            let wt = random(&mut g, n_out * n_in, -1.0, 1.0);
            let b = random(&mut g, n_out, -0.5, 0.5);
            let got = r.forward_dense(&x, &wt, &b, batch, n_in, n_out).unwrap();
            let mut want = vec![0.0; batch * n_out];
            cpu::forward_dense(
                &f64s(&x),
                &f64s(&wt),
                &f64s(&b),
                &mut want,
                batch,
                n_in,
                n_out,
                SIG,
            );
            assert_close(
                &format!("{label} A ({n_in}->{n_out})"),
                &got,
                &want,
                ABS,
                REL,
            );
        }
    });
}

#[test]
fn delta_output_matches_cpu() {
    each_case("delta_output", |r, label, sizes, batch| {
        let mut g = rng(label);
        let n = sizes[sizes.len() - 1];
        let a = random(&mut g, batch * n, 0.01, 0.99);
        let y = random(&mut g, batch * n, 0.0, 1.0);
        let got = r.delta_output(&a, &y, batch, n).unwrap();
        let mut want = vec![0.0; batch * n];
        cpu::delta_output(&f64s(&a), &f64s(&y), &mut want, SIG, MSE);
        assert_close(&format!("{label} δ_out"), &got, &want, 1e-7, REL);
    });
}

#[test]
fn delta_hidden_matches_cpu() {
    each_case("delta_hidden", |r, label, sizes, batch| {
        let mut g = rng(label);
        for w in sizes[1..].windows(2) {
            let (n, n_next) = (w[0], w[1]);
            let w_next = random(&mut g, n_next * n, -1.0, 1.0);
            let dn = random(&mut g, batch * n_next, -0.25, 0.25);
            let a = random(&mut g, batch * n, 0.01, 0.99);
            let got = r.delta_hidden(&w_next, &dn, &a, batch, n, n_next).unwrap();
            let mut want = vec![0.0; batch * n];
            cpu::delta_hidden(
                &f64s(&w_next),
                &f64s(&dn),
                &f64s(&a),
                &mut want,
                batch,
                n,
                n_next,
                SIG,
            );
            assert_close(
                &format!("{label} δ_hidden ({n}<-{n_next})"),
                &got,
                &want,
                ABS,
                REL,
            );
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

#[test]
fn loss_reduce_matches_cpu() {
    each_case("loss_reduce", |r, label, sizes, batch| {
        let mut g = rng(label);
        let n = sizes[sizes.len() - 1];
        let a = random(&mut g, batch * n, 0.01, 0.99);
        let (y, metric) = scored_targets(&a, batch, n);
        for m in [Metric::None, metric] {
            let got = r.loss_reduce(&a, &y, batch, n, m, START_TOTALS).unwrap();
            let (loss, correct) = cpu::loss_reduce(&f64s(&a), &f64s(&y), batch, n, m, MSE);
            assert_totals(&format!("{label} {m:?}"), got, loss, correct, batch);
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
    let r = KernelRunner::new(ctx.clone());
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
