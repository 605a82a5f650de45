//! What a changefeed replicates, as stored in its info's `config` (TiCDC's ReplicaConfig): the
//! key prefixes in `filter.rules` (a prefix that is not UTF-8 in `filter.rules_base64`), the
//! number of spans per prefix in `scheduler.spans_per_prefix` and the split keys chosen at
//! creation in `scheduler.split_keys_base64` (one list per prefix).
//!
//! Prefixes are ordered `rules` first, then `rules_base64`; split key list `i` belongs to prefix
//! `i` in that order.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use cdc_model::ChangeFeedId;
use cdc_scheduler::Span;
use serde_json::{Map, Value, json};

use crate::spans::compute_spans;

/// The replicated key space of a changefeed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// The UTF-8 prefixes, as given.
    pub rules: Vec<String>,
    /// The other prefixes, as given in base64.
    pub rules_base64: Vec<Vec<u8>>,
    /// Spans per prefix (at least 1).
    pub spans_per_prefix: u32,
    /// The split keys of each prefix, in prefix order.
    pub split_keys: Vec<Vec<Vec<u8>>>,
    /// The ID of the first span. An update that changes the spans moves it past the former
    /// ones, so a span ID never names two key ranges in the changefeed's life.
    pub span_id_base: u64,
}

/// Decodes standard base64.
pub fn decode_base64(text: &str) -> Option<Vec<u8>> {
    BASE64.decode(text).ok()
}

/// Encodes standard base64.
pub fn encode_base64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
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

impl ReplicaSpec {
    /// Every prefix, in span order.
    pub fn prefixes(&self) -> Vec<Vec<u8>> {
        self.rules
            .iter()
            .map(|rule| rule.as_bytes().to_vec())
            .chain(self.rules_base64.iter().cloned())
            .collect()
    }

    /// The spans of `changefeed`.
    pub fn spans(&self, changefeed: &ChangeFeedId) -> Vec<Span> {
        let mut spans = compute_spans(changefeed, &self.prefixes(), &self.split_keys);
        for span in &mut spans {
            span.span_id.0 = span.span_id.0.saturating_add(self.span_id_base);
        }
        spans
    }

    /// How many spans the spec makes.
    pub fn span_count(&self) -> u64 {
        let changefeed = ChangeFeedId::default_namespace("count");
        compute_spans(&changefeed, &self.prefixes(), &self.split_keys).len() as u64
    }

    /// Reads the spec from a stored `config`; the error says which field is wrong.
    pub fn from_config(config: Option<&Value>) -> Result<ReplicaSpec, String> {
        let Some(Value::Object(config)) = config else {
            return Err("config is not an object".to_owned());
        };
        let filter = config.get("filter");
        let rules = strings(filter.and_then(|f| f.get("rules")), "filter.rules")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        let rules_base64 = strings(
            filter.and_then(|f| f.get("rules_base64")),
            "filter.rules_base64",
        )?
        .into_iter()
        .map(|text| decode_base64(text).ok_or_else(|| format!("filter.rules_base64 {text:?}")))
        .collect::<Result<Vec<_>, _>>()?;
        let scheduler = config.get("scheduler");
        let spans_per_prefix = match scheduler.and_then(|s| s.get("spans_per_prefix")) {
            None | Some(Value::Null) => 1,
            Some(value) => value
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n >= 1)
                .ok_or_else(|| "scheduler.spans_per_prefix".to_owned())?,
        };
        let split_keys = match scheduler.and_then(|s| s.get("split_keys_base64")) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(lists)) => lists
                .iter()
                .map(|list| {
                    strings(Some(list), "scheduler.split_keys_base64")?
                        .into_iter()
                        .map(|text| {
                            decode_base64(text)
                                .ok_or_else(|| format!("scheduler.split_keys_base64 {text:?}"))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(_) => return Err("scheduler.split_keys_base64 is not a list".to_owned()),
        };
        let span_id_base = match scheduler.and_then(|s| s.get("span_id_base")) {
            None | Some(Value::Null) => 0,
            Some(value) => value
                .as_u64()
                .ok_or_else(|| "scheduler.span_id_base".to_owned())?,
        };
        Ok(ReplicaSpec {
            rules,
            rules_base64,
            spans_per_prefix,
            split_keys,
            span_id_base,
        })
    }

    /// Writes the spec into `config` (an object; anything else is replaced by one), keeping
    /// every other field.
    pub fn write_into(&self, config: &mut Value) {
        if !config.is_object() {
            *config = Value::Object(Map::new());
        }
        let Value::Object(config) = config else {
            return;
        };
        let filter = section(config, "filter");
        filter.insert("rules".to_owned(), json!(self.rules));
        if self.rules_base64.is_empty() {
            filter.remove("rules_base64");
        } else {
            let encoded: Vec<String> = self.rules_base64.iter().map(|p| encode_base64(p)).collect();
            filter.insert("rules_base64".to_owned(), json!(encoded));
        }
        let scheduler = section(config, "scheduler");
        scheduler.insert("spans_per_prefix".to_owned(), json!(self.spans_per_prefix));
        let split_keys: Vec<Vec<String>> = self
            .split_keys
            .iter()
            .map(|keys| keys.iter().map(|key| encode_base64(key)).collect())
            .collect();
        scheduler.insert("split_keys_base64".to_owned(), json!(split_keys));
        if self.span_id_base > 0 {
            scheduler.insert("span_id_base".to_owned(), json!(self.span_id_base));
        } else {
            scheduler.remove("span_id_base");
        }
    }

    /// The `config` of a new changefeed: TiCDC's top-level ReplicaConfig defaults with this spec
    /// (the sub-sections left out are completed on read, `ChangeFeedInfo::verify_and_complete`).
    pub fn new_config(&self) -> Value {
        let mut config = json!({
            "memory-quota": 1_073_741_824_u64,
            "case-sensitive": false,
            "force-replicate": false,
            "check-gc-safe-point": true,
            "enable-table-monitor": false,
            "ignore-ineligible-table": false,
            "filter": {},
            "scheduler": {
                "enable-table-across-nodes": false,
                "region-threshold": 100_000,
                "write-key-threshold": 0
            },
        });
        self.write_into(&mut config);
        config
    }

    /// The `filter` section of API answers: `rules` and, when there are any, `rules_base64`.
    pub fn filter_json(&self) -> Value {
        let mut filter = json!({"rules": self.rules});
        if !self.rules_base64.is_empty() {
            let encoded: Vec<String> = self.rules_base64.iter().map(|p| encode_base64(p)).collect();
            filter["rules_base64"] = json!(encoded);
        }
        filter
    }
}

fn section<'a>(config: &'a mut Map<String, Value>, name: &str) -> &'a mut Map<String, Value> {
    let value = config
        .entry(name.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !value.is_object() {
        *value = Value::Object(Map::new());
    }
    value
        .as_object_mut()
        .expect("the section was just made an object")
}

#[cfg(test)]
mod tests;
