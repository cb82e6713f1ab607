//! What a GPU backend says about the kernels it runs ([`KernelReport`]): its
//! [`KernelPlan`] as `--kernel-config` takes it, every tiled product's
//! configuration with its shape and where it came from ([`ProductConfig`]),
//! whether the modules carry naga's runtime checks, and whether a step runs
//! as one dispatch. `bench --json`,
//! `train --metrics`, the JSON Lines run record and the TensorBoard text
//! summary all write this one report.
//!
//! ```
//! use shadertrain::gpu::plan::{KernelPlan, Source};
//! use shadertrain::gpu::report::KernelReport;
//! use shadertrain::gpu::KernelConfig;
//! use shadertrain::network::Network;
//! let net = Network::parse("4,3,2")?;
//! let plan = KernelPlan::uniform(&net, KernelConfig::parse("gen:8x8:4x4:k8")?, Source::Heuristic);
//! let r = KernelReport::new(&net, &plan, 16, false, false);
//! assert_eq!(r.kernel_config, "gen:8x8:4x4:k8");
//! assert_eq!(r.kernel_configs[0].product, "forward layer 0");
//! assert_eq!(r.kernel_configs[0].shape, [16, 3, 4]);
//! assert_eq!(r.kernel_configs[0].source, "heuristic");
//! # Ok::<(), shadertrain::Error>(())
//! ```

use super::plan::KernelPlan;
use crate::network::Network;

/// The configuration one tiled product of a step runs with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ProductConfig {
    /// `forward`, `delta_hidden` or `gradient`, and the layer: `forward layer 0`.
    pub product: String,
    /// `(M, N, K)` of the product at the rows the plan was chosen for.
    pub shape: [usize; 3],
    /// The configuration, e.g. `gen:8x8:4x4:k8`.
    pub config: String,
    /// `tuned`, `cache`, `heuristic` or `given` ([`super::plan::Source`]).
    pub source: &'static str,
}

/// The kernels a GPU backend runs; serialises as the keys `kernel_config`,
/// `kernel_configs`, `checked` and `whole_step`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelReport {
    /// The plan, as `--kernel-config` takes it and checkpoints record it.
    pub kernel_config: String,
    /// Every tiled product in a step's order of first use.
    pub kernel_configs: Vec<ProductConfig>,
    /// Whether the modules were built with naga's runtime checks.
    pub checked: bool,
    /// Whether a plain-SGD step of a batch in one micro-batch runs as one
    /// dispatch ([`super::whole_step`]); the products above then run in the
    /// other passes (evaluation, micro-batches, other optimizers).
    pub whole_step: bool,
}

impl KernelReport {
    /// The report of `plan` for `net`, its shapes at `rows` rows (the most a
    /// step's products run at: the backend's micro-batch); modules
    /// `checked` or not, the step in one dispatch (`whole_step`) or not.
    pub fn new(
        net: &Network,
        plan: &KernelPlan,
        rows: usize,
        checked: bool,
        whole_step: bool,
    ) -> KernelReport {
        KernelReport {
            kernel_config: plan.to_string(),
            kernel_configs: plan
                .entries(net)
                .into_iter()
                .map(|(p, c)| ProductConfig {
                    product: p.label(),
                    shape: p.shape(net, rows),
                    // Where the simple set runs, every product runs it.
                    config: match plan.simple() {
                        Some(_) => "simple".into(),
                        None => c.config.to_string(),
                    },
                    source: plan.simple().unwrap_or(c.source).name(),
                })
                .collect(),
            checked,
            whole_step,
        }
    }

    /// A Markdown table of the products (what TensorBoard's text dashboard
    /// renders), under a line giving the plan and the checks.
    pub fn markdown(&self) -> String {
        let checks = if self.checked { "checked" } else { "unchecked" };
        let step = if self.whole_step {
            "; a plain SGD step runs as one dispatch, whole_step"
        } else {
            ""
        };
        let mut s = format!(
            "kernel configuration `{}` (modules {checks}{step})\n\n| product | M×N×K | configuration | source |\n|---|---|---|---|\n",
            self.kernel_config
        );
        for p in &self.kernel_configs {
            let [m, n, k] = p.shape;
            s += &format!(
                "| {} | {m}×{n}×{k} | `{}` | {} |\n",
                p.product, p.config, p.source
            );
        }
        s
    }
}
