//! Which [`KernelConfig`] each tiled product of a network runs: a
//! [`KernelPlan`], one [`Choice`] per product (forward, hidden delta and
//! gradient of every layer) with where it came from ([`Source`]).
//!
//! Products of a layer `n_in → n_out` at `rows` rows, as `(M, N, K)`:
//! - forward `a = f(a_prev·Wᵀ + b)`: `(rows, n_out, n_in)`;
//! - hidden delta of layer `h` from the weights above it: `(rows, n_out[h], n_out[h + 1])`;
//! - gradient `δᵀ·a_prev`: `(n_out, n_in, rows)`, K cut into split-K slices.
//!
//! A plan is written `f0=gen:8x8:4x4:k8,d0=…,g0=…,f1=…` (one entry per
//! product, [`KernelPlan::parse`]), or as one configuration where every
//! product shares it (its K slices `:sN` then the gradients'), or `simple`
//! where the whole network runs the simple kernel set: the form
//! `--kernel-config` takes and checkpoints and `--metrics` record.
//!
//! A gradient's K slices (split K, [`gradient_splits`]) are its
//! configuration's `:sN`, or derived from its tiles and the device; forward
//! and delta products have none (their K is a layer width, not the batch).
//!
//! ```
//! use shadertrain::gpu::plan::{KernelPlan, Source};
//! use shadertrain::gpu::KernelConfig;
//! use shadertrain::network::Network;
//! let net = Network::parse("4,3,2")?;
//! let plan = KernelPlan::uniform(&net, KernelConfig::parse("gen:8x8:4x4:k8")?, Source::Given);
//! assert_eq!(plan.to_string(), "gen:8x8:4x4:k8");
//! assert_eq!(KernelPlan::parse(&net, &plan.to_string(), Source::Given)?, plan);
//! # Ok::<(), shadertrain::Error>(())
//! ```

use super::kernels::{k_splits_to, split_fill, tile_blocks, KernelConfig, TileConfig};
use crate::error::{Error, Result, Setting};
use crate::network::Network;

/// The kind of a tiled product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Product {
    /// `a_prev·Wᵀ`: `(rows, n_out, n_in)`.
    Forward,
    /// A hidden layer's `δ_next·W_next`: `(rows, n_out, n_next)`.
    Delta,
    /// `δᵀ·a_prev`: `(n_out, n_in, rows)`.
    Gradient,
}

impl Product {
    /// All three, in a plan's order within a layer.
    pub const ALL: [Product; 3] = [Product::Forward, Product::Delta, Product::Gradient];

    /// The letter of a plan entry (`f0`, `d0`, `g0`).
    pub fn tag(self) -> char {
        match self {
            Product::Forward => 'f',
            Product::Delta => 'd',
            Product::Gradient => 'g',
        }
    }

    /// Its name in reports: `forward`, `delta_hidden`, `gradient`.
    pub fn name(self) -> &'static str {
        match self {
            Product::Forward => "forward",
            Product::Delta => "delta_hidden",
            Product::Gradient => "gradient",
        }
    }

    /// Its position in [`Product::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One product of a network: its kind and the layer it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProductId {
    /// Forward, hidden delta or gradient.
    pub kind: Product,
    /// The dense layer (for a delta, the hidden layer whose delta it computes).
    pub layer: usize,
}

impl ProductId {
    /// `(M, N, K)` of this product of `net` at `rows` rows.
    pub fn shape(&self, net: &Network, rows: usize) -> [usize; 3] {
        let layers = net.layers();
        let ly = layers[self.layer];
        match self.kind {
            Product::Forward => [rows, ly.n_out, ly.n_in],
            Product::Delta => [rows, ly.n_out, layers[self.layer + 1].n_out],
            Product::Gradient => [ly.n_out, ly.n_in, rows],
        }
    }

    /// `forward layer 0`, as reports name it.
    pub fn label(&self) -> String {
        format!("{} layer {}", self.kind.name(), self.layer)
    }

