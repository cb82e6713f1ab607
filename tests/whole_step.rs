//! The whole-step kernel (`shaders/whole_step.wgsl`, `gpu::whole_step`):
//! a tiny network's training step in one dispatch, against the f64 CPU
//! reference step by step (loss, samples scored correct, every layer's
//! activations and deltas, and the parameters), on odd tiny shapes of 1 to
//! 3 layers with every activation and both losses, batch 1 and a few rows,
//! modules checked and unchecked; checked and unchecked agree to the bit.
//! And where it does not run: other optimizers, clipping, dropout, a
//! network past its bounds, or options that turn it off.

mod common;

use common::*;
use shadertrain::backend::{Backend, Metric};
use shadertrain::cpu::CpuBackend;
use shadertrain::gpu::{GpuBackend, GpuContext, GpuOptions};
use shadertrain::network::{Network, Params};
use shadertrain::optim::{Optimizer, OptimizerKind};
use std::sync::Arc;

/// A backend that runs the whole step where it fits.
fn whole(ctx: &Arc<GpuContext>, net: &Network, batch: usize, checked: bool) -> GpuBackend {
    let options = GpuOptions {
        checked,
        whole_step: true,
        ..GpuOptions::BASE
    };
    GpuBackend::with_options(ctx.clone(), net, batch, options).unwrap()
}

/// 3 steps of `net` at `batch` rows on the whole step and on the reference,
/// from data and weights drawn by `label`, compared after each; returns the
/// GPU's parameters and loss bits.
fn compare(
    ctx: &Arc<GpuContext>,
    net: &Network,
    batch: usize,
    checked: bool,
    label: &str,
) -> (Vec<f32>, Vec<u64>) {
    let mut g = whole(ctx, net, batch, checked);
    assert_eq!(g.dispatches_per_step().unwrap(), 1, "{label}");
    let (x, y) = batch_for(net, batch, label);
    let init: Params<f32> = net.init(7);
    let mut cpu = CpuBackend::<f64>::new(net, batch).unwrap();
    let metric = match net.outputs() {
        1 => Metric::Threshold,
        _ => Metric::Argmax,
    };
    cpu.set_metric(metric).unwrap();
    g.set_metric(metric).unwrap();
    cpu.set_params(&init.cast()).unwrap();
    g.set_params(&init).unwrap();
    cpu.load_batch(&f64s(&x), &f64s(&y)).unwrap();
    g.load_batch(&x, &y).unwrap();
    let mut losses = Vec::new();
    for step in 0..3 {
        let lr = 0.4;
        g.step(lr).unwrap();
        cpu.step(lr).unwrap();
        let checks = if checked { "checked" } else { "unchecked" };
        let at = format!("{label} {checks} step {step}");
        let (tg, tc) = (g.take_totals().unwrap(), cpu.take_totals().unwrap());
        assert_eq!(tg.samples, batch as u64, "{at} samples");
        assert_eq!(tg.correct, tc.correct, "{at} scored correct");
        assert_close(
            &format!("{at} loss"),
            &[tg.loss() as f32],
            &[tc.loss()],
            1e-6,
            1e-4,
        );
        losses.push(tg.loss().to_bits());
        for l in 1..=net.layers().len() {
            let (a, b) = (
                g.read_activations(l).unwrap(),
                cpu.read_activations(l).unwrap(),
            );
            assert_close(&format!("{at} activations {l}"), &a, &b, 1e-5, 1e-4);
            let (d, e) = (g.read_deltas(l).unwrap(), cpu.read_deltas(l).unwrap());
            assert_close(&format!("{at} deltas {l}"), &d, &e, 1e-5, 1e-4);
        }
        let (pg, pc) = (g.params().unwrap(), cpu.params().unwrap());
        assert_close(&format!("{at} params"), &pg.data, &pc.data, 1e-5, 1e-4);
    }
    (g.params().unwrap().data, losses)
}

