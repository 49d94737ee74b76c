//! The export file: versioned, streamed, checksummed, optionally sealed under a passphrase.
//! The layout is documented for users in `tools/DUMP-FORMAT.md`; in short:
//!
//! ```text
//! file   = magic header block* end-block
//! magic  = "TIMDUMP" 0x00
//! header = length (u32) ‖ JSON ‖ xxh3-64 of the JSON (u64)
//! block  = kind (u8) ‖ length (u32) ‖ body ‖ check (u64)
//! ```
//!
//! Integers are big-endian. A block's check is xxh3-64, seeded with the block's number, over
//! its kind, length and body, so a block that is damaged, missing or out of place is found.
//! A rows block's body is a postcard list of rows; the end block's is a JSON summary whose
//! counts the reader checks against the rows it read. In a sealed file each body is
//! AES-256-GCM under a key derived with argon2id from the passphrase and the header's salt,
//! with the block's number as nonce and the header's digest and the block's kind as
//! associated data.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use serde::{Deserialize, Serialize};
use tim_kv::ExportedRow;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use tim_engine::export_wire::{table_name, Source};

pub const MAGIC: &[u8; 8] = b"TIMDUMP\0";
/// The format this tool writes, and the newest it reads.
pub const FORMAT: u32 = 1;
const MAX_HEADER: usize = 1 << 20;
const MAX_BLOCK: usize = 64 << 20;
const ROWS: u8 = 1;
const END: u8 = 2;
/// argon2id cost of the passphrase key: 64 MiB, 3 passes (RFC 9106's second choice).
const KDF_MEMORY_KIB: u32 = 64 << 10;
const KDF_PASSES: u32 = 3;

/// What the file holds and how it was written.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The `tim` that wrote it.
    pub tool: String,
    /// When the export started, in seconds since the Unix epoch.
    pub created_unix: u64,
    pub source: Source,
    /// Present when the bodies are sealed under a passphrase.
    pub sealing: Option<Sealing>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sealing {
    pub cipher: String,
    pub kdf: String,
    pub memory_kib: u32,
    pub passes: u32,
    /// 16 random bytes, hex.
    pub salt: String,
}

/// What the end block says the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Rows per table name.
    pub rows: BTreeMap<String, u64>,
    pub slots: u32,
    /// Rows blocks before the end block.
    pub blocks: u64,
}

impl Summary {
    /// Counts `rows` by the names of their tables.
    fn count(&mut self, names: &BTreeMap<u32, String>, rows: &[ExportedRow]) {
        for row in rows {
            *self.rows.entry(table_name(names, row.table.0)).or_default() += 1;
        }
    }
}

/// Why a file cannot be read, and where.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("at byte {offset}: {reason}")]
    Bad { offset: u64, reason: String },
    #[error("reading failed at byte {offset}")]
    Io {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Passphrase(String),
}

/// The key of a sealed file.
struct Sealer {
    cipher: Aes256Gcm,
    /// The header's digest, bound to every block.
    header: u64,
}

impl Sealer {
    fn new(passphrase: &[u8], sealing: &Sealing, header: u64) -> Result<Self, FormatError> {
        let bad = |why: String| FormatError::Passphrase(why);
        if sealing.cipher != "aes-256-gcm" || sealing.kdf != "argon2id" {
            return Err(bad(format!("unknown sealing {} with {}", sealing.cipher, sealing.kdf)));
        }
        let salt = tim_net::hex::decode(&sealing.salt).ok_or_else(|| bad("the header's salt is not hex".into()))?;
        let params = argon2::Params::new(sealing.memory_kib, sealing.passes, 1, Some(32))
            .map_err(|e| bad(format!("the header's key settings: {e}")))?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon.hash_password_into(passphrase, &salt, &mut key).map_err(|e| bad(format!("deriving the key: {e}")))?;
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| bad("deriving the key".into()))?;
        Ok(Self { cipher, header })
    }

    fn parts(&self, index: u64, kind: u8) -> ([u8; 12], [u8; 9]) {
        let [i0, i1, i2, i3, i4, i5, i6, i7] = index.to_be_bytes();
        let [h0, h1, h2, h3, h4, h5, h6, h7] = self.header.to_be_bytes();
        ([0, 0, 0, 0, i0, i1, i2, i3, i4, i5, i6, i7], [h0, h1, h2, h3, h4, h5, h6, h7, kind])
    }

    fn seal(&self, index: u64, kind: u8, plain: &[u8]) -> Option<Vec<u8>> {
        let (nonce, aad) = self.parts(index, kind);
        self.cipher.encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: &aad }).ok()
    }

    fn open(&self, index: u64, kind: u8, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, aad) = self.parts(index, kind);
        self.cipher.decrypt(Nonce::from_slice(&nonce), Payload { msg: sealed, aad: &aad }).ok()
    }
}

