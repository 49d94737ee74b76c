//! TIM frame bodies: the thrift-compact and JSON forms of every struct of tim-protocol.md §3.2.
//!
//! One declaration per struct (in [`crate::proto`]) generates both codecs, so the two forms can
//! never disagree on a field id, a key or a type.

pub(crate) mod compact;
mod json;

use std::cell::Cell;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Serialize;

pub use compact::{Reader, Writer};
pub use json::{Binary, JsonValue};
pub(crate) use json::{FieldKey, Seed};

/// How a frame body is encoded: chosen per frame by the 0x80 bit of its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Compact,
    Json,
}

/// Why a byte string is not a valid TIM frame or body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty frame")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("body ends before the value it declares")]
    Truncated,
    #[error("varint longer than 10 bytes")]
    BadVarint,
    #[error("field id out of range")]
    BadFieldId,
    #[error("unknown compact wire type {0}")]
    BadType(u8),
    #[error("collection element type {found} where {expected} was expected")]
    ElementType { expected: u8, found: u8 },
    #[error("integer out of range for its field")]
    OutOfRange,
    #[error("string is not valid UTF-8")]
    Utf8,
    #[error("nesting deeper than the limit")]
    TooDeep,
    #[error("bad JSON body: {0}")]
    Json(String),
    #[error("big-data frame is malformed: {0}")]
    BigData(&'static str),
    #[error("decoded body would take more than {limit} bytes of memory")]
    OverBudget { limit: usize },
}

/// Most heap a decoded body may take: this many times its encoded size, plus
/// [`DECODE_FLOOR`]. A compact list header may announce one element per byte left, and an
/// element may be a 24-byte `String` or a 552-byte `TimMessage` in memory: unbounded, one
/// 8 MiB frame of empty strings made the decoder allocate 192 MiB.
const DECODE_RATIO: usize = 4;
/// The allowance of small bodies, which real clients fill with lists of short node ids.
const DECODE_FLOOR: usize = 64 << 10;
/// The floor of frames from a server, whose pages hold hundreds of messages of ~550 bytes
/// each in memory ([`decode_server_body`]).
const SERVER_DECODE_FLOOR: usize = 16 << 20;
/// What an entry of a `BTreeMap` costs beyond its key and value (its share of a node).
const MAP_ENTRY_OVERHEAD: usize = 16;

/// What is left of one decode's heap allowance. Charged before each allocation whose size a
/// peer chooses (collections, strings), so a hostile body fails instead of allocating.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    left: Cell<usize>,
}

impl Budget {
    /// The allowance of a body of `len` encoded bytes.
    pub(crate) fn for_body(len: usize) -> Self {
        Self::with_floor(len, DECODE_FLOOR)
    }

    fn with_floor(len: usize, floor: usize) -> Self {
        let limit = len.saturating_mul(DECODE_RATIO).saturating_add(floor);
        Self { limit, left: Cell::new(limit) }
    }

    pub(crate) fn charge(&self, bytes: usize) -> Result<(), DecodeError> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => {
                self.left.set(0);
                Err(DecodeError::OverBudget { limit: self.limit })
            }
        }
    }

    /// Charges `count` values of `T` (`count` is a peer's claim: the product saturates).
    pub(crate) fn charge_values<T>(&self, count: usize) -> Result<(), DecodeError> {
        self.charge(count.saturating_mul(std::mem::size_of::<T>()))
    }

    /// Charges `count` entries of a map from `String` to `V`.
    pub(crate) fn charge_map_entries<V>(&self, count: usize) -> Result<(), DecodeError> {
        let entry = std::mem::size_of::<(String, V)>() + MAP_ENTRY_OVERHEAD;
        self.charge(count.saturating_mul(entry))
    }

    fn exhausted(&self) -> bool {
        self.left.get() == 0
    }
}

/// A value that has a thrift-compact form.
pub trait WireValue: Sized {
    /// Compact wire type of the value.
    const CTYPE: u8;
    fn write(&self, w: &mut Writer);
    fn read(r: &mut Reader, depth: u8) -> Result<Self, DecodeError>;

    /// Writes the value as field `id` of a struct.
    fn write_field(&self, w: &mut Writer, id: i16, last_id: &mut i16) {
        w.field_header(Self::CTYPE, id, last_id);
        self.write(w);
    }