/// Every activation (sigmoid, relu, tanh, linear, softmax) and both losses
/// on 1, 2 and 3 layers of odd widths, at 1, 3 and 7 rows.
#[test]
fn whole_step_matches_the_reference() {
    let Some(ctx) = gpu_or_skip("whole_step_matches_the_reference") else {
        return;
    };
    let nets = [
        "2,2,2",
        "1,1",
        "3,1:linear",
        "5,3:softmax",
        "3,5:tanh,1",
        "4,7:relu,3:softmax",
        "2,7:linear,3:tanh,1:sigmoid",
        "3,2,5:relu,2:linear",
        "6,5:sigmoid,4:tanh,3:softmax",
    ];
    for spec in nets {
        let net = Network::parse(spec).unwrap();
        for batch in [1, 3, 7] {
            let label = format!("{spec} b{batch}");
            let (p_off, l_off) = compare(&ctx, &net, batch, false, &label);
            let (p_on, l_on) = compare(&ctx, &net, batch, true, &label);
            // The checks only guard what the host keeps in range.
            assert_eq!(l_off, l_on, "{label}: loss, checked against unchecked");
            let same = p_off
                .iter()
                .zip(&p_on)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{label}: parameters, checked against unchecked");
        }
    }
}

/// The whole step runs only where the fused step would and the network
/// fits: not for a stateful optimizer, clipping, dropout, four layers, a
/// layer past its width, too much work, a batch run as micro-batches, or
/// with the option off; then the step is the tiled one.
#[test]
fn whole_step_runs_only_where_it_fits() {
    let Some(ctx) = gpu_or_skip("whole_step_runs_only_where_it_fits") else {
        return;
    };
    let dispatches = |spec: &str, batch: usize, options: GpuOptions, opt: Optimizer| {
        let net = Network::parse(spec).unwrap();
        let mut g = GpuBackend::with_options(ctx.clone(), &net, batch, options).unwrap();
        g.set_optimizer(&opt).unwrap();
        let (x, y) = batch_for(&net, batch, spec);
        g.load_batch(&x, &y).unwrap();
        g.dispatches_per_step().unwrap()
    };
    let on = GpuOptions {
        whole_step: true,
        ..GpuOptions::BASE
    };
    let sgd = Optimizer::default();
    assert_eq!(dispatches("2,2,2", 1, on.clone(), sgd), 1);
    assert_eq!(dispatches("3,4,4,2", 5, on.clone(), sgd), 1);
    let off = dispatches("2,2,2", 1, GpuOptions::BASE, sgd);
    assert!(off > 1, "without the option: {off}");
    let adam = Optimizer::new(OptimizerKind::Adam);
    let clip = Optimizer {
        clip_norm: Some(1.0),
        ..sgd
    };
    let chunked = GpuOptions {
        max_chunk: Some(2),
        ..on.clone()
    };
    for (what, spec, batch, options, opt) in [
        ("adam", "2,2,2", 1, on.clone(), adam),
        ("clipping", "2,2,2", 1, on.clone(), clip),
        ("dropout", "2,4:relu:dropout=0.5,2", 1, on.clone(), sgd),
        ("four layers", "2,2,2,2,2", 1, on.clone(), sgd),
        ("a wide layer", "300,2", 1, on.clone(), sgd),
        ("much work", "64,64,64", 8, on.clone(), sgd),
        ("micro-batches", "2,2,2", 5, chunked, sgd),
    ] {
        let n = dispatches(spec, batch, options, opt);
        assert!(n > 1, "{what}: {n} dispatches");
    }
    // Default runs it, as the CLI and bench do.
    let d = dispatches("2,2,2", 1, GpuOptions::default(), sgd);
    let want = if std::env::var("SHADERTRAIN_WHOLE_STEP").is_ok_and(|v| v == "0") {
        off
    } else {
        1
    };
    assert_eq!(d, want);
}
