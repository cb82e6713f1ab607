//! Every shader parses and validates with naga, and its declared bindings and
//! uniform sizes match the host's hand-written layouts (`KernelSpec`). No GPU
//! is needed.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess};
use shadertrain::gpu::kernels::{epilogue_bytes, KernelKind, Slot, TileConfig, ALL, LOSS_WG, WG};

fn parse(spec: &shadertrain::gpu::kernels::KernelSpec) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(spec.source).unwrap_or_else(|e| {
        panic!(
            "{} does not parse:\n{}",
            spec.file,
            e.emit_to_string(spec.source)
        )
    });
    let info = Validator::new(ValidationFlags::all(), Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{} does not validate: {e:?}", spec.file));
    (module, info)
}

#[test]
fn every_shader_parses_and_validates() {
    for spec in ALL {
        let (module, _) = parse(spec);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == spec.entry)
            .unwrap_or_else(|| panic!("{} has no entry point {}", spec.file, spec.entry));
        assert_eq!(
            ep.stage,
            ShaderStage::Compute,
            "{}: not a compute entry point",
            spec.entry
        );
    }
}

#[test]
fn bindings_match_host_layouts() {
    for spec in ALL {
        let (module, info) = parse(spec);
        let ep_index = module
            .entry_points
            .iter()
            .position(|e| e.name == spec.entry)
            .expect("entry point");
        let ep_info = info.get_entry_point(ep_index);
        let mut declared = 0;
        for (handle, var) in module.global_variables.iter() {
            let Some(rb) = &var.binding else { continue };
            declared += 1;
            let name = var.name.clone().unwrap_or_default();
            assert_eq!(
                rb.group, 0,
                "{}: {name} is in group {}",
                spec.file, rb.group
            );
            let slot = spec.bindings.get(rb.binding as usize).unwrap_or_else(|| {
                panic!(
                    "{}: {name} at binding {} is missing from the host layout",
                    spec.file, rb.binding
                )
            });
            match (slot, var.space) {
                (Slot::Uniform(size), AddressSpace::Uniform) => {
                    let wgsl = module.types[var.ty].inner.size(module.to_ctx()) as u64;
                    assert_eq!(
                        wgsl, *size,
                        "{}: uniform {name} is {wgsl} bytes in WGSL, {size} on the host",
                        spec.file
                    );
                }
                (Slot::Read, AddressSpace::Storage { access }) => {
                    assert_eq!(
                        access,
                        StorageAccess::LOAD,
                        "{}: {name} should be read-only",
                        spec.file
                    )
                }
                (Slot::ReadWrite, AddressSpace::Storage { access }) => assert!(
                    access.contains(StorageAccess::LOAD | StorageAccess::STORE),
                    "{}: {name} should be read_write",
                    spec.file
                ),
                (slot, space) => panic!(
                    "{}: {name} is {space:?} in WGSL but {slot:?} on the host",
                    spec.file
                ),
            }
            // A read-write binding that no entry point of the file (they
            // share one layout) writes would be a layout bug.
            if *slot == Slot::ReadWrite && !ep_info[handle].is_empty() {
                let written = (0..module.entry_points.len()).any(|i| {
                    info.get_entry_point(i)[handle].contains(naga::valid::GlobalUse::WRITE)
                });
                assert!(written, "{}: no entry point writes {name}", spec.file);
            }
        }
        assert_eq!(
            declared,
            spec.bindings.len(),
            "{}: declares {declared} bindings, host has {}",
            spec.file,
            spec.bindings.len()
        );
    }
}

#[test]
fn workgroup_sizes_match_host() {
    for spec in ALL.iter().filter(|s| s.kind != KernelKind::Tiled) {
        let (module, _) = parse(spec);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == spec.entry)
            .expect("entry point");
        let want = match spec.kind {
            KernelKind::Reduce => LOSS_WG,
            _ => WG,
        };
        assert_eq!(
            ep.workgroup_size,
            [want, 1, 1],
            "{}: workgroup size differs from the host's",
            spec.entry
        );
    }
}

/// Every tiled kernel with each tile configuration's pipeline constants, as
/// the device compiles it: the overrides resolve, the module still
/// validates, and the workgroup shape and memory are what the host expects.
#[test]
fn tiled_kernels_resolve_with_every_tile_config() {
    let configs = [TileConfig::SMALL, TileConfig::MEDIUM, TileConfig::DISCRETE];
    for spec in ALL.iter().filter(|s| s.kind == KernelKind::Tiled) {
        let (module, info) = parse(spec);
        for tiles in configs {
            let mut constants = naga::back::PipelineConstants::default();
            for (name, value) in tiles.constants() {
                constants.insert(name.to_string(), value);
            }
            let (resolved, _) = naga::back::pipeline_constants::process_overrides(
                &module,
                &info,
                Some((ShaderStage::Compute, spec.entry)),
                &constants,
            )
            .unwrap_or_else(|e| panic!("{} with {tiles:?}: {e}", spec.entry));
            let ep = &resolved.entry_points[0];
            assert_eq!(
                ep.workgroup_size,
                [tiles.wg_x, tiles.wg_y, 1],
                "{} with {tiles:?}",
                spec.entry
            );
            let shared: u32 = resolved
                .global_variables
                .iter()
                .filter(|(_, v)| v.space == AddressSpace::WorkGroup)
                .map(|(_, v)| resolved.types[v.ty].inner.size(resolved.to_ctx()))
                .sum();
            assert_eq!(
                shared,
                tiles.workgroup_bytes() + epilogue_bytes(spec, &tiles),
                "{} with {tiles:?}: workgroup memory",
                spec.entry
            );
        }
    }
}

