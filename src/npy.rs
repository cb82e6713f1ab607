//! NumPy `.npy` arrays, memory-mapped: `--data X.npy,Y.npy`.
//!
//! A file is a magic string, a version, a header (a Python dict literal
//! giving the dtype, the order and the shape, parsed by `npyz`) and the
//! values, in C or Fortran order. [`NpyArray::open`] checks the header
//! against the file before anything is allocated: a known scalar dtype, C
//! order, a shape whose byte count neither overflows nor differs from the
//! file's length. A regular file is then mapped (`memmap2`), never copied,
//! so a set larger than memory trains: rows are converted to `f32` per batch
//! ([`NpyArray::row_f32`]) and the kernel pages the file in and out. A pipe
//! or device cannot be mapped; it is read once, at most the declared bytes
//! and only when the memory available ([`crate::memory`]) holds them.
//!
//! ```no_run
//! use shadertrain::npy::NpyArray;
//! let x = NpyArray::open("x.npy".as_ref())?; // e.g. shape (60000, 28, 28), u8
//! let mut row = vec![0.0; x.row_len()];
//! x.row_f32(0, 1.0 / 255.0, &mut row);
//! # Ok::<(), shadertrain::Error>(())
//! ```

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The first bytes of every `.npy` file.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Longest header read (NumPy's own reader stops at 10,000 bytes by default;
/// a version 2 file may declare up to 4 GiB, which is never allocated).
const MAX_HEADER: usize = 1 << 20;

/// The scalar types an array may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// `bool`, one byte, 0 or 1.
    Bool,
    /// Unsigned integers of 1, 2, 4 or 8 bytes.
    U8,
    /// `u16`.
    U16,
    /// `u32`.
    U32,
    /// `u64`.
    U64,
    /// Signed integers of 1, 2, 4 or 8 bytes.
    I8,
    /// `i16`.
    I16,
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32`.
    F32,
    /// `f64`.
    F64,
}

impl Elem {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Elem::Bool | Elem::U8 | Elem::I8 => 1,
            Elem::U16 | Elem::I16 => 2,
            Elem::U32 | Elem::I32 | Elem::F32 => 4,
            Elem::U64 | Elem::I64 | Elem::F64 => 8,
        }
    }

    /// A floating-point type.
    pub fn is_float(self) -> bool {
        matches!(self, Elem::F32 | Elem::F64)
    }

    /// NumPy's name: `uint8`, `float32`, ...
    pub fn name(self) -> &'static str {
        match self {
            Elem::Bool => "bool",
            Elem::U8 => "uint8",
            Elem::U16 => "uint16",
            Elem::U32 => "uint32",
            Elem::U64 => "uint64",
            Elem::I8 => "int8",
            Elem::I16 => "int16",
            Elem::I32 => "int32",
            Elem::I64 => "int64",
            Elem::F32 => "float32",
            Elem::F64 => "float64",
        }
    }
}

/// Where an array's bytes live.
enum Bytes {
    /// A regular file, mapped.
    Mapped(memmap2::Mmap),
    /// A stream (pipe, device), read into memory; the reservation counts it.
    Read(Vec<u8>, #[allow(dead_code)] crate::memory::Held),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Read(v, _) => v,
        }
    }
}

/// An opened `.npy` array, C order: `shape[0]` rows of
/// [`NpyArray::row_len`] values each.
pub struct NpyArray {
    path: PathBuf,
    bytes: Bytes,
    /// Offset of the first value.
    start: usize,
    /// The value type.
    pub elem: Elem,
    big_endian: bool,
    /// The shape, outermost first (at least one axis).
    pub shape: Vec<usize>,
}

impl std::fmt::Debug for NpyArray {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpyArray")
            .field("path", &self.path)
            .field("elem", &self.elem)
            .field("shape", &self.shape)
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl NpyArray {
    /// Opens `path` and checks its header against its length; maps a
    /// regular file, reads a stream (see the module docs).
    pub fn open(path: &Path) -> Result<NpyArray> {
        let err = |msg: String| Error::Data {
            path: path.display().to_string(),
            msg,
        };
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        let regular = meta.is_file();
        // Magic (6), version (2), header length (2 in version 1, else 4).
        let mut pre = [0u8; 12];
        crate::idx::read_exact(&mut file, &mut pre[..10], path, "the 10-byte preamble")?;
        if &pre[..6] != MAGIC {
            return Err(err(format!(
                "not a .npy file: it starts with {}, expected \\x93NUMPY",
                pre[..6]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        let (pre_len, header_len) = match pre[6] {
            1 => (10, u16::from_le_bytes([pre[8], pre[9]]) as usize),
            2 | 3 => {
                crate::idx::read_exact(&mut file, &mut pre[10..12], path, "the preamble")?;
                (
                    12,
                    u32::from_le_bytes([pre[8], pre[9], pre[10], pre[11]]) as usize,
                )
            }
            v => {
                return Err(err(format!(
                    "unknown .npy format version {v}.{} (this build reads 1, 2 and 3)",
                    pre[7]
                )))
            }
        };
        if header_len > MAX_HEADER {
            return Err(err(format!(
                "its header declares {header_len} bytes, more than the {MAX_HEADER} a .npy header may have here"
            )));
        }
        let mut text = vec![0u8; header_len];
        crate::idx::read_exact(&mut file, &mut text, path, "the header")?;
        let start = pre_len + header_len;
        let header =
            npyz::NpyHeader::from_reader(pre[..pre_len].chain(&text[..])).map_err(|e| {
                err(format!(
                    "bad .npy header: {}",
                    crate::error::one_line(&e.to_string(), 200)
                ))
            })?;
        let (elem, big_endian) = elem_of(&header.dtype()).ok_or_else(|| {
            err(format!(
                "dtype {} is not supported (bool, integers, float32 or float64)",
                crate::error::quote(&header.dtype().descr())
            ))
        })?;
        let shape: Vec<usize> = header
            .shape()
            .iter()
            .map(|&d| usize::try_from(d).ok())
            .collect::<Option<_>>()
            .ok_or_else(|| err(format!("shape {:?} is too large", header.shape())))?;
        if header.order() == npyz::Order::Fortran && shape.iter().filter(|&&d| d > 1).count() > 1 {
            return Err(err(format!(
                "shape {shape:?} is in Fortran order; save it in C order (np.ascontiguousarray)"
            )));
        }
        if shape.is_empty() {
            return Err(err(
                "a 0-dimensional array (one scalar) holds no rows".into()
            ));
        }
        let values = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_mul(elem.size()))
            .filter(|&n| n.checked_add(start).is_some())
            .ok_or_else(|| err(format!("shape {shape:?} is too large to address")))?;
        let total = (start + values) as u64;
        let bytes = if regular {
            if meta.len() != total {
                return Err(err(format!(
                    "shape {shape:?} of {} needs {total} bytes but the file has {}{}",
                    elem.name(),
                    meta.len(),
                    if meta.len() < total {
                        " (truncated?)"
                    } else {
                        ""
                    }
                )));
            }
            // SAFETY: the map is read-only and this process never writes the
            // file; another process changing it while training runs would
            // change the values read (or fault on truncation), as for any
            // tool that maps its input (NumPy's mmap_mode alike).
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            Bytes::Mapped(map)
        } else {
            // A stream: the declared bytes must fit the memory available,
            // and exactly those bytes must follow.
            crate::memory::ensure(
                Some(total),
                &format!("{} read from a stream", path.display()),
                &[],
            )?;
            let held = crate::memory::Held::new(total);
            let mut v = Vec::new();
            v.try_reserve_exact(total as usize)
                .map_err(|_| err(format!("cannot allocate {total} bytes for it")))?;
            v.extend_from_slice(&pre[..pre_len]);
            v.extend_from_slice(&text);
            (&mut file)
                .take(values as u64)
                .read_to_end(&mut v)
                .map_err(|e| Error::io(path, e))?;
            if v.len() as u64 != total {
                return Err(err(format!(
                    "shape {shape:?} of {} needs {total} bytes but the stream ended after {}",
                    elem.name(),
                    v.len()
                )));
            }
            let mut more = [0u8; 1];
            if file.read(&mut more).map_err(|e| Error::io(path, e))? > 0 {
                return Err(err(format!(
                    "the stream goes on past the {total} bytes its shape {shape:?} needs"
                )));
            }
            Bytes::Read(v, held)
        };
        Ok(NpyArray {
            path: path.to_path_buf(),
            bytes,
            start,
            elem,
            big_endian,
            shape,
        })
    }

    /// The file, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the values are mapped from the file (else read from a stream).
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// Rows: the first axis.
    pub fn rows(&self) -> usize {
        self.shape[0]
    }

    /// Values per row: the product of the other axes (1 for a 1-D array).
    pub fn row_len(&self) -> usize {
        self.shape[1..].iter().product()
    }

    /// Tells the kernel how the map will be read: `true` front to back
    /// (a scan), `false` at random (shuffled batches). Only a hint.
    pub fn advise_sequential(&self, sequential: bool) {
        if let Bytes::Mapped(m) = &self.bytes {
            let advice = if sequential {
                memmap2::Advice::Sequential
            } else {
                memmap2::Advice::Random
            };
            let _ = m.advise(advice);
        }
    }

    /// The bytes of row `r`.
    fn row_bytes(&self, r: usize) -> &[u8] {
        let w = self.row_len() * self.elem.size();
        &self.bytes[self.start + r * w..self.start + (r + 1) * w]
    }

    /// Row `r` as `f32`, each value times `scale`, into `out` (`row_len`).
    ///
    /// # Panics
    /// If `r` is out of range or `out` has another length: the caller's bug.
    pub fn row_f32(&self, r: usize, scale: f32, out: &mut [f32]) {
        assert_eq!(out.len(), self.row_len(), "row buffer");
        let b = self.row_bytes(r);
        macro_rules! conv {
            ($t:ty, $n:expr) => {{
                let f = if self.big_endian {
                    <$t>::from_be_bytes
                } else {
                    <$t>::from_le_bytes
                };
                for (o, c) in out.iter_mut().zip(b.chunks_exact($n)) {
                    let mut a = [0u8; $n];
                    a.copy_from_slice(c);
                    *o = f(a) as f32 * scale;
                }
            }};
        }
        match self.elem {
            Elem::Bool | Elem::U8 => {
                for (o, &v) in out.iter_mut().zip(b) {
                    *o = v as f32 * scale;
                }
            }
            Elem::I8 => {
                for (o, &v) in out.iter_mut().zip(b) {
                    *o = v as i8 as f32 * scale;
                }
            }
            Elem::U16 => conv!(u16, 2),
            Elem::I16 => conv!(i16, 2),
            Elem::U32 => conv!(u32, 4),
            Elem::I32 => conv!(i32, 4),
            Elem::U64 => conv!(u64, 8),
            Elem::I64 => conv!(i64, 8),
            Elem::F32 => conv!(f32, 4),
            Elem::F64 => conv!(f64, 8),
        }
    }

    /// Value `i` (in file order) of an integer or bool array, as `i128` so
    /// every type fits; `None` for floats.
    pub fn int_at(&self, i: usize) -> Option<i128> {
        let s = self.elem.size();
        let b = &self.bytes[self.start + i * s..self.start + (i + 1) * s];
        macro_rules! int {
            ($t:ty, $n:expr) => {{
                let mut a = [0u8; $n];
                a.copy_from_slice(b);
                if self.big_endian {
                    <$t>::from_be_bytes(a) as i128
                } else {
                    <$t>::from_le_bytes(a) as i128
                }
            }};
        }
        Some(match self.elem {
            Elem::Bool | Elem::U8 => b[0] as i128,
            Elem::I8 => b[0] as i8 as i128,
            Elem::U16 => int!(u16, 2),
            Elem::I16 => int!(i16, 2),
            Elem::U32 => int!(u32, 4),
            Elem::I32 => int!(i32, 4),
            Elem::U64 => int!(u64, 8),
            Elem::I64 => int!(i64, 8),
            Elem::F32 | Elem::F64 => return None,
        })
    }
}

/// Our type for a plain NumPy dtype, and whether it is big-endian.
fn elem_of(dtype: &npyz::DType) -> Option<(Elem, bool)> {
    use npyz::{Endianness, TypeChar};
    let npyz::DType::Plain(ts) = dtype else {
        return None;
    };
    let size = ts.size_field();
    let elem = match (ts.type_char(), size) {
        (TypeChar::Bool, 1) => Elem::Bool,
        (TypeChar::Uint, 1) => Elem::U8,
        (TypeChar::Uint, 2) => Elem::U16,
        (TypeChar::Uint, 4) => Elem::U32,
        (TypeChar::Uint, 8) => Elem::U64,
        (TypeChar::Int, 1) => Elem::I8,
        (TypeChar::Int, 2) => Elem::I16,
        (TypeChar::Int, 4) => Elem::I32,
        (TypeChar::Int, 8) => Elem::I64,
        (TypeChar::Float, 4) => Elem::F32,
        (TypeChar::Float, 8) => Elem::F64,
        _ => return None,
    };
    let big = match ts.endianness() {
        Endianness::Big => true,
        Endianness::Little => false,
        // '|' (no order) and '=' (the writer's) for one-byte values.
        _ => cfg!(target_endian = "big"),
    };
    Some((elem, big))
}
