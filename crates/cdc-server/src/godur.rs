//! Go's duration syntax (`time.ParseDuration`: `"50ms"`, `"1m30s"`, `"0"`), as TiCDC's flags and
//! `TomlDuration` keys take it (`pkg/config/server_config.go` in pingcap/tiflow).

use std::time::Duration;

/// Parses a Go duration string. Negative durations are refused: no key here takes one.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}");
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(format!("negative duration {text:?}"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in duration {text:?}"))?;
        let (number, tail) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(bad());
        }
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err(format!("missing unit in duration {text:?}")),
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(bad)?;
        // The fraction's digits, each a tenth of the one before (Go keeps the precision of
        // the unit, dropping what is below a nanosecond).
        let mut digit_scale = scale;
        for digit in fraction.chars() {
            digit_scale /= 10;
            let value = u128::from(digit.to_digit(10).ok_or_else(bad)?);
            part = part.checked_add(value * digit_scale).ok_or_else(bad)?;
        }
        nanos = nanos.checked_add(part).ok_or_else(bad)?;
        rest = tail;
    }
    let nanos = u64::try_from(nanos).map_err(|_| format!("duration {text:?} is too long"))?;
    Ok(Duration::from_nanos(nanos))
}

/// The duration as a string `humantime` reads back exactly (whole nanoseconds).
pub(crate) fn canonical(duration: Duration) -> String {
    format!("{}ns", duration.as_nanos())
}

/// A clap value parser: a Go duration, handed on in [`canonical`] form.
pub(crate) fn flag(text: &str) -> Result<String, String> {
    parse(text).map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ok = |text: &str| parse(text).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("50ms"), Duration::from_millis(50));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok(".5s"), Duration::from_millis(500));
        assert_eq!(ok("300us"), Duration::from_micros(300));
        assert_eq!(ok("300µs"), Duration::from_micros(300));
        assert_eq!(ok("2h45m0.5s"), Duration::from_millis(9_900_500));
        assert_eq!(ok("+10ns"), Duration::from_nanos(10));
        for bad in ["", "10", "ms", "1x", "1.2.3s", "-1s", "1s2", "."] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert_eq!(canonical(ok("1m30s")), "90000000000ns");
        assert_eq!(
            humantime_like(&canonical(ok("1.5s"))),
            Duration::from_millis(1500)
        );
    }

    /// What the configuration's duration fields read back from the canonical form.
    fn humantime_like(text: &str) -> Duration {
        Duration::from_nanos(text.trim_end_matches("ns").parse().unwrap())
    }
}
