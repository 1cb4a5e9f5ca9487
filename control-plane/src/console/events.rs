//! Events: the filters of `portcullis events list`, paging, live arrivals (server-sent events
//! from `WatchEvents`), handling one or many with a note, and an event with every finding.

use std::convert::Infallible;

use axum::{
    Form,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{
        IntoResponse, Redirect, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
};
use futures_util::StreamExt;
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use portcullis_proto::v1::{
    Event, EventFilter, GetEventRequest, HandleEventsRequest, ListEventsRequest,
    WatchEventsRequest, event_service_server::EventService,
};

use super::{
    Console, Session, Signed, api_error, call, csrf_refused,
    layout::{Page, csrf_field, link, segment, time},
    session,
};

/// Events per page.
const PAGE: u32 = 50;
/// How often a live stream checks that its session still is.
const LIVENESS_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// The filter of the events page, as the form and the links carry it.
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct EventQuery {
    #[serde(default)]
    cluster: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    state: String,
    /// RFC 3339, or an age such as `2h`.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Text in an image or a vulnerability id.
    #[serde(default)]
    text: String,
    #[serde(default)]
    page_token: String,
}

impl EventQuery {
    fn filter(&self) -> Result<EventFilter, String> {
        let now = time::OffsetDateTime::now_utc();
        let time = |field: &str, text: &str| {
            if text.trim().is_empty() {
                Ok(None)
            } else {
                parse_time(text.trim(), now)
                    .map(Some)
                    .map_err(|reason| format!("{field}: {reason}"))
            }
        };
        Ok(EventFilter {
            cluster: self.cluster.trim().to_owned(),
            namespace: self.namespace.trim().to_owned(),
            kind: self.kind.trim().to_owned(),
            name: self.name.trim().to_owned(),
            policy: self.policy.trim().to_owned(),
            action: self.action.clone(),
            state: self.state.clone(),
            since: time("since", &self.since)?,
            until: time("until", &self.until)?,
            text: self.text.trim().to_owned(),
        })
    }

    fn without_page(&self) -> EventQuery {
        EventQuery {
            page_token: String::new(),
            ..self.clone()
        }
    }
}

/// RFC 3339, or an age (`90s`, `30m`, `2h`, `7d`) before `now`, as the CLI reads them.
fn parse_time(text: &str, now: time::OffsetDateTime) -> Result<pbjson_types::Timestamp, String> {
    let at = match time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        Ok(at) => at,
        Err(_) => {
            let split = text
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(text.len());
            let (number, unit) = text.split_at(split);
            let unit = match unit {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => {
                    return Err(format!(
                        "{text:?} is not an RFC 3339 time or an age such as 2h"
                    ));
                }
            };
            let seconds = number
                .parse::<i64>()
                .ok()
                .and_then(|n| n.checked_mul(unit))
                .filter(|s| *s <= 100 * 365 * 86_400)
                .ok_or_else(|| format!("{text:?} is not an RFC 3339 time or an age such as 2h"))?;
            now - time::Duration::seconds(seconds)
        }
    };
    Ok(pbjson_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    })
}

fn action_badge(action: &str) -> Markup {
    let class = if action == "blocked" {
        "badge bad"
    } else {
        "badge warn"
    };
    html! { span class=(class) { (action) } }
}

/// One event as a table row (the live stream sends the same row).
pub fn event_row(session: &Session, event: &Event) -> Markup {
    html! {
        tr id={ "event-" (event.id) } {
            @if session.is_admin() {
                td { input type="checkbox" name="ids" value=(event.id) aria-label="select"; }
            }
            td { a href={ "/events/" (segment(&event.id)) } { (time(event.time.as_ref())) } }
            td { (event.cluster) }
            td { (event.namespace) "/" (event.kind) "/" (event.name) }
            td { (event.operation) }
            td { (event.policy) }
            td { (action_badge(&event.action)) }
            td.num { (event.count.max(1)) }
            td { @for image in event.images.iter().take(3) { code { (image) } " " } @if event.images.len() > 3 { "…" } }
            td { (event.state) @if !event.note.is_empty() { br; span.muted { (event.note) } } }
        }
    }
}

pub fn event_rows(session: &Session, events: &[Event]) -> Markup {
    html! { @for event in events { (event_row(session, event)) } }
}

