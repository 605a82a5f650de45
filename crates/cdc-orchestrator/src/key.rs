//! Relative etcd key helpers: prefix normalisation, head, tail and prefix removal
//! (TiCDC's `pkg/orchestrator/util/key_utils.go`).

use crate::error::{Error, Result};

/// Normalises a worker prefix: a leading `/` is added and trailing `/`s are removed.
pub fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// The first segment of a relative key: `/a` of `/a/b/c`; `""` when the key has no leading `/`.
pub fn head(key: &str) -> Result<&str> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: String::new(),
            reason: "an empty key has no head",
        });
    }
    if !key.starts_with('/') {
        return Ok("");
    }
    match key[1..].find('/') {
        Some(index) => Ok(&key[..index + 1]),
        None => Ok(key),
    }
}

/// Everything after the first segment: `/b/c` of `/a/b/c`; the whole key when it has no
/// leading `/`.
pub fn tail(key: &str) -> Result<&str> {
    if key.is_empty() {
        return Err(Error::InvalidKey {
            key: String::new(),
            reason: "an empty key has no tail",
        });
    }
    if !key.starts_with('/') {
        return Ok(key);
    }
    match key[1..].find('/') {
        Some(index) => Ok(&key[index + 1..]),
        None => Ok(""),
    }
}

/// The key with `prefix` removed: `/c` of `/a/b/c` minus `/a/b`.
pub fn remove_prefix<'k>(key: &'k str, prefix: &str) -> Result<&'k str> {
    key.strip_prefix(prefix).ok_or_else(|| Error::InvalidKey {
        key: key.to_owned(),
        reason: "the key does not start with the prefix",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Case 25 (KeyUtils).
    #[test]
    fn key_utils() {
        assert_eq!(head("/a/b/c").unwrap(), "/a");
        assert_eq!(tail("/a/b/c").unwrap(), "/b/c");
        assert_eq!(remove_prefix("/a/b/c", "/a/b").unwrap(), "/c");
        assert_eq!(normalize_prefix("aaa"), "/aaa");
        assert_eq!(normalize_prefix("aaa/"), "/aaa");
        assert_eq!(normalize_prefix("/aaa/"), "/aaa");
        assert!(head("").is_err());
        assert!(tail("").is_err());
        assert_eq!(head("aaa").unwrap(), "");
        assert_eq!(tail("aaa").unwrap(), "aaa");
        assert_eq!(head("/a").unwrap(), "/a");
        assert_eq!(tail("/a").unwrap(), "");
        assert!(remove_prefix("/x/y", "/a").is_err());
    }
}
