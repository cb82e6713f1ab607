//! Every `map_async` and `poll` in one place: this part of the wgpu API changes
//! between versions, so nothing else touches it.

use super::context::GpuContext;
use crate::{Error, Result};

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
        return Ok(Vec::new());
    }
    // Copies must be multiples of 4 bytes; every type we read is.
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
    ctx.queue.submit([enc.finish()]);

    let (tx, rx) = futures_intrusive::channel::shared::oneshot_channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        // The receiver outlives this callback: poll waits for it below.
        let _ = tx.send(r);
    });
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
    ctx.check_errors()?;
    match pollster::block_on(rx.receive()) {
        Some(Ok(())) => {}
        Some(Err(e)) => {
            return Err(Error::Gpu(format!(
                "mapping a read-back buffer failed: {e}"
            )))
        }
        None => {
            return Err(Error::Gpu(
                "read-back was dropped before it finished".into(),
            ))
        }
    }
    let out = {
        let view = staging
            .get_mapped_range(..)
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
    ctx.device
        .poll(wgpu::PollType::Wait {
            submission_index,
            timeout: None,
        })
        .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
    ctx.check_errors()
}
