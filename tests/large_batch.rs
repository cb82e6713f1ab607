//! Large batches: 200,000 samples in one step against the f64 CPU reference;
//! batches split into micro-batches (forced with a small `max_chunk`) against
//! the reference and against the same batch in one piece; the limits that
//! decide the split, and the errors when nothing fits.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::cpu::CpuBackend;
use shadertrain::gpu::{micro_batch_rows, GpuBackend, GpuOptions, KernelSet};
use shadertrain::network::{Network, Params};

#[test]
fn batch_of_200000_matches_cpu_reference() {
    let Some(ctx) = gpu_or_skip("batch_of_200000_matches_cpu_reference") else {
        return;
    };
    let net = Network::parse("3,17,5").unwrap();
    let batch = 200_000;
    // The tiled kernels, on every adapter: the simple ones sum 200,000
    // gradient terms serially in f32 and drift by 2%.
    let mut gpu = GpuBackend::new(ctx, &net, batch).unwrap();
    assert_eq!(gpu.kernel_set(), KernelSet::Tiled);
    steps_match_reference(&mut gpu, &net, batch, 2, 2.0, "3-17-5 batch 200000");
}

fn chunked(max_chunk: usize) -> GpuOptions {
    GpuOptions {
        max_chunk: Some(max_chunk),
        ..GpuOptions::default()
    }
}

/// 1000 samples in micro-batches of 96 (ten, and one of 40); 1300 in chunks
/// of 600, deep enough that a chunk's gradient is split in K as well; tiny.
#[test]
fn micro_batches_match_cpu_reference() {
    let Some(ctx) = gpu_or_skip("micro_batches_match_cpu_reference") else {
        return;
    };
    let net = Network::parse("4,9,3").unwrap();
    for (batch, chunk) in [(1000, 96), (1300, 600), (7, 2)] {
        let mut gpu = GpuBackend::with_options(ctx.clone(), &net, batch, chunked(chunk)).unwrap();
        assert_eq!(gpu.micro_batch(), chunk);
        let label = format!("batch {batch} in chunks of {chunk}");
        steps_match_reference(&mut gpu, &net, batch, 3, 2.0, &label);
    }
}

/// forward, backward and update one by one on a split batch: the gradients
/// are the whole batch's; activations are not kept, and say so.
#[test]
fn micro_batch_gradients_are_the_whole_batch() {
    let Some(ctx) = gpu_or_skip("micro_batch_gradients_are_the_whole_batch") else {
        return;
    };
    let net = Network::parse("5,6,2").unwrap();
    let batch = 300;
    let (x, y) = batch_for(&net, batch, "micro-batch gradients");
    let init: Params<f32> = net.init(9);
    let mut whole = GpuBackend::new(ctx.clone(), &net, batch).unwrap();
    let mut split = GpuBackend::with_options(ctx, &net, batch, chunked(64)).unwrap();
    let mut cpu = CpuBackend::<f64>::new(&net, batch).unwrap();
    cpu.set_params(&init.cast()).unwrap();
    cpu.load_batch(&f64s(&x), &f64s(&y)).unwrap();
    cpu.forward().unwrap();
    cpu.backward().unwrap();
    let want = cpu.read_gradients().unwrap().data;
    for (name, b) in [("whole", &mut whole), ("split", &mut split)] {
        b.set_params(&init).unwrap();
        b.load_batch(&x, &y).unwrap();
        b.forward().unwrap();
        b.backward().unwrap();
        let got = b.read_gradients().unwrap().data;
        assert_close(&format!("{name} gradients"), &got, &want, 1e-7, 1e-4);
        let totals = b.take_totals().unwrap();
        assert_eq!(totals.samples, batch as u64, "{name}: loss counted once");
    }
    assert!(split.read_activations(1).is_err());
    assert!(split.read_deltas(2).is_err());
    assert!(whole.read_activations(1).is_ok());
}

#[test]
fn micro_batch_rows_follow_the_binding_limit() {
    let net = Network::parse("3,30,2").unwrap();
    let limits = wgpu::Limits {
        max_storage_buffer_binding_size: 30 * 4 * 50,
        ..wgpu::Limits::default()
    };
    assert_eq!(micro_batch_rows(&net, 1000, &limits, None).unwrap(), 50);
    assert_eq!(micro_batch_rows(&net, 1000, &limits, Some(7)).unwrap(), 7);
    assert_eq!(micro_batch_rows(&net, 20, &limits, None).unwrap(), 20);
    assert!(micro_batch_rows(&net, 20, &limits, Some(0)).is_err());
    let tiny = wgpu::Limits {
        max_storage_buffer_binding_size: 100,
        ..wgpu::Limits::default()
    };
    let e = micro_batch_rows(&net, 20, &tiny, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_storage_buffer_binding_size"), "{e}");
}

/// The simple kernels have no micro-batches: a batch that needs them is refused.
#[test]
fn simple_kernels_refuse_a_split_batch() {
    let Some(ctx) = gpu_or_skip("simple_kernels_refuse_a_split_batch") else {
        return;
    };
    let net = Network::parse("2,3,1").unwrap();
    let options = GpuOptions {
        kernels: KernelSet::Simple,
        max_chunk: Some(4),
        ..GpuOptions::default()
    };
    let e = GpuBackend::with_options(ctx.clone(), &net, 10, options.clone()).err();
    assert!(
        e.as_ref()
            .is_some_and(|e| e.to_string().contains("a batch of 4 fits")),
        "{e:?}"
    );
    assert!(GpuBackend::with_options(ctx, &net, 4, options).is_ok());
}

/// Many steps with no read-back in between (the backend waits on its oldest
/// submission past `MAX_IN_FLIGHT`): the same result as the reference.
#[test]
fn fifty_steps_without_reads_match_cpu() {
    let Some(ctx) = gpu_or_skip("fifty_steps_without_reads_match_cpu") else {
        return;
    };
    let net = Network::parse("3,4,2").unwrap();
    let (x, y) = batch_for(&net, 16, "no reads");
    let init: Params<f32> = net.init(4);
    let mut gpu = GpuBackend::new(ctx, &net, 16).unwrap();
    let mut cpu = CpuBackend::<f64>::new(&net, 16).unwrap();
    gpu.set_params(&init).unwrap();
    cpu.set_params(&init.cast()).unwrap();
    gpu.load_batch(&x, &y).unwrap();
    cpu.load_batch(&f64s(&x), &f64s(&y)).unwrap();
    for _ in 0..50 {
        gpu.step(1.0).unwrap();
        cpu.step(1.0).unwrap();
    }
    let (pg, pc) = (gpu.params().unwrap(), cpu.params().unwrap());
    assert_close("params after 50 steps", &pg.data, &pc.data, 1e-5, 1e-4);
}