    /// Reads a field whose header carried `ctype`; a field of another wire type is skipped
    /// (`Ok(None)`), as thrift decoders do.
    fn read_field(r: &mut Reader, ctype: u8, depth: u8) -> Result<Option<Self>, DecodeError> {
        if ctype == Self::CTYPE {
            Self::read(r, depth).map(Some)
        } else {
            r.skip(ctype, false, depth)?;
            Ok(None)
        }
    }
}

/// A top-level TIM struct: a frame body in either encoding.
pub trait TimStruct: WireValue + JsonValue + Serialize {}

/// Decodes a frame body, within the heap allowance of its size ([`DECODE_RATIO`]). Compact
/// decoding stops at the struct's STOP byte and ignores what follows (atim pads frames with
/// zeros); JSON keys match case-insensitively, `null` = absent.
pub fn decode_body<T: TimStruct>(body: Bytes, encoding: Encoding) -> Result<T, DecodeError> {
    let budget = Budget::for_body(body.len());
    decode_within(body, encoding, budget)
}

/// Decodes a body a server sent (a client's view): as [`decode_body`], with room for the
/// pages of messages servers send.
pub fn decode_server_body<T: TimStruct>(body: Bytes, encoding: Encoding) -> Result<T, DecodeError> {
    let budget = Budget::with_floor(body.len(), SERVER_DECODE_FLOOR);
    decode_within(body, encoding, budget)
}

fn decode_within<T: TimStruct>(body: Bytes, encoding: Encoding, budget: Budget) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Compact => T::read(&mut Reader::with_budget(body, budget), 0),
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(&body);
            let decoded = T::from_json(&mut de, &budget).and_then(|value| de.end().map(|()| value));
            decoded.map_err(|e| {
                if budget.exhausted() {
                    DecodeError::OverBudget { limit: budget.limit }
                } else {
                    DecodeError::Json(e.to_string())
                }
            })
        }
    }
}

/// The encoded body of `value` alone.
pub fn body_bytes<T: TimStruct>(value: &T, encoding: Encoding) -> Bytes {
    let mut w = Writer::default();
    encode_body(&mut w, value, encoding);
    w.finish()
}

/// Appends the encoded body of `value` to `w`.
pub fn encode_body<T: TimStruct>(w: &mut Writer, value: &T, encoding: Encoding) {
    match encoding {
        Encoding::Compact => value.write(w),
        Encoding::Json => w.json(value),
    }
}

impl WireValue for bool {
    const CTYPE: u8 = compact::BOOL_TRUE;
    fn write(&self, w: &mut Writer) {
        w.byte(if *self { compact::BOOL_TRUE } else { compact::BOOL_FALSE });
    }
    fn read(r: &mut Reader, _depth: u8) -> Result<Self, DecodeError> {
        Ok(r.byte()? == compact::BOOL_TRUE)
    }
    fn write_field(&self, w: &mut Writer, id: i16, last_id: &mut i16) {
        w.field_header(if *self { compact::BOOL_TRUE } else { compact::BOOL_FALSE }, id, last_id);
    }
    fn read_field(r: &mut Reader, ctype: u8, depth: u8) -> Result<Option<Self>, DecodeError> {
        match ctype {
            compact::BOOL_TRUE => Ok(Some(true)),
            compact::BOOL_FALSE => Ok(Some(false)),
            other => r.skip(other, false, depth).map(|()| None),
        }
    }
}

impl WireValue for i8 {
    const CTYPE: u8 = compact::I8;
    fn write(&self, w: &mut Writer) {
        w.byte(*self as u8);
    }
    fn read(r: &mut Reader, _depth: u8) -> Result<Self, DecodeError> {
        Ok(r.byte()? as i8)
    }
}

macro_rules! zigzag_int {
    ($($ty:ty => $ctype:expr),*) => {$(
        impl WireValue for $ty {
            const CTYPE: u8 = $ctype;
            fn write(&self, w: &mut Writer) {
                w.zigzag(i64::from(*self));
            }
            fn read(r: &mut Reader, _depth: u8) -> Result<Self, DecodeError> {
                <$ty>::try_from(r.zigzag()?).map_err(|_| DecodeError::OutOfRange)
            }
        }
    )*};
}
zigzag_int!(i16 => compact::I16, i32 => compact::I32, i64 => compact::I64);

impl WireValue for String {
    const CTYPE: u8 = compact::BINARY;
    fn write(&self, w: &mut Writer) {
        w.binary(self.as_bytes());
    }
    fn read(r: &mut Reader, _depth: u8) -> Result<Self, DecodeError> {
        let raw = r.binary()?;
        r.budget().charge(raw.len())?;
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::Utf8)
    }
}

