//! MNIST-format IDX files (`train-images-idx3-ubyte`, `…-labels-idx1-ubyte`),
//! plain or gzip-compressed (recognised by their first bytes, not the name).
//!
//! The header is `0 0 type ndim`, then `ndim` big-endian u32 sizes, then the
//! values, big-endian. Sizes are checked against the file before anything is
//! allocated, and values are decoded straight into the dataset's tables, so a
//! file is never held twice in memory.

use crate::data::{Dataset, Task};
use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// The value types IDX declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdxType {
    /// `0x08`
    U8,
    /// `0x09`
    I8,
    /// `0x0B`, big-endian
    I16,
    /// `0x0C`, big-endian
    I32,
    /// `0x0D`, big-endian
    F32,
    /// `0x0E`, big-endian
    F64,
}

impl IdxType {
    fn from_code(code: u8) -> Option<IdxType> {
        Some(match code {
            0x08 => IdxType::U8,
            0x09 => IdxType::I8,
            0x0B => IdxType::I16,
            0x0C => IdxType::I32,
            0x0D => IdxType::F32,
            0x0E => IdxType::F64,
            _ => return None,
        })
    }

    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            IdxType::U8 | IdxType::I8 => 1,
            IdxType::I16 => 2,
            IdxType::I32 | IdxType::F32 => 4,
            IdxType::F64 => 8,
        }
    }
}

/// An open IDX file, header read, positioned at the first value.
pub struct IdxReader {
    path: PathBuf,
    /// The value type.
    pub ty: IdxType,
    /// The declared sizes, outermost first.
    pub dims: Vec<usize>,
    src: Box<dyn Read>,
    /// The sizes were checked against the file's length. A gzip file or a
    /// stream (a pipe, a device) is measured as it is read.
    sized: bool,
    /// gzip-compressed.
    gz: bool,
    /// Bytes of the header, before the first value.
    header: u64,
}

/// Larger declared sizes than this are refused before any allocation (16 GiB
/// of f32); a corrupt header must not exhaust memory.
const MAX_VALUES: u64 = 1 << 32;

impl IdxReader {
    /// Opens `path`, reads and checks its header. For an uncompressed file
    /// the declared sizes must match the file's length exactly.
    pub fn open(path: &Path) -> Result<IdxReader> {
        let err = |msg: String| Error::Data {
            path: path.display().to_string(),
            msg,
        };
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        // A pipe or device has no length to check: it is read as a stream,
        // at most the declared values, and must end right after them.
        let file_len = meta.is_file().then_some(meta.len());
        let mut buf = BufReader::new(file);
        let mut magic = [0u8; 4];
        read_exact(&mut buf, &mut magic, path, "the 4-byte header")?;
        let gz = magic[0] == 0x1f && magic[1] == 0x8b;
        // The bytes read so far go back in front of the stream, which may
        // be a pipe that cannot be opened twice.
        let again = std::io::Cursor::new(magic).chain(buf);
        let mut src: Box<dyn Read> = if gz {
            let mut d = Box::new(GzMembers::new(again));
            read_exact(&mut d, &mut magic, path, "the 4-byte header")?;
            d
        } else {
            let mut plain = Box::new(again);
            read_exact(&mut plain, &mut magic, path, "the 4-byte header")?;
            plain
        };
        if magic[0] != 0 || magic[1] != 0 {
            return Err(err(format!(
                "not an IDX file: it starts with {:02x} {:02x}, expected 00 00",
                magic[0], magic[1]
            )));
        }
        let ty = IdxType::from_code(magic[2])
            .ok_or_else(|| err(format!("unknown IDX value type 0x{:02x}", magic[2])))?;
        let ndim = magic[3] as usize;
        if ndim == 0 {
            return Err(err("IDX header declares 0 dimensions".into()));
        }
        let mut dims = Vec::with_capacity(ndim);
        for k in 0..ndim {
            let mut b = [0u8; 4];
            read_exact(
                &mut src,
                &mut b,
                path,
                &format!("size {} of the header", k + 1),
            )?;
            dims.push(u32::from_be_bytes(b) as usize);
        }
        let values = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .filter(|&v| v <= MAX_VALUES)
            .ok_or_else(|| err(format!("declared sizes {dims:?} are too large")))?;
        let want = 4 + 4 * ndim as u64 + values * ty.size() as u64;
        // A gzip stream's true length is known only once decompressed (its
        // trailer holds one member's length mod 2^32), a pipe's once read:
        // `read_f32` checks those.
        if let (false, Some(file_len)) = (gz, file_len) {
            if file_len != want {
                return Err(err(format!(
                    "declared sizes {dims:?} need {want} bytes but the file has {file_len}{}",
                    if file_len < want { " (truncated?)" } else { "" }
                )));
            }
        }
        Ok(IdxReader {
            path: path.to_path_buf(),
            ty,
            dims,
            src,
            sized: !gz && file_len.is_some(),
            gz,
            header: 4 + 4 * ndim as u64,
        })
    }

