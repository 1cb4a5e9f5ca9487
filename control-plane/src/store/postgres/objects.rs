//! Writes: policies, clusters with their token hashes and protection settings, scans with
//! their index keys, summaries and vulnerability numbers. Each is one transaction (see
//! `PgStore::begin`), deciding as the sled backend does (`rules`).

use std::collections::HashMap;

use prost::Message;

use portcullis_proto::v1::{Cluster, ImageScan, Policy, ProtectionSettings};

use super::{PgStore, StoreError, Write, db_error, reads};
use crate::store::{
    ApplyOutcome, Change, NewScan, check_revision, index_keys, records::ClusterRecord, same_spec,
    scan_id,
};

const POLICY: &str = "policy";
const CLUSTER: &str = "cluster";

impl PgStore {
    pub async fn create_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        if reads::policy(&*w.tx, &policy.name).await?.is_some() {
            return Err(StoreError::AlreadyExists {
                kind: POLICY,
                name: policy.name,
            });
        }
        let out = w.put_policy(policy, None).await?;
        self.finish(w).await?;
        Ok(out)
    }

    pub async fn update_policy(&self, policy: Policy) -> Result<Policy, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        let current =
            reads::policy(&*w.tx, &policy.name)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: POLICY,
                    name: policy.name.clone(),
                })?;
        check_revision(&policy.name, policy.revision, current.revision)?;
        if same_spec(&current, &policy) {
            return Ok(current);
        }
        let out = w.put_policy(policy, Some(current)).await?;
        self.finish(w).await?;
        Ok(out)
    }

    pub async fn apply_policies(
        &self,
        policies: Vec<Policy>,
    ) -> Result<Vec<(Policy, ApplyOutcome)>, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        let mut plan = Vec::with_capacity(policies.len());
        for policy in policies {
            let current = reads::policy(&*w.tx, &policy.name).await?;
            match &current {
                Some(current) if policy.revision != 0 => {
                    check_revision(&policy.name, policy.revision, current.revision)?
                }
                None if policy.revision != 0 => {
                    return Err(StoreError::NotFound {
                        kind: POLICY,
                        name: policy.name,
                    });
                }
                _ => {}
            }
            plan.push((policy, current));
        }
        let mut results = Vec::with_capacity(plan.len());
        for (policy, current) in plan {
            results.push(match current {
                Some(current) if same_spec(&current, &policy) => (current, ApplyOutcome::Unchanged),
                Some(current) => (
                    w.put_policy(policy, Some(current)).await?,
                    ApplyOutcome::Updated,
                ),
                None => (w.put_policy(policy, None).await?, ApplyOutcome::Created),
            });
        }
        self.finish(w).await?;
        Ok(results)
    }

    pub async fn delete_policy(
        &self,
        name: &str,
        expected_revision: u64,
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        let current = reads::policy(&*w.tx, name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: POLICY,
                name: name.to_owned(),
            })?;
        if expected_revision != 0 {
            check_revision(name, expected_revision, current.revision)?;
        }
        w.tx.execute("DELETE FROM policies WHERE name = $1", &[&name.as_bytes()])
            .await
            .map_err(db_error)?;
        let revision = w
            .take_revision(Change::PolicyDeleted(name.to_owned()))
            .await?;
        self.finish(w).await?;
        Ok(revision)
    }

    pub async fn register_cluster(
        &self,
        mut cluster: Cluster,
        token_sha256: [u8; 32],
    ) -> Result<Cluster, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        if reads::cluster_record(&*w.tx, &cluster.name)
            .await?
            .is_some()
        {
            return Err(StoreError::AlreadyExists {
                kind: CLUSTER,
                name: cluster.name,
            });
        }
        cluster.create_time = Some(w.timestamp());
        cluster.status = None;
        cluster.revision = w.next_revision();
        w.log(
            cluster.revision,
            Change::ClusterPut(Box::new(cluster.clone())),
        )
        .await?;
        let record = ClusterRecord {
            cluster: Some(cluster.clone()),
            token_sha256: token_sha256.to_vec(),
        };
        w.tx.execute(
            "INSERT INTO clusters (name, token_sha256, record) VALUES ($1, $2, $3)",
            &[
                &cluster.name.as_bytes(),
                &&token_sha256[..],
                &record.encode_to_vec(),
            ],
        )
        .await
        .map_err(db_error)?;
        self.finish(w).await?;
        Ok(cluster)
    }

    pub async fn set_protection(
        &self,
        name: &str,
        protection: ProtectionSettings,
    ) -> Result<Cluster, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        let mut record =
            reads::cluster_record(&*w.tx, name)
                .await?
                .ok_or_else(|| StoreError::NotFound {
                    kind: CLUSTER,
                    name: name.to_owned(),
                })?;
        let mut cluster = record.cluster.take().unwrap_or_default();
        if cluster.protection.as_ref() == Some(&protection) {
            return Ok(cluster);
        }
        cluster.protection = Some(protection);
        cluster.revision = w.next_revision();
        w.log(
            cluster.revision,
            Change::ClusterPut(Box::new(cluster.clone())),
        )
        .await?;
        record.cluster = Some(cluster.clone());
        w.tx.execute(
            "UPDATE clusters SET record = $2 WHERE name = $1",
            &[&name.as_bytes(), &record.encode_to_vec()],
        )
        .await
        .map_err(db_error)?;
        self.finish(w).await?;
        Ok(cluster)
    }

    pub async fn delete_cluster(&self, name: &str) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        // The token goes with the row: revoked in the same transaction.
        let deleted =
            w.tx.execute("DELETE FROM clusters WHERE name = $1", &[&name.as_bytes()])
                .await
                .map_err(db_error)?;
        if deleted == 0 {
            return Err(StoreError::NotFound {
                kind: CLUSTER,
                name: name.to_owned(),
            });
        }
        let revision = w
            .take_revision(Change::ClusterDeleted(name.to_owned()))
            .await?;
        self.finish(w).await?;
        Ok(revision)
    }

    /// Stores `scan` (see `Store::put_scan`).
    pub async fn put_scan(&self, scan: NewScan) -> Result<ImageScan, StoreError> {
        let NewScan {
            head: mut scan,
            mut vulnerabilities,
            mut summary,
            ..
        } = scan;
        debug_assert!(scan.vulnerabilities.is_empty());
        let identity = scan.image.clone().unwrap_or_default();
        let keys = index_keys(&identity)?;
        let id = scan_id(&identity, &keys)?;
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        // Keys of the scan this one replaces that no newer scan took since.
        w.tx.execute("DELETE FROM scan_keys WHERE id = $1", &[&id.as_bytes()])
            .await
            .map_err(db_error)?;
        scan.id = id.clone();
        scan.import_time = Some(w.timestamp());
        scan.revision = w.next_revision();
        summary.id = id.clone();
        summary.revision = scan.revision;
        let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        w.tx.execute(
            "INSERT INTO scan_keys (key, id) SELECT k, $2 FROM unnest($1::bytea[]) AS k \
             ON CONFLICT (key) DO UPDATE SET id = excluded.id",
            &[&key_bytes, &id.as_bytes()],
        )
        .await
        .map_err(db_error)?;
        // Fields may come in any order: the head follows the list, which is not copied.
        let mut record = std::mem::take(&mut vulnerabilities);
        scan.encode_raw(&mut record);
        let mut numbered = summary.clone();
        w.log(scan.revision, Change::ScanSummaryPut(Box::new(summary)))
            .await?;
        w.number_vulnerabilities(&mut numbered).await?;
        w.tx.execute(
            "INSERT INTO scans (id, record, summary) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET record = excluded.record, summary = excluded.summary",
            &[&id.as_bytes(), &record, &numbered.encode_to_vec()],
        )
        .await
        .map_err(db_error)?;
        self.finish(w).await?;
        Ok(scan)
    }

    pub async fn delete_scan(&self, image: &str) -> Result<(String, u64), StoreError> {
        let mut client = self.client().await?;
        let mut w = self.begin(&mut client).await?;
        let scan = reads::find_scan(&*w.tx, image)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                kind: "image scan",
                name: image.to_owned(),
            })?;
        w.tx.execute(
            "DELETE FROM scan_keys WHERE id = $1",
            &[&scan.id.as_bytes()],
        )
        .await
        .map_err(db_error)?;
        w.tx.execute("DELETE FROM scans WHERE id = $1", &[&scan.id.as_bytes()])
            .await
            .map_err(db_error)?;
        let revision = w
            .take_revision(Change::ScanDeleted(scan.id.clone()))
            .await?;
        self.finish(w).await?;
        Ok((scan.id, revision))
    }
}

