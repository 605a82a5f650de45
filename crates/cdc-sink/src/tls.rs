//! [`SinkTls::load`]: the TLS files a sink URI names, read and checked when the sink opens.
//!
//! Every error names the URI's parameter and the file: an unreadable file, a file without a
//! PEM certificate, an invalid private key, or a key that does not fit its certificate
//! (docs/security.md, "TLS to the sinks").

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::error::{Error, Result};
use crate::uri::SinkTls;

/// The contents of a sink's TLS files, checked.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadedTls {
    /// The CA certificates (PEM).
    pub ca_pem: Vec<u8>,
    /// The client certificate chain and its private key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for LoadedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("LoadedTls")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .finish()
    }
}

fn file_error(parameter: &'static str, path: &Path, reason: String) -> Error {
    Error::TlsFile {
        parameter,
        path: path.to_owned(),
        reason,
    }
}

async fn read(parameter: &'static str, path: &Path) -> Result<Vec<u8>> {
    tokio::fs::read(path)
        .await
        .map_err(|err| file_error(parameter, path, format!("cannot be read: {err}")))
}

fn certificates(
    parameter: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|err| file_error(parameter, path, format!("invalid PEM: {err}")))?;
    if certs.is_empty() {
        return Err(file_error(
            parameter,
            path,
            "holds no PEM certificate".to_owned(),
        ));
    }
    Ok(certs)
}

impl SinkTls {
    /// Reads the files and checks them: the CA holds certificates, the client certificate
    /// holds a chain and the key is a private key that fits it.
    pub async fn load(&self) -> Result<LoadedTls> {
        let names = self.parameters;
        let ca_pem = read(names.ca, &self.ca).await?;
        let mut roots = RootCertStore::empty();
        for cert in certificates(names.ca, &self.ca, &ca_pem)? {
            roots.add(cert).map_err(|err| {
                file_error(names.ca, &self.ca, format!("not a CA certificate: {err}"))
            })?;
        }
        let Some((cert_path, key_path)) = &self.identity else {
            return Ok(LoadedTls {
                ca_pem,
                identity: None,
            });
        };
        let cert_pem = read(names.cert, cert_path).await?;
        let key_pem = read(names.key, key_path).await?;
        let chain = certificates(names.cert, cert_path, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|err| {
            file_error(names.key, key_path, format!("invalid private key: {err}"))
        })?;
        // The configuration is built only to check that the key fits the certificate.
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| file_error(names.key, key_path, format!("TLS versions: {err}")))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|err| {
                file_error(
                    names.key,
                    key_path,
                    format!("does not fit {} {}: {err}", names.cert, cert_path.display()),
                )
            })?;
        Ok(LoadedTls {
            ca_pem,
            identity: Some((cert_pem, key_pem)),
        })
    }
}

#[cfg(test)]
mod tests;
