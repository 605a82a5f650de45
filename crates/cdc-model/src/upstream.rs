//! [`UpstreamInfo`], the value of `.../upstream/<id>`.

use serde::{Deserialize, Serialize};

use crate::ids::UpstreamId;
use crate::json::{null_as_default, serde_object_only};

/// How to reach an upstream. The reactor state keys it by the ID in the etcd key, not by
/// the `id` field.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, remote = "Self")]
pub struct UpstreamInfo {
    /// The PD cluster ID.
    #[serde(deserialize_with = "null_as_default")]
    pub id: UpstreamId,
    /// Comma-separated PD endpoints.
    #[serde(rename = "pd-endpoints", deserialize_with = "null_as_default")]
    pub pd_endpoints: String,
    /// The TLS key file.
    #[serde(rename = "key-path", deserialize_with = "null_as_default")]
    pub key_path: String,
    /// The TLS certificate file.
    #[serde(rename = "cert-path", deserialize_with = "null_as_default")]
    pub cert_path: String,
    /// The TLS CA file.
    #[serde(rename = "ca-path", deserialize_with = "null_as_default")]
    pub ca_path: String,
    /// Allowed certificate common names; `None` is JSON `null`.
    #[serde(rename = "cert-allowed-cn")]
    pub cert_allowed_cn: Option<Vec<String>>,
}

serde_object_only!(UpstreamInfo);

impl UpstreamInfo {
    /// The PD endpoints, split at commas, with empty entries dropped.
    pub fn pd_endpoint_list(&self) -> Vec<String> {
        self.pd_endpoints
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}