    /// The product a profiled dispatch labelled `entry layer l` computes
    /// (the fused output kernel counts as the output layer's forward, its
    /// softmax, delta and loss included), if a tiled product.
    pub fn of_label(label: &str) -> Option<ProductId> {
        let (entry, layer) = label.split_once(" layer ")?;
        let kind = match entry {
            "forward_dense_tiled" | "forward_output_loss_tiled" => Product::Forward,
            "delta_hidden_tiled" => Product::Delta,
            "gradient_dense_tiled" | "gradient_sgd_tiled" => Product::Gradient,
            _ => return None,
        };
        Some(ProductId {
            kind,
            layer: layer.parse().ok()?,
        })
    }
}

/// Every tiled product of `net`, in a step's order of first use per layer:
/// per layer its forward, the delta of the layer below it (from its weights),
/// its gradient.
pub fn products(net: &Network) -> Vec<ProductId> {
    let mut out = Vec::new();
    for l in 0..net.layers().len() {
        out.push(ProductId {
            kind: Product::Forward,
            layer: l,
        });
        if let Some(h) = l.checked_sub(1) {
            out.push(ProductId {
                kind: Product::Delta,
                layer: h,
            });
        }
        out.push(ProductId {
            kind: Product::Gradient,
            layer: l,
        });
    }
    out
}

/// Where a product's configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Measured on this adapter in this run (`--tune auto`, `tune`).
    Tuned,
    /// Measured before, read from the tuning cache.
    Cache,
    /// The built-in rule ([`heuristic_product`]).
    Heuristic,
    /// Given by the caller (`--kernel-config`, a checkpoint's record).
    Given,
}

impl Source {
    /// `tuned`, `cache`, `heuristic` or `given`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Tuned => "tuned",
            Source::Cache => "cache",
            Source::Heuristic => "heuristic",
            Source::Given => "given",
        }
    }
}

/// One product's configuration and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// What it runs.
    pub config: KernelConfig,
    /// Why.
    pub source: Source,
}

/// A configuration for every tiled product of one network, or the simple
/// kernel set for the whole network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPlan {
    /// Per layer, per [`Product::index`]: the choice (a last layer's delta
    /// slot, which no step runs, repeats its forward choice).
    layers: Vec<[Choice; 3]>,
    /// `Some(source)`: the whole network runs the simple kernel set
    /// instead, chosen by `source`; `layers` then hold the tiled choices,
    /// which a backend runs where the simple set cannot (a batch split into
    /// micro-batches, for a measured choice).
    simple: Option<Source>,
}

/// `choice` as product kind `kind` takes it: K slices on a gradient only.
fn fit(kind: Product, choice: Choice) -> Choice {
    match kind {
        Product::Gradient => choice,
        _ => Choice {
            config: choice.config.modules(),
            ..choice
        },
    }
}

impl KernelPlan {
    /// Every product of `net` on `config` (its K slices, if any, the
    /// gradients').
    pub fn uniform(net: &Network, config: KernelConfig, source: Source) -> KernelPlan {
        KernelPlan::repeat(net.layers().len(), config, source)
    }

    /// `layers` layers of products on `config` (K slices on the gradients).
    pub fn repeat(layers: usize, config: KernelConfig, source: Source) -> KernelPlan {
        let c = Choice { config, source };
        let row = Product::ALL.map(|kind| fit(kind, c));
        KernelPlan {
            layers: vec![row; layers],
            simple: None,
        }
    }

    /// The simple kernel set for every layer of `net`, chosen by `source`.
    pub fn simple_set(net: &Network, source: Source) -> KernelPlan {
        let placeholder = KernelConfig::generated(TileConfig::SMALL);
        KernelPlan::uniform(net, placeholder, source).into_simple(source)
    }

    /// This plan's tiled choices kept, the simple set run instead (chosen by `source`).
    pub fn into_simple(self, source: Source) -> KernelPlan {
        KernelPlan {
            simple: Some(source),
            ..self
        }
    }

    /// Where the simple set's choice came from, if the plan runs it.
    pub fn simple(&self) -> Option<Source> {
        self.simple
    }

