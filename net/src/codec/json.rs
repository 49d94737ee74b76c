//! JSON details that Go's `encoding/json` fixes and serde leaves open: base64 binaries and
//! case-insensitive struct keys.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeSeed, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{DecodeError, Writer};

/// Standard alphabet; emits padding, accepts input with or without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A thrift `binary` value: raw bytes in compact form, a base64 string in JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binary(pub Bytes);

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&BASE64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct B64;
        impl Visitor<'_> for B64 {
            type Value = Binary;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64 string")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Binary, E> {
                BASE64.decode(v).map(|b| Binary(Bytes::from(b))).map_err(E::custom)
            }
        }
        d.deserialize_str(B64)
    }
}

/// Looks a JSON key up among a struct's keys without allocating: `Some((index, exact))` for a
/// known key (exact or case-insensitive match), `None` for an unknown one.
pub struct FieldKey(pub &'static [&'static str]);

impl FieldKey {
    fn find(&self, key: &str) -> Option<(usize, bool)> {
        if let Some(i) = self.0.iter().position(|k| *k == key) {
            return Some((i, true));
        }
        self.0.iter().position(|k| k.eq_ignore_ascii_case(key)).map(|i| (i, false))
    }
}

impl<'de> DeserializeSeed<'de> for FieldKey {
    type Value = Option<(usize, bool)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for FieldKey {
    type Value = Option<(usize, bool)>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.find(v))
    }
}

impl Writer {
    /// Appends the JSON form of `value`.
    pub(crate) fn json<T: Serialize>(&mut self, value: &T) {
        // Serializing our own structs into memory cannot fail: every key is a string and
        // every value a number, string, bool, list or map of those.
        let _ = serde_json::to_writer(self.writer(), value);
    }
}

impl From<serde_json::Error> for DecodeError {
    fn from(e: serde_json::Error) -> Self {
        DecodeError::Json(e.to_string())
    }
}
