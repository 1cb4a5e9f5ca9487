//! Listing violations: the key range the filter's leading fields allow and its exact fields
//! in SQL, the rest (images, vulnerabilities) by `Matcher`, in key order as on sled.

use portcullis_proto::v1::ViolationFilter;

use super::{PgAudit, readable};
use crate::audit::{Matcher, ViolationPage, record};
use crate::store::{StoreError, postgres::db_error};

/// Rows read per query while a page fills.
const CHUNK: usize = 1000;

impl PgAudit {
    /// One page of violations matching `filter` after `after` (see `ViolationStore::list`).
    pub async fn read_page(
        &self,
        filter: &ViolationFilter,
        limit: usize,
        after: Option<Vec<u8>>,
    ) -> Result<ViolationPage, StoreError> {
        let matcher = Matcher::new(filter);
        let prefix = matcher.key_prefix();
        let end = record::prefix_end(&prefix);
        let (mut from, mut inclusive) = match after {
            Some(after) if after >= prefix => (after, false),
            _ => (prefix, true),
        };
        let bytes_of = |field: &String| (!field.is_empty()).then(|| field.as_bytes().to_vec());
        let word = |field: &String| (!field.is_empty()).then(|| field.clone());
        let (namespace, kind, name, policy) = (
            bytes_of(&filter.namespace),
            bytes_of(&filter.kind),
            bytes_of(&filter.name),
            bytes_of(&filter.policy),
        );
        let cluster = bytes_of(&filter.cluster);
        let (action, state) = (word(&filter.action), word(&filter.state));
        let chunk = limit.saturating_add(1).min(CHUNK);
        let client = self.client().await?;
        let mut page = ViolationPage::default();
        // Decoded at most a response's budget: a page of 1,000 large records is cut here, not
        // after all of them were read.
        let mut bytes = 0;
        loop {
            let sql = format!(
                "SELECT key, record FROM violations \
                 WHERE key {} $1 AND key < $2 \
                   AND ($3::bytea IS NULL OR cluster = $3) \
                   AND ($4::bytea IS NULL OR namespace = $4) \
                   AND ($5::bytea IS NULL OR kind = $5) \
                   AND ($6::bytea IS NULL OR name = $6) \
                   AND ($7::bytea IS NULL OR policy = $7) \
                   AND ($8::text IS NULL OR action = $8) \
                   AND ($9::text IS NULL OR state = $9) \
                 ORDER BY key LIMIT $10",
                if inclusive { ">=" } else { ">" }
            );
            let rows = client
                .query(
                    &sql,
                    &[
                        &from,
                        &end,
                        &cluster,
                        &namespace,
                        &kind,
                        &name,
                        &policy,
                        &action,
                        &state,
                        &(chunk as i64),
                    ],
                )
                .await
                .map_err(db_error)?;
            let read = rows.len();
            for row in rows {
                let key: Vec<u8> = row.get(0);
                let value: &[u8] = row.get(1);
                if !page.violations.is_empty()
                    && bytes + value.len() > portcullis_proto::limits::RESPONSE_BUDGET_BYTES
                {
                    page.more = true;
                    return Ok(page);
                }
                let matching = readable(&key, value)
                    .and_then(|r| r.violation)
                    .filter(|v| matcher.matches(v));
                if let Some(violation) = matching {
                    if page.violations.len() == limit {
                        page.more = true;
                        return Ok(page);
                    }
                    bytes += value.len();
                    page.violations.push(violation);
                    page.keys.push(key.clone());
                }
                (from, inclusive) = (key, false);
            }
            if read < chunk {
                return Ok(page);
            }
        }
    }
}
