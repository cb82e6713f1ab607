//! GPU faults, injected on a real device (lavapipe in CI): a lost device, a
//! validation error in work the backend did not record, requests beyond the
//! device's limits, a shader that does not compile, a bind group that does
//! not match its layout, and an allocation the driver refuses. Each must come
//! back as an [`Error::Gpu`] that says what happened, never as a panic or a
//! hang; each test checks the message, not just that there was an error.
//!
//! Faults that spoil a device (loss, uncaptured errors) get a device of their
//! own, so the other tests of this binary keep theirs.

mod common;

use common::*;
use shadertrain::backend::Backend;
use shadertrain::gpu::context::{buffer_error, create_buffer};
use shadertrain::gpu::kernels::{Kernel, KernelSpec, FORWARD_DENSE};
use shadertrain::gpu::{GpuBackend, GpuContext, GpuOptions, KernelSet, TileConfig};
use shadertrain::network::Network;
use shadertrain::{Error, Setting};
use std::sync::mpsc;
use std::time::Duration;

/// Run `f` on a thread of its own and fail if it takes longer than `secs`:
/// a fault that hangs the backend fails the test instead of the CI job.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => v,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what}: no answer in {secs} s (hung)"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked (see above)"),
    }
}

/// A batch of `value` the device cannot take: an [`Error::Setting`] for the
/// batch whose reason names the `limit` and says what `fits`.
fn batch_refused(r: shadertrain::Result<()>, value: &str, limit: &str, fits: &str) {
    match r {
        Err(Error::Setting {
            setting: Setting::Batch,
            value: v,
            problem,
        }) => {
            eprintln!("batch {v}: {problem}");
            assert_eq!(v, value);
            assert!(
                problem.contains(limit) && problem.contains(fits),
                "{problem}"
            );
        }
        other => panic!("expected the batch to be refused, got {other:?}"),
    }
}

/// The message of an [`Error::Gpu`], failing on any other outcome.
fn gpu_message<T>(what: &str, r: shadertrain::Result<T>) -> String {
    match r {
        Err(Error::Gpu(m)) => {
            eprintln!("{what}: {m}");
            m
        }
        Err(e) => panic!("{what}: expected Error::Gpu, got {e:?}"),
        Ok(_) => panic!("{what}: expected Error::Gpu, got Ok"),
    }
}

/// A backend for `net` on `ctx` that has trained one step and synced.
fn trained(ctx: std::sync::Arc<GpuContext>, net: &Network, batch: usize) -> GpuBackend {
    let mut gpu = GpuBackend::new(ctx, net, batch).unwrap();
    gpu.set_params(&net.init(1)).unwrap();
    let (x, y) = batch_for(net, batch, "fault batch");
    gpu.load_batch(&x, &y).unwrap();
    gpu.step(0.5).unwrap();
    gpu.sync().unwrap();
    gpu
}

/// `ctx.device.destroy()` mid-training: steps may still be accepted until
/// the backend next waits, then sync, read-backs, uploads and a new backend
/// on that device all fail with the loss and its reason.
#[test]
fn device_loss_is_an_error_not_a_panic_or_hang() {
    if gpu_or_skip("device_loss_is_an_error_not_a_panic_or_hang").is_none() {
        return;
    }
    within(120, "device loss", || {
        let ctx = GpuContext::new().unwrap();
        let net = Network::parse("3,8,2").unwrap();
        let mut gpu = trained(ctx.clone(), &net, 16);
        ctx.device.destroy();
        // More steps than MAX_IN_FLIGHT, so the backend waits on one of them.
        let steps: Vec<_> = (0..8).map(|_| gpu.step(0.5)).collect();
        let lost = "device lost (Destroyed)";
        for (i, s) in steps.iter().enumerate() {
            if let Err(e) = s {
                assert!(e.to_string().contains(lost), "step {i} after loss: {e}");
            }
        }
        let (x, y) = batch_for(&net, 16, "after loss");
        for (what, r) in [
            ("sync", gpu.sync()),
            ("params", gpu.params().map(|_| ())),
            ("take_totals", gpu.take_totals().map(|_| ())),
            ("read_activations", gpu.read_activations(1).map(|_| ())),
            ("load_batch", gpu.load_batch(&x, &y)),
            ("step", gpu.step(0.5)),
        ] {
            let m = gpu_message(what, r);
            assert!(m.starts_with(lost), "{what}: {m}");
        }
        let m = gpu_message("new backend", GpuBackend::new(ctx, &net, 16).map(|_| ()));
        assert!(m.starts_with(lost), "new backend: {m}");
    });
}