/// Every generated core, as the host builds it per configuration: each tiled
/// kernel file's module parses and validates, keeps its bindings, and has the
/// workgroup shape and memory the host expects (the entry points of
/// the output layer's fused kernel included).
#[test]
fn generated_kernels_validate_for_every_config() {
    use shadertrain::gpu::codegen;
    use shadertrain::gpu::KernelConfig;
    let configs = [
        TileConfig::SMALL,
        TileConfig::MEDIUM,
        TileConfig::DISCRETE,
        TileConfig {
            wg_x: 4,
            wg_y: 16,
            tm: 4,
            tn: 8,
            bk: 16,
        },
        TileConfig {
            bk: 16,
            ..TileConfig::DISCRETE
        },
        TileConfig {
            wg_x: 8,
            wg_y: 8,
            tm: 16,
            tn: 8,
            bk: 8,
        },
        TileConfig {
            wg_x: 4,
            wg_y: 4,
            tm: 12,
            tn: 16,
            bk: 4,
        },
    ];
    let specs = ALL
        .iter()
        .filter(|s| s.file.ends_with("_tiled.wgsl"))
        .collect::<Vec<_>>();
    assert_eq!(specs.len(), 5, "forward, output, delta_hidden, 2 gradient");
    let both = configs.iter().flat_map(|&t| {
        [(false, false), (true, false), (false, true), (true, true)].map(|(db, v4)| {
            KernelConfig::generated(t)
                .with_double_buffer(db)
                .with_k_vec4(v4)
        })
    });
    for config in both {
        let tiles = config.tiles;
        assert_eq!(KernelConfig::parse(&config.to_string()).unwrap(), config);
        for spec in &specs {
            let src = codegen::source(spec, &config).unwrap();
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{} {config}: {}", spec.entry, e.emit_to_string(&src)));
            let info = Validator::new(ValidationFlags::all(), Capabilities::default())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} {config} does not validate: {e:?}", spec.entry));
            let index = module
                .entry_points
                .iter()
                .position(|e| e.name == spec.entry)
                .unwrap_or_else(|| panic!("{config} has no {}", spec.entry));
            let (ep, used) = (&module.entry_points[index], info.get_entry_point(index));
            let want = match spec.kind {
                KernelKind::Tiled => [tiles.wg_x, tiles.wg_y, 1],
                _ => [WG, 1, 1],
            };
            assert_eq!(ep.workgroup_size, want, "{} {config}", spec.entry);
            let bindings = module
                .global_variables
                .iter()
                .filter(|(_, v)| v.binding.is_some())
                .count();
            assert_eq!(bindings, spec.bindings.len(), "{} {config}", spec.entry);
            // What the entry point uses (the loss helpers' arrays it does not).
            let shared: u32 = module
                .global_variables
                .iter()
                .filter(|(h, v)| v.space == AddressSpace::WorkGroup && !used[*h].is_empty())
                .map(|(_, v)| module.types[v.ty].inner.size(module.to_ctx()))
                .sum();
            assert_eq!(shared, config.kernel_bytes(spec), "{} {config}", spec.entry);
        }
    }
    let odd = TileConfig {
        tm: 3,
        ..TileConfig::SMALL
    };
    let odd = KernelConfig::generated(odd);
    assert!(codegen::source(specs[0], &odd).is_err());
    assert!(codegen::source(specs[0], &odd.with_double_buffer(true)).is_err());
}

#[test]
fn uniform_structs_have_the_sizes_wgsl_expects() {
    use shadertrain::gpu::{Acc, BatchUniform, Dims, OptimUniform, StepUniform};
    assert_eq!(std::mem::size_of::<Dims>(), 64);
    assert_eq!(std::mem::size_of::<OptimUniform>(), 32);
    assert_eq!(std::mem::size_of::<BatchUniform>(), 16);
    assert_eq!(std::mem::size_of::<StepUniform>(), 16);
    assert_eq!(std::mem::size_of::<Acc>(), 16 + 4 * 256);
    // Their WGSL twins: the loss totals (a storage binding) and Dims, which
    // every kernel file shares (common.wgsl).
    assert_eq!(wgsl_size("loss_reduce", "acc"), std::mem::size_of::<Acc>());
    assert_eq!(
        wgsl_size("forward_dense", "dims"),
        std::mem::size_of::<Dims>()
    );
}

/// Bytes of global `var` in the module of kernel `entry`.
fn wgsl_size(entry: &str, var: &str) -> usize {
    let spec = ALL.iter().find(|s| s.entry == entry).expect(entry);
    let (module, _) = parse(spec);
    let v = module
        .global_variables
        .iter()
        .find(|(_, v)| v.name.as_deref() == Some(var))
        .expect(var)
        .1;
    module.types[v.ty].inner.size(module.to_ctx()) as usize
}

/// The `ACT_*` and `LOSS_*` constants of common.wgsl are the host's
/// `Activation` and `Loss` numbers (what `Dims.act` and `Dims.loss` carry).
#[test]
fn activation_and_loss_numbers_match_host() {
    use shadertrain::network::{Activation, Loss};
    let spec = ALL
        .iter()
        .find(|s| s.entry == "forward_dense")
        .expect("forward kernel");
    let module = naga::front::wgsl::parse_str(spec.source).expect("parses");
    let value = |name: &str| -> u32 {
        let (_, c) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("common.wgsl has no {name}"));
        match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v,
            ref e => panic!("{name} is {e:?}, not a u32 literal"),
        }
    };
    for act in Activation::ALL {
        let name = format!("ACT_{}", act.name().to_uppercase());
        assert_eq!(value(&name), act as u32, "{name}");
    }
    assert_eq!(value("LOSS_MSE"), Loss::Mse as u32);
    assert_eq!(value("LOSS_CE"), Loss::CrossEntropy as u32);
}
