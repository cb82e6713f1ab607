//! `shadertrain example` (the classic 2-2-2 worked example, one step, every
//! value printed) and `shadertrain devices` (every adapter wgpu sees).

use super::{device, notice, BackendArg};
use shadertrain::cpu::CpuBackend;
use shadertrain::example;
use shadertrain::gpu::{list_adapters, GpuBackend, GpuContext};
use shadertrain::trainer::Resolved;
use shadertrain::Result;

#[derive(clap::Args)]
pub struct ExampleArgs {
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendArg,
    /// The GPU to use: its index in `shadertrain devices`, or part of its name.
    #[arg(long)]
    adapter: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn example(a: ExampleArgs) -> Result<()> {
    let json = a.json;
    let net = example::network();
    let dev = device(a.backend, a.adapter.as_deref(), 0)?;
    let report = match dev.resolve()? {
        Resolved::Cpu { fallback, .. } => {
            if let (Some(f), false) = (fallback, json) {
                notice(&f);
            }
            example::run(&mut CpuBackend::<f64>::new(&net, 1)?, "cpu")?
        }
        Resolved::Gpu(ctx) => {
            let name = format!("gpu: {}", ctx.describe());
            example::run(&mut GpuBackend::new(ctx, &net, 1)?, &name)?
        }
    };
    if json {
        outln!("{}", serde_json::to_string(&report).unwrap_or_default());
        return Ok(());
    }
    let v = |x: &[f64]| {
        x.iter()
            .map(|v| format!("{v:.9}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    outln!(
        "classic 2-2-2 worked example, one SGD step (lr {}), backend {}",
        example::LEARNING_RATE,
        report.backend
    );
    outln!("inputs {:?}  targets {:?}", example::INPUT, example::TARGET);
    outln!("forward");
    outln!("  out_h1, out_h2  = {}", v(&report.forward.hidden));
    outln!("  out_o1, out_o2  = {}", v(&report.forward.output));
    outln!("  E_total         = {:.9}", report.error);
    outln!("backward");
    outln!("  δ_o1, δ_o2      = {}", v(&report.deltas.output));
    outln!("  δ_h1, δ_h2      = {}", v(&report.deltas.hidden));
    let names = [["hidden", "h"], ["output", "o"]];
    for (l, [layer, n]) in names.iter().enumerate() {
        for (j, row) in report.gradients.weights[l].iter().enumerate() {
            outln!("  ∂E/∂W {layer} into {n}{} = {}", j + 1, v(row));
        }
        outln!(
            "  ∂E/∂b {layer}          = {}",
            v(&report.gradients.biases[l])
        );
    }
    outln!("after the update");
    for (l, [layer, n]) in names.iter().enumerate() {
        for (j, row) in report.updated.weights[l].iter().enumerate() {
            outln!("  W {layer} into {n}{} = {}", j + 1, v(row));
        }
        outln!("  b {layer}          = {}", v(&report.updated.biases[l]));
    }
    Ok(())
}

pub fn devices(json: bool) -> Result<()> {
    let list = list_adapters();
    let all = shadertrain::parallel::all_devices(&list);
    if json {
        // Each adapter as listed, with whether `--devices all` opens it.
        let mut v = serde_json::to_value(&list).unwrap_or_default();
        if let Some(items) = v.as_array_mut() {
            for (i, item) in items.iter_mut().enumerate() {
                if let Some(o) = item.as_object_mut() {
                    o.insert("in_all".into(), all.contains(&i).into());
                }
            }
        }
        outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    if list.is_empty() {
        outln!("no adapters found (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1)");
        return Ok(());
    }
    for (i, a) in list.iter().enumerate() {
        outln!(
            "[{i}] {} ({}, {}){}",
            a.name,
            a.backend,
            a.device_type,
            if a.compute { "" } else { "  [no compute]" }
        );
        if !a.driver.is_empty() {
            outln!("    driver: {}", a.driver);
        }
        outln!(
            "    max buffer {} MiB, max storage binding {} MiB, max workgroups/dim {}, invocations/workgroup {}, storage buffers/stage {}",
            a.max_buffer_size >> 20,
            a.max_storage_binding >> 20,
            a.max_workgroups_per_dim,
            a.max_invocations_per_workgroup,
            a.max_storage_buffers_per_stage
        );
    }
    match GpuContext::new() {
        Ok(ctx) => outln!("chosen: {}", ctx.describe()),
        Err(e) => outln!("chosen: none ({e})"),
    }
    let all: Vec<String> = all.iter().map(|i| i.to_string()).collect();
    match all.as_slice() {
        [] => outln!("--devices all: none (no adapter here can run the kernels)"),
        _ => outln!("--devices all: {} (each usable adapter once; software ones only when there is no hardware GPU)", all.join(",")),
    }
    Ok(())
}