    /// Values in the file: the product of the sizes.
    pub fn count(&self) -> usize {
        self.dims.iter().product()
    }

    /// Decodes every value into `out` (reserved here), as f32, `scale`
    /// applied; refuses NaN and infinity. Reads in blocks, never the whole file.
    pub fn read_f32(mut self, scale: f32, out: &mut Vec<f32>) -> Result<()> {
        const BLOCK: usize = 65536;
        let n = self.count();
        let no_memory = |n: usize| Error::Data {
            path: self.path.display().to_string(),
            msg: format!("not enough memory for {n} values"),
        };
        // Reserve all at once only where the file is known to hold it all;
        // else as the values arrive, so a lying gzip header costs nothing.
        let first = if self.sized { n } else { n.min(BLOCK) };
        out.try_reserve_exact(first).map_err(|_| no_memory(n))?;
        let size = self.ty.size();
        let mut block = vec![0u8; size * BLOCK.min(n)];
        let mut done = 0;
        while done < n {
            let take = (n - done).min(BLOCK);
            let bytes = &mut block[..take * size];
            if self.sized {
                read_exact(&mut self.src, bytes, &self.path, "the values")?;
            } else {
                let got = read_full(&mut self.src, bytes).map_err(|e| self.unreadable(e))?;
                if got < bytes.len() {
                    let have = self.header + (done * size + got) as u64;
                    return Err(self.wrong_size(&have.to_string()));
                }
                // A stream's header may lie: the values are counted against
                // the memory available as they arrive, not as declared.
                let have = crate::memory::bytes(&[(out.len() + take, 4)]);
                crate::memory::ensure(have, &format!("the data in {}", self.path.display()), &[])?;
            }
            out.try_reserve(take).map_err(|_| no_memory(n))?;
            for (k, v) in bytes.chunks_exact(size).enumerate() {
                let x = decode(self.ty, v) * scale;
                if !x.is_finite() {
                    return Err(Error::Data {
                        path: self.path.display().to_string(),
                        msg: format!("value {} is not finite", done + k),
                    });
                }
                out.push(x);
            }
            done += take;
        }
        if !self.sized {
            // Reading to the end makes the decoder check each member's CRC and
            // length, and nothing may follow the declared values, as in a plain
            // file. A longer stream is measured (up to a bound) for the message.
            const MEASURE: u64 = 1 << 30;
            let want = self.header + (n * size) as u64;
            let extra = std::io::copy(&mut (&mut self.src).take(MEASURE), &mut std::io::sink())
                .map_err(|e| self.unreadable(e))?;
            if extra == MEASURE {
                return Err(self.wrong_size(&format!("more than {}", want + MEASURE)));
            } else if extra > 0 {
                return Err(self.wrong_size(&(want + extra).to_string()));
            }
        }
        Ok(())
    }

