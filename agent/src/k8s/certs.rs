//! The webhook's serving certificate: a CA and a leaf for `<service>.<namespace>.svc` (and the
//! `--webhook-url` host), kept in a Secret so every replica serves the same one. A Secret that
//! is missing, unreadable, tampered with (a certificate that does not parse, a key that does
//! not match, the wrong names) or close to expiry is replaced with fresh material.

use portcullis_runtime::tls::{ca_params as local_ca, issue_server};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};
use time::{Duration, OffsetDateTime};

/// Secret keys.
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";

/// Lifetimes of the generated certificates.
#[derive(Clone, Debug)]
pub struct CertPolicy {
    /// DNS names the leaf must carry (the Service's names, and the URL's host).
    pub names: Vec<String>,
    pub ca_validity: Duration,
    pub leaf_validity: Duration,
    /// Replace material this long before it expires.
    pub renew_before: Duration,
}

impl CertPolicy {
    /// The Service's DNS names, plus `extra` (the `--webhook-url` host), once each.
    pub fn for_service(service: &str, namespace: &str, extra: Option<&str>) -> Self {
        let mut names = vec![
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        if let Some(host) = extra {
            // A URL writes an IPv6 address in brackets; the certificate names the address.
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            let host = match bare.parse::<std::net::IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => host.to_owned(),
            };
            if !names.contains(&host) {
                names.push(host);
            }
        }
        Self {
            names,
            ca_validity: Duration::days(3650),
            leaf_validity: Duration::days(365),
            renew_before: Duration::days(30),
        }
    }
}

/// PEM material as stored in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub tls_cert: String,
    pub tls_key: String,
}