fn check(index: u64, kind: u8, body: &[u8]) -> u64 {
    let mut hash = Xxh3::with_seed(index);
    hash.update(&[kind]);
    hash.update(&(body.len() as u32).to_be_bytes());
    hash.update(body);
    hash.digest()
}

/// Sealing settings with a fresh salt.
pub fn new_sealing() -> Sealing {
    Sealing {
        cipher: "aes-256-gcm".into(),
        kdf: "argon2id".into(),
        memory_kib: KDF_MEMORY_KIB,
        passes: KDF_PASSES,
        salt: tim_net::hex::encode(&rand::random::<[u8; 16]>()),
    }
}

/// Writes an export file.
pub struct DumpWriter<W: Write> {
    out: W,
    sealer: Option<Sealer>,
    blocks: u64,
    summary: Summary,
    names: BTreeMap<u32, String>,
    bytes: u64,
}

impl<W: Write> DumpWriter<W> {
    /// Writes the magic and the header; `passphrase` when `header.sealing` is set.
    pub fn new(mut out: W, header: &Header, passphrase: Option<&[u8]>) -> anyhow::Result<Self> {
        let json = serde_json::to_vec(header)?;
        let digest = xxh3_64(&json);
        let sealer = match (&header.sealing, passphrase) {
            (Some(sealing), Some(passphrase)) => Some(Sealer::new(passphrase, sealing, digest)?),
            (None, None) => None,
            _ => anyhow::bail!("a sealed file needs a passphrase, and only a sealed one"),
        };
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u32).to_be_bytes())?;
        out.write_all(&json)?;
        out.write_all(&digest.to_be_bytes())?;
        let names = header.source.tables.iter().map(|t| (t.id, t.name.clone())).collect();
        let bytes = (MAGIC.len() + 4 + json.len() + 8) as u64;
        Ok(Self { out, sealer, blocks: 0, summary: Summary::default(), names, bytes })
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn block(&mut self, kind: u8, plain: &[u8]) -> anyhow::Result<()> {
        let index = self.blocks;
        let sealed;
        let body = match &self.sealer {
            Some(sealer) => {
                sealed = sealer.seal(index, kind, plain).ok_or_else(|| anyhow::anyhow!("sealing a block failed"))?;
                &sealed[..]
            }
            None => plain,
        };
        anyhow::ensure!(body.len() <= MAX_BLOCK, "a block of {} bytes is over the format's limit", body.len());
        self.out.write_all(&[kind])?;
        self.out.write_all(&(body.len() as u32).to_be_bytes())?;
        self.out.write_all(body)?;
        self.out.write_all(&check(index, kind, body).to_be_bytes())?;
        self.blocks += 1;
        self.bytes += (1 + 4 + body.len() + 8) as u64;
        Ok(())
    }

    /// Writes rows as one block.
    pub fn rows(&mut self, rows: &[ExportedRow]) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.summary.count(&self.names, rows);
        self.block(ROWS, &postcard::to_stdvec(rows)?)
    }

    /// Writes the end block and flushes; the summary it wrote.
    pub fn finish(mut self, slots: u32) -> anyhow::Result<(W, Summary)> {
        self.summary.slots = slots;
        self.summary.blocks = self.blocks;
        let summary = self.summary.clone();
        self.block(END, &serde_json::to_vec(&summary)?)?;
        self.out.flush()?;
        Ok((self.out, summary))
    }
}

/// What a reader hands out.
#[derive(Debug)]
pub enum Block {
    Rows(Vec<ExportedRow>),
    End(Summary),
}

/// Reads an export file, checking every block before it hands it out.
pub struct DumpReader<R: Read> {
    input: R,
    pub header: Header,
    sealer: Option<Sealer>,
    offset: u64,
    blocks: u64,
    counted: Summary,
    names: BTreeMap<u32, String>,
    ended: bool,
}

