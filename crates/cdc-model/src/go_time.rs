//! [`GoTime`]: a Go `time.Time` as it appears in TiCDC's JSON.

use std::fmt;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::error::{Error, Result};

/// A point in time with the UTC offset it was written with, encoded like Go's
/// `time.Time` in JSON: RFC 3339 with nanoseconds, trailing fractional zeros trimmed.
///
/// Formatting follows Go's `RFC3339Nano` layout (`...05.999999999Z07:00`): a zero offset is
/// written as `Z`, whatever the input said, so `2020-02-02T00:00:00.000000+00:00` is
/// written back as `2020-02-02T00:00:00Z`; a non-zero offset is kept as `±hh:mm`.
/// The default value is Go's zero time, `0001-01-01T00:00:00Z`.
///
/// Decoding accepts an RFC 3339 string or `null` (Go leaves the zero time on `null`).
/// Equality compares instants, as Go's `Time.Equal` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime(DateTime<FixedOffset>);

impl GoTime {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub fn zero() -> Self {
        let naive = NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .expect("0001-01-01T00:00:00 is a valid date-time");
        GoTime(Utc.from_utc_datetime(&naive).fixed_offset())
    }

    /// Whether this is Go's zero time.
    pub fn is_zero(&self) -> bool {
        *self == GoTime::zero()
    }

    /// The time `ms` unix milliseconds after the epoch, in UTC; `None` if out of range.
    pub fn from_unix_millis(ms: i64) -> Option<Self> {
        DateTime::<Utc>::from_timestamp_millis(ms).map(GoTime::from)
    }

    /// Wraps a chrono date-time, keeping its offset.
    pub fn from_datetime(datetime: DateTime<FixedOffset>) -> Self {
        GoTime(datetime)
    }

    /// The chrono date-time, with the offset it was written with.
    pub fn as_datetime(&self) -> DateTime<FixedOffset> {
        self.0
    }

    /// Milliseconds since the unix epoch (negative before 1970, as for the zero time).
    pub fn unix_millis(&self) -> i64 {
        self.0.timestamp_millis()
    }

    /// Parses an RFC 3339 time as Go's `time.Time.UnmarshalJSON` does (without the quotes).
    pub fn parse(input: &str) -> Result<Self> {
        let datetime = DateTime::parse_from_rfc3339(input).map_err(|err| Error::InvalidTime {
            input: input.to_owned(),
            reason: err.to_string(),
        })?;
        // chrono accepts a leap second (`:60`); Go rejects it as out of range.
        if datetime.nanosecond() >= 1_000_000_000 {
            return Err(Error::InvalidTime {
                input: input.to_owned(),
                reason: "second out of range".to_owned(),
            });
        }
        Ok(GoTime(datetime))
    }

    /// Formats as Go's `RFC3339Nano`, failing like Go's `MarshalJSON` when the year is
    /// outside `0..=9999`.
    pub fn to_rfc3339_nano(&self) -> Result<String> {
        let year = self.0.year();
        if !(0..=9999).contains(&year) {
            return Err(Error::InvalidTime {
                input: self.to_string(),
                reason: format!("year {year} outside of range [0,9999]"),
            });
        }
        Ok(self.to_string())
    }
}

impl Default for GoTime {
    fn default() -> Self {
        GoTime::zero()
    }
}

impl From<DateTime<Utc>> for GoTime {
    fn from(datetime: DateTime<Utc>) -> Self {
        GoTime(datetime.fixed_offset())
    }
}

impl From<DateTime<FixedOffset>> for GoTime {
    fn from(datetime: DateTime<FixedOffset>) -> Self {
        GoTime(datetime)
    }
}

/// Writes Go's `RFC3339Nano` form without the year range check.
impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let local = self.0.naive_local();
        write!(f, "{}", local.format("%Y-%m-%dT%H:%M:%S"))?;
        // Go has no leap seconds; clamp chrono's leap-second representation.
        let nanos = local.nanosecond().min(999_999_999);
        if nanos > 0 {
            let fraction = format!("{nanos:09}");
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        let offset_minutes = self.0.offset().local_minus_utc() / 60;
        if self.0.offset().local_minus_utc() == 0 {
            f.write_str("Z")
        } else {
            let sign = if offset_minutes < 0 { '-' } else { '+' };
            let abs = offset_minutes.abs();
            write!(f, "{sign}{:02}:{:02}", abs / 60, abs % 60)
        }
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let text = self.to_rfc3339_nano().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(GoTimeVisitor)
    }
}

struct GoTimeVisitor;

impl<'de> de::Visitor<'de> for GoTimeVisitor {
    type Value = GoTime;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an RFC 3339 time string or null")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<GoTime, E> {
        GoTime::parse(v).map_err(E::custom)
    }

    fn visit_unit<E: de::Error>(self) -> std::result::Result<GoTime, E> {
        Ok(GoTime::zero())
    }

    fn visit_none<E: de::Error>(self) -> std::result::Result<GoTime, E> {
        Ok(GoTime::zero())
    }

    fn visit_some<D: Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> std::result::Result<GoTime, D::Error> {
        deserializer.deserialize_any(GoTimeVisitor)
    }
}

#[cfg(test)]
mod tests;
