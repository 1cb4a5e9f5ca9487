//! Cluster records: registration with the agent token's hash, protection settings, deletion
//! (which revokes the token in the same write), and lookup of a cluster by token hash.

use prost::Message;

use portcullis_proto::v1::{Cluster, ProtectionSettings};

use super::{
    Change, Page, SledStore, StoreError, TreeId, decode, list_page, records::ClusterRecord,
};

const KIND: &str = "cluster";

impl SledStore {
    /// Registers `cluster` with the SHA-256 of its agent token.
    pub async fn register_cluster(
        &self,
        mut cluster: Cluster,
        token_sha256: [u8; 32],
    ) -> Result<Cluster, StoreError> {
        self.write(|w| {
            if w.store.clusters.contains_key(cluster.name.as_bytes())? {
                return Err(StoreError::AlreadyExists {
                    kind: KIND,
                    name: cluster.name.clone(),
                });
            }
            cluster.create_time = Some(w.timestamp());
            cluster.status = None;
            cluster.revision = w.next_revision();
            w.log(
                cluster.revision,
                Change::ClusterPut(Box::new(cluster.clone())),
            );
            let record = ClusterRecord {
                cluster: Some(cluster.clone()),
                token_sha256: token_sha256.to_vec(),
            };
            w.put(
                TreeId::Clusters,
                cluster.name.as_bytes().to_vec(),
                record.encode_to_vec(),
            );
            w.put(
                TreeId::Tokens,
                token_sha256.to_vec(),
                cluster.name.as_bytes().to_vec(),
            );
            Ok(cluster)
        })
        .await
    }

    /// Replaces a cluster's protection settings.
    pub async fn set_protection(
        &self,
        name: &str,
        protection: ProtectionSettings,
    ) -> Result<Cluster, StoreError> {
        self.write(|w| {
            let mut record = w.store.cluster_record(name)?;
            let mut cluster = record.cluster.take().unwrap_or_default();
            if cluster.protection.as_ref() == Some(&protection) {
                return Ok(cluster);
            }
            cluster.protection = Some(protection);
            cluster.revision = w.next_revision();
            w.log(
                cluster.revision,
                Change::ClusterPut(Box::new(cluster.clone())),
            );
            record.cluster = Some(cluster.clone());
            w.put(
                TreeId::Clusters,
                name.as_bytes().to_vec(),
                record.encode_to_vec(),
            );
            Ok(cluster)
        })
        .await
    }

    /// Deletes a cluster and revokes its token; returns the deletion's revision.
    pub async fn delete_cluster(&self, name: &str) -> Result<u64, StoreError> {
        self.write(|w| {
            let record = w.store.cluster_record(name)?;
            w.delete(TreeId::Clusters, name.as_bytes().to_vec());
            w.delete(TreeId::Tokens, record.token_sha256);
            Ok(w.take_revision(Change::ClusterDeleted(name.to_owned())))
        })
        .await
    }

    pub fn get_cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        match self.cluster_record(name) {
            Ok(record) => Ok(record.cluster),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Clusters in name order, after `after`.
    pub fn list_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Page<Cluster>, StoreError> {
        list_page(&self.clusters, after, limit, |bytes| {
            Ok(decode::<ClusterRecord>("cluster", bytes)?
                .cluster
                .unwrap_or_default())
        })
    }

    /// The cluster whose agent token has this SHA-256, if any.
    pub fn cluster_for_token(&self, token_sha256: &[u8; 32]) -> Result<Option<String>, StoreError> {
        self.tokens
            .get(token_sha256)?
            .map(|name| {
                String::from_utf8(name.to_vec()).map_err(|_| StoreError::Corrupt {
                    what: "token index holds a non-UTF-8 name".into(),
                })
            })
            .transpose()
    }

    fn cluster_record(&self, name: &str) -> Result<ClusterRecord, StoreError> {
        let bytes = self
            .clusters
            .get(name.as_bytes())?
            .ok_or_else(|| StoreError::NotFound {
                kind: KIND,
                name: name.to_owned(),
            })?;
        decode("cluster", &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sled::test_support::temp_store;

    fn mk_cluster(name: &str) -> Cluster {
        Cluster {
            name: name.into(),
            protection: Some(ProtectionSettings {
                enabled: true,
                failure_policy: "ignore".into(),
                timeout_seconds: 10,
            }),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn register_indexes_token_and_delete_revokes_it() {
        let (store, _dir) = temp_store();
        let hash = [7u8; 32];
        let cluster = store
            .register_cluster(mk_cluster("prod-1"), hash)
            .await
            .unwrap();
        assert_eq!(cluster.revision, 1);
        assert_eq!(
            store.cluster_for_token(&hash).unwrap().as_deref(),
            Some("prod-1")
        );
        let err = store
            .register_cluster(mk_cluster("prod-1"), [8u8; 32])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }));

        assert_eq!(store.delete_cluster("prod-1").await.unwrap(), 2);
        assert_eq!(store.cluster_for_token(&hash).unwrap(), None);
        assert!(store.get_cluster("prod-1").unwrap().is_none());
        assert!(matches!(
            store.delete_cluster("prod-1").await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn set_protection_takes_a_revision_only_on_change() {
        let (store, _dir) = temp_store();
        store
            .register_cluster(mk_cluster("a"), [1u8; 32])
            .await
            .unwrap();
        let off = ProtectionSettings {
            enabled: false,
            failure_policy: "fail".into(),
            timeout_seconds: 5,
        };
        let cluster = store.set_protection("a", off.clone()).await.unwrap();
        assert_eq!(
            (cluster.revision, cluster.protection.as_ref()),
            (2, Some(&off))
        );
        let again = store.set_protection("a", off).await.unwrap();
        assert_eq!(again.revision, 2);
        assert_eq!(store.list_clusters(None, 10).unwrap().items, vec![cluster]);
    }
}