/// A validation error raised on the backend's device by someone else (a
/// buffer with a usage wgpu refuses): the backend's next call reports wgpu's
/// message, naming the call and the label, and so does every call after.
#[test]
fn uncaptured_validation_error_fails_the_next_call() {
    if gpu_or_skip("uncaptured_validation_error_fails_the_next_call").is_none() {
        return;
    }
    within(120, "uncaptured buffer error", || {
        let ctx = GpuContext::new().unwrap();
        let net = Network::parse("3,8,2").unwrap();
        let mut gpu = trained(ctx.clone(), &net, 16);
        // MAP_READ goes with COPY_DST only (without MAPPABLE_PRIMARY_BUFFERS).
        let _bad = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("injected"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let m = gpu_message("sync", gpu.sync());
        assert!(m.contains("Device::create_buffer"), "{m}");
        assert!(m.contains("'injected'"), "{m}");
        assert!(m.to_lowercase().contains("usage"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
        assert_eq!(gpu_message("params", gpu.params().map(|_| ())), m);
        assert_eq!(gpu_message("step", gpu.step(0.5)), m);
    });
}

/// A dispatch submitted without its bind group, on the backend's device: an
/// error in submitted work, reported by the backend's next read-back.
#[test]
fn invalid_submitted_work_fails_the_next_read() {
    if gpu_or_skip("invalid_submitted_work_fails_the_next_read").is_none() {
        return;
    }
    within(120, "invalid dispatch", || {
        let ctx = GpuContext::new().unwrap();
        let net = Network::parse("3,8,2").unwrap();
        let mut gpu = trained(ctx.clone(), &net, 16);
        let k = Kernel::new(&ctx.device, FORWARD_DENSE, &TileConfig::SMALL).unwrap();
        let mut enc = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("injected dispatch"),
            });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&k.pipeline);
            pass.dispatch_workgroups(1, 1, 1);
        }
        ctx.queue.submit([enc.finish()]);
        let m = gpu_message("params", gpu.params().map(|_| ()));
        assert!(m.contains("expects a BindGroup to be set"), "{m}");
        assert!(m.contains("injected dispatch"), "{m}");
        assert_eq!(gpu_message("sync", gpu.sync()), m);
    });
}

/// The adapter's full limits, and a device opened with `change` applied to them.
fn small_device(change: impl FnOnce(&mut wgpu::Limits)) -> std::sync::Arc<GpuContext> {
    let full = gpu_or_skip("small_device").unwrap().limits.clone();
    let mut limits = full;
    change(&mut limits);
    GpuContext::with_limits(limits).unwrap()
}

/// A device whose storage bindings hold 4 KiB: a batch of 100 samples of a
/// 32-wide layer (12.5 KiB) is split into micro-batches of 32 and trains as
/// the reference does; the simple kernels, which cannot split, refuse it
/// naming the limit and a batch that fits; a layer too wide for one sample,
/// and parameters over the limit, are refused naming the limit.
#[test]
fn storage_binding_limit_splits_or_names_the_limit() {
    if gpu_or_skip("storage_binding_limit_splits_or_names_the_limit").is_none() {
        return;
    }
    let ctx = small_device(|l| l.max_storage_buffer_binding_size = 4096);
    let net = Network::parse("3,32,2").unwrap();
    let mut gpu = GpuBackend::new(ctx.clone(), &net, 100).unwrap();
    assert_eq!(gpu.micro_batch(), 32);
    assert_eq!(gpu.kernel_set(), KernelSet::Tiled);
    steps_match_reference(&mut gpu, &net, 100, 3, 1.0, "4 KiB bindings");

    let simple = GpuOptions {
        kernels: KernelSet::Simple,
        ..GpuOptions::default()
    };
    let e = GpuBackend::with_options(ctx.clone(), &net, 100, simple).map(|_| ());
    batch_refused(
        e,
        "100",
        "max_storage_buffer_binding_size",
        "a batch of 32 fits",
    );

    let wide = Network::parse("3,2000,2").unwrap();
    let m = gpu_message(
        "wide layer",
        GpuBackend::new(ctx.clone(), &wide, 1).map(|_| ()),
    );
    assert!(m.contains("max_storage_buffer_binding_size"), "{m}");
    assert!(m.contains("2000-wide layer needs 8000 bytes"), "{m}");

    // 40·40 + 40 + 40·40 + 40 parameters: 13,120 bytes.
    let deep = Network::parse("40,40,40").unwrap();
    let m = gpu_message("params", GpuBackend::new(ctx, &deep, 1).map(|_| ()));
    assert!(m.contains("params needs 13120 bytes"), "{m}");
    assert!(m.contains("max_storage_buffer_binding_size"), "{m}");
}

/// A device with at most 8 workgroups per grid dimension: 64 workgroups of
/// 64 invocations reach 4,096 (sample, neuron) pairs, so a 32-wide layer
/// takes micro-batches of 128; the simple kernels refuse a batch of 1,000
/// naming `max_compute_workgroups_per_dimension`.
#[test]
fn workgroup_limit_splits_or_names_the_limit() {
    if gpu_or_skip("workgroup_limit_splits_or_names_the_limit").is_none() {
        return;
    }
    let ctx = small_device(|l| l.max_compute_workgroups_per_dimension = 8);
    let net = Network::parse("3,32,2").unwrap();
    let mut gpu = GpuBackend::new(ctx.clone(), &net, 1000).unwrap();
    assert_eq!(gpu.micro_batch(), 128);
    steps_match_reference(&mut gpu, &net, 1000, 3, 1.0, "8 workgroups per dimension");
    let simple = GpuOptions {
        kernels: KernelSet::Simple,
        ..GpuOptions::default()
    };
    let e = GpuBackend::with_options(ctx, &net, 1000, simple).map(|_| ());
    batch_refused(
        e,
        "1000",
        "max_compute_workgroups_per_dimension",
        "a batch of 128 fits",
    );
}

