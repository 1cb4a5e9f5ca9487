//! TLS bootstrap both binaries share: the parameters of a local CA, the server certificates it
//! issues, and PEM files read with the file named in every error. The control plane keeps its
//! CA in its data dir; the agent keeps its webhook CA in a Secret. Either way the CA's
//! parameters are rebuilt the same at every start, so an issuer made from the stored key
//! signs with the name of the stored certificate.

use std::path::Path;

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, SigningKey,
};
use time::{Duration, OffsetDateTime};

/// How far back a new certificate's validity starts, for clocks a little behind ours.
const BACKDATE: Duration = Duration::minutes(5);

/// A CA that signs certificates (and revocation lists), valid for `validity` from `now`.
pub fn ca_params(
    name: DistinguishedName,
    constraints: BasicConstraints,
    now: OffsetDateTime,
    validity: Duration,
) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

/// A server certificate for `names` (DNS names or IP addresses) signed by `issuer`, valid for
/// `validity` from `now`, with its new key.
pub fn issue_server(
    issuer: &Issuer<'_, impl SigningKey>,
    names: Vec<String>,
    name: DistinguishedName,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<(Certificate, KeyPair), rcgen::Error> {
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// Reads an operator's certificate (chain) and key, as PEM; an unreadable file, or one that
/// is not PEM of its kind, is an error naming it.
pub fn read_pem_pair(cert: &Path, key: &Path) -> Result<(String, String)> {
    let cert_pem = std::fs::read_to_string(cert)
        .with_context(|| format!("reading TLS certificate {}", cert.display()))?;
    let key_pem = std::fs::read_to_string(key)
        .with_context(|| format!("reading TLS key {}", key.display()))?;
    anyhow::ensure!(
        cert_pem.contains("-----BEGIN CERTIFICATE-----"),
        "{}: not a PEM certificate",
        cert.display()
    );
    anyhow::ensure!(
        key_pem.contains("PRIVATE KEY-----"),
        "{}: not a PEM private key",
        key.display()
    );
    Ok((cert_pem, key_pem))
}

#[cfg(test)]
mod tests {
    use rcgen::DnType;

    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca_and_carry_the_names() {
        let now = OffsetDateTime::now_utc();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "test CA");
        let params = ca_params(
            name,
            BasicConstraints::Constrained(0),
            now,
            Duration::days(10),
        );
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.clone().self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, ca_key);
        let (cert, key) = issue_server(
            &issuer,
            vec!["localhost".into(), "127.0.0.1".into()],
            DistinguishedName::new(),
            now,
            Duration::days(1),
        )
        .unwrap();
        assert!(cert.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.serialize_pem().contains("PRIVATE KEY"));
        assert_ne!(ca.der(), cert.der());
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c"), dir.path().join("k"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        assert!(read_pem_pair(&c, &k).is_ok());
        let error = read_pem_pair(&k, &c).unwrap_err().to_string();
        assert!(error.contains("not a PEM certificate"), "{error}");
        let missing = read_pem_pair(&dir.path().join("none"), &k).unwrap_err();
        assert!(
            format!("{missing:#}").contains("reading TLS certificate"),
            "{missing:#}"
        );
    }
}