/// The table of events; with `live`, new events arrive at its top from that stream URL.
pub fn events_table(
    session: &Session,
    rows: Markup,
    empty: bool,
    back: &str,
    live: Option<&str>,
) -> Markup {
    let table = html! {
        @if let Some(stream) = live {
            p.muted data-live-events="event-rows" data-stream=(stream) { "Live updates need JavaScript: reload for new events." }
        }
        table #events {
            thead { tr {
                @if session.is_admin() { th { input type="checkbox" data-select-all aria-label="select all"; } }
                th { "Time" } th { "Cluster" } th { "Object" } th { "Operation" } th { "Policy" } th { "Action" } th.num { "Count" } th { "Images" } th { "State" }
            } }
            tbody #event-rows {
                (rows)
                @if empty { tr #no-events { td colspan="10" .muted { "No events match." } } }
            }
        }
    };
    if !session.is_admin() {
        return table;
    }
    html! {
        form method="post" action="/events/handle" {
            (csrf_field(session))
            input type="hidden" name="back" value=(back);
            (table)
            div.filters {
                label { "Mark selected " select name="state" {
                    option value="handled" { "handled" }
                    option value="ignored" { "ignored" }
                    option value="new" { "new (reopen)" }
                } }
                " "
                label { "Note " input type="text" name="note" maxlength="1000"; }
                " "
                button type="submit" { "Apply to selected" }
            }
        }
    }
}

pub async fn list(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<EventQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(error) => {
            return filter_page(
                &session,
                &query,
                StatusCode::BAD_REQUEST,
                Some(error),
                html! {},
            );
        }
    };
    let page = match console
        .inner()
        .events
        .list_events(call(
            &session,
            ListEventsRequest {
                filter: Some(filter),
                page_size: PAGE,
                page_token: query.page_token.clone(),
            },
        ))
        .await
    {
        Ok(page) => page.into_inner(),
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            return filter_page(
                &session,
                &query,
                StatusCode::BAD_REQUEST,
                Some(status.message().to_owned()),
                html! {},
            );
        }
        Err(status) => return api_error(&session, &status),
    };
    let first = query.without_page();
    let back = link("/events", &query);
    // Live only on the first page: new events belong at its top.
    let stream = query
        .page_token
        .is_empty()
        .then(|| link("/events/stream", &first));
    let body = html! {
        (events_table(&session, event_rows(&session, &page.events), page.events.is_empty(), &back, stream.as_deref()))
        div.pager {
            @if !query.page_token.is_empty() { a href=(link("/events", &first)) { "← Newest" } }
            @if !page.next_page_token.is_empty() {
                a href=(link("/events", &EventQuery { page_token: page.next_page_token.clone(), ..first.clone() })) rel="next" { "Older →" }
            }
        }
    };
    filter_page(&session, &query, StatusCode::OK, None, body)
}

fn filter_page(
    session: &Session,
    query: &EventQuery,
    status: StatusCode,
    error: Option<String>,
    results: Markup,
) -> Response {
    let text = |label: &str, name: &str, value: &str| {
        html! { label { (label) input type="text" name=(name) value=(value); } }
    };
    let body = html! {
        form.filters method="get" action="/events" {
            (text("Cluster", "cluster", &query.cluster))
            (text("Namespace", "namespace", &query.namespace))
            (text("Kind", "kind", &query.kind))
            (text("Name", "name", &query.name))
            (text("Policy", "policy", &query.policy))
            label { "Action" select name="action" {
                @for value in ["", "blocked", "alerted"] { option value=(value) selected[query.action == value] { (if value.is_empty() { "any" } else { value }) } }
            } }
            label { "State" select name="state" {
                @for value in ["", "new", "handled", "ignored"] { option value=(value) selected[query.state == value] { (if value.is_empty() { "any" } else { value }) } }
            } }
            (text("Since (2h, RFC 3339)", "since", &query.since))
            (text("Until", "until", &query.until))
            (text("Image or CVE", "text", &query.text))
            button type="submit" { "Filter" }
        }
        (results)
    };
    let mut page = Page::new("Events", session).status(status).body(body);
    if let Some(error) = error {
        page = page.error(error);
    }
    page.render()
}

