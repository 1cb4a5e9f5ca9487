//! Fleet: every cluster with what its agent last reported; a cluster's page with its policies,
//! recent events and (admins) the protection switch.

use std::collections::HashMap;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};
use tonic::Status;

use portcullis_proto::v1::{
    Cluster, ClusterStatus, EventFilter, GetClusterRequest, ListClustersRequest, ListEventsRequest,
    ProtectionSettings, SetProtectionRequest, SummarizeRequest,
    cluster_service_server::ClusterService, event_service_server::EventService,
};

use super::{
    Console, Signed, api_error, call, csrf_refused,
    events::{event_rows, events_table},
    layout::{Page, csrf_field, link, segment, time},
    policies::all_policies,
};

/// Clusters per page.
const PAGE: usize = 100;
/// Clusters read at most (a fleet larger than this shows its first ones, and says so).
const MAX_CLUSTERS: usize = 100_000;

#[derive(Deserialize, Serialize, Default)]
pub struct FleetQuery {
    /// Substring of the cluster's name.
    #[serde(default)]
    q: String,
    /// A protection state, or "disconnected".
    #[serde(default)]
    state: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    desc: Option<u8>,
    #[serde(default)]
    page: Option<usize>,
}

/// Every cluster, read page by page.
pub async fn all_clusters(
    console: &Console,
    session: &super::Session,
) -> Result<(Vec<Cluster>, bool), Status> {
    let mut clusters = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = console
            .inner()
            .clusters
            .list_clusters(call(
                session,
                ListClustersRequest {
                    page_size: 1000,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        clusters.extend(page.clusters);
        if page.next_page_token.is_empty() {
            return Ok((clusters, false));
        }
        if clusters.len() >= MAX_CLUSTERS {
            return Ok((clusters, true));
        }
        page_token = page.next_page_token;
    }
}

/// Admissions per cluster since `seconds` ago.
async fn admissions_since(
    console: &Console,
    session: &super::Session,
    seconds: i64,
) -> Result<HashMap<String, u64>, Status> {
    let since = pbjson_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() - seconds,
        nanos: 0,
    };
    let summary = console
        .inner()
        .events
        .summarize(call(
            session,
            SummarizeRequest {
                since: Some(since),
                until: None,
            },
        ))
        .await?
        .into_inner();
    let mut counts = HashMap::new();
    for row in summary.counts {
        *counts.entry(row.cluster).or_insert(0) += row.admissions;
    }
    Ok(counts)
}

/// A cluster's status, or an empty one (never reported).
fn status_of(cluster: &Cluster) -> &ClusterStatus {
    static NONE: std::sync::LazyLock<ClusterStatus> =
        std::sync::LazyLock::new(ClusterStatus::default);
    cluster.status.as_ref().unwrap_or(&NONE)
}

/// Sorts by `key`, ties by name (ascending whichever the direction); each key computed once.
fn sort_by<K: Ord>(clusters: &mut [&Cluster], desc: bool, key: impl Fn(&Cluster) -> K) {
    if desc {
        clusters.sort_by_cached_key(|c| (std::cmp::Reverse(key(c)), c.name.clone()));
    } else {
        clusters.sort_by_cached_key(|c| (key(c), c.name.clone()));
    }
}

fn protection_of(cluster: &Cluster) -> ProtectionSettings {
    cluster.protection.clone().unwrap_or_default()
}

fn state_badge(state: &str) -> Markup {
    let class = match state {
        "protected" => "badge good",
        "protected-without-policy" => "badge warn",
        "deploy-failed" | "unprotected" => "badge bad",
        _ => "badge",
    };
    html! { span class=(class) { @if state.is_empty() { "unknown" } @else { (state) } } }
}

pub async fn list(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<FleetQuery>,
) -> Response {
    let _turn = console.heavy().await;
    let (clusters, truncated) = match all_clusters(&console, &session).await {
        Ok(found) => found,
        Err(status) => return api_error(&session, &status),
    };
    let (for_counts, counting) = (console.clone(), session.clone());
    let events = match console
        .inner()
        .fleet_counts
        .get(move || async move { admissions_since(&for_counts, &counting, 86_400).await })
        .await
    {
        Ok(counts) => counts,
        Err(status) => return api_error(&session, &status),
    };
    let total = clusters.len();
    let needle = query.q.to_lowercase();
    let mut shown: Vec<&Cluster> = clusters
        .iter()
        .filter(|c| needle.is_empty() || c.name.contains(&needle))
        .filter(|c| {
            let status = status_of(c);
            match query.state.as_str() {
                "" => true,
                "disconnected" => !status.connected,
                "connected" => status.connected,
                state => status.protection_state == state,
            }
        })
        .collect();
    let events_of = |c: &Cluster| events.get(&c.name).copied().unwrap_or(0);
    let desc = query.desc == Some(1);
    match query.sort.as_str() {
        "last_seen" => sort_by(&mut shown, desc, |c| {
            status_of(c)
                .last_seen
                .map(|t| (t.seconds, t.nanos))
                .unwrap_or_default()
        }),
        "lag" => sort_by(&mut shown, desc, |c| status_of(c).lag),
        "events" => sort_by(&mut shown, desc, events_of),
        "state" => sort_by(&mut shown, desc, |c| status_of(c).protection_state.clone()),
        // By name, as listed.
        _ if desc => shown.reverse(),
        _ => {}
    }
    let matching = shown.len();
    let pages = matching.div_ceil(PAGE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let rows = &shown[(page - 1) * PAGE..(page * PAGE).min(matching)];
    let connected = clusters.iter().filter(|c| status_of(c).connected).count();
    let protected = clusters
        .iter()
        .filter(|c| status_of(c).protection_state == "protected")
        .count();

    let sort_link = |key: &str| {
        let desc = (query.sort == key && query.desc != Some(1)).then_some(1);
        link(
            "/fleet",
            &FleetQuery {
                q: query.q.clone(),
                state: query.state.clone(),
                sort: key.to_owned(),
                desc,
                page: None,
            },
        )
    };
    let page_link = |page: usize| {
        link(
            "/fleet",
            &FleetQuery {
                q: query.q.clone(),
                state: query.state.clone(),
                sort: query.sort.clone(),
                desc: query.desc,
                page: Some(page),
            },
        )
    };
    let body = html! {
        div.cards {
            div.card { div.n { (total) } div.muted { "clusters" } }
            div.card { div.n { (connected) } div.muted { "connected" } }
            div.card { div.n { (protected) } div.muted { "protected" } }
        }
        @if truncated {
            p.error { "The fleet has more than " (MAX_CLUSTERS) " clusters: only the first are shown." }
        }
        form.filters method="get" action="/fleet" {
            label { "Name contains" input type="search" name="q" value=(query.q); }
            label { "State"
                select name="state" {
                    @for (value, label) in [("", "any"), ("protected", "protected"), ("protected-without-policy", "protected without policy"), ("deploy-failed", "deploy failed"), ("unprotected", "unprotected"), ("connected", "connected"), ("disconnected", "disconnected")] {
                        option value=(value) selected[query.state == value] { (label) }
                    }
                }
            }
            input type="hidden" name="sort" value=(query.sort);
            button type="submit" { "Filter" }
        }
        p.muted { (matching) " of " (total) " clusters match." }
        table #fleet {
            thead { tr {
                th { a href=(sort_link("name")) { "Cluster" } }
                th { "Protection" } th { "Failure policy" } th { "Connected" }
                th { a href=(sort_link("last_seen")) { "Last seen" } }
                th.num { "Applied revision" }
                th.num { a href=(sort_link("lag")) { "Lag" } }
                th { a href=(sort_link("state")) { "State" } }
                th { "Last error" }
                th.num title="Admissions in the last 24 hours, counted at most 10 seconds ago" { a href=(sort_link("events")) { "Events (24 h)" } }
            } }
            tbody {
                @for cluster in rows {
                    @let status = status_of(cluster);
                    @let protection = protection_of(cluster);
                    tr {
                        td { a href={ "/fleet/" (segment(&cluster.name)) } { (cluster.name) } }
                        td { @if protection.enabled { "enabled" } @else { span.badge.bad { "disabled" } } }
                        td { (failure_policy(&protection)) }
                        td { @if status.connected { span.badge.good { "yes" } } @else { span.badge { "no" } } }
                        td { (time(status.last_seen.as_ref())) }
                        td.num { (status.applied_revision) }
                        td.num { (status.lag) }
                        td { (state_badge(&status.protection_state)) }
                        td { (status.last_error) }
                        td.num { (events_of(cluster)) }
                    }
                }
            }
        }
        (pager(page, pages, page_link))
    };
    Page::new("Fleet", &session).body(body).render()
}

fn failure_policy(protection: &ProtectionSettings) -> &str {
    if protection.failure_policy.is_empty() {
        "ignore"
    } else {
        &protection.failure_policy
    }
}

/// Previous / next links for `page` of `pages`.
pub fn pager(page: usize, pages: usize, link: impl Fn(usize) -> String) -> Markup {
    html! {
        div.pager {
            @if page > 1 { a href=(link(page - 1)) rel="prev" { "← Previous" } }
            span.muted { "Page " (page) " of " (pages) }
            @if page < pages { a href=(link(page + 1)) rel="next" { "Next →" } }
        }
    }
}

#[derive(Deserialize)]
pub struct DetailQuery {
    #[serde(default)]
    saved: Option<u8>,
}

pub async fn detail(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Response {
    let cluster = match console
        .inner()
        .clusters
        .get_cluster(call(&session, GetClusterRequest { name: name.clone() }))
        .await
    {
        Ok(cluster) => cluster.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    let policies = match all_policies(&console, &session).await {
        Ok(policies) => policies,
        Err(status) => return api_error(&session, &status),
    };
    let events = match console
        .inner()
        .events
        .list_events(call(
            &session,
            ListEventsRequest {
                filter: Some(EventFilter {
                    cluster: name.clone(),
                    ..EventFilter::default()
                }),
                page_size: 20,
                page_token: String::new(),
            },
        ))
        .await
    {
        Ok(page) => page.into_inner().events,
        Err(status) => return api_error(&session, &status),
    };
    let status = status_of(&cluster);
    let protection = protection_of(&cluster);
    let in_scope: Vec<_> = policies
        .iter()
        .filter(|p| crate::sync::in_scope(p, &cluster.name))
        .collect();
    let body = html! {
        p { (cluster.description) }
        table.facts {
            tr { th { "State" } td { (state_badge(&status.protection_state)) } }
            tr { th { "Connected" } td { @if status.connected { "yes" } @else { "no" } } }
            tr { th { "Last seen" } td { (time(status.last_seen.as_ref())) } }
            tr { th { "Agent version" } td { (status.agent_version) } }
            tr { th { "Applied revision" } td { (status.applied_revision) " (lag " (status.lag) ")" } }
            tr { th { "Last error" } td { (status.last_error) } }
            tr { th { "Events waiting / dropped by the agent" } td { (status.events_pending) " / " (status.events_dropped) } }
            tr { th { "Open audit violations" } td { (status.open_violations) } }
            tr { th { "Labels" } td { @for (key, value) in &cluster.labels { code { (key) "=" (value) } " " } } }
        }
        h2 { "Protection" }
        @if session.is_admin() {
            form.filters method="post" action={ "/fleet/" (segment(&cluster.name)) "/protection" } {
                (csrf_field(&session))
                label { "Webhook" select name="enabled" {
                    option value="true" selected[protection.enabled] { "enabled" }
                    option value="false" selected[!protection.enabled] { "disabled" }
                } }
                label { "Failure policy" select name="failure_policy" {
                    option value="ignore" selected[failure_policy(&protection) == "ignore"] { "ignore" }
                    option value="fail" selected[failure_policy(&protection) == "fail"] { "fail" }
                } }
                label { "Timeout (s)" input type="number" name="timeout_seconds" min="1" max="30" value=(if protection.timeout_seconds == 0 { 10 } else { protection.timeout_seconds }); }
                button type="submit" { "Save protection" }
            }
        } @else {
            p { "Webhook " (if protection.enabled { "enabled" } else { "disabled" }) ", failure policy " (failure_policy(&protection)) ", timeout " (protection.timeout_seconds) " s." }
        }
        h2 { "Policies in scope (" (in_scope.len()) ")" }
        table {
            thead { tr { th { "Policy" } th { "Action" } th.num { "Revision" } th { "Applied" } } }
            tbody {
                @for policy in &in_scope {
                    tr {
                        td { a href={ "/policies/" (segment(&policy.name)) } { (policy.name) } }
                        td { (if policy.action.is_empty() { "block" } else { &policy.action }) }
                        td.num { (policy.revision) }
                        td { @if status.applied_revision >= policy.revision { "yes" } @else { "not yet" } }
                    }
                }
            }
        }
        h2 { "Recent events" }
        @let all_events = link("/events", &[("cluster", cluster.name.as_str())]);
        (events_table(&session, event_rows(&session, &events), events.is_empty(), &all_events, None))
        p { a href=(all_events) { "All events of this cluster →" } }
    };
    let mut page = Page::new(format!("Cluster {}", cluster.name), &session).body(body);
    if query.saved == Some(1) {
        page = page.notice("Protection saved: the agent programs its webhook at its next sync.");
    }
    page.render()
}

#[derive(Deserialize)]
pub struct ProtectionForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    enabled: String,
    #[serde(default)]
    failure_policy: String,
    #[serde(default)]
    timeout_seconds: String,
}

pub async fn protection(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    Form(form): Form<ProtectionForm>,
) -> Response {
    if !session.csrf_matches(&form.csrf) {
        return csrf_refused(&session);
    }
    let enabled = match form.enabled.as_str() {
        "true" => true,
        "false" => false,
        other => {
            return Page::new("Protection not saved", &session)
                .status(StatusCode::BAD_REQUEST)
                .error(format!("enabled: {other:?} is not true or false"))
                .render();
        }
    };
    let Ok(timeout_seconds) = form.timeout_seconds.trim().parse::<u32>() else {
        return Page::new("Protection not saved", &session)
            .status(StatusCode::BAD_REQUEST)
            .error(format!(
                "protection.timeout_seconds: {:?} is not a number of seconds (1 to 30)",
                form.timeout_seconds
            ))
            .render();
    };
    let request = SetProtectionRequest {
        name: name.clone(),
        protection: Some(ProtectionSettings {
            enabled,
            failure_policy: form.failure_policy,
            timeout_seconds,
        }),
    };
    match console
        .inner()
        .clusters
        .set_protection(call(&session, request))
        .await
    {
        Ok(_) => Redirect::to(&format!("/fleet/{}?saved=1", segment(&name))).into_response(),
        Err(status) => api_error(&session, &status),
    }
}
