//! Typed topics: a topic names its message type and how that type is encoded on the wire.

use std::marker::PhantomData;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// How a message type is turned into payload bytes and back.
pub trait Codec<M>: Send + Sync + 'static {
    /// Encodes a message.
    fn encode(message: &M) -> Result<Bytes, BoxError>;
    /// Encodes a message it may consume. A codec whose messages already hold their payload
    /// moves it instead of sharing it.
    fn encode_owned(message: M) -> Result<Bytes, BoxError> {
        Self::encode(&message)
    }
    /// Decodes a payload.
    fn decode(payload: Bytes) -> Result<M, BoxError>;
}

/// JSON payloads (TiCDC's default for types without a custom Marshal).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl<M: Serialize + DeserializeOwned> Codec<M> for Json {
    fn encode(message: &M) -> Result<Bytes, BoxError> {
        Ok(Bytes::from(serde_json::to_vec(message)?))
    }

    fn decode(payload: Bytes) -> Result<M, BoxError> {
        Ok(serde_json::from_slice(&payload)?)
    }
}

/// Payloads that are already bytes (for example gogoproto-encoded `schedulepb.Message`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Raw;

impl Codec<Bytes> for Raw {
    fn encode(message: &Bytes) -> Result<Bytes, BoxError> {
        Ok(message.clone())
    }

    fn encode_owned(message: Bytes) -> Result<Bytes, BoxError> {
        Ok(message)
    }

    fn decode(payload: Bytes) -> Result<Bytes, BoxError> {
        Ok(payload)
    }
}

/// Types with their own byte encoding (TiCDC's custom `Marshal`/`Unmarshal`).
pub trait CustomEncoding: Sized {
    /// Encodes the value.
    fn marshal(&self) -> Result<Bytes, BoxError>;
    /// Decodes a value.
    fn unmarshal(payload: Bytes) -> Result<Self, BoxError>;
}

/// The codec of `CustomEncoding` types.
#[derive(Debug, Clone, Copy, Default)]
pub struct Custom;

impl<M: CustomEncoding> Codec<M> for Custom {
    fn encode(message: &M) -> Result<Bytes, BoxError> {
        message.marshal()
    }

    fn decode(payload: Bytes) -> Result<M, BoxError> {
        M::unmarshal(payload)
    }
}

/// A topic: its name on the wire, the message type that travels on it and its codec.
///
/// Topic names may carry parameters (`changefeed/<ns>/<id>/scheduler`), so a topic is a
/// value; its types are fixed.
pub trait Topic: Send + Sync + 'static {
    /// What a handler of this topic receives.
    type Message: Send + 'static;
    /// How messages are encoded.
    type Codec: Codec<Self::Message>;
    /// The topic string.
    fn name(&self) -> &str;
}

/// A topic named at run time with a chosen message type and codec (JSON by default).
#[derive(Debug)]
pub struct NamedTopic<M, C = Json> {
    name: String,
    _types: PhantomData<fn() -> (M, C)>,
}

impl<M, C> NamedTopic<M, C> {
    /// A topic with this name.
    pub fn new(name: impl Into<String>) -> Self {
        NamedTopic {
            name: name.into(),
            _types: PhantomData,
        }
    }
}

impl<M, C> Clone for NamedTopic<M, C> {
    fn clone(&self) -> Self {
        NamedTopic::new(self.name.clone())
    }
}

impl<M: Send + 'static, C: Codec<M>> Topic for NamedTopic<M, C> {
    type Message = M;
    type Codec = C;

    fn name(&self) -> &str {
        &self.name
    }
}