impl<R: Read> DumpReader<R> {
    /// Reads and checks the magic and the header; a sealed file needs its passphrase.
    pub fn open(mut input: R, passphrase: Option<&[u8]>) -> Result<Self, FormatError> {
        let mut offset = 0;
        let magic: [u8; 8] = read_exact(&mut input, &mut offset)?;
        if &magic != MAGIC {
            return Err(FormatError::Bad { offset: 0, reason: "not a tim export file (no TIMDUMP magic)".into() });
        }
        let len = u32::from_be_bytes(read_exact(&mut input, &mut offset)?) as usize;
        if len > MAX_HEADER {
            return Err(bad(offset - 4, format!("a header of {len} bytes is over the format's limit")));
        }
        let json = read_vec(&mut input, &mut offset, len)?;
        let digest = u64::from_be_bytes(read_exact(&mut input, &mut offset)?);
        if xxh3_64(&json) != digest {
            return Err(bad(12, "the header does not match its checksum".into()));
        }
        let header: Header =
            serde_json::from_slice(&json).map_err(|e| bad(12, format!("the header does not decode: {e}")))?;
        if header.format == 0 || header.format > FORMAT {
            return Err(bad(
                12,
                format!(
                    "format version {} (this tim reads versions 1 to {FORMAT}; a newer tim wrote it)",
                    header.format
                ),
            ));
        }
        let sealer = match (&header.sealing, passphrase) {
            (Some(sealing), Some(passphrase)) => Some(Sealer::new(passphrase, sealing, digest)?),
            (Some(_), None) => {
                return Err(FormatError::Passphrase(
                    "the file is sealed: give its passphrase (--passphrase-file)".into(),
                ))
            }
            (None, _) => None,
        };
        let names = header.source.tables.iter().map(|t| (t.id, t.name.clone())).collect();
        Ok(Self { input, header, sealer, offset, blocks: 0, counted: Summary::default(), names, ended: false })
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next block, checked; `None` after the end block (and only there: a file that ends
    /// before it is truncated).
    pub fn next_block(&mut self) -> Result<Option<Block>, FormatError> {
        let at = self.offset;
        let mut kind = [0u8; 1];
        let got = read_some(&mut self.input, &mut kind, &mut self.offset)?;
        if self.ended {
            return match got {
                0 => Ok(None),
                _ => Err(bad(at, "data after the end block".into())),
            };
        }
        if got == 0 {
            return Err(bad(at, "truncated: the file ends before its end block".into()));
        }
        let [kind] = kind;
        let len = u32::from_be_bytes(read_exact(&mut self.input, &mut self.offset)?) as usize;
        if len > MAX_BLOCK {
            return Err(bad(at, format!("a block of {len} bytes is over the format's limit")));
        }
        let body = read_vec(&mut self.input, &mut self.offset, len)?;
        let stored = u64::from_be_bytes(read_exact(&mut self.input, &mut self.offset)?);
        let index = self.blocks;
        if check(index, kind, &body) != stored {
            return Err(bad(
                at,
                format!("block {index} does not match its checksum (damaged, missing or out of place)"),
            ));
        }
        let plain = match &self.sealer {
            Some(sealer) => sealer.open(index, kind, &body).ok_or_else(|| {
                FormatError::Passphrase(format!(
                    "at byte {at}: block {index} does not open: wrong passphrase, or the file was altered"
                ))
            })?,
            None => body,
        };
        self.blocks += 1;
        match kind {
            ROWS => {
                let rows: Vec<ExportedRow> =
                    postcard::from_bytes(&plain).map_err(|e| bad(at, format!("rows do not decode: {e}")))?;
                self.counted.count(&self.names, &rows);
                Ok(Some(Block::Rows(rows)))
            }
            END => {
                let summary: Summary = serde_json::from_slice(&plain)
                    .map_err(|e| bad(at, format!("the end block does not decode: {e}")))?;
                if summary.rows != self.counted.rows || summary.blocks != index {
                    return Err(bad(at, "the end block's counts differ from the rows read".into()));
                }
                self.ended = true;
                Ok(Some(Block::End(summary)))
            }
            other => Err(bad(at, format!("unknown block kind {other}"))),
        }
    }
}

fn bad(offset: u64, reason: String) -> FormatError {
    FormatError::Bad { offset, reason }
}

fn read_some(input: &mut impl Read, buf: &mut [u8], offset: &mut u64) -> Result<usize, FormatError> {
    loop {
        match input.read(buf) {
            Ok(n) => {
                *offset += n as u64;
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => return Err(FormatError::Io { offset: *offset, source }),
        }
    }
}

fn read_exact<const N: usize>(input: &mut impl Read, offset: &mut u64) -> Result<[u8; N], FormatError> {
    let mut buf = [0u8; N];
    fill(input, &mut buf, offset)?;
    Ok(buf)
}

fn read_vec(input: &mut impl Read, offset: &mut u64, len: usize) -> Result<Vec<u8>, FormatError> {
    let mut buf = vec![0u8; len];
    fill(input, &mut buf, offset)?;
    Ok(buf)
}

fn fill(input: &mut impl Read, buf: &mut [u8], offset: &mut u64) -> Result<(), FormatError> {
    let start = *offset;
    let mut done = 0;
    while let Some(rest) = buf.get_mut(done..).filter(|r| !r.is_empty()) {
        match read_some(input, rest, offset)? {
            0 => return Err(bad(start, "truncated: the file ends inside a block".into())),
            n => done += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tim_kv::{Row, RowId, Slot, TableId};

    use super::*;
    use tim_engine::export_wire::TableSchema;

    fn header(sealing: Option<Sealing>) -> Header {
        let tables = vec![TableSchema {
            id: 2,
            name: "timmessage".into(),
            columns: vec!["chatid".into(), "stanza".into()],
            sealed: vec![false, true],
        }];
        let source = Source {
            cluster: "tim".into(),
            fingerprint: "00".into(),
            ids: "keyed".into(),
            slots: 4096,
            tables,
            node: 1,
            members: vec![1],
            version: "test".into(),
        };
        Header { format: FORMAT, tool: "test".into(), created_unix: 1, source, sealing }
    }

    fn rows(n: u64) -> Vec<ExportedRow> {
        (1..=n)
            .map(|i| ExportedRow {
                table: TableId(2),
                id: RowId::new(Slot(3), i),
                row: Row::new(2).set(1, Bytes::from(format!("secret body {i}"))).clone(),
            })
            .collect()
    }

    fn write(sealing: Option<Sealing>, pass: Option<&[u8]>) -> Vec<u8> {
        let mut w = DumpWriter::new(Vec::new(), &header(sealing), pass).unwrap();
        w.rows(&rows(10)).unwrap();
        w.rows(&rows(5)).unwrap();
        w.finish(1).unwrap().0
    }

    fn read_all(file: &[u8], pass: Option<&[u8]>) -> Result<(Vec<ExportedRow>, Summary), FormatError> {
        let mut r = DumpReader::open(file, pass)?;
        let mut all = Vec::new();
        loop {
            match r.next_block()? {
                Some(Block::Rows(rows)) => all.extend(rows),
                Some(Block::End(summary)) => {
                    assert!(r.next_block()?.is_none());
                    return Ok((all, summary));
                }
                None => unreachable!("a reader ends with the end block"),
            }
        }
    }

    #[test]
    fn plain_and_sealed_files_read_back() {
        let plain = write(None, None);
        let (got, summary) = read_all(&plain, None).unwrap();
        assert_eq!(got.len(), 15);
        assert_eq!(summary.rows.get("timmessage"), Some(&15));
        assert!(plain.windows(11).any(|w| w == b"secret body"), "plain files hold the opened values");

        let sealed = write(Some(new_sealing()), Some(b"pass"));
        assert!(!sealed.windows(11).any(|w| w == b"secret body"), "sealed files do not");
        assert_eq!(read_all(&sealed, Some(b"pass")).unwrap().0, got);
        assert!(matches!(read_all(&sealed, Some(b"wrong")), Err(FormatError::Passphrase(_))));
        assert!(matches!(DumpReader::open(&sealed[..], None), Err(FormatError::Passphrase(_))));
    }

    #[test]
    fn damaged_files_are_refused_with_the_offset() {
        let file = write(None, None);
        // Cut anywhere: refused, and never before the blocks read whole.
        for cut in [5, 20, file.len() / 2, file.len() - 1] {
            let err = read_all(&file[..cut], None).unwrap_err().to_string();
            assert!(err.contains("truncated") || err.contains("at byte"), "cut at {cut}: {err}");
        }
        // One byte flipped in the second block: the first block reads, the second is refused.
        let mut first = DumpReader::open(&file[..], None).unwrap();
        first.next_block().unwrap();
        let mut flipped = file.clone();
        flipped[first.offset() as usize + 10] ^= 1;
        let mut r = DumpReader::open(&flipped[..], None).unwrap();
        let mut good = 0;
        let err = loop {
            match r.next_block() {
                Ok(Some(Block::Rows(rows))) => good += rows.len(),
                Ok(other) => panic!("read past damage: {other:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(good, 10);
        assert!(err.to_string().contains("checksum"), "{err}");
        // Trailing data after the end block.
        let mut longer = file.clone();
        longer.push(0);
        assert!(read_all(&longer, None).unwrap_err().to_string().contains("after the end block"));
        // Not an export at all.
        assert!(read_all(b"hello world, not an export", None).unwrap_err().to_string().contains("magic"));
    }
}
