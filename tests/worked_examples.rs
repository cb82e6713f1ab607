//! The acceptance numbers of `shared/reference/worked-examples.md`:
//! A. the classic 2-2-2 network, one full SGD step (CPU in f64 and GPU in f32);
//! B. the 2-2-1 delta example, kernel by kernel (given activations).
//!
//! The reference prints most values to 9 decimals, some to 8 or fewer (w2,
//! w3, w4, out_o1). The f64 reference must match within 1e-9 or half a unit
//! of the last printed digit, whichever is larger: the true value of w2 is
//! 0.1995614322…, printed 0.19956143, 2.3e-9 away.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::cpu::{self, CpuBackend};
use shadertrain::example;
use shadertrain::gpu::{GpuBackend, KernelRunner};
use shadertrain::network::{Activation, Loss};

/// A printed reference value and the tolerance its digits allow.
fn reference(s: &str) -> (f64, f64) {
    let v: f64 = s.parse().expect("reference value");
    let decimals = s.split('.').nth(1).map_or(0, |d| d.len()) as i32;
    (v, f64::max(1e-9, 0.5 * 10f64.powi(-decimals)))
}

fn expect(name: &str, got: f64, printed: &str, extra: f64) {
    let (want, tol) = reference(printed);
    let tol = tol + extra;
    assert!(
        (got - want).abs() <= tol,
        "{name}: got {got:.12} want {printed} (diff {:e} > tolerance {tol:e})",
        (got - want).abs()
    );
}

