//! Reads of the `events` table: one event, a page of a listing, a summary. Listings filter on
//! the indexed columns in SQL, newest first by id as the sled store pages, and apply the rest
//! of the filter (namespace, kind, name, text) to the decoded events a chunk at a time.

use deadpool_postgres::Object;
use portcullis_proto::v1::{Event, EventCount, EventFilter};
use tokio_postgres::types::ToSql;

use super::super::{EventPage, Matcher, decode, filter, id_bound};
use crate::store::{StoreError, postgres::db_error};

/// Rows a listing reads per query when it filters the decoded events too.
const LIST_CHUNK: usize = 256;

pub async fn get(client: &Object, id: &uuid::Uuid) -> Result<Option<Event>, StoreError> {
    let statement = client
        .prepare_cached("SELECT record FROM events WHERE id = $1")
        .await
        .map_err(db_error)?;
    client
        .query_opt(&statement, &[&id.as_bytes().as_slice()])
        .await
        .map_err(db_error)?
        .map(|row| decode(row.get(0)))
        .transpose()
}

/// Events matching `filter`, newest first, older than `before`; as the sled store's `list`.
pub async fn list(
    client: &Object,
    filter: &EventFilter,
    limit: usize,
    before: Option<[u8; 16]>,
) -> Result<EventPage, StoreError> {
    let low = id_bound(filter.since.as_ref(), false);
    let mut high = id_bound(filter.until.as_ref(), true);
    if let Some(before) = before {
        high = high.min(before);
    }
    let mut page = EventPage {
        events: Vec::new(),
        more_after: None,
    };
    if low >= high {
        return Ok(page);
    }
    let matcher = Matcher::new(filter);
    let decoded_filter = !(filter.namespace.is_empty()
        && filter.kind.is_empty()
        && filter.name.is_empty()
        && filter.text.is_empty());
    // One more than a page tells whether more follow.
    let chunk = if decoded_filter {
        LIST_CHUNK.max(limit + 1)
    } else {
        limit + 1
    };
    let query = ListQuery::new(filter, low);
    let statement = client.prepare_cached(&query.sql).await.map_err(db_error)?;
    let mut high = high.to_vec();
    let chunk_rows = chunk as i64;
    loop {
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&high, &chunk_rows];
        params.extend(
            query
                .params
                .iter()
                .map(|p| p.as_ref() as &(dyn ToSql + Sync)),
        );
        let rows = client.query(&statement, &params).await.map_err(db_error)?;
        let read = rows.len();
        for row in rows {
            let event = decode(row.get(1))?;
            high = row.get(0);
            if decoded_filter && !matcher.matches(&event) {
                continue;
            }
            if page.events.len() == limit {
                page.more_after = page
                    .events
                    .last()
                    .and_then(|e: &Event| uuid::Uuid::parse_str(&e.id).ok())
                    .map(|u| *u.as_bytes());
                return Ok(page);
            }
            page.events.push(event);
        }
        if read < chunk {
            return Ok(page);
        }
    }
}

/// A listing's SQL: `$1` the exclusive upper id, `$2` the rows to read, then the filter's.
struct ListQuery {
    sql: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl ListQuery {
    fn new(filter: &EventFilter, low: [u8; 16]) -> Self {
        let mut query = Self {
            sql: "SELECT id, record FROM events WHERE id < $1".into(),
            params: Vec::new(),
        };
        if low != [0; 16] {
            query.and("id >=", Box::new(low.to_vec()));
        }
        for (column, value) in [
            ("cluster", &filter.cluster),
            ("policy", &filter.policy),
            ("action", &filter.action),
            ("state", &filter.state),
        ] {
            if !value.is_empty() {
                query.and(&format!("{column} ="), Box::new(value.clone()));
            }
        }
        if let Some(since) = &filter.since {
            query.and("time_ms >=", Box::new(filter::millis(since)));
        }
        if let Some(until) = &filter.until {
            query.and("time_ms <", Box::new(filter::millis(until)));
        }
        query.sql.push_str(" ORDER BY id DESC LIMIT $2");
        query
    }

    fn and(&mut self, condition: &str, value: Box<dyn ToSql + Sync + Send>) {
        self.params.push(value);
        let n = self.params.len() + 2;
        self.sql.push_str(&format!(" AND {condition} ${n}"));
    }
}

/// Counts by (cluster, policy, action) of the events in [since, until), in that order (the
/// names compare bytewise, as in Rust).
pub async fn summarize(
    client: &Object,
    since: Option<&pbjson_types::Timestamp>,
    until: Option<&pbjson_types::Timestamp>,
) -> Result<Vec<EventCount>, StoreError> {
    let (low, high) = (id_bound(since, false), id_bound(until, true));
    if low >= high {
        return Ok(Vec::new());
    }
    let statement = client
        .prepare_cached(
            "SELECT cluster, policy, action, count(*), sum(admissions)::bigint FROM events
             WHERE id >= $1 AND id < $2 AND time_ms >= $3 AND time_ms < $4
             GROUP BY cluster, policy, action ORDER BY cluster, policy, action",
        )
        .await
        .map_err(db_error)?;
    let since_ms = since.map_or(i64::MIN, filter::millis);
    let until_ms = until.map_or(i64::MAX, filter::millis);
    let rows = client
        .query(
            &statement,
            &[&low.as_slice(), &high.as_slice(), &since_ms, &until_ms],
        )
        .await
        .map_err(db_error)?;
    Ok(rows
        .into_iter()
        .map(|row| EventCount {
            cluster: row.get(0),
            policy: row.get(1),
            action: row.get(2),
            events: row.get::<_, i64>(3) as u64,
            admissions: row.get::<_, i64>(4) as u64,
        })
        .collect())
}
