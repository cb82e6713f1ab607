//! The acceptance numbers of `tests/reference/worked-examples.md`:
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

/// Example A's step: the f64 CPU backend (within the printed digits) or the
/// GPU (within 1e-6 more).
fn classic_2_2_2_step(device: Device) {
    let r = match &device {
        Device::Cpu => {
            let mut cpu = CpuBackend::<f64>::new(&example::network(), 1).unwrap();
            example::run(&mut cpu, "cpu")
        }
        Device::Gpu(ctx) => {
            let mut gpu = GpuBackend::new(ctx.clone(), &example::network(), 1).unwrap();
            example::run(&mut gpu, "gpu")
        }
    };
    let extra = if matches!(device, Device::Cpu) {
        0.0
    } else {
        1e-6
    };
    check_classic(&r.unwrap(), extra);
}

test_device!(
    classic_2_2_2_step,
    classic_2_2_2_step_cpu_f64,
    classic_2_2_2_step_gpu
);

/// The same step through the shared training loop, as `shadertrain train
/// --data example --epochs 1` runs it: on the f64 CPU backend or the GPU.
fn classic_step_through_the_training_loop(device: Device) {
    use shadertrain::data::Dataset;
    use shadertrain::train::{train, TrainConfig};
    let cfg = TrainConfig {
        epochs: 1,
        batch: 1,
        lr: 0.5,
        seed: 1,
        shuffle: true,
        schedule: Default::default(),
        warmup: 0,
        nan_check: false,
    };
    let data = Dataset::example();
    let ctx = match device {
        Device::Cpu => {
            let mut cpu = CpuBackend::<f64>::new(&example::network(), 1).unwrap();
            cpu.set_params(&example::params()).unwrap();
            let h = train(&mut cpu, &data, &cfg, |_| {}).unwrap();
            // Datasets hold f32, so 0.05 and 0.10 arrive rounded (~1e-9 relative).
            let f32_inputs = 1e-8;
            expect("E_total", h[0].loss, "0.298371109", f32_inputs);
            let p = cpu.params().unwrap();
            expect("w1", p.weights(0)[0], "0.149780716", f32_inputs);
            expect("w8", p.weights(1)[3], "0.561370121", f32_inputs);
            return;
        }
        Device::Gpu(ctx) => ctx,
    };
    let mut gpu = GpuBackend::new(ctx, &example::network(), 1).unwrap();
    gpu.set_params(&example::params()).unwrap();
    let h = train(&mut gpu, &data, &cfg, |_| {}).unwrap();
    expect("gpu E_total", h[0].loss, "0.298371109", 1e-6);
    let p = gpu.params().unwrap();
    expect("gpu w1", p.weights(0)[0] as f64, "0.149780716", 1e-6);
    expect("gpu w8", p.weights(1)[3] as f64, "0.561370121", 1e-6);
}

test_device!(
    classic_step_through_the_training_loop,
    classic_step_through_the_training_loop_cpu,
    classic_step_through_the_training_loop_gpu
);

// Example B: given A_o1 = 0.70, Y = 0.75, A_h = [0.59, 0.60], W_o = [0.40, 0.45],
// X = [0.05, 0.10], α = 0.5.
const Y: f64 = 0.75;
const A_O: f64 = 0.70;
const A_H: [f64; 2] = [0.59, 0.60];
const W_O: [f64; 2] = [0.40, 0.45];
const X: [f64; 2] = [0.05, 0.10];

/// Example B's kernels, in f64 whatever they compute in.
trait Kernels {
    fn delta_output(&self, a: f64, y: f64) -> Vec<f64>;
    fn gradient_weights(&self, d: &[f64], a: &[f64], n_in: usize, n_out: usize) -> Vec<f64>;
    fn gradient_bias(&self, d: &[f64]) -> Vec<f64>;
    fn sgd_update(&self, p: &[f64], g: &[f64], lr: f64) -> Vec<f64>;
    fn delta_hidden(&self, w: &[f64], d: &[f64], a: &[f64]) -> Vec<f64>;
}

/// The CPU twins, in f64.
struct Cpu;

