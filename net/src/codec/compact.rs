//! Thrift compact protocol primitives (no message envelope), as tim-protocol.md §2.6 lays them out.
//!
//! Written here rather than taken from the `thrift` crate: TIM frames are bare structs with no
//! envelope, the reader must be total on hostile input (that crate allocates from peer lengths and
//! panics on some inputs) and payloads stay zero-copy `Bytes` views of the receive buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::{Budget, DecodeError};

pub(crate) const STOP: u8 = 0;
pub(crate) const BOOL_TRUE: u8 = 1;
pub(crate) const BOOL_FALSE: u8 = 2;
pub(crate) const I8: u8 = 3;
pub(crate) const I16: u8 = 4;
pub(crate) const I32: u8 = 5;
pub(crate) const I64: u8 = 6;
pub(crate) const DOUBLE: u8 = 7;
pub(crate) const BINARY: u8 = 8;
pub(crate) const LIST: u8 = 9;
pub(crate) const SET: u8 = 10;
pub(crate) const MAP: u8 = 11;
pub(crate) const STRUCT: u8 = 12;

/// Deepest nesting of structs, lists and maps a reader follows (TIM's deepest is 3).
pub(crate) const MAX_DEPTH: u8 = 32;

/// Writes compact values into a growable buffer.
#[derive(Default)]
pub struct Writer {
    buf: BytesMut,
}

impl Writer {
    pub fn with_prefix(prefix: &[u8]) -> Self {
        let mut buf = BytesMut::with_capacity(64);
        buf.put_slice(prefix);
        Self { buf }
    }

    pub fn finish(self) -> Bytes {
        self.buf.freeze()
    }

    pub(crate) fn byte(&mut self, b: u8) {
        self.buf.put_u8(b);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf.put_slice(b);
    }

    pub(crate) fn writer(&mut self) -> impl std::io::Write + '_ {
        (&mut self.buf).writer()
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.put_u8((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.put_u8(v as u8);
    }

    pub(crate) fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn binary(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.put_slice(b);
    }

    pub(crate) fn field_header(&mut self, ctype: u8, id: i16, last_id: &mut i16) {
        let delta = i32::from(id) - i32::from(*last_id);
        if (1..=15).contains(&delta) {
            self.byte(((delta as u8) << 4) | ctype);
        } else {
            self.byte(ctype);
            self.zigzag(i64::from(id));
        }
        *last_id = id;
    }

    pub(crate) fn list_header(&mut self, elem: u8, len: usize) {
        if len <= 14 {
            self.byte(((len as u8) << 4) | elem);
        } else {
            self.byte(0xF0 | elem);
            self.varint(len as u64);
        }
    }

    pub(crate) fn map_header(&mut self, key: u8, value: u8, len: usize) {
        if len == 0 {
            self.byte(0);
        } else {
            self.varint(len as u64);
            self.byte((key << 4) | value);
        }
    }
}

/// Reads compact values from a shared buffer; every read checks the bytes left first, and
/// every allocation is charged to the body's [`Budget`] before it is made.
pub struct Reader {
    buf: Bytes,
    pos: usize,
    budget: Budget,
}

impl Reader {
    pub(crate) fn with_budget(buf: Bytes, budget: Budget) -> Self {
        Self { buf, pos: 0, budget }
    }

    /// The decode's heap allowance.
    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            out |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(DecodeError::BadVarint)
    }

    pub(crate) fn zigzag(&mut self) -> Result<i64, DecodeError> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        self.take(len)
    }

    /// Reads a field header: `None` at STOP, else `(ctype, field id)`.
    pub(crate) fn field_header(&mut self, last_id: &mut i16) -> Result<Option<(u8, i16)>, DecodeError> {
        let b = self.byte()?;
        if b == STOP {
            return Ok(None);
        }
        let ctype = b & 0x0F;
        let delta = b >> 4;
        let id = if delta == 0 {
            i16::try_from(self.zigzag()?).map_err(|_| DecodeError::BadFieldId)?
        } else {
            last_id.checked_add(i16::from(delta)).ok_or(DecodeError::BadFieldId)?
        };
        *last_id = id;
        Ok(Some((ctype, id)))
    }

    /// Reads a list/set header; the count is checked against the bytes left (every element
    /// takes at least one byte), so a hostile count cannot make the caller over-allocate.
    pub(crate) fn list_header(&mut self) -> Result<(u8, usize), DecodeError> {
        let b = self.byte()?;
        let elem = b & 0x0F;
        let len = match b >> 4 {
            0x0F => usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?,
            short => usize::from(short),
        };
        if len > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok((elem, len))
    }

    /// Reads a map header: `(key type, value type, count)`, checked like [`Self::list_header`].
    pub(crate) fn map_header(&mut self) -> Result<(u8, u8, usize), DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        if len == 0 {
            return Ok((0, 0, 0));
        }
        let kv = self.byte()?;
        if len > self.remaining() / 2 {
            return Err(DecodeError::Truncated);
        }
        Ok((kv >> 4, kv & 0x0F, len))
    }

    /// Skips one value of wire type `ctype`. `in_collection` marks list/map elements, where a
    /// bool takes a byte (as a field its value lives in the header).
    pub(crate) fn skip(&mut self, ctype: u8, in_collection: bool, depth: u8) -> Result<(), DecodeError> {
        if depth >= MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        match ctype {
            BOOL_TRUE | BOOL_FALSE => {
                if in_collection {
                    self.byte()?;
                }
            }
            I8 => {
                self.byte()?;
            }
            I16 | I32 | I64 => {
                self.varint()?;
            }
            DOUBLE => {
                self.take(8)?;
            }
            BINARY => {
                self.binary()?;
            }
            LIST | SET => {
                let (elem, len) = self.list_header()?;
                for _ in 0..len {
                    self.skip(elem, true, depth + 1)?;
                }
            }
            MAP => {
                let (k, v, len) = self.map_header()?;
                for _ in 0..len {
                    self.skip(k, true, depth + 1)?;
                    self.skip(v, true, depth + 1)?;
                }
            }
            STRUCT => {
                let mut last = 0i16;
                while let Some((ct, _)) = self.field_header(&mut last)? {
                    self.skip(ct, false, depth + 1)?;
                }
            }
            other => return Err(DecodeError::BadType(other)),
        }
        Ok(())
    }
}
