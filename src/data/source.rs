//! Where a dataset comes from, resolved in one place: a built-in set, a CSV
//! file, a directory of MNIST-format IDX files, an IDX images file and its
//! labels file, or two `.npy` arrays (inputs and targets, mapped). The command line's `--data` is a [`Source::parse`] away, and
//! each source knows the settings that suit it when the user gives none
//! ([`Recipe`]).
//!
//! ```
//! use shadertrain::data::{Builtin, Source};
//! let src = Source::parse("xor").unwrap();
//! assert_eq!(src, Source::Builtin(Builtin::Xor));
//! let data = src.load(None, 1, 42).unwrap();
//! assert_eq!(data.len(), 4);
//! ```

use super::{Dataset, Loading, Width};
use crate::error::{Error, Result, Setting};
use crate::network::{Network, Params};
use std::path::{Path, PathBuf};

/// The data sets built into the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// Two interleaved spirals, 1,000 points each, drawn from the seed.
    Spirals,
    /// The four rows of XOR.
    Xor,
    /// The one sample of the classic 2-2-2 worked example.
    Example,
}

impl Builtin {
    /// Every built-in set.
    pub const ALL: [Builtin; 3] = [Builtin::Spirals, Builtin::Xor, Builtin::Example];

    /// Its name, as `--data` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Spirals => "spirals",
            Builtin::Xor => "xor",
            Builtin::Example => "example",
        }
    }

    /// The set called `name`, if there is one.
    pub fn named(name: &str) -> Option<Builtin> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }

    /// The data (the spirals drawn with `seed`).
    pub fn load(self, seed: u64) -> Dataset {
        match self {
            Builtin::Spirals => Dataset::spirals(SPIRALS_PER_CLASS, seed),
            Builtin::Xor => Dataset::xor(),
            Builtin::Example => Dataset::example(),
        }
    }

    /// Rows and the widths of a row's inputs and targets.
    fn shape(self) -> (usize, usize, usize) {
        match self {
            Builtin::Spirals => (2 * SPIRALS_PER_CLASS, 2, 2),
            Builtin::Xor => (4, 2, 1),
            Builtin::Example => (1, 2, 2),
        }
    }

    /// Settings that train this set well.
    pub fn recipe(self) -> Recipe {
        let sgd = |layers, epochs, batch, lr| Recipe {
            layers: Some(layers),
            epochs,
            batch,
            lr,
        };
        match self {
            Builtin::Spirals => sgd("2,32,2", 40, 8, 8.0),
            Builtin::Xor => sgd("2,4,1", 2000, 4, 5.0),
            Builtin::Example => sgd("2,2,2", 1, 1, 0.5),
        }
    }

    /// The published starting weights of the worked example, when `net` is
    /// its network; other sets start from seeded weights.
    pub fn initial_params(self, net: &Network) -> Option<Params<f32>> {
        (self == Builtin::Example && *net == crate::example::network()).then(crate::example::params)
    }
}

/// Points of each spiral in the built-in set.
const SPIRALS_PER_CLASS: usize = 1000;

/// Whether a file name ends in `.npy`, in any case.
fn is_npy(name: &str) -> bool {
    name.to_ascii_lowercase().ends_with(".npy")
}

/// `IMAGES,LABELS` split at the comma where both sides are existing files
/// (so names may hold commas), else at the first comma (the loader then
/// names the missing file).
fn idx_pair(arg: &str) -> Option<(&str, &str)> {
    let splits = || {
        arg.match_indices(',')
            .map(|(i, _)| (&arg[..i], &arg[i + 1..]))
    };
    splits()
        .find(|(a, b)| Path::new(a).is_file() && Path::new(b).is_file())
        .or_else(|| splits().next())
}

/// Settings that suit a data source when the user gives none.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Recipe {
    /// Layer sizes; `None` where the data alone cannot say (files).
    pub layers: Option<&'static str>,
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per step.
    pub batch: usize,
    /// Learning rate (of plain SGD, the default optimiser).
    pub lr: f32,
}

