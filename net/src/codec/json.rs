//! JSON details that Go's `encoding/json` fixes and serde leaves open: base64 binaries and
//! case-insensitive struct keys; and decoding within a heap allowance ([`JsonValue`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use bytes::Bytes;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Budget, DecodeError, Writer};

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

/// A value decoded from JSON within a [`Budget`]: serde's own `Vec` and map impls grow as
/// far as the input asks, so frame bodies decode through this trait instead of `Deserialize`.
pub trait JsonValue: Sized {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error>;
}

/// Decodes a `T` within `budget` wherever serde asks for a seed (elements, map values).
pub struct Seed<'b, T>(pub &'b Budget, pub PhantomData<T>);

impl<'b, T> Seed<'b, T> {
    pub fn new(budget: &'b Budget) -> Self {
        Self(budget, PhantomData)
    }
}

impl<'de, T: JsonValue> DeserializeSeed<'de> for Seed<'_, T> {
    type Value = T;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::from_json(d, self.0)
    }
}

fn charged<E: serde::de::Error>(result: Result<(), DecodeError>) -> Result<(), E> {
    result.map_err(E::custom)
}

macro_rules! json_scalar {
    ($($ty:ty),*) => {$(
        impl JsonValue for $ty {
            fn from_json<'de, D: Deserializer<'de>>(d: D, _budget: &Budget) -> Result<Self, D::Error> {
                <$ty>::deserialize(d)
            }
        }
    )*};
}
json_scalar!(bool, i8, i16, i32, i64);

impl JsonValue for String {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        charged(budget.charge(s.len()))?;
        Ok(s)
    }
}

impl JsonValue for Binary {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error> {
        let b = Binary::deserialize(d)?;
        charged(budget.charge(b.0.len()))?;
        Ok(b)
    }
}

impl<T: JsonValue> JsonValue for Option<T> {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error> {
        struct Opt<'b, T>(&'b Budget, PhantomData<T>);
        impl<'de, T: JsonValue> Visitor<'de> for Opt<'_, T> {
            type Value = Option<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a value or null")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
                T::from_json(d, self.0).map(Some)
            }
        }
        d.deserialize_option(Opt(budget, PhantomData))
    }
}

impl<T: JsonValue> JsonValue for Vec<T> {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error> {
        struct List<'b, T>(&'b Budget, PhantomData<T>);
        impl<'de, T: JsonValue> Visitor<'de> for List<'_, T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut out = Vec::new();
                // The length is unknown up front: capacity doubles, and each growth is
                // charged before it is made.
                while let Some(value) = seq.next_element_seed(Seed::<T>::new(self.0))? {
                    if out.len() == out.capacity() {
                        let grow = out.capacity().max(4);
                        charged(self.0.charge_values::<T>(grow))?;
                        out.reserve_exact(grow);
                    }
                    out.push(value);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(List(budget, PhantomData))
    }
}

impl<V: JsonValue> JsonValue for BTreeMap<String, V> {
    fn from_json<'de, D: Deserializer<'de>>(d: D, budget: &Budget) -> Result<Self, D::Error> {
        struct Map<'b, V>(&'b Budget, PhantomData<V>);
        impl<'de, V: JsonValue> Visitor<'de> for Map<'_, V> {
            type Value = BTreeMap<String, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key_seed(Seed::<String>::new(self.0))? {
                    charged(self.0.charge_map_entries::<V>(1))?;
                    let value = map.next_value_seed(Seed::<V>::new(self.0))?;
                    out.insert(key, value);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Map(budget, PhantomData))
    }
}
