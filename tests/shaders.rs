//! Every shader parses and validates with naga, and its declared bindings and
//! uniform sizes match the host's hand-written layouts (`KernelSpec`). No GPU
//! is needed.

use naga::valid::{Capabilities, ValidationFlags, Validator};
use naga::{AddressSpace, ShaderStage, StorageAccess};
use shadertrain::gpu::kernels::{Slot, ALL, WG};

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
            // A read-write binding the entry point never writes would be a layout bug.
            if *slot == Slot::ReadWrite && !ep_info[handle].is_empty() {
                assert!(
                    ep_info[handle].contains(naga::valid::GlobalUse::WRITE),
                    "{}: {} never writes {name}",
                    spec.file,
                    spec.entry
                );
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
fn element_wise_workgroup_size_matches_host() {
    for spec in ALL.iter().filter(|s| s.entry != "loss_reduce") {
        let (module, _) = parse(spec);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == spec.entry)
            .expect("entry point");
        assert_eq!(
            ep.workgroup_size,
            [WG, 1, 1],
            "{}: workgroup size differs from the host's WG",
            spec.entry
        );
    }
}

#[test]
fn uniform_structs_have_the_sizes_wgsl_expects() {
    use shadertrain::gpu::{Acc, Dims, SgdUniform};
    assert_eq!(std::mem::size_of::<Dims>(), 32);
    assert_eq!(std::mem::size_of::<SgdUniform>(), 16);
    assert_eq!(std::mem::size_of::<Acc>(), 16);
    // The loss totals struct is a storage binding; check its WGSL size too.
    let spec = ALL
        .iter()
        .find(|s| s.entry == "loss_reduce")
        .expect("loss kernel");
    let (module, _) = parse(spec);
    let acc = module
        .global_variables
        .iter()
        .find(|(_, v)| v.name.as_deref() == Some("acc"))
        .expect("acc")
        .1;
    assert_eq!(
        module.types[acc.ty].inner.size(module.to_ctx()) as usize,
        std::mem::size_of::<Acc>()
    );
}