impl Kernels for Cpu {
    fn delta_output(&self, a: f64, y: f64) -> Vec<f64> {
        let mut d = vec![0.0];
        cpu::delta_output(&[a], &[y], &mut d, Activation::Sigmoid, Loss::Mse);
        d
    }
    fn gradient_weights(&self, d: &[f64], a: &[f64], n_in: usize, n_out: usize) -> Vec<f64> {
        let mut g = vec![0.0; n_in * n_out];
        cpu::gradient_weights(d, a, &mut g, 1, n_in, n_out);
        g
    }
    fn gradient_bias(&self, d: &[f64]) -> Vec<f64> {
        let mut g = vec![0.0; d.len()];
        cpu::gradient_bias(d, &mut g, 1, d.len());
        g
    }
    fn sgd_update(&self, p: &[f64], g: &[f64], lr: f64) -> Vec<f64> {
        let mut p = p.to_vec();
        cpu::sgd_update(&mut p, g, lr);
        p
    }
    fn delta_hidden(&self, w: &[f64], d: &[f64], a: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; a.len()];
        let (n, n_next) = (a.len(), d.len());
        cpu::delta_hidden(w, d, a, &mut out, 1, n, n_next, Activation::Sigmoid);
        out
    }
}

/// The GPU kernels, in f32.
impl Kernels for KernelRunner {
    fn delta_output(&self, a: f64, y: f64) -> Vec<f64> {
        let d = self.delta_output(
            &f32s(&[a]),
            &f32s(&[y]),
            1,
            1,
            Activation::Sigmoid,
            Loss::Mse,
        );
        f64s(&d.unwrap())
    }
    fn gradient_weights(&self, d: &[f64], a: &[f64], n_in: usize, n_out: usize) -> Vec<f64> {
        let g = self.gradient_weights(&f32s(d), &f32s(a), 1, n_in, n_out);
        f64s(&g.unwrap())
    }
    fn gradient_bias(&self, d: &[f64]) -> Vec<f64> {
        f64s(&self.gradient_bias(&f32s(d), 1, d.len()).unwrap())
    }
    fn sgd_update(&self, p: &[f64], g: &[f64], lr: f64) -> Vec<f64> {
        f64s(&self.sgd_update(&f32s(p), &f32s(g), lr as f32).unwrap())
    }
    fn delta_hidden(&self, w: &[f64], d: &[f64], a: &[f64]) -> Vec<f64> {
        let (n, n_next) = (a.len(), d.len());
        let (w, d, a) = (f32s(w), f32s(d), f32s(a));
        let out = self.delta_hidden(&w, &d, &a, 1, n, n_next, Activation::Sigmoid);
        f64s(&out.unwrap())
    }
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// Example B kernel by kernel: the CPU twins in f64 match the printed
/// digits; the GPU kernels in f32 within 1e-6 more.
fn delta_example_2_2_1(device: Device) {
    let (k, tol, p): (Box<dyn Kernels>, f64, &str) = match device {
        Device::Cpu => (Box::new(Cpu), 0.0, ""),
        Device::Gpu(ctx) => (Box::new(KernelRunner::new(ctx).unwrap()), 1e-6, "gpu "),
    };
    let d_o = k.delta_output(A_O, Y);
    expect(&format!("{p}δ_o1"), d_o[0], "-0.0105", tol);
    let g_o = k.gradient_weights(&d_o, &A_H, 2, 1);
    expect(&format!("{p}∂L/∂W31"), g_o[0], "-0.006195", tol);
    expect(&format!("{p}∂L/∂W41"), g_o[1], "-0.0063", tol);
    let w = k.sgd_update(&W_O, &g_o, 0.5);
    expect(&format!("{p}W31_new"), w[0], "0.4030975", tol);
    let d_h = k.delta_hidden(&W_O, &d_o, &A_H);
    expect(&format!("{p}δ_h1"), d_h[0], "-0.00101598", tol);
    expect(&format!("{p}δ_h2"), d_h[1], "-0.001134", tol);
    let g_h = k.gradient_weights(&d_h, &X, 2, 2);
    expect(&format!("{p}∂L/∂W11"), g_h[0], "-0.000050799", tol);
    // ∂L/∂b of the hidden layer is its δ (batch 1).
    let g_b = k.gradient_bias(&d_h);
    assert_close64(&format!("{p}∂L/∂b_hidden"), &g_b, &d_h, 1e-9, 1e-6);
}

test_device!(
    delta_example_2_2_1,
    delta_example_2_2_1_cpu_kernels,
    delta_example_2_2_1_gpu_kernels
);
