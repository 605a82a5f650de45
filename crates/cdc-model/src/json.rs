//! JSON helpers compatible with Go's `encoding/json`.

use serde::{Deserialize, Deserializer, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};

/// The last path segment of a type name, for error messages.
fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let without_generics = full.split('<').next().unwrap_or(full);
    without_generics
        .rsplit("::")
        .next()
        .unwrap_or(without_generics)
}

/// Decodes a JSON value written by TiCDC (or by [`to_go_json`]).
///
/// Accepts both raw and `\u003c`-style escaped characters, as Go does.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|source| Error::Decode {
        what: short_type_name::<T>(),
        source,
    })
}

/// Encodes a value the way Go's `json.Marshal` does: compact, fields in declaration order,
/// and `<`, `>`, `&`, U+2028 and U+2029 inside strings escaped as `\u003c`, `\u003e`,
/// `\u0026`, `\u2028` and `\u2029`.
///
/// Control characters are escaped by serde_json (`\n`, `\t`, `\u001f`, ...), which Go
/// (1.22 and later) decodes and writes the same way. Byte equality with Go's output is
/// what `UpdateChangefeedAndUpstream`-style comparisons rely on.
pub fn to_go_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    let plain = serde_json::to_vec(value).map_err(|source| Error::Encode {
        what: short_type_name::<T>(),
        source,
    })?;
    Ok(escape_like_go(plain))
}

/// Escapes the characters Go's encoder escapes by default.
///
/// Outside strings, compact JSON contains none of these characters, so a byte-level pass
/// over the encoded output only touches string contents.
fn escape_like_go(plain: Vec<u8>) -> Vec<u8> {
    let needs_escape = plain
        .iter()
        .any(|&b| matches!(b, b'<' | b'>' | b'&' | 0xE2));
    if !needs_escape {
        return plain;
    }
    let mut out = Vec::with_capacity(plain.len() + 16);
    let mut i = 0;
    while i < plain.len() {
        match plain[i] {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            // U+2028 is E2 80 A8 and U+2029 is E2 80 A9 in UTF-8.
            0xE2 if plain.get(i + 1) == Some(&0x80)
                && matches!(plain.get(i + 2), Some(0xA8 | 0xA9)) =>
            {
                let escaped: &[u8] = if plain[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                };
                out.extend_from_slice(escaped);
                i += 3;
                continue;
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    out
}

/// Deserializes `null` into the type's default, as Go leaves a non-pointer field unchanged
/// (at its zero value) when it reads `null`.
pub(crate) fn null_as_default<'de, D, T>(deserializer: D) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests;

/// A deserializer adapter that only accepts a JSON object, so that a struct never decodes
/// from an array (serde's derive accepts arrays of fields in order; Go rejects them).
pub(crate) struct ObjectOnly<D>(pub(crate) D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> std::result::Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// Implements `Serialize` and `Deserialize` for a struct that derives them with
/// `#[serde(remote = "Self")]`, decoding only from a JSON object (see [`ObjectOnly`]).
///
/// The derive leaves inherent `serialize`/`deserialize` functions on the type; they are
/// plumbing for these impls. Callers use the traits (`from_json`, `serde_json`).
macro_rules! serde_object_only {
    ($ty:ty) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(
                &self,
                serializer: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                <$ty>::serialize(self, serializer)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(
                deserializer: D,
            ) -> std::result::Result<Self, D::Error> {
                <$ty>::deserialize($crate::json::ObjectOnly(deserializer))
            }
        }
    };
}
pub(crate) use serde_object_only;