pub async fn stream(
    State(console): State<Console>,
    Signed(session): Signed,
    headers: HeaderMap,
    Query(query): Query<EventQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
    };
    let events = match console
        .inner()
        .events
        .watch_events(call(
            &session,
            WatchEventsRequest {
                filter: Some(filter),
            },
        ))
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    // Nothing is sent once the session has ended (signed out, idle, too old): a tick checks it
    // every LIVENESS_CHECK, and every event before it is sent. The stream also ends when the
    // control plane drains.
    let cookie = session::cookie_value(&headers)
        .unwrap_or_default()
        .to_owned();
    let ticks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + LIVENESS_CHECK,
        LIVENESS_CHECK,
    ))
    .map(|_| None);
    let draining = console.draining();
    let sessions = console.clone();
    let stream = futures_util::stream::select(events.map(Some), ticks)
        .take_while(move |item| {
            let open = !matches!(item, Some(Err(_)));
            std::future::ready(open && sessions.inner().sessions.is_live(&cookie))
        })
        .filter_map(move |item| {
            let message = item.and_then(Result::ok).map(|event| {
                let row = event_row(&session, &event).into_string().replace('\r', "");
                Ok::<_, Infallible>(SseEvent::default().event("event").id(event.id).data(row))
            });
            std::future::ready(message)
        })
        .take_until(draining);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn detail(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(id): Path<String>,
) -> Response {
    let event = match console
        .inner()
        .events
        .get_event(call(&session, GetEventRequest { id }))
        .await
    {
        Ok(event) => event.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    let body = html! {
        table.facts {
            tr { th { "Time" } td { (time(event.time.as_ref())) } }
            tr { th { "Cluster" } td { a href={ "/fleet/" (segment(&event.cluster)) } { (event.cluster) } } }
            tr { th { "Object" } td { (event.namespace) "/" (event.kind) "/" (event.name) } }
            tr { th { "Operation" } td { (event.operation) } }
            tr { th { "User" } td { (event.user) @if !event.groups.is_empty() { " (" (event.groups.join(", ")) ")" } } }
            tr { th { "Policy" } td { a href={ "/policies/" (segment(&event.policy)) } { (event.policy) } " at revision " (event.policy_revision) } }
            tr { th { "Action" } td { (action_badge(&event.action)) } }
            tr { th { "Admissions" } td { (event.count.max(1)) } }
            tr { th { "Images" } td { @for image in &event.images { code { (image) } br; } } }
            tr { th { "Admission uid" } td { code { (event.admission_uid) } } }
            tr { th { "State" } td { (event.state) @if !event.handled_by.is_empty() { " by " (event.handled_by) " at " (time(event.handled_time.as_ref())) } } }
            tr { th { "Note" } td { (event.note) } }
            tr { th { "Received" } td { (time(event.received_time.as_ref())) } }
        }
        h2 { "Findings (" (event.findings.len()) ")" }
        table #findings {
            thead { tr { th { "Rule" } th { "Path" } th { "Value" } th { "Message" } th { "Vulnerabilities" } } }
            tbody {
                @for finding in &event.findings {
                    tr {
                        td { (finding.rule) }
                        td { code { (finding.path) } }
                        td { code { (finding.value) } }
                        td { (finding.message) }
                        td { (finding.cve_ids.join(", ")) }
                    }
                }
            }
        }
        @if session.is_admin() {
            h2 { "Handle" }
            form.filters method="post" action="/events/handle" {
                (csrf_field(&session))
                input type="hidden" name="ids" value=(event.id);
                input type="hidden" name="back" value={ "/events/" (segment(&event.id)) };
                label { "State" select name="state" {
                    option value="handled" { "handled" }
                    option value="ignored" { "ignored" }
                    option value="new" { "new (reopen)" }
                } }
                label { "Note" input type="text" name="note" maxlength="1000" value=(event.note); }
                button type="submit" { "Save" }
            }
        }
    };
    Page::new("Event", &session).body(body).render()
}

/// Handles the events the form names; back to the page it came from.
pub async fn handle(
    State(console): State<Console>,
    Signed(session): Signed,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let mut ids = Vec::new();
    let (mut csrf, mut state, mut note, mut back) = ("", "", "", "/events");
    for (name, value) in &fields {
        match name.as_str() {
            "ids" => ids.push(value.clone()),
            "csrf" => csrf = value,
            "state" => state = value,
            "note" => note = value,
            // Only a path of the console's own events pages.
            "back"
                if value.starts_with("/events")
                    && value.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
                    && !value.contains("//") =>
            {
                back = value
            }
            _ => {}
        }
    }
    if !session.csrf_matches(csrf) {
        return csrf_refused(&session);
    }
    if ids.is_empty() {
        return Page::new("Events", &session)
            .status(StatusCode::BAD_REQUEST)
            .error("No events selected: tick the events to handle first.")
            .body(html! { p { a href=(back) { "← Back" } } })
            .render();
    }
    let request = HandleEventsRequest {
        ids,
        state: state.to_owned(),
        note: note.to_owned(),
    };
    match console
        .inner()
        .events
        .handle_events(call(&session, request))
        .await
    {
        Ok(_) => Redirect::to(back).into_response(),
        Err(status) => api_error(&session, &status),
    }
}
