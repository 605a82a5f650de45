//! A changefeed's rules: the key prefixes of the upstream it follows, stored in its info as
//! TiCDC's `config.filter.rules` (UTF-8 prefixes) and `config.filter.rules_base64` (the others,
//! in standard base64), in that order.

use cdc_model::ChangeFeedInfo;
use serde_json::Value;

/// The prefixes of `info`'s rules in order, `rules` first; a description of what is malformed
/// otherwise.
pub(crate) fn changefeed_rules(info: &ChangeFeedInfo) -> Result<Vec<Vec<u8>>, String> {
    let filter = info.config.as_ref().and_then(|config| config.get("filter"));
    let mut rules: Vec<Vec<u8>> = strings(filter.and_then(|f| f.get("rules")), "filter.rules")?
        .into_iter()
        .map(|rule| rule.as_bytes().to_vec())
        .collect();
    for text in strings(
        filter.and_then(|f| f.get("rules_base64")),
        "filter.rules_base64",
    )? {
        let rule = decode_base64(text)
            .ok_or_else(|| format!("filter.rules_base64 {text:?} is not base64"))?;
        rules.push(rule);
    }
    Ok(rules)
}

fn strings<'a>(value: Option<&'a Value>, what: &str) -> Result<Vec<&'a str>, String> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .ok_or_else(|| format!("{what} holds a non-string"))
            })
            .collect(),
        Some(_) => Err(format!("{what} is not a list")),
    }
}

/// Decodes standard base64 (RFC 4648 alphabet, padding optional); `None` when malformed.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let digits = text
        .strip_suffix("==")
        .or_else(|| text.strip_suffix('='))
        .unwrap_or(text);
    if digits.len() % 4 == 1 || (digits.len() != text.len() && !text.len().is_multiple_of(4)) {
        return None;
    }
    let mut decoded = Vec::with_capacity(digits.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut n_bits = 0;
    for byte in digits.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        n_bits += 6;
        if n_bits >= 8 {
            n_bits -= 8;
            decoded.push(u8::try_from((buffer >> n_bits) & 0xff).ok()?);
            buffer &= (1 << n_bits) - 1;
        }
    }
    // The bits left over are padding and must be zero.
    (buffer == 0).then_some(decoded)
}

#[cfg(test)]
mod tests;
