//! Every `map_async` and `poll` in one place: this part of the wgpu API changes
//! between versions, so nothing else touches it.
//!
//! Each wait reports the first GPU error recorded on the context (a
//! validation error in submitted work, or the device's loss) as
//! [`Error::Gpu`], and none can hang on a lost device: a mapping whose
//! callback has not run once `poll` has waited out every submission is an
//! error, not a wait.

use super::context::{self, GpuContext};
use crate::{Error, Result};
use std::sync::mpsc;

/// Copy `count` plain values of type `T` from `src` (starting at byte
/// `offset`) to the host, waiting for all submitted work first.
pub fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    src: &wgpu::Buffer,
    offset: u64,
    count: usize,
) -> Result<Vec<T>> {
    ctx.check_errors()?;
    let bytes = (count * std::mem::size_of::<T>()) as u64;
    if bytes == 0 {
        return Ok(Vec::new());
    }
    // Copies must be multiples of 4 bytes; every type we read is.
    let staging = context::create_buffer(
        &ctx.device,
        &wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        },
    )?;
    let mut enc = ctx
        .device
        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("readback"),
        });
    enc.copy_buffer_to_buffer(src, offset, &staging, 0, bytes);
    ctx.queue.submit([enc.finish()]);

    let (tx, rx) = mpsc::channel();
    staging.map_async(wgpu::MapMode::Read, .., move |r| {
        // The receiver may be gone if we returned early with an error.
        let _ = tx.send(r);
    });
    finish(ctx)?;
    // A blocking poll runs the callbacks of the work it waited for, so the
    // result is here now; waiting for it could hang on a lost device.
    match rx.try_recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            ctx.check_errors()?;
            return Err(Error::Gpu(format!(
                "mapping a read-back buffer failed: {e}"
            )));
        }
        Err(_) => {
            ctx.check_errors()?;
            return Err(Error::Gpu(
                "a read-back did not finish although the GPU reported its work done".into(),
            ));
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