    /// The tiled choices alone (a simple plan's as kept).
    pub fn tiled(self) -> KernelPlan {
        KernelPlan {
            simple: None,
            ..self
        }
    }

    /// Each product of `net` at `rows` rows on what `choose` gives for it
    /// (K slices kept on gradients only).
    pub fn from_fn(net: &Network, mut choose: impl FnMut(ProductId) -> Choice) -> KernelPlan {
        let mut plan = KernelPlan {
            layers: Vec::with_capacity(net.layers().len()),
            simple: None,
        };
        for layer in 0..net.layers().len() {
            let mut c = |kind| fit(kind, choose(ProductId { kind, layer }));
            let f = c(Product::Forward);
            let last = layer + 1 == net.layers().len();
            let d = if last { f } else { c(Product::Delta) };
            plan.layers.push([f, d, c(Product::Gradient)]);
        }
        plan
    }

    /// K slices of each layer's gradient of `net` at `rows` rows under
    /// this plan on an adapter of type `device` with `limits`
    /// ([`gradient_splits`]), bottom up.
    pub fn gradient_slices<'a>(
        &'a self,
        net: &'a Network,
        rows: usize,
        device: wgpu::DeviceType,
        limits: &'a wgpu::Limits,
    ) -> impl Iterator<Item = u32> + 'a {
        (0..net.layers().len()).map(move |layer| {
            let p = ProductId {
                kind: Product::Gradient,
                layer,
            };
            let [m, n, k] = p.shape(net, rows);
            let shape = (m as u32, n as u32, k as u32);
            gradient_splits(&self.get(p).config, shape, device, limits)
        })
    }

    /// The choice for product `p`.
    pub fn get(&self, p: ProductId) -> Choice {
        self.layers[p.layer][p.kind.index()]
    }

    /// Replace product `p`'s choice (K slices dropped unless a gradient).
    pub fn set(&mut self, p: ProductId, choice: Choice) {
        let choice = fit(p.kind, choice);
        let last = p.layer + 1 == self.layers.len();
        let row = &mut self.layers[p.layer];
        row[p.kind.index()] = choice;
        // The output layer has no hidden delta: its slot follows the forward.
        if last && p.kind == Product::Forward {
            row[Product::Delta.index()] = choice;
        }
    }

    /// Layers it covers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Every product of `net` with its choice, in [`products`] order.
    pub fn entries(&self, net: &Network) -> Vec<(ProductId, Choice)> {
        products(net)
            .into_iter()
            .map(|p| (p, self.get(p)))
            .collect()
    }

    /// The distinct configurations it runs, in order of first use.
    pub fn configs(&self) -> Vec<KernelConfig> {
        let mut out: Vec<KernelConfig> = Vec::new();
        for c in self.layers.iter().flatten() {
            if !out.contains(&c.config) {
                out.push(c.config);
            }
        }
        out
    }

    /// Every product's config checked for a device with `limits`.
    pub fn check(&self, limits: &wgpu::Limits) -> Result<()> {
        self.configs().iter().try_for_each(|c| c.check(limits))
    }

    /// The same choices, all marked `source` (a replayed record is `Given`).
    pub fn with_source(mut self, source: Source) -> KernelPlan {
        for c in self.layers.iter_mut().flatten() {
            c.source = source;
        }
        if self.simple.is_some() {
            self.simple = Some(source);
        }
        self
    }

    /// Parse what [`KernelPlan`]'s `Display` writes, for `net`: `simple`,
    /// one configuration for every product (its `:sN` the gradients'), or
    /// `f0=…,d0=…,g0=…` naming every product of `net` once, `:sN` on
    /// gradients (`g<layer>`) only. Errors are [`Setting::KernelConfig`].
    pub fn parse(net: &Network, text: &str, source: Source) -> Result<KernelPlan> {
        let text = text.trim();
        if text == "simple" {
            return Ok(KernelPlan::simple_set(net, source));
        }
        if !text.contains('=') {
            return Ok(KernelPlan::uniform(net, KernelConfig::parse(text)?, source));
        }
        let bad = |why: String| Error::setting(Setting::KernelConfig, text, why);
        let all = products(net);
        let mut given: Vec<Option<KernelConfig>> = vec![None; all.len()];
        for item in text.split(',') {
            let (name, config) = item.split_once('=').ok_or_else(|| {
                bad(format!(
                    "`{item}` is not PRODUCT=CONFIG (e.g. f0=gen:8x8:4x4:k8)"
                ))
            })?;
            let name = name.trim();
            let i = all
                .iter()
                .position(|p| format!("{}{}", p.kind.tag(), p.layer) == name)
                .ok_or_else(|| {
                    bad(format!(
                        "`{name}` is no product of {} (f<layer>, d<layer> for hidden layers, g<layer>)",
                        net.describe()
                    ))
                })?;
            if given[i].is_some() {
                return Err(bad(format!("`{name}` is given twice")));
            }
            let config = KernelConfig::parse(config)?;
            if let (Some(s), false) = (config.splits, all[i].kind == Product::Gradient) {
                return Err(bad(format!(
                    "`{name}`: K slices (:s{s}) split a gradient's batch sum; give them to g<layer> products only"
                )));
            }
            given[i] = Some(config);
        }
        if let Some(i) = given.iter().position(Option::is_none) {
            let p = all[i];
            return Err(bad(format!(
                "no configuration for {}{} ({})",
                p.kind.tag(),
                p.layer,
                p.label()
            )));
        }
        let mut plan = KernelPlan::uniform(net, KernelConfig::generated(TileConfig::SMALL), source);
        for (p, config) in all.iter().zip(given.into_iter().flatten()) {
            plan.set(*p, Choice { config, source });
        }
        Ok(plan)
    }
}

