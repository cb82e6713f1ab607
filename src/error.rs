//! The library's one error type. Every failure a user can cause (bad flags,
//! malformed data, shapes that don't fit, a missing GPU) becomes an [`Error`]
//! with a one-line message; nothing a user controls may panic.

use std::path::Path;

/// Everything that can go wrong in shadertrain, each with a one-line message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or argument is malformed or out of range.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A dataset as a whole is unusable (empty, wrong width, ...).
    #[error("{path}: {msg}")]
    Data {
        /// The file (or dataset) at fault.
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// One line of a data file is malformed.
    #[error("{path}: line {line}: {msg}")]
    DataLine {
        /// The file.
        path: String,
        /// The 1-based line.
        line: u64,
        /// What is wrong with it.
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Tensors or data do not fit the network's shape.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// No usable GPU adapter was found.
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    /// Training produced a non-finite loss.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The machine does not have the memory a request needs.
    #[error("not enough memory: {0}")]
    Memory(String),
    /// The GPU refused or failed an operation.
    #[error("GPU error: {0}")]
    Gpu(String),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// `text` from a user's file or flag, fit to quote inside a one-line message:
/// control characters escaped (a newline shows as `\n`) and, past `max`
/// characters, cut short with `…`. The CLI also passes every message through
/// it, so no error can span two lines whatever a user's input holds.
pub fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Longest quoted cell, name or value in a message, in characters.
pub(crate) const QUOTE_MAX: usize = 40;

/// [`one_line`] for a short quotation (a cell, a name, a value).
pub(crate) fn quote(text: &str) -> String {
    one_line(text, QUOTE_MAX)
}