impl Material {
    /// The entries of the Secret's `data`.
    pub fn entries(&self) -> [(&'static str, &str); 4] {
        [
            (CA_CERT, &self.ca_cert),
            (CA_KEY, &self.ca_key),
            (TLS_CERT, &self.tls_cert),
            (TLS_KEY, &self.tls_key),
        ]
    }
}

fn ca_params(policy: &CertPolicy, now: OffsetDateTime) -> CertificateParams {
    local_ca(
        common_name("portcullis-agent webhook CA"),
        BasicConstraints::Unconstrained,
        now,
        policy.ca_validity,
    )
}

fn common_name(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// New material: a new CA when `keep_ca` is `None`, else a new leaf from that CA.
pub fn generate(
    policy: &CertPolicy,
    keep_ca: Option<(&str, &str)>,
    now: OffsetDateTime,
) -> Result<Material, rcgen::Error> {
    let (ca_cert, ca_key) = match keep_ca {
        Some((cert, key)) => (cert.to_owned(), KeyPair::from_pem(key)?),
        None => {
            let key = KeyPair::generate()?;
            let cert = ca_params(policy, now).self_signed(&key)?;
            (cert.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params(policy, now), ca_key);
    let (leaf, key) = issue_server(
        &issuer,
        policy.names.clone(),
        common_name(&policy.names[0]),
        now,
        policy.leaf_validity,
    )?;
    Ok(Material {
        ca_cert,
        ca_key: ca_key_pem,
        tls_cert: leaf.pem(),
        tls_key: key.serialize_pem(),
    })
}

/// What to do with the material found in the Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Good,
    /// The CA is sound: issue a new leaf from it (expiring leaf, names changed).
    NewLeaf(String),
    /// Start over with a new CA (missing, unreadable, tampered, or the CA is expiring).
    NewCa(String),
}

/// Judges `material` against `policy` at `now`.
pub fn check(material: Option<&Material>, policy: &CertPolicy, now: OffsetDateTime) -> Verdict {
    let Some(m) = material else {
        return Verdict::NewCa("no certificate yet".into());
    };
    let ca = match parse_one(&m.ca_cert) {
        Ok(ca) => ca,
        Err(why) => return Verdict::NewCa(format!("{CA_CERT}: {why}")),
    };
    if !key_matches(&m.ca_key, &ca.public_key) {
        return Verdict::NewCa(format!("{CA_KEY} does not match {CA_CERT}"));
    }
    if !ca.is_ca {
        return Verdict::NewCa(format!("{CA_CERT} is not a CA certificate"));
    }
    // A leaf must never outlive its CA: renew the CA a leaf's lifetime ahead.
    if ca.not_after - now < policy.leaf_validity + policy.renew_before {
        return Verdict::NewCa(format!("the CA expires at {}", ca.not_after));
    }
    let leaf = match parse_one(&m.tls_cert) {
        Ok(leaf) => leaf,
        Err(why) => return Verdict::NewLeaf(format!("{TLS_CERT}: {why}")),
    };
    if !key_matches(&m.tls_key, &leaf.public_key) {
        return Verdict::NewLeaf(format!("{TLS_KEY} does not match {TLS_CERT}"));
    }
    if leaf.issuer != ca.subject || !signed_by(&m.tls_cert, &m.ca_cert) {
        return Verdict::NewLeaf(format!("{TLS_CERT} was not issued by {CA_CERT}"));
    }
    if let Some(missing) = policy.names.iter().find(|n| !leaf.names.contains(n)) {
        return Verdict::NewLeaf(format!("{TLS_CERT} does not name {missing}"));
    }
    if leaf.not_after - now < policy.renew_before {
        return Verdict::NewLeaf(format!("{TLS_CERT} expires at {}", leaf.not_after));
    }
    if leaf.not_before > now + Duration::minutes(10) {
        return Verdict::NewLeaf(format!(
            "{TLS_CERT} is not valid before {}",
            leaf.not_before
        ));
    }
    Verdict::Good
}

/// When the material must next be looked at again: its leaf's renewal time.
pub fn renew_at(material: &Material, policy: &CertPolicy) -> Option<OffsetDateTime> {
    let leaf = parse_one(&material.tls_cert).ok()?;
    Some(leaf.not_after - policy.renew_before)
}

struct Parsed {
    subject: String,
    issuer: String,
    public_key: Vec<u8>,
    names: Vec<String>,
    is_ca: bool,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

fn parse_one(pem: &str) -> Result<Parsed, String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate ({e})"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| format!("not an X.509 certificate ({e})"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                // A host given as an address (`--webhook-url https://127.0.0.1:8443/...`) is
                // certified as an IP SAN, and must be recognised as such: judged as a DNS
                // name it would be "missing" and the certificate re-issued at every reconcile.
                x509_parser::extensions::GeneralName::IPAddress(octets) => {
                    if let Some(ip) = ip_text(octets) {
                        names.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    let time = |t: x509_parser::time::ASN1Time| {
        OffsetDateTime::from_unix_timestamp(t.timestamp()).map_err(|e| e.to_string())
    };
    Ok(Parsed {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        names,
        is_ca: cert.is_ca(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

/// An IP SAN's octets as the text a URL gives (`127.0.0.1`, `::1`).
fn ip_text(octets: &[u8]) -> Option<String> {
    let ip = match octets.len() {
        4 => std::net::IpAddr::from(<[u8; 4]>::try_from(octets).ok()?),
        16 => std::net::IpAddr::from(<[u8; 16]>::try_from(octets).ok()?),
        _ => return None,
    };
    Some(ip.to_string())
}

/// Whether `ca_pem`'s key signed `leaf_pem`.
fn signed_by(leaf_pem: &str, ca_pem: &str) -> bool {
    let parse = |pem: &str| x509_parser::pem::parse_x509_pem(pem.as_bytes()).map(|(_, p)| p);
    let (Ok(leaf), Ok(ca)) = (parse(leaf_pem), parse(ca_pem)) else {
        return false;
    };
    let (Ok(leaf), Ok(ca)) = (leaf.parse_x509(), ca.parse_x509()) else {
        return false;
    };
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn key_matches(key_pem: &str, public_key: &[u8]) -> bool {
    KeyPair::from_pem(key_pem).is_ok_and(|key| key.public_key_raw() == public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CertPolicy {
        CertPolicy::for_service(
            "portcullis-agent",
            "portcullis-system",
            Some("hooks.example.com"),
        )
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_795_000_000).unwrap()
    }

    #[test]
    fn fresh_material_is_good_and_names_the_service() {
        let material = generate(&policy(), None, now()).unwrap();
        assert_eq!(check(Some(&material), &policy(), now()), Verdict::Good);
        let leaf = parse_one(&material.tls_cert).unwrap();
        assert_eq!(
            leaf.names,
            [
                "portcullis-agent.portcullis-system.svc",
                "portcullis-agent.portcullis-system.svc.cluster.local",
                "hooks.example.com"
            ]
        );
        assert_eq!((leaf.not_after - now()).whole_days(), 365);
        let ca = parse_one(&material.ca_cert).unwrap();
        assert_eq!((ca.not_after - now()).whole_days(), 3650);
    }

    #[test]
    fn a_url_host_given_as_an_address_is_certified_once_and_then_judged_good() {
        for (host, named) in [
            ("127.0.0.1", "127.0.0.1"),
            ("[::1]", "::1"),
            ("[fd00:0::1]", "fd00::1"),
            ("webhook.example.com", "webhook.example.com"),
        ] {
            let policy = CertPolicy::for_service("agent", "ns", Some(host));
            let material = generate(&policy, None, now()).unwrap();
            let leaf = parse_one(&material.tls_cert).unwrap();
            assert!(
                leaf.names.iter().any(|n| n == named),
                "{host}: {:?}",
                leaf.names
            );
            // Judged good, so the leader does not issue a new one at every reconcile.
            assert_eq!(
                check(Some(&material), &policy, now()),
                Verdict::Good,
                "{host}"
            );
        }
    }

    #[test]
    fn leaves_are_renewed_thirty_days_early_from_the_same_ca() {
        let material = generate(&policy(), None, now()).unwrap();
        let later = now() + Duration::days(336);
        assert!(
            matches!(check(Some(&material), &policy(), later), Verdict::NewLeaf(why) if why.contains("expires"))
        );
        let renewed = generate(
            &policy(),
            Some((&material.ca_cert, &material.ca_key)),
            later,
        )
        .unwrap();
        assert_eq!(renewed.ca_cert, material.ca_cert, "the CA is kept");
        assert_eq!(check(Some(&renewed), &policy(), later), Verdict::Good);
        assert_eq!(
            renew_at(&renewed, &policy()),
            Some(later + Duration::days(335))
        );
    }

    #[test]
    fn tampered_or_missing_material_is_replaced() {
        let good = generate(&policy(), None, now()).unwrap();
        let other = generate(&policy(), None, now()).unwrap();
        let cases = [
            (None, "no certificate"),
            (
                Some(Material {
                    ca_cert: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
                        .into(),
                    ..good.clone()
                }),
                "ca.crt",
            ),
            (
                Some(Material {
                    ca_key: other.ca_key.clone(),
                    ..good.clone()
                }),
                "ca.key does not match",
            ),
            (
                Some(Material {
                    tls_cert: "garbage".into(),
                    ..good.clone()
                }),
                "tls.crt: not a PEM",
            ),
            (
                Some(Material {
                    tls_key: other.tls_key.clone(),
                    ..good.clone()
                }),
                "tls.key does not match",
            ),
            (
                Some(Material {
                    tls_cert: other.tls_cert.clone(),
                    tls_key: other.tls_key.clone(),
                    ..good.clone()
                }),
                "not issued by",
            ),
        ];
        for (material, expected) in cases {
            let verdict = check(material.as_ref(), &policy(), now());
            let why = match verdict {
                Verdict::NewCa(why) | Verdict::NewLeaf(why) => why,
                Verdict::Good => panic!("{expected}: judged good"),
            };
            assert!(why.contains(expected), "{expected}: {why}");
        }
        let mut renamed = policy();
        renamed.names.push("new.example.com".into());
        assert!(
            matches!(check(Some(&good), &renamed, now()), Verdict::NewLeaf(why) if why.contains("new.example.com"))
        );
    }
}