    /// The stream (decompressed) holds `have` bytes, not what the header declares.
    fn wrong_size(&self, have: &str) -> Error {
        let want = self.header + (self.count() * self.ty.size()) as u64;
        let what = if self.gz { "gzip stream" } else { "stream" };
        Error::Data {
            path: self.path.display().to_string(),
            msg: format!(
                "declared sizes {:?} need {want} bytes but the {what} holds {have}",
                self.dims
            ),
        }
    }

    /// A stream that cannot be read, or a gzip one that does not decode (bad
    /// data, CRC, length field, trailing bytes).
    fn unreadable(&self, e: std::io::Error) -> Error {
        let what = if self.gz {
            "cannot decompress"
        } else {
            "cannot read"
        };
        Error::Data {
            path: self.path.display().to_string(),
            msg: format!("{what}: {}", crate::error::one_line(&e.to_string(), 200)),
        }
    }
}

/// Reads until `buf` is full or the stream ends; the bytes read.
fn read_full(src: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A gzip stream as `gunzip` reads it: every member in turn (`cat a.gz b.gz`
/// is one stream), each checked against its CRC and length. Bytes after the
/// last member that do not start another one are an error saying how many
/// (counted up to 1 MiB), where `gunzip` would warn and carry on. Works on
/// any buffered reader, a pipe included.
struct GzMembers<R: BufRead> {
    member: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: BufRead> GzMembers<R> {
    fn new(src: R) -> GzMembers<R> {
        GzMembers {
            member: Some(flate2::bufread::GzDecoder::new(src)),
        }
    }
}

impl<R: BufRead> Read for GzMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let Some(mut member) = self.member.take() else {
                return Ok(0);
            };
            let k = member.read(buf)?;
            if k > 0 || buf.is_empty() {
                self.member = Some(member);
                return Ok(k);
            }
            // This member is done: another may follow.
            let mut rest = member.into_inner();
            let next = rest.fill_buf()?;
            if next.is_empty() {
                return Ok(0);
            }
            if !next.starts_with(&[0x1f, 0x8b]) {
                const COUNT: u64 = 1 << 20;
                let n = std::io::copy(&mut rest.take(COUNT + 1), &mut std::io::sink())?;
                let n = if n > COUNT {
                    format!("more than {COUNT}")
                } else {
                    n.to_string()
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{n} bytes after the end of the gzip stream are not gzip"),
                ));
            }
            self.member = Some(flate2::bufread::GzDecoder::new(rest));
        }
    }
}

fn decode(ty: IdxType, v: &[u8]) -> f32 {
    match ty {
        IdxType::U8 => v[0] as f32,
        IdxType::I8 => v[0] as i8 as f32,
        IdxType::I16 => i16::from_be_bytes([v[0], v[1]]) as f32,
        IdxType::I32 => i32::from_be_bytes([v[0], v[1], v[2], v[3]]) as f32,
        IdxType::F32 => f32::from_be_bytes([v[0], v[1], v[2], v[3]]),
        IdxType::F64 => f64::from_be_bytes([v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]]) as f32,
    }
}

/// `buf` filled from `src`, or an [`Error::Data`] naming `what` of `path`
/// that could not be read (the IDX and `.npy` loaders' headers).
pub(crate) fn read_exact(
    src: &mut dyn Read,
    buf: &mut [u8],
    path: &Path,
    what: &str,
) -> Result<()> {
    src.read_exact(buf).map_err(|e| Error::Data {
        path: path.display().to_string(),
        msg: if e.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("truncated: the file ends inside {what}")
        } else {
            format!("cannot read {what}: {e}")
        },
    })
}

/// `(images, labels)` paths.
pub type IdxPair = (PathBuf, PathBuf);