/// Defaults for a user's own data, whose size and scale are unknown: plain
/// SGD at 0.1 (the library's default rate, PyTorch's usual starting point)
/// in batches of 32 (Keras' default: many steps per epoch on small sets,
/// still vectorised on large ones), for 10 epochs. The built-in sets' rates
/// (5 and 8) would diverge on most real data.
pub const FILE_RECIPE: Recipe = Recipe {
    layers: None,
    epochs: 10,
    batch: 32,
    lr: 0.1,
};

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A built-in set.
    Builtin(Builtin),
    /// A CSV file with a header row.
    Csv(PathBuf),
    /// A directory holding MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, …).
    IdxDir(PathBuf),
    /// An IDX images file and its labels file.
    IdxFiles {
        /// The images.
        images: PathBuf,
        /// Their labels.
        labels: PathBuf,
    },
    /// Two NumPy `.npy` arrays, mapped ([`Dataset::from_npy`]).
    Npy {
        /// Inputs, `(n, ...)`.
        x: PathBuf,
        /// Targets: labels `(n)` or values `(n, outputs)`.
        y: PathBuf,
    },
}

impl Source {
    /// Reads a data argument: a built-in name, a directory (IDX), `X.npy,Y.npy`
    /// (NumPy arrays: either name ending in `.npy`), `IMAGES,LABELS` (IDX
    /// files), or a CSV file (ending in `.csv`, or any existing file).
    pub fn parse(arg: &str) -> Result<Source> {
        if let Some(b) = Builtin::named(arg) {
            return Ok(Source::Builtin(b));
        }
        let csv_name = arg.to_ascii_lowercase().ends_with(".csv");
        let path = Path::new(arg);
        if !path.is_file() {
            if let Some((x, y)) = idx_pair(arg).filter(|(x, y)| is_npy(x) || is_npy(y)) {
                return Ok(Source::Npy {
                    x: x.into(),
                    y: y.into(),
                });
            }
        }
        if is_npy(arg) {
            return Err(Error::setting(
                Setting::Data,
                arg,
                "is one array; give the inputs and the targets as X.npy,Y.npy",
            ));
        }
        if path.is_dir() {
            Ok(Source::IdxDir(path.into()))
        } else if path.is_file() {
            // A file that exists is that file, commas in its name or not.
            Ok(Source::Csv(path.into()))
        } else if let (Some((images, labels)), false) = (idx_pair(arg), csv_name) {
            Ok(Source::IdxFiles {
                images: images.into(),
                labels: labels.into(),
            })
        } else if csv_name || path.exists() {
            Ok(Source::Csv(path.into()))
        } else {
            let names: Vec<&str> = Builtin::ALL.iter().map(|b| b.name()).collect();
            Err(Error::setting(
                Setting::Data,
                arg,
                format!(
                    "unknown dataset (built-in: {}; a .csv file, a directory of MNIST IDX files, IMAGES,LABELS IDX files, or X.npy,Y.npy arrays)",
                    names.join(", ")
                ),
            ))
        }
    }

    /// The source as messages name it: the file, the directory or the set.
    pub fn shown(&self) -> String {
        match self {
            Source::Builtin(b) => b.name().to_string(),
            Source::Csv(p)
            | Source::IdxDir(p)
            | Source::IdxFiles { images: p, .. }
            | Source::Npy { x: p, .. } => p.display().to_string(),
        }
    }

    /// The settings that suit it when none are given.
    pub fn recipe(&self) -> Recipe {
        match self {
            Source::Builtin(b) => b.recipe(),
            _ => FILE_RECIPE,
        }
    }

    /// The built-in set, if it is one.
    pub fn builtin(&self) -> Option<Builtin> {
        match self {
            Source::Builtin(b) => Some(*b),
            _ => None,
        }
    }

    /// The data, targets one-hot over `outputs` classes where they are labels
    /// (CSV: the `target` column, by default the last); the spirals drawn
    /// with `seed`. A `target` for anything but a CSV file is an error.
    pub fn load(&self, target: Option<&str>, outputs: usize, seed: u64) -> Result<Dataset> {
        self.load_observed(target, outputs, seed, &mut |_| ())
    }

