//! Unit tests of the TLS module: certificates made at run time with rcgen.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::*;

fn ca() -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A certificate named `cn` signed by `issuer`: (certificate PEM, key PEM).
fn leaf(cn: &str, issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Files of a CA and a certificate named "capture", and the security section naming them.
fn files(dir: &Path) -> SecurityConfig {
    files_of(dir, &ca())
}

/// As [`files`], with the CA `issuer`.
fn files_of(dir: &Path, issuer: &CertifiedIssuer<'static, KeyPair>) -> SecurityConfig {
    let (cert, key) = leaf("capture", issuer);
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    };
    SecurityConfig {
        ca_path: write("ca.pem", &issuer.pem()),
        cert_path: write("cert.pem", &cert),
        key_path: write("key.pem", &key),
        ..SecurityConfig::default()
    }
}

#[test]
fn partial_settings_name_the_missing_key() {
    let endpoints = ["http://127.0.0.1:2379".to_owned()];
    let message = |security: SecurityConfig| security.validate(&endpoints).unwrap_err().to_string();
    let cert_only = SecurityConfig {
        cert_path: "/c.pem".to_owned(),
        ..SecurityConfig::default()
    };
    assert!(message(cert_only).contains("ca-path"));
    let no_key = SecurityConfig {
        ca_path: "/ca.pem".to_owned(),
        cert_path: "/c.pem".to_owned(),
        ..SecurityConfig::default()
    };
    assert!(message(no_key).contains("key-path"));
    let allowlist_only = SecurityConfig {
        cert_allowed_cn: vec!["a".to_owned()],
        ..SecurityConfig::default()
    };
    assert!(message(allowlist_only).contains("cert-allowed-cn"));
    let https = ["https://127.0.0.1:2379".to_owned()];
    let err = SecurityConfig::default().validate(&https).unwrap_err();
    assert!(err.to_string().contains("ca-path"), "{err}");
    SecurityConfig::default().validate(&endpoints).unwrap();
}

#[test]
fn unreadable_or_invalid_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut security = files(dir.path());
    Tls::load(&security).unwrap();
    // PEM around bytes that are no key.
    let mut bad_key = security.clone();
    let broken = dir.path().join("broken-key.pem");
    std::fs::write(
        &broken,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    bad_key.key_path = broken.display().to_string();
    let err = Tls::load(&bad_key).unwrap_err().to_string();
    assert!(
        err.contains("key-path") && err.contains("broken-key.pem: invalid private key"),
        "{err}"
    );
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    security.cert_path = garbage.display().to_string();
    let err = Tls::load(&security).unwrap_err().to_string();
    assert!(
        err.contains("cert-path") && err.contains("garbage.pem"),
        "{err}"
    );
    security.cert_path = dir.path().join("missing.pem").display().to_string();
    let err = Tls::load(&security).unwrap_err().to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[test]
fn the_verifier_refuses_a_cn_not_in_the_allowlist() {
    let issuer = ca();
    let mut roots = RootCertStore::empty();
    roots.add(issuer.der().clone()).unwrap();
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let verifier = AllowedCn {
        inner,
        allowed: vec!["allowed".to_owned()],
    };
    let verify = |cn: &str| {
        let (pem, _) = leaf(cn, &issuer);
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        verifier.verify_client_cert(&der, &[], UnixTime::now())
    };
    verify("allowed").unwrap();
    let err = verify("stranger").unwrap_err();
    assert!(err.to_string().contains("stranger"), "{err}");
    assert!(err.to_string().contains("cert-allowed-cn"), "{err}");
    // Another CA's certificate is refused with its CN, whatever the allowlist.
    let (pem, _) = leaf("allowed", &ca());
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let err = verifier
        .verify_client_cert(&der, &[], UnixTime::now())
        .unwrap_err();
    assert!(err.to_string().contains("allowed"), "{err}");
}

/// The end-entity certificate of the set in use.
fn served(current: &CurrentTls) -> CertificateDer<'static> {
    current.get().identity.cert[0].clone()
}

#[test]
fn changed_files_are_put_in_use_and_a_bad_set_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = ca();
    let security = files_of(dir.path(), &issuer);
    let current = CurrentTls::new(Tls::load(&security).unwrap());
    let mut reloader = Reloader::new(security.clone(), current.clone());
    assert_eq!(reloader.poll(), Reload::Unchanged);
    let first = served(&current);

    // A renewed pair is put in use, for the port and the clients alike.
    let (cert, key) = leaf("renewed", &issuer);
    std::fs::write(&security.cert_path, &cert).unwrap();
    std::fs::write(&security.key_path, &key).unwrap();
    assert_eq!(reloader.poll(), Reload::Reloaded);
    let renewed = served(&current);
    assert_ne!(renewed, first);
    assert_eq!(common_name(&renewed).as_deref(), Some("renewed"));
    assert_eq!(current.peer().cert_pem, cert.as_bytes());
    assert_eq!(current.peer().key_pem, key.as_bytes());
    // The forwarding client presents it at its next handshake.
    let forwarding = Current(current.clone());
    let presented = forwarding.resolve(&[], &[]).unwrap();
    assert_eq!(presented.cert[0], renewed);
    assert_eq!(reloader.poll(), Reload::Unchanged);

    // A broken key is refused and the renewed pair stays; the same bytes are not tried again.
    std::fs::write(&security.key_path, "not a key").unwrap();
    assert_eq!(reloader.poll(), Reload::Failed);
    assert_eq!(served(&current), renewed);
    assert_eq!(current.peer().key_pem, key.as_bytes());
    assert_eq!(reloader.poll(), Reload::Unchanged);

    // A half-written replacement: the new certificate with the old key does not load...
    let (next_cert, next_key) = leaf("next", &issuer);
    std::fs::write(&security.key_path, &key).unwrap();
    std::fs::write(&security.cert_path, &next_cert).unwrap();
    assert_eq!(reloader.poll(), Reload::Failed);
    assert_eq!(served(&current), renewed);
    // ...and loads once its key is written too.
    std::fs::write(&security.key_path, &next_key).unwrap();
    assert_eq!(reloader.poll(), Reload::Reloaded);
    assert_eq!(common_name(&served(&current)).as_deref(), Some("next"));

    // A file that disappears (a rename in progress) leaves the set in use, and its return
    // is seen.
    std::fs::remove_file(&security.ca_path).unwrap();
    assert_eq!(reloader.poll(), Reload::Failed);
    assert_eq!(common_name(&served(&current)).as_deref(), Some("next"));
    std::fs::write(&security.ca_path, issuer.pem()).unwrap();
    assert_eq!(reloader.poll(), Reload::Reloaded);
    assert_eq!(common_name(&served(&current)).as_deref(), Some("next"));
}
