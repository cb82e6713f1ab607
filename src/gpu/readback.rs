//! Every `map_async` and `poll` in one place: this part of the wgpu API changes
//! between versions, so nothing else touches it.
//!
//! Each wait reports the first GPU error recorded on the context (a
//! validation error in submitted work, or the device's loss) as
//! [`Error::Gpu`], and none can hang on a lost device: a mapping whose
//! callback has not run a minute after `poll` waited out every submission is
//! an error, not a wait.

use super::context::{self, GpuContext};
use crate::error::{Error, Result};
use std::sync::mpsc;

/// How long a read-back may take to be mapped once its work has finished.
const MAP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A buffer the host can map, to read `bytes` back through; a caller that
/// reads the same small buffer often (the loss totals) keeps one.
pub fn staging(ctx: &GpuContext, bytes: u64) -> Result<wgpu::Buffer> {
    context::create_buffer(
        &ctx.device,
        &wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        },
    )
}

/// Copy `count` plain values of type `T` from `src` (starting at byte
/// `offset`) to the host, waiting for all submitted work first.
pub fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<T>> {
    let bytes = (count * std::mem::size_of::<T>()) as u64;
    if bytes == 0 {
        ctx.check_errors()?;
        return Ok(Vec::new());
    }
    read_via(ctx, src, offset, &staging(ctx, bytes)?, count)
}

/// [`read`] through `staging` (from [`staging`], at least as large as the
/// values), which is left unmapped for the next read.
pub fn read_via<T: bytemuck::Pod>(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    staging: &wgpu::Buffer,
    count: usize,
) -> Result<Vec<T>> {
    ctx.check_errors()?;
    // Copies must be multiples of 4 bytes; every type we read is.
    let bytes = (count * std::mem::size_of::<T>()) as u64;
    if bytes == 0 {
        return Ok(Vec::new());
    }
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    enc.copy_buffer_to_buffer(src, offset, staging, 0, bytes);
    ctx.queue.submit([enc.finish()]);

    let (tx, rx) = mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, ..bytes, move |r| {
        // The receiver may be gone if we returned early with an error.
        let _ = tx.send(r);
    });
    finish(ctx)?;
    // The work is done, but another thread's poll may be the one running our
    // callback: wait for it a while, polling, rather than forever.
    let start = std::time::Instant::now();
    let mapped = loop {
        match rx.recv_timeout(std::time::Duration::from_millis(50)) {
            Ok(r) => break r,
            Err(mpsc::RecvTimeoutError::Timeout) if start.elapsed() < MAP_TIMEOUT => {
                let _ = ctx.device.poll(wgpu::PollType::Poll);
                ctx.check_errors()?;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                ctx.check_errors()?;
                return Err(Error::Gpu(format!(
                    "a read-back was not mapped {} s after the GPU finished its work",
                    MAP_TIMEOUT.as_secs()
                )));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                ctx.check_errors()?;
                return Err(Error::Gpu(
                    "a read-back was dropped before it was mapped".into(),
                ));
            }
        }
    };
    if let Err(e) = mapped {
        ctx.check_errors()?;
        return Err(Error::Gpu(format!(
            "mapping a read-back buffer failed: {e}"
        )));
    }
    let out = {
        let view = staging
            .get_mapped_range(..bytes)
            .map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e}")))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    staging.unmap();
    Ok(out)
}

/// Wait for every submitted command to finish; report any GPU error.
pub fn finish(ctx: &GpuContext) -> Result<()> {
    wait(ctx, None)
}

/// Wait until the submission `index` has finished (and those before it);
/// report any GPU error.
pub fn wait_for(ctx: &GpuContext, index: wgpu::SubmissionIndex) -> Result<()> {
    wait(ctx, Some(index))
}

fn wait(ctx: &GpuContext, submission_index: Option<wgpu::SubmissionIndex>) -> Result<()> {
    let mut polled = ctx.device.poll(wgpu::PollType::Wait {
        submission_index,
        timeout: None,
    });
    if let Err(wgpu::PollError::WrongSubmissionIndex(..)) = polled {
        // The submission was refused (on a lost device, silently); wait for
        // the rest, which also runs the device-lost callback.
        polled = ctx.device.poll(wgpu::PollType::wait_indefinitely());
        ctx.check_errors()?;
        return Err(Error::Gpu(match polled {
            Ok(_) => "the GPU refused a submission".to_string(),
            Err(e) => format!("waiting for the GPU failed: {e}"),
        }));
    }
    // The device-lost callback runs inside poll: its reason beats poll's own error.
    ctx.check_errors()?;
    polled
        .map(|_| ())
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))
}