/// Check a report of example A; `extra` widens the tolerance for f32.
fn check_classic(r: &example::Report, extra: f64) {
    expect("out_h1", r.forward.hidden[0], "0.593269992", extra);
    expect("out_h2", r.forward.hidden[1], "0.596884378", extra);
    expect("out_o1", r.forward.output[0], "0.75136507", extra);
    expect("out_o2", r.forward.output[1], "0.772928465", extra);
    expect("E_total", r.error, "0.298371109", extra);
    expect("δ_o1", r.deltas.output[0], "0.138498562", extra);
    // ∂E/∂w5 = δ_o1 · out_h1: the output layer's weight into o1 from h1.
    expect("∂E/∂w5", r.gradients.weights[1][0][0], "0.082167041", extra);
    // ∂E/∂out_h1 = Σ_k W_k1 δ_k, recovered from δ_h1 = ∂E/∂out_h1 · out_h1(1 − out_h1).
    let h1 = r.forward.hidden[0];
    expect(
        "∂E/∂out_h1",
        r.deltas.hidden[0] / (h1 * (1.0 - h1)),
        "0.036350306",
        extra * 10.0,
    );
    expect("∂E/∂w1", r.gradients.weights[0][0][0], "0.000438568", extra);
    let w = &r.updated.weights;
    let after = [
        ("w1", w[0][0][0], "0.149780716"),
        ("w2", w[0][0][1], "0.19956143"),
        ("w3", w[0][1][0], "0.24975114"),
        ("w4", w[0][1][1], "0.29950229"),
        ("w5", w[1][0][0], "0.35891648"),
        ("w6", w[1][0][1], "0.408666186"),
        ("w7", w[1][1][0], "0.511301270"),
        ("w8", w[1][1][1], "0.561370121"),
    ];
    for (name, got, printed) in after {
        expect(&format!("{name} after one step"), got, printed, extra);
    }
    // Biases are updated too (the original article leaves them): b −= α·δ.
    let b = &r.updated.biases;
    let d = &r.deltas;
    let pairs = [
        (&b[0], &d.hidden, 0.35, "hidden"),
        (&b[1], &d.output, 0.60, "output"),
    ];
    for (bias, delta, start, layer) in pairs {
        for (j, (&got, &dj)) in bias.iter().zip(delta.iter()).enumerate() {
            let want = start - 0.5 * dj;
            assert!(
                (got - want).abs() <= 1e-12 + extra,
                "{layer} bias {j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn classic_2_2_2_step_cpu_f64() {
    let mut cpu = CpuBackend::<f64>::new(&example::network(), 1).unwrap();
    let r = example::run(&mut cpu, "cpu").unwrap();
    check_classic(&r, 0.0);
}

#[test]
fn classic_2_2_2_step_gpu() {
    let Some(ctx) = gpu_or_skip("classic_2_2_2_step_gpu") else {
        return;
    };
    let mut gpu = GpuBackend::new(ctx, &example::network(), 1).unwrap();
    let r = example::run(&mut gpu, "gpu").unwrap();
    check_classic(&r, 1e-6);
}

/// The same step through the shared training loop on both backends, as
/// `shadertrain train --data example --epochs 1` runs it.
#[test]
fn classic_step_through_the_training_loop() {
    use shadertrain::data::Dataset;
    use shadertrain::train::{train, TrainConfig};
    let cfg = TrainConfig {
        epochs: 1,
        batch: 1,
        lr: 0.5,
        seed: 1,
        shuffle: true,
        schedule: Default::default(),
        nan_check: false,
    };
    let data = Dataset::example();
    let mut cpu = CpuBackend::<f64>::new(&example::network(), 1).unwrap();
    cpu.set_params(&example::params()).unwrap();
    let h = train(&mut cpu, &data, &cfg, |_| {}).unwrap();
    // Datasets hold f32, so 0.05 and 0.10 arrive rounded (~1e-9 relative).
    let f32_inputs = 1e-8;
    expect("E_total", h[0].loss, "0.298371109", f32_inputs);
    let p = cpu.params().unwrap();
    expect("w1", p.weights(0)[0], "0.149780716", f32_inputs);
    expect("w8", p.weights(1)[3], "0.561370121", f32_inputs);
    if let Some(ctx) = gpu_or_skip("classic_step_through_the_training_loop") {
        let mut gpu = GpuBackend::new(ctx, &example::network(), 1).unwrap();
        gpu.set_params(&example::params()).unwrap();
        let h = train(&mut gpu, &data, &cfg, |_| {}).unwrap();
        expect("gpu E_total", h[0].loss, "0.298371109", 1e-6);
        let p = gpu.params().unwrap();
        expect("gpu w1", p.weights(0)[0] as f64, "0.149780716", 1e-6);
        expect("gpu w8", p.weights(1)[3] as f64, "0.561370121", 1e-6);
    }
}

// Example B: given A_o1 = 0.70, Y = 0.75, A_h = [0.59, 0.60], W_o = [0.40, 0.45],
// X = [0.05, 0.10], α = 0.5.
const Y: f64 = 0.75;
const A_O: f64 = 0.70;
const A_H: [f64; 2] = [0.59, 0.60];
const W_O: [f64; 2] = [0.40, 0.45];
const X: [f64; 2] = [0.05, 0.10];

#[test]
fn delta_example_2_2_1_cpu_kernels() {
    let mut d_o = [0.0];
    cpu::delta_output(&[A_O], &[Y], &mut d_o, Activation::Sigmoid, Loss::Mse);
    expect("δ_o1", d_o[0], "-0.0105", 0.0);
    let mut g_o = [0.0; 2];
    cpu::gradient_weights(&d_o, &A_H, &mut g_o, 1, 2, 1);
    expect("∂L/∂W31", g_o[0], "-0.006195", 0.0);
    expect("∂L/∂W41", g_o[1], "-0.0063", 0.0);
    let mut w = W_O;
    cpu::sgd_update(&mut w, &g_o, 0.5);
    expect("W31_new", w[0], "0.4030975", 0.0);
    let mut d_h = [0.0; 2];
    cpu::delta_hidden(&W_O, &d_o, &A_H, &mut d_h, 1, 2, 1, Activation::Sigmoid);
    expect("δ_h1", d_h[0], "-0.00101598", 0.0);
    expect("δ_h2", d_h[1], "-0.001134", 0.0);
    let mut g_h = [0.0; 4];
    cpu::gradient_weights(&d_h, &X, &mut g_h, 1, 2, 2);
    expect("∂L/∂W11", g_h[0], "-0.000050799", 0.0);
}

#[test]
fn delta_example_2_2_1_gpu_kernels() {
    let Some(ctx) = gpu_or_skip("delta_example_2_2_1_gpu_kernels") else {
        return;
    };
    let r = KernelRunner::new(ctx).unwrap();
    let f = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<_>>();
    let tol = 1e-6;
    let d_o = r
        .delta_output(&f(&[A_O]), &f(&[Y]), 1, 1, Activation::Sigmoid, Loss::Mse)
        .unwrap();
    expect("gpu δ_o1", d_o[0] as f64, "-0.0105", tol);
    let g_o = r.gradient_weights(&d_o, &f(&A_H), 1, 2, 1).unwrap();
    expect("gpu ∂L/∂W31", g_o[0] as f64, "-0.006195", tol);
    expect("gpu ∂L/∂W41", g_o[1] as f64, "-0.0063", tol);
    let w = r.sgd_update(&f(&W_O), &g_o, 0.5).unwrap();
    expect("gpu W31_new", w[0] as f64, "0.4030975", tol);
    let d_h = r
        .delta_hidden(&f(&W_O), &d_o, &f(&A_H), 1, 2, 1, Activation::Sigmoid)
        .unwrap();
    expect("gpu δ_h1", d_h[0] as f64, "-0.00101598", tol);
    expect("gpu δ_h2", d_h[1] as f64, "-0.001134", tol);
    let g_h = r.gradient_weights(&d_h, &f(&X), 1, 2, 2).unwrap();
    expect("gpu ∂L/∂W11", g_h[0] as f64, "-0.000050799", tol);
    let g_b = r.gradient_bias(&d_h, 1, 2).unwrap();
    assert_close(
        "gpu ∂L/∂b_hidden",
        &g_b,
        &[d_h[0] as f64, d_h[1] as f64],
        1e-9,
        1e-6,
    );
}