/// The MNIST files in `dir`, `.gz` or not (also spelled
/// `train-images.idx3-ubyte`): the train pair and, when present, the `t10k` pair.
pub fn find_mnist(dir: &Path) -> Result<(IdxPair, Option<IdxPair>)> {
    let find = |stem: &str, kind: &str| -> Option<PathBuf> {
        [format!("{stem}-{kind}"), format!("{stem}.{kind}")]
            .iter()
            .flat_map(|n| [n.clone(), format!("{n}.gz")])
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
    };
    let pair = |set: &str| {
        Some((
            find(&format!("{set}-images"), "idx3-ubyte")?,
            find(&format!("{set}-labels"), "idx1-ubyte")?,
        ))
    };
    let train = pair("train").ok_or_else(|| Error::Data {
        path: dir.display().to_string(),
        msg: "no train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz] here".into(),
    })?;
    Ok((train, pair("t10k")))
}

impl Dataset {
    /// An image set and its labels: each image flattened into one input row,
    /// pixel values divided by 255 for u8 files; labels one-hot over
    /// `classes` (every label must be below it).
    pub fn from_idx(images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
        if classes < 2 {
            return Err(Error::Invalid(
                "IDX labels need a network with at least 2 outputs (one per class)".into(),
            ));
        }
        let img = IdxReader::open(images)?;
        let lab = IdxReader::open(labels)?;
        let n = img.dims[0];
        if lab.dims.len() != 1 {
            return Err(Error::Data {
                path: labels.display().to_string(),
                msg: format!(
                    "labels must be 1-dimensional, the header says {:?}",
                    lab.dims
                ),
            });
        }
        if lab.dims[0] != n {
            return Err(Error::Data {
                path: labels.display().to_string(),
                msg: format!(
                    "{} labels for {n} images in {}",
                    lab.dims[0],
                    images.display()
                ),
            });
        }
        if n == 0 {
            return Err(Error::Data {
                path: images.display().to_string(),
                msg: "no images".into(),
            });
        }
        // An image of no values would leave the inputs table short of rows.
        let inputs = img.dims[1..].iter().product::<usize>();
        if inputs == 0 {
            return Err(Error::Data {
                path: images.display().to_string(),
                msg: format!("images of 0 values: the header's sizes are {:?}", img.dims),
            });
        }
        // The tables and the raw labels, before any is allocated, where the
        // files' lengths proved the header's sizes; a gzip file or a pipe is
        // counted as its values arrive (IdxReader::read_f32), so a lying
        // header is found out by its length, not by the memory it declares.
        let need = crate::memory::bytes(&[(n, inputs.saturating_add(classes) * 4), (n, 4)]);
        let what = format!("the data in {}", images.display());
        if img.sized && lab.sized {
            crate::memory::ensure(need, &what, &[])?;
        }
        let scale = if img.ty == IdxType::U8 {
            1.0 / 255.0
        } else {
            1.0
        };
        let mut x = Vec::new();
        img.read_f32(scale, &mut x)?;
        let mut raw = Vec::new();
        lab.read_f32(1.0, &mut raw)?;
        // Every value arrived: the rest of the tables must fit too.
        crate::memory::ensure(need, &what, &[])?;
        // Every label was read, so `n` is real; the product may still overflow.
        let mut y = n
            .checked_mul(classes)
            .map(|len| vec![0.0f32; len])
            .ok_or_else(|| Error::Data {
                path: labels.display().to_string(),
                msg: format!("{n} labels of {classes} classes are too many"),
            })?;
        for (i, &l) in raw.iter().enumerate() {
            if l < 0.0 || l.fract() != 0.0 || l as usize >= classes {
                return Err(Error::Data {
                    path: labels.display().to_string(),
                    msg: format!(
                        "label {l} of sample {i} is not a class 0..{} of the network's {classes} outputs",
                        classes - 1
                    ),
                });
            }
            y[i * classes + l as usize] = 1.0;
        }
        let name = images
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "idx".into());
        drop(raw);
        Ok(Dataset::in_memory(
            &name,
            (inputs, classes),
            x,
            y,
            Task::Classification { classes },
        ))
    }
}