impl std::fmt::Display for KernelPlan {
    /// `simple`; one configuration where every product runs it (the
    /// gradients with its K slices); else `f0=…,d0=…,g0=…`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.simple.is_some() {
            return write!(f, "simple");
        }
        let configs = self.configs();
        if let [one] = configs.as_slice() {
            return write!(f, "{one}");
        }
        // Forward and delta on `a`, every gradient on `a` with K slices.
        if let [a, g] = configs.as_slice() {
            let gradients = self
                .layers
                .iter()
                .map(|r| r[Product::Gradient.index()].config);
            if g.modules() == *a && gradients.into_iter().all(|c| c == *g) {
                return write!(f, "{g}");
            }
        }
        let mut first = true;
        for (layer, choices) in self.layers.iter().enumerate() {
            let last = layer + 1 == self.layers.len();
            for kind in Product::ALL {
                if kind == Product::Delta && last {
                    continue;
                }
                let sep = if first { "" } else { "," };
                first = false;
                let c = choices[kind.index()].config;
                write!(f, "{sep}{}{layer}={c}", kind.tag())?;
            }
        }
        Ok(())
    }
}

/// Candidates of the heuristic, largest blocks first, by device type; and
/// the workgroups a product should launch before a candidate counts as
/// filling the device (wgpu reports no compute-unit count: a grid-size rule).
fn candidates(device: wgpu::DeviceType) -> (&'static [TileConfig], u64) {
    const CPU: &[TileConfig] = &[TileConfig::CPU_LARGE, TileConfig::SMALL];
    const DISCRETE: &[TileConfig] = &[TileConfig::DISCRETE, TileConfig::MEDIUM, TileConfig::SMALL];
    const OTHER: &[TileConfig] = &[TileConfig::MEDIUM, TileConfig::SMALL];
    match device {
        // A CPU adapter runs a handful of workgroups at once (one per core).
        wgpu::DeviceType::Cpu => (CPU, 4),
        // About 2 workgroups per compute unit of a large discrete GPU.
        wgpu::DeviceType::DiscreteGpu => (DISCRETE, 256),
        _ => (OTHER, 32),
    }
}

