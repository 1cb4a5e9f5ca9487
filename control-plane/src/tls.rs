//! The gRPC port's TLS identity: the operator's certificate and key, or a local CA generated on
//! first start and kept in `DIR/tls/` (its `ca.crt` is what clients trust) with a server
//! certificate issued from it at every start for localhost, 127.0.0.1, ::1 and any `--tls-san`.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use portcullis_runtime::tls::{self as bootstrap, read_pem_pair};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};
use time::{Duration, OffsetDateTime};

/// A PEM certificate chain and private key.
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// Where the generated material lives.
pub fn tls_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("tls")
}

/// Reads the operator's certificate and key.
pub fn load(cert: &Path, key: &Path) -> Result<Identity> {
    let (cert_pem, key_pem) = read_pem_pair(cert, key)?;
    Ok(Identity { cert_pem, key_pem })
}

/// Loads the local CA from `DIR/tls` (creating it on first start) and issues a server
/// certificate for the default names plus `extra_sans`. Returns the server identity.
pub fn generated(data_dir: &Path, extra_sans: &[String]) -> Result<Identity> {
    let dir = tls_dir(data_dir);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key_path = dir.join("ca.key");
    let ca_cert_path = dir.join("ca.crt");
    let ca_key = match fs::read_to_string(&ca_key_path) {
        Ok(pem) if ca_cert_path.exists() => {
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", ca_key_path.display()))?
        }
        _ => {
            let key = KeyPair::generate().context("generating CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("signing CA certificate")?;
            write_private(&ca_key_path, &key.serialize_pem())?;
            fs::write(&ca_cert_path, cert.pem())
                .with_context(|| format!("writing {}", ca_cert_path.display()))?;
            key
        }
    };
    let issuer = Issuer::new(ca_params(), ca_key);

    let mut names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    for san in extra_sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let (cert, key) = bootstrap::issue_server(
        &issuer,
        names,
        name("portcullis-control-plane"),
        OffsetDateTime::now_utc(),
        Duration::days(365),
    )
    .context("issuing the server certificate")?;
    let ca_pem = fs::read_to_string(&ca_cert_path)?;
    let cert_pem = format!("{}{}", cert.pem(), ca_pem);
    write_private(&dir.join("server.key"), &key.serialize_pem())?;
    fs::write(dir.join("server.crt"), &cert_pem)?;
    Ok(Identity {
        cert_pem,
        key_pem: key.serialize_pem(),
    })
}

/// The CA's parameters. They are the same at every start, so the issuer rebuilt from the
/// stored key signs with the name and key identifier of the stored certificate.
fn ca_params() -> CertificateParams {
    bootstrap::ca_params(
        name("Portcullis local CA"),
        BasicConstraints::Constrained(0),
        OffsetDateTime::now_utc(),
        Duration::days(3650),
    )
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Portcullis");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_private(path: &Path, contents: &str) -> Result<()> {
    portcullis_runtime::files::write_private(path, contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_and_server_cert_reissued() {
        let dir = tempfile::tempdir().unwrap();
        let first = generated(dir.path(), &["cp.example".into()]).unwrap();
        let ca = fs::read_to_string(tls_dir(dir.path()).join("ca.crt")).unwrap();
        let second = generated(dir.path(), &[]).unwrap();
        assert_eq!(
            fs::read_to_string(tls_dir(dir.path()).join("ca.crt")).unwrap(),
            ca
        );
        assert_ne!(first.cert_pem, second.cert_pem);
        assert!(second.cert_pem.ends_with(&ca), "chain ends with the CA");
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(tls_dir(dir.path()).join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn load_rejects_non_pem() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c");
        let key = dir.path().join("k");
        fs::write(&cert, "hello").unwrap();
        fs::write(&key, "hello").unwrap();
        assert!(
            load(&cert, &key)
                .unwrap_err()
                .to_string()
                .contains("not a PEM certificate")
        );
    }
}