impl WireValue for Binary {
    const CTYPE: u8 = compact::BINARY;
    fn write(&self, w: &mut Writer) {
        w.binary(&self.0);
    }
    fn read(r: &mut Reader, _depth: u8) -> Result<Self, DecodeError> {
        r.binary().map(Binary)
    }
}

impl<T: WireValue> WireValue for Vec<T> {
    const CTYPE: u8 = compact::LIST;
    fn write(&self, w: &mut Writer) {
        w.list_header(T::CTYPE, self.len());
        for item in self {
            item.write(w);
        }
    }
    fn read(r: &mut Reader, depth: u8) -> Result<Self, DecodeError> {
        let (elem, len) = r.list_header()?;
        check_elem(T::CTYPE, elem, len)?;
        r.budget().charge_values::<T>(len)?;
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(T::read(r, depth + 1)?);
        }
        Ok(out)
    }
}

impl<V: WireValue> WireValue for BTreeMap<String, V> {
    const CTYPE: u8 = compact::MAP;
    fn write(&self, w: &mut Writer) {
        w.map_header(compact::BINARY, V::CTYPE, self.len());
        for (k, v) in self {
            k.write(w);
            v.write(w);
        }
    }
    fn read(r: &mut Reader, depth: u8) -> Result<Self, DecodeError> {
        let (kt, vt, len) = r.map_header()?;
        check_elem(compact::BINARY, kt, len)?;
        check_elem(V::CTYPE, vt, len)?;
        r.budget().charge_map_entries::<V>(len)?;
        let mut out = BTreeMap::new();
        for _ in 0..len {
            let k = String::read(r, depth + 1)?;
            out.insert(k, V::read(r, depth + 1)?);
        }
        Ok(out)
    }
}

/// A collection's declared element type must be the one the field holds; in a list a bool
/// may be declared as either bool type.
fn check_elem(expected: u8, found: u8, len: usize) -> Result<(), DecodeError> {
    let same = found == expected || (expected == compact::BOOL_TRUE && found == compact::BOOL_FALSE);
    if same || len == 0 {
        Ok(())
    } else {
        Err(DecodeError::ElementType { expected, found })
    }
}

