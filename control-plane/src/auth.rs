//! Who is calling. Operators present a bearer token with a role (admin writes, viewer reads)
//! from the tokens file or the generated bootstrap admin token; agents present their cluster's
//! token, which only the agent service accepts. Tokens are kept and compared as SHA-256 hashes,
//! in constant time, and never logged.

use std::{fs, path::Path, sync::Arc};

use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Status, metadata::MetadataMap};

use crate::store::Store;

/// What an operator may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Viewer,
}

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// An authenticated operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operator {
    pub name: String,
    pub role: Role,
}

#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: tokens[{index}]: {reason}")]
    Invalid {
        path: String,
        index: usize,
        reason: String,
    },
}

/// The tokens file: `tokens: [{name, role: admin|viewer, token | sha256}]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    #[serde(default)]
    token: Option<String>,
    /// Hex SHA-256 of the token, so the file need not hold the secret itself.
    #[serde(default)]
    sha256: Option<String>,
}

struct KnownToken {
    sha256: [u8; 32],
    operator: Operator,
}

/// Checks bearer tokens.
pub struct Authenticator {
    operators: Vec<KnownToken>,
    store: Arc<Store>,
}

/// The SHA-256 of a token.
pub fn token_sha256(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token with a readable prefix (`pcl_` agent, `pca_` admin).
pub fn generate_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Reads the bootstrap admin token from `path`, creating it (mode 0600) on first start.
pub fn bootstrap_admin_token(path: &Path) -> std::io::Result<String> {
    match fs::read_to_string(path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = generate_token("pca_");
    portcullis_runtime::files::write_private(path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

impl Authenticator {
    pub fn new(store: Arc<Store>) -> Self {
        Self {
            operators: Vec::new(),
            store,
        }
    }

    /// Accepts `token` as the operator `name` with `role`.
    pub fn add_operator(&mut self, name: &str, role: Role, token: &str) {
        self.add_operator_hash(name, role, token_sha256(token));
    }

    fn add_operator_hash(&mut self, name: &str, role: Role, sha256: [u8; 32]) {
        self.operators.push(KnownToken {
            sha256,
            operator: Operator {
                name: name.into(),
                role,
            },
        });
    }

    /// Loads the operators of a tokens file.
    pub fn load_tokens_file(&mut self, path: &Path) -> Result<usize, TokensFileError> {
        let shown = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|source| TokensFileError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: TokensFile =
            serde_yaml::from_str(&text).map_err(|source| TokensFileError::Parse {
                path: shown.clone(),
                source,
            })?;
        let invalid = |index, reason: &str| TokensFileError::Invalid {
            path: shown.clone(),
            index,
            reason: reason.to_owned(),
        };
        // Checked whole before any is added: nothing is half-applied.
        let mut accepted: Vec<(&str, Role, [u8; 32])> = Vec::new();
        for (index, entry) in file.tokens.iter().enumerate() {
            if entry.name.trim().is_empty() {
                return Err(invalid(index, "name: required"));
            }
            // Names identify operators in logs and audit fields: two that differ only in case
            // or surrounding blanks would be taken for one.
            let alike = |name: &str| name.trim().eq_ignore_ascii_case(entry.name.trim());
            if let Some((other, ..)) = accepted.iter().find(|(name, ..)| alike(name)) {
                return Err(invalid(
                    index,
                    &format!("name: {:?} is already used by {other:?}", entry.name),
                ));
            }
            let hash = match (&entry.token, &entry.sha256) {
                (Some(token), None) if token.len() >= 16 => token_sha256(token),
                (Some(_), None) => return Err(invalid(index, "token: at least 16 characters")),
                (None, Some(hex)) => hex::decode(hex)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| invalid(index, "sha256: not 64 hex digits"))?,
                _ => {
                    return Err(invalid(
                        index,
                        "exactly one of token and sha256 is required",
                    ));
                }
            };
            let known = self.operators.iter().any(|o| o.sha256 == hash);
            if known || accepted.iter().any(|(.., h)| *h == hash) {
                return Err(invalid(
                    index,
                    "token: the same token is given twice (each operator needs a token of their own)",
                ));
            }
            accepted.push((&entry.name, entry.role, hash));
        }
        for (name, role, hash) in &accepted {
            self.add_operator_hash(name, *role, *hash);
        }
        Ok(file.tokens.len())
    }

    /// Authenticates an operator call that needs `access`.
    pub async fn operator(
        &self,
        metadata: &MetadataMap,
        access: Access,
    ) -> Result<Operator, Status> {
        let hash = token_sha256(bearer_token(metadata)?);
        // Compare against every entry, so the time taken says nothing about which one matched.
        let mut found: Option<&Operator> = None;
        for known in &self.operators {
            if bool::from(known.sha256.ct_eq(&hash)) {
                found = Some(&known.operator);
            }
        }
        let Some(operator) = found else {
            if matches!(self.store.cluster_for_token(&hash).await, Ok(Some(_))) {
                return Err(Status::permission_denied(
                    "agent tokens are accepted only by portcullis.v1.AgentService",
                ));
            }
            return Err(Status::unauthenticated("unknown bearer token"));
        };
        if access == Access::Write && operator.role != Role::Admin {
            return Err(Status::permission_denied(format!(
                "operator {:?} has role viewer, which is read-only",
                operator.name
            )));
        }
        Ok(operator.clone())
    }

    /// Authenticates an agent: the name of the cluster whose token it presents.
    pub async fn agent(&self, metadata: &MetadataMap) -> Result<String, Status> {
        let hash = token_sha256(bearer_token(metadata)?);
        match self.store.cluster_for_token(&hash).await {
            Ok(Some(cluster)) => Ok(cluster),
            Ok(None) => Err(Status::unauthenticated("unknown or revoked agent token")),
            // Unavailable stays Unavailable: the agent retries (on another replica), it does
            // not take the call as refused.
            Err(e) => Err(e.into()),
        }
    }
}

fn bearer_token(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("missing bearer token (authorization header)"))?;
    let value = value
        .to_str()
        .map_err(|_| Status::unauthenticated("authorization header is not ASCII"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization header is not \"Bearer <token>\""))?;
    Ok(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::temp_store;
    use tonic::Code;

    fn metadata(token: &str) -> MetadataMap {
        let mut map = MetadataMap::new();
        map.insert("authorization", format!("Bearer {token}").parse().unwrap());
        map
    }

    fn authenticator() -> (Authenticator, tempfile::TempDir) {
        let (store, dir) = temp_store();
        let mut auth = Authenticator::new(Arc::new(store));
        auth.add_operator("root", Role::Admin, "admin-token-0123456789");
        auth.add_operator("eve", Role::Viewer, "viewer-token-0123456789");
        (auth, dir)
    }

    #[tokio::test]
    async fn roles_gate_writes() {
        let (auth, _dir) = authenticator();
        let admin = metadata("admin-token-0123456789");
        let viewer = metadata("viewer-token-0123456789");
        assert_eq!(
            auth.operator(&admin, Access::Write).await.unwrap().role,
            Role::Admin
        );
        assert_eq!(
            auth.operator(&viewer, Access::Read).await.unwrap().name,
            "eve"
        );
        let err = auth.operator(&viewer, Access::Write).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn missing_malformed_and_unknown_tokens_are_unauthenticated() {
        let (auth, _dir) = authenticator();
        for md in [MetadataMap::new(), metadata("nope")] {
            assert_eq!(
                auth.operator(&md, Access::Read).await.unwrap_err().code(),
                Code::Unauthenticated
            );
        }
        let mut basic = MetadataMap::new();
        basic.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(
            auth.operator(&basic, Access::Read)
                .await
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn agent_tokens_only_work_for_agents() {
        let (auth, _dir) = authenticator();
        let token = generate_token("pcl_");
        let cluster = portcullis_proto::v1::Cluster {
            name: "c1".into(),
            ..Default::default()
        };
        auth.store
            .register_cluster(cluster, token_sha256(&token))
            .await
            .unwrap();
        let md = metadata(&token);
        assert_eq!(auth.agent(&md).await.unwrap(), "c1");
        assert_eq!(
            auth.operator(&md, Access::Read).await.unwrap_err().code(),
            Code::PermissionDenied
        );
        assert_eq!(
            auth.agent(&metadata("pcl_other")).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[tokio::test]
    async fn tokens_file_accepts_plain_and_hashed_tokens() {
        let (mut auth, dir) = authenticator();
        let path = dir.path().join("tokens.yaml");
        let hash = hex::encode(token_sha256("hashed-token-0123456789"));
        fs::write(
            &path,
            format!(
                "tokens:\n- {{name: ci, role: admin, token: plain-token-0123456789}}\n\
                 - {{name: dash, role: viewer, sha256: {hash}}}\n"
            ),
        )
        .unwrap();
        assert_eq!(auth.load_tokens_file(&path).unwrap(), 2);
        let op = auth
            .operator(&metadata("hashed-token-0123456789"), Access::Read)
            .await
            .unwrap();
        assert_eq!(
            op,
            Operator {
                name: "dash".into(),
                role: Role::Viewer
            }
        );

        fs::write(
            &path,
            "tokens:\n- {name: x, role: root, token: plain-token-0123456789}\n",
        )
        .unwrap();
        assert!(
            auth.load_tokens_file(&path)
                .unwrap_err()
                .to_string()
                .contains("unknown variant")
        );
        fs::write(&path, "tokens:\n- {name: x, role: admin, token: short}\n").unwrap();
        assert!(
            auth.load_tokens_file(&path)
                .unwrap_err()
                .to_string()
                .contains("tokens[0]: token")
        );
    }

    /// One token listed twice (with different roles), a token already known, or two names
    /// that differ only in case: the file is refused whole, and nothing of it is added.
    #[tokio::test]
    async fn tokens_file_refuses_duplicates_whole() {
        let (mut auth, dir) = authenticator();
        let path = dir.path().join("tokens.yaml");
        let hash = hex::encode(token_sha256("same-token-0123456789"));
        let cases = [
            (
                format!(
                    "tokens:\n- {{name: a, role: viewer, token: same-token-0123456789}}\n\
                     - {{name: b, role: admin, sha256: {hash}}}\n"
                ),
                "tokens[1]: token: the same token is given twice",
            ),
            (
                "tokens:\n- {name: ci, role: viewer, token: first-token-0123456789}\n\
                 - {name: CI, role: admin, token: other-token-0123456789}\n"
                    .to_owned(),
                "tokens[1]: name: \"CI\" is already used by \"ci\"",
            ),
        ];
        for (text, expected) in cases {
            fs::write(&path, text).unwrap();
            let error = auth.load_tokens_file(&path).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            // Nothing of the refused file was added.
            for token in ["same-token-0123456789", "first-token-0123456789"] {
                assert!(auth.operator(&metadata(token), Access::Read).await.is_err());
            }
        }
        auth.add_operator("boot", Role::Admin, "bootstrap-token-0123456789");
        fs::write(
            &path,
            "tokens:\n- {name: v, role: viewer, token: bootstrap-token-0123456789}\n",
        )
        .unwrap();
        let error = auth.load_tokens_file(&path).unwrap_err().to_string();
        assert!(error.contains("the same token is given twice"), "{error}");
    }

    #[test]
    fn bootstrap_token_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let first = bootstrap_admin_token(&path).unwrap();
        assert!(first.starts_with("pca_"));
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(bootstrap_admin_token(&path).unwrap(), first);
    }
}