    /// [`Source::load`], telling `on` how far the reading of a CSV file or
    /// the check of `.npy` arrays has come, for a progress display. A set
    /// held in memory must fit the memory available
    /// ([`crate::memory::available`]) and counts against it while it lives.
    pub fn load_observed(
        &self,
        target: Option<&str>,
        outputs: usize,
        seed: u64,
        on: &mut dyn FnMut(Loading),
    ) -> Result<Dataset> {
        if let (Some(t), false) = (target, matches!(self, Source::Csv(_))) {
            return Err(Error::setting(
                Setting::Target,
                t,
                format!("names a CSV column, but {} is not a CSV file", self.shown()),
            ));
        }
        match self {
            Source::Builtin(b) => {
                let (n, i, o) = b.shape();
                let need = crate::memory::bytes(&[(n, (i + o) * 4)]);
                crate::memory::ensure(need, &format!("the built-in set '{}'", b.name()), &[])?;
                Ok(b.load(seed))
            }
            Source::Csv(path) => Dataset::from_csv_observed(path, target, outputs, on),
            Source::IdxDir(dir) => {
                let ((images, labels), _test) = crate::idx::find_mnist(dir)?;
                Dataset::from_idx(&images, &labels, outputs)
            }
            Source::IdxFiles { images, labels } => Dataset::from_idx(images, labels, outputs),
            Source::Npy { x, y } => Dataset::from_npy_observed(x, y, outputs, on),
        }
    }

    /// As [`Source::load`] for a model's inputs: a CSV file holding exactly
    /// `net`'s input columns (and no `target`) is read as inputs alone, with
    /// zero targets; anything else as [`Source::load`] reads it. Also says
    /// whether the data holds real targets.
    pub fn load_for_prediction(
        &self,
        target: Option<&str>,
        net: &Network,
        seed: u64,
    ) -> Result<(Dataset, bool)> {
        match self {
            // Read once: the header decides, so a pipe works too.
            Source::Csv(path) if target.is_none() => {
                let (d, labelled) =
                    Dataset::from_csv_for_prediction(path, net.inputs(), net.outputs())?;
                Ok((d, labelled))
            }
            _ => Ok((self.load(target, net.outputs(), seed)?, true)),
        }
    }

    /// Refuses `data` (loaded from this source) whose widths do not fit
    /// `net`, naming the file and what defines the network (`by`, e.g. "the
    /// model"), in the source's own unit (input columns, values per image).
    pub fn check_fits(&self, data: &Dataset, net: &Network, by: &str) -> Result<()> {
        let unit = match self {
            Source::Csv(_) => "input columns",
            Source::Npy { .. } => "values per row",
            Source::IdxDir(_) | Source::IdxFiles { .. } => "values per image",
            Source::Builtin(_) => "inputs",
        };
        let msg = match data.mismatch(net.inputs(), net.outputs()) {
            None => return Ok(()),
            Some(Width::Inputs(n)) => format!(
                "{n} {unit}, but {by} {} takes {} inputs",
                net.describe(),
                net.inputs()
            ),
            Some(Width::Outputs(n)) => format!(
                "{n} target columns, but {by} {} has {} outputs",
                net.describe(),
                net.outputs()
            ),
        };
        Err(Error::Data {
            path: self.shown(),
            msg,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Commas in file names: an existing file is read as itself, and an IDX
    /// pair splits where both halves exist.
    #[test]
    fn commas_in_names() {
        let dir = std::env::temp_dir().join(format!("st-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let csv = dir.join("a,b.data");
        std::fs::write(&csv, "x,y\n1,0\n").unwrap();
        let arg = csv.to_string_lossy().to_string();
        assert_eq!(Source::parse(&arg).unwrap(), Source::Csv(csv.clone()));
        let (images, labels) = (dir.join("im,1"), dir.join("lab,1"));
        std::fs::write(&images, b"").unwrap();
        std::fs::write(&labels, b"").unwrap();
        let pair = format!("{},{}", images.display(), labels.display());
        assert_eq!(
            Source::parse(&pair).unwrap(),
            Source::IdxFiles {
                images: images.clone(),
                labels: labels.clone()
            }
        );
        // Neither half exists: the first comma, and the loader names the file.
        assert_eq!(
            Source::parse("no,such").unwrap(),
            Source::IdxFiles {
                images: "no".into(),
                labels: "such".into()
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