impl Write<'_> {
    /// Writes `policy` under the next revision, keeping the creation time of `current`.
    async fn put_policy(
        &mut self,
        mut policy: Policy,
        current: Option<Policy>,
    ) -> Result<Policy, StoreError> {
        let now = self.timestamp();
        policy.create_time = current.and_then(|c| c.create_time).or(Some(now));
        policy.update_time = Some(now);
        policy.revision = self.next_revision();
        self.log(policy.revision, Change::PolicyPut(Box::new(policy.clone())))
            .await?;
        self.tx
            .execute(
                "INSERT INTO policies (name, record) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                &[&policy.name.as_bytes(), &policy.encode_to_vec()],
            )
            .await
            .map_err(db_error)?;
        Ok(policy)
    }

    /// Numbers `summary`'s vulnerabilities (its ids become refs); ids seen for the first time
    /// get the next numbers. Under the revision lock, so numbers are given one writer at a time.
    async fn number_vulnerabilities(
        &mut self,
        summary: &mut portcullis_proto::v1::ImageSummary,
    ) -> Result<(), StoreError> {
        let ids = std::mem::take(&mut summary.vulnerability_ids);
        if ids.is_empty() {
            return Ok(());
        }
        let mut numbers: HashMap<String, i32> = HashMap::with_capacity(ids.len());
        for row in self
            .tx
            .query(
                "SELECT id, number FROM vulnerability_ids WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db_error)?
        {
            numbers.insert(row.get(0), row.get(1));
        }
        let next: i32 = self
            .tx
            .query_one(
                "SELECT coalesce(max(number) + 1, 0) FROM vulnerability_ids",
                &[],
            )
            .await
            .map_err(db_error)?
            .get(0);
        let mut new_ids: Vec<&str> = Vec::new();
        let mut new_numbers: Vec<i32> = Vec::new();
        for id in &ids {
            if !numbers.contains_key(id) {
                let number = next + new_ids.len() as i32;
                numbers.insert(id.clone(), number);
                new_ids.push(id);
                new_numbers.push(number);
            }
        }
        if !new_ids.is_empty() {
            self.tx
                .execute(
                    "INSERT INTO vulnerability_ids (number, id) \
                     SELECT * FROM unnest($1::integer[], $2::text[])",
                    &[&new_numbers, &new_ids],
                )
                .await
                .map_err(db_error)?;
        }
        summary.vulnerability_refs = ids.iter().map(|id| numbers[id] as u32).collect();
        Ok(())
    }
}
