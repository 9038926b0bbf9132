//! The snapshot file format: a header with the snapshot's metadata, then the application
//! column families as a stream of key/value records, so a snapshot of any size is written
//! and read with constant memory.
//!
//! ```text
//! "CSNAP\x01"  u32 meta_len  meta (JSON SnapshotMeta)
//! { 0x01 u32 len cf_name | 0x02 u32 len key u32 len value }*
//! 0xFF u64 record_count
//! ```
//! All integers big-endian. The trailer's count catches a truncated file.

use crate::types::SnapshotMeta;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 6] = b"CSNAP\x01";
const TAG_CF: u8 = 0x01;
const TAG_KV: u8 = 0x02;
const TAG_END: u8 = 0xFF;
/// Bounds what a corrupt length field can make us allocate.
const MAX_FIELD: u32 = 256 << 20;

/// The current snapshot's file name in the snapshot dir.
pub(crate) const CURRENT: &str = "current.snap";
const TMP_SUFFIX: &str = ".tmp";

/// One record of the stream.
pub(crate) enum Record {
    /// The following pairs belong to this column family.
    Cf(String),
    /// A key/value pair.
    Kv(Vec<u8>, Vec<u8>),
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Writes a snapshot stream.
pub(crate) struct Writer<W: Write> {
    out: W,
    records: u64,
}

impl<W: Write> Writer<W> {
    /// Starts the stream with its header.
    pub(crate) fn new(mut out: W, meta: &SnapshotMeta) -> io::Result<Writer<W>> {
        let meta = serde_json::to_vec(meta).map_err(io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&len32(meta.len())?.to_be_bytes())?;
        out.write_all(&meta)?;
        Ok(Writer { out, records: 0 })
    }

    /// Starts a column family.
    pub(crate) fn cf(&mut self, name: &str) -> io::Result<()> {
        self.out.write_all(&[TAG_CF])?;
        self.field(name.as_bytes())?;
        self.records += 1;
        Ok(())
    }

    /// Adds a pair to the current column family.
    pub(crate) fn kv(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.out.write_all(&[TAG_KV])?;
        self.field(key)?;
        self.field(value)?;
        self.records += 1;
        Ok(())
    }

    /// Ends the stream and hands back the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[TAG_END])?;
        self.out.write_all(&self.records.to_be_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn field(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(&len32(bytes.len())?.to_be_bytes())?;
        self.out.write_all(bytes)
    }
}

fn len32(len: usize) -> io::Result<u32> {
    u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FIELD)
        .ok_or_else(|| invalid(format!("snapshot field of {len} bytes is too large")))
}

/// Reads a snapshot stream.
pub(crate) struct Reader<R: BufRead> {
    input: R,
    records: u64,
    done: bool,
}

impl<R: BufRead> Reader<R> {
    /// Reads and checks the header.
    pub(crate) fn new(mut input: R) -> io::Result<(Reader<R>, SnapshotMeta)> {
        let mut magic = [0u8; 6];
        input.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(invalid("not a consensus snapshot (bad magic)"));
        }
        let meta = read_field(&mut input)?;
        let meta = serde_json::from_slice(&meta).map_err(|e| invalid(e.to_string()))?;
        Ok((
            Reader {
                input,
                records: 0,
                done: false,
            },
            meta,
        ))
    }

    /// The next record; `None` after a complete stream, an error if it was cut short.
    pub(crate) fn next_record(&mut self) -> io::Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input.read_exact(&mut tag)?;
        match tag[0] {
            TAG_CF => {
                let name = String::from_utf8(read_field(&mut self.input)?)
                    .map_err(|_| invalid("column family name is not UTF-8"))?;
                self.records += 1;
                Ok(Some(Record::Cf(name)))
            }
            TAG_KV => {
                let k = read_field(&mut self.input)?;
                let v = read_field(&mut self.input)?;
                self.records += 1;
                Ok(Some(Record::Kv(k, v)))
            }
            TAG_END => {
                let mut n = [0u8; 8];
                self.input.read_exact(&mut n)?;
                if u64::from_be_bytes(n) != self.records {
                    return Err(invalid("snapshot record count mismatch"));
                }
                self.done = true;
                Ok(None)
            }
            t => Err(invalid(format!("unknown snapshot record tag {t:#x}"))),
        }
    }
}

fn read_field(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FIELD {
        return Err(invalid(format!(
            "snapshot field of {len} bytes is too large"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

/// A fresh temporary path in `dir`; [`remove_leftovers`] deletes it if we crash before
/// renaming it into place.
pub(crate) fn temp_path(dir: &Path, what: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    dir.join(format!("{what}-{nanos}{TMP_SUFFIX}"))
}

/// Makes `tmp` the current snapshot, durably: file contents, then the rename itself.
pub(crate) fn publish(dir: &Path, tmp: &Path, file: &std::fs::File) -> io::Result<PathBuf> {
    file.sync_all()?;
    let current = dir.join(CURRENT);
    std::fs::rename(tmp, &current)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(current)
}

/// Deletes temporary files a crash left behind.
pub(crate) fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            // Best effort: a leftover only costs disk space.
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), &SnapshotMeta::default()).unwrap();
        w.cf("kv").unwrap();
        w.kv(b"a", b"1").unwrap();
        w.kv(b"b", b"").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn records_round_trip() {
        let bytes = sample();
        let (mut r, meta) = Reader::new(&bytes[..]).unwrap();
        assert_eq!(meta, SnapshotMeta::default());
        assert!(matches!(r.next_record().unwrap(), Some(Record::Cf(n)) if n == "kv"));
        assert!(
            matches!(r.next_record().unwrap(), Some(Record::Kv(k, v)) if k == b"a" && v == b"1")
        );
        assert!(
            matches!(r.next_record().unwrap(), Some(Record::Kv(k, v)) if k == b"b" && v.is_empty())
        );
        assert!(r.next_record().unwrap().is_none());
    }

    #[test]
    fn a_cut_stream_is_an_error_not_an_end() {
        let bytes = sample();
        for cut in [bytes.len() - 1, bytes.len() - 9, bytes.len() - 12] {
            let (mut r, _) = Reader::new(&bytes[..cut]).unwrap();
            let res = std::iter::from_fn(|| Some(r.next_record()))
                .find(|x| !matches!(x, Ok(Some(_))))
                .unwrap();
            assert!(res.is_err(), "cut at {cut}");
        }
    }
}