/// The heuristic configuration of an `m × n` product on an adapter of type
/// `device`: the generated core with, of the device type's candidates
/// within `limits` that launch enough workgroups to fill the device, the
/// largest blocks whose padded work is within 25% of the least; the
/// smallest where none fills (the gradient's split K then fills the device).
pub fn heuristic_product(
    device: wgpu::DeviceType,
    limits: &wgpu::Limits,
    m: usize,
    n: usize,
) -> KernelConfig {
    let (list, fill) = candidates(device);
    let clamp = |v: usize| v.clamp(1, u32::MAX as usize) as u32;
    let (m, n) = (clamp(m), clamp(n));
    let fitting: Vec<KernelConfig> = list
        .iter()
        .map(|&t| KernelConfig::generated(t))
        .filter(|c| c.check(limits).is_ok())
        .collect();
    // Blocks past a narrow product cost real time on every device.
    let padded = |c: &KernelConfig| {
        let t = &c.tiles;
        m.div_ceil(t.bm()) as u64 * t.bm() as u64 * (n.div_ceil(t.bn()) as u64 * t.bn() as u64)
    };
    let filling: Vec<&KernelConfig> = fitting
        .iter()
        .filter(|c| tile_blocks(m, n, &c.tiles) >= fill)
        .collect();
    // The largest blocks within a quarter of the least padded work: larger
    // blocks reuse more of each staged word (on lavapipe a 256×784 gradient
    // ran far faster on 128×128 blocks, 12% padding, than on 32×32).
    let least = filling.iter().map(|c| padded(c)).min().unwrap_or(0);
    filling
        .into_iter()
        .find(|c| padded(c) * 4 <= least * 5)
        .or(fitting.last())
        .copied()
        .unwrap_or(KernelConfig::loops(TileConfig::SMALL))
}

/// The heuristic plan of `net` at `rows` rows: [`heuristic_product`] for
/// each product's `M × N`.
pub fn heuristic_plan(
    device: wgpu::DeviceType,
    limits: &wgpu::Limits,
    net: &Network,
    rows: usize,
) -> KernelPlan {
    KernelPlan::from_fn(net, |p| {
        let [m, n, _] = p.shape(net, rows);
        Choice {
            config: heuristic_product(device, limits, m, n),
            source: Source::Heuristic,
        }
    })
}

/// Floats of split-K slice sums a backend may keep (64 MiB).
pub const SCRATCH_BUDGET: u64 = 16 << 20;

/// Floats of split-K slice sums a backend may keep on a device with
/// `limits`: [`SCRATCH_BUDGET`], within one storage binding.
pub fn scratch_budget(limits: &wgpu::Limits) -> u64 {
    SCRATCH_BUDGET.min(super::options::binding_bytes(limits) / 4)
}

/// K slices of the gradient of a layer `n_in → n_out` over `rows` rows run
/// with `config` on an adapter of type `device` with `limits`. Given
/// (`:sN`): N, clamped silently to K's whole BK steps (`⌈rows / bk⌉`: a
/// slice is never shallower than one step) and to the slice sums that fit
/// [`scratch_budget`], `N·n_out·(n_in + 1)` floats; the clamp depends on the
/// shape and the device's limits only, so a replayed plan runs the same
/// slices (rows vary from batch to batch, so a count the rows cannot take
/// is no error). Derived (`None`): [`k_splits_to`], by the tiles and the
/// device type. Never decreasing as `rows` grows, so the slices at a
/// backend's capacity size its scratch.
pub fn gradient_splits(
    config: &KernelConfig,
    (n_out, n_in, rows): (u32, u32, u32),
    device: wgpu::DeviceType,
    limits: &wgpu::Limits,
) -> u32 {
    let budget = scratch_budget(limits);
    match config.splits {
        None => k_splits_to(n_out, n_in, rows, &config.tiles, budget, split_fill(device)),
        Some(s) => {
            let by_steps = rows.div_ceil(config.tiles.bk.max(1)) as u64;
            let by_scratch = budget / (n_out as u64 * (n_in as u64 + 1)).max(1);
            (s as u64).min(by_steps).min(by_scratch).max(1) as u32
        }
    }
}