/// Asking for more than the adapter offers is refused, naming the limit.
#[test]
fn limits_beyond_the_adapter_name_the_limit() {
    let Some(ctx) = gpu_or_skip("limits_beyond_the_adapter_name_the_limit") else {
        return;
    };
    let mut limits = ctx.limits.clone();
    limits.max_storage_buffer_binding_size = ctx.limits.max_storage_buffer_binding_size * 2;
    let m = gpu_message("open", GpuContext::with_limits(limits).map(|_| ()));
    assert!(m.contains("could not open a device"), "{m}");
    assert!(m.contains("max_storage_buffer_binding_size"), "{m}");
}

/// A shader that does not parse and a bind group that does not match its
/// layout are errors naming what was being made, with wgpu's message; they
/// are caught by error scopes, so the device is not spoiled and still trains.
#[test]
fn bad_shader_and_bad_bind_group_are_errors_and_spoil_nothing() {
    let Some(ctx) = gpu_or_skip("bad_shader_and_bad_bind_group_are_errors_and_spoil_nothing")
    else {
        return;
    };
    let broken = KernelSpec {
        source: "fn forward_dense( {",
        ..FORWARD_DENSE
    };
    let m = gpu_message(
        "broken shader",
        Kernel::new(&ctx.device, broken, &TileConfig::SMALL).map(|_| ()),
    );
    assert!(
        m.starts_with("creating shader module forward.wgsl: "),
        "{m}"
    );
    assert!(m.contains("Device::create_shader_module"), "{m}");
    assert!(m.contains("parsing error"), "{m}");
    assert!(
        m.ends_with("at wgsl:1:19"),
        "the source excerpt shrinks to its place: {m}"
    );

    let k = Kernel::new(&ctx.device, FORWARD_DENSE, &TileConfig::SMALL).unwrap();
    let uniform_only = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("uniform only"),
        size: 256,
        usage: wgpu::BufferUsages::UNIFORM,
        mapped_at_creation: false,
    });
    let m = gpu_message(
        "bind group",
        k.bind(&ctx.device, &[&uniform_only; 4]).map(|_| ()),
    );
    assert!(
        m.starts_with("creating a bind group for forward_dense: "),
        "{m}"
    );
    assert!(m.contains("Device::create_bind_group"), "{m}");

    // Neither error reached the context's sink.
    ctx.check_errors().unwrap();
    let net = Network::parse("3,8,2").unwrap();
    let mut gpu = GpuBackend::new(ctx, &net, 16).unwrap();
    steps_match_reference(&mut gpu, &net, 16, 3, 1.0, "after caught errors");
}

/// An allocation beyond the machine's memory is refused by the driver: an
/// out-of-memory error naming the size and suggesting a smaller batch, not a
/// panic. lavapipe allocates in host memory, so 1 TiB (or the device's
/// largest buffer, if smaller) cannot be had here.
#[test]
fn refused_allocation_says_out_of_memory() {
    if gpu_or_skip("refused_allocation_says_out_of_memory").is_none() {
        return;
    }
    let ctx = GpuContext::new().unwrap();
    let size = ctx.limits.max_buffer_size.min(1 << 40) & !3;
    let r = create_buffer(
        &ctx.device,
        &wgpu::BufferDescriptor {
            label: Some("huge"),
            size,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        },
    );
    match r {
        // A device that can allocate its largest buffer has nothing to refuse.
        Ok(_) => eprintln!("{size} bytes were allocated; no out-of-memory to check"),
        Err(e) => {
            let m = e.to_string();
            eprintln!("huge buffer: {m}");
            assert!(m.contains("for huge"), "{m}");
            assert!(
                m.contains("GPU out of memory allocating") && m.contains("smaller batch size"),
                "{m}"
            );
            // The CLI words the same error with its flag.
            assert!(e.render(|_| "--batch").contains("smaller --batch"), "{m}");
        }
    }
}

/// The message for an out-of-memory error, whatever raised it.
#[test]
fn out_of_memory_message_names_size_and_suggests_a_smaller_batch() {
    let e = wgpu::Error::OutOfMemory {
        source: Box::new(std::io::Error::other("Not enough memory left")),
    };
    let m = buffer_error("activations 1", 3 << 30, &e).to_string();
    assert_eq!(
        m,
        "not enough memory: GPU out of memory allocating 3072.0 MiB for activations 1 (out of memory: Not enough memory left); use a smaller batch size"
    );
}
