//! The `[security]` section: TiCDC's keys (`pkg/security/credential.go` in pingcap/tiflow)
//! and their validation; `docs/security.md` says what each protects.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The `[security]` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SecurityConfig {
    /// The CA certificate path (PEM): it signed the etcd servers' and the captures'
    /// certificates, and every client certificate the port accepts.
    pub ca_path: String,
    /// This capture's certificate path (PEM): served on the port and presented to etcd, to the
    /// peers (p2p) and to the owner (forwarded requests).
    pub cert_path: String,
    /// The private key path (PEM) of `cert-path`.
    pub key_path: String,
    /// Common names allowed to connect; non-empty requires a client certificate whose CN is
    /// listed, for HTTP and p2p alike.
    pub cert_allowed_cn: Vec<String>,
    /// Requires a client certificate from every client of the port (HTTP and p2p).
    pub mtls: bool,
    /// TiCDC's TiDB-user check of API clients: accepted, without effect in this build.
    pub client_user_required: bool,
    /// TiCDC's TiDB users allowed to call the API: accepted, without effect in this build.
    pub client_allowed_user: Vec<String>,
}

impl SecurityConfig {
    /// Whether TLS is on (a certificate is configured).
    pub fn is_tls_enabled(&self) -> bool {
        !self.cert_path.is_empty()
    }

    /// Whether the port requires a client certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.mtls || !self.cert_allowed_cn.is_empty()
    }

    /// Checks the section against the etcd `endpoints` and reads the files: partial settings
    /// name the missing key, unreadable or invalid PEM files name the file.
    pub(crate) fn validate(&self, endpoints: &[String]) -> Result<()> {
        let paths = [
            ("ca-path", &self.ca_path),
            ("cert-path", &self.cert_path),
            ("key-path", &self.key_path),
        ];
        if let Some((set, _)) = paths.iter().find(|(_, path)| !path.is_empty())
            && let Some((missing, _)) = paths.iter().find(|(_, path)| path.is_empty())
        {
            return Err(invalid(format!(
                "[security] {set} is set but {missing} is empty: TLS needs ca-path, cert-path and key-path"
            )));
        }
        if !self.is_tls_enabled() {
            if self.mtls {
                return Err(invalid(
                    "[security] mtls needs ca-path, cert-path and key-path".to_owned(),
                ));
            }
            if !self.cert_allowed_cn.is_empty() {
                return Err(invalid(
                    "[security] cert-allowed-cn needs ca-path, cert-path and key-path".to_owned(),
                ));
            }
            if let Some(endpoint) = endpoints.iter().find(|endpoint| is_https(endpoint)) {
                return Err(invalid(format!(
                    "the etcd endpoint {endpoint} is https:// but [security] ca-path is empty"
                )));
            }
            return Ok(());
        }
        if let Some(cn) = self.cert_allowed_cn.iter().find(|cn| cn.trim().is_empty()) {
            return Err(invalid(format!(
                "[security] cert-allowed-cn has an empty name: {cn:?}"
            )));
        }
        crate::tls::Tls::load(self).map(|_| ())
    }
}

/// Whether an etcd endpoint asks for TLS.
pub(crate) fn is_https(endpoint: &str) -> bool {
    endpoint
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

fn invalid(message: String) -> Error {
    Error::InvalidConfig { message }
}