/// Declares a TIM struct: `field id, JSON key, name: req|opt Type`. Generates the struct, its
/// compact codec and its JSON codec (Go `encoding/json` rules: optional fields omitted when
/// absent, required ones always written, keys matched case-insensitively, `null` = absent).
macro_rules! wire_struct {
    (@ty req $ty:ty) => { $ty };
    (@ty opt $ty:ty) => { Option<$ty> };
    (@write req $w:ident, $id:literal, $v:expr, $last:ident) => {
        $crate::codec::WireValue::write_field($v, $w, $id, &mut $last)
    };
    (@write opt $w:ident, $id:literal, $v:expr, $last:ident) => {
        if let Some(v) = $v { $crate::codec::WireValue::write_field(v, $w, $id, &mut $last) }
    };
    (@set req $place:expr, $v:expr) => { $place = $v };
    (@set opt $place:expr, $v:expr) => { $place = Some($v) };
    (@ser req $m:ident, $key:literal, $v:expr) => { $m.serialize_entry($key, $v)? };
    (@ser opt $m:ident, $key:literal, $v:expr) => {
        if let Some(v) = $v { $m.serialize_entry($key, v)? }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* $id:literal $key:literal $field:ident : $kind:ident $ty:ty ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name {
            $( $(#[$fmeta])* pub $field: wire_struct!(@ty $kind $ty), )*
        }

        impl $crate::codec::WireValue for $name {
            const CTYPE: u8 = $crate::codec::compact::STRUCT;
            fn write(&self, w: &mut $crate::codec::Writer) {
                let mut last = 0i16;
                $( wire_struct!(@write $kind w, $id, &self.$field, last); )*
                w.byte($crate::codec::compact::STOP);
            }
            fn read(
                r: &mut $crate::codec::Reader,
                depth: u8,
            ) -> Result<Self, $crate::codec::DecodeError> {
                if depth >= $crate::codec::compact::MAX_DEPTH {
                    return Err($crate::codec::DecodeError::TooDeep);
                }
                let mut out = Self::default();
                let mut last = 0i16;
                while let Some((ctype, id)) = r.field_header(&mut last)? {
                    match id {
                        $( $id => {
                            if let Some(v) = <$ty as $crate::codec::WireValue>::read_field(r, ctype, depth + 1)? {
                                wire_struct!(@set $kind out.$field, v);
                            }
                        } )*
                        _ => r.skip(ctype, false, depth + 1)?,
                    }
                }
                Ok(out)
            }
        }

        impl $crate::codec::TimStruct for $name {}

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(None)?;
                $( wire_struct!(@ser $kind m, $key, &self.$field); )*
                m.end()
            }
        }

        impl $crate::codec::JsonValue for $name {
            fn from_json<'de, D: serde::Deserializer<'de>>(
                d: D,
                budget: &$crate::codec::Budget,
            ) -> Result<Self, D::Error> {
                struct Fields<'b>(&'b $crate::codec::Budget);
                impl<'de> serde::de::Visitor<'de> for Fields<'_> {
                    type Value = $name;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str(concat!("a ", stringify!($name), " object"))
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<$name, A::Error> {
                        const KEYS: &[&str] = &[$($key),*];
                        let mut out = $name::default();
                        let mut exact_seen = 0u32;
                        while let Some(found) = map.next_key_seed($crate::codec::FieldKey(KEYS))? {
                            let Some((index, exact)) = found else {
                                map.next_value::<serde::de::IgnoredAny>()?;
                                continue;
                            };
                            let bit = 1u32 << index;
                            // An exact key wins over a case-insensitive one, as in Go.
                            if exact_seen & bit != 0 && !exact {
                                map.next_value::<serde::de::IgnoredAny>()?;
                                continue;
                            }
                            if exact {
                                exact_seen |= bit;
                            }
                            match KEYS.get(index).copied() {
                                $( Some($key) => {
                                    let seed = $crate::codec::Seed::<Option<$ty>>::new(self.0);
                                    if let Some(v) = map.next_value_seed(seed)? {
                                        wire_struct!(@set $kind out.$field, v);
                                    }
                                } )*
                                _ => {
                                    map.next_value::<serde::de::IgnoredAny>()?;
                                }
                            }
                        }
                        Ok(out)
                    }
                }
                d.deserialize_map(Fields(budget))
            }
        }
    };
}
pub(crate) use wire_struct;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{TimMessageList, TimNodes};

    /// A compact TimNodes body whose `nodelist` holds `n` strings of `len` bytes.
    fn nodelist_compact(n: usize, len: usize) -> Bytes {
        let nodes = TimNodes { nodelist: Some(vec!["x".repeat(len); n]), ..TimNodes::default() };
        body_bytes(&nodes, Encoding::Compact)
    }

    #[test]
    fn a_list_of_empty_values_is_refused_before_it_is_allocated() {
        let body = nodelist_compact(1 << 20, 0);
        let limit = body.len() * DECODE_RATIO + DECODE_FLOOR;
        assert_eq!(decode_body::<TimNodes>(body, Encoding::Compact), Err(DecodeError::OverBudget { limit }));
        let json = body_bytes(
            &TimNodes { nodelist: Some(vec![String::new(); 1 << 20]), ..TimNodes::default() },
            Encoding::Json,
        );
        assert!(matches!(decode_body::<TimNodes>(json, Encoding::Json), Err(DecodeError::OverBudget { .. })));
        // Empty structs: one byte (compact) or three (JSON) on the wire, hundreds in memory.
        let many = TimMessageList { message_list: Some(vec![Default::default(); 10_000]), ..Default::default() };
        for encoding in [Encoding::Compact, Encoding::Json] {
            let body = body_bytes(&many, encoding);
            assert!(matches!(decode_body::<TimMessageList>(body, encoding), Err(DecodeError::OverBudget { .. })));
        }
    }

    #[test]
    fn real_lists_fit_their_budget() {
        // A presence list of 10,000 ten-character node ids, in both encodings.
        let nodes = TimNodes { nodelist: Some(vec!["abcdefghij".to_string(); 10_000]), ..TimNodes::default() };
        for encoding in [Encoding::Compact, Encoding::Json] {
            let decoded = decode_body::<TimNodes>(body_bytes(&nodes, encoding), encoding).unwrap();
            assert_eq!(decoded, nodes);
        }
        // A small body keeps its floor: a few empty strings decode.
        assert!(decode_body::<TimNodes>(nodelist_compact(100, 0), Encoding::Compact).is_ok());
    }
}
