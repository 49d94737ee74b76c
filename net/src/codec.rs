//! TIM frame bodies: the thrift-compact and JSON forms of every struct of tim-protocol.md §3.2.
//!
//! One declaration per struct (in [`crate::proto`]) generates both codecs, so the two forms can
//! never disagree on a field id, a key or a type.

pub(crate) mod compact;
mod json;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use compact::{Reader, Writer};
pub use json::Binary;
pub(crate) use json::FieldKey;

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
pub trait TimStruct: WireValue + Serialize + DeserializeOwned {}

/// Decodes a frame body. Compact decoding stops at the struct's STOP byte and ignores what
/// follows (atim pads frames with zeros); JSON keys match case-insensitively, `null` = absent.
pub fn decode_body<T: TimStruct>(body: Bytes, encoding: Encoding) -> Result<T, DecodeError> {
    match encoding {
        Encoding::Compact => T::read(&mut Reader::new(body), 0),
        Encoding::Json => serde_json::from_slice(&body).map_err(|e| DecodeError::Json(e.to_string())),
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
        String::from_utf8(r.binary()?.to_vec()).map_err(|_| DecodeError::Utf8)
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
        let mut out = Vec::with_capacity(len);
        for _ in 0..len {
            out.push(T::read(r, depth + 1)?);
        }
        Ok(out)
    }
}

impl<V: WireValue> WireValue for std::collections::BTreeMap<String, V> {
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
        let mut out = std::collections::BTreeMap::new();
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

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Fields;
                impl<'de> serde::de::Visitor<'de> for Fields {
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
                                    if let Some(v) = map.next_value::<Option<$ty>>()? {
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
                d.deserialize_map(Fields)
            }
        }
    };
}
pub(crate) use wire_struct;
