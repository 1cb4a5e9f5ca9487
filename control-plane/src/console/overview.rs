//! Overview: blocked and alerted admissions per day over the last two weeks (an SVG drawn
//! here), by cluster and by policy, and the images most often in recent events.

use std::collections::HashMap;

use axum::{extract::State, response::Response};
use maud::{Markup, PreEscaped, html};
use tonic::Status;

use portcullis_proto::v1::{
    EventCount, EventFilter, ListEventsRequest, SummarizeRequest,
    event_service_server::EventService,
};

use super::{
    Console, Session, Signed, api_error, call,
    layout::{Page, link},
};

const DAYS: i64 = 14;
const TOP: usize = 10;
/// Recent events read for the top images.
const RECENT: u32 = 1000;

fn at(seconds: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds, nanos: 0 }
}

async fn summarize(
    console: &Console,
    session: &Session,
    since: i64,
    until: i64,
) -> Result<Vec<EventCount>, Status> {
    Ok(console
        .inner()
        .events
        .summarize(call(
            session,
            SummarizeRequest {
                since: Some(at(since)),
                until: Some(at(until)),
            },
        ))
        .await?
        .into_inner()
        .counts)
}

/// Per day: (blocked, alerted) admissions.
struct Day {
    start: i64,
    blocked: u64,
    alerted: u64,
}

pub async fn page(State(console): State<Console>, Signed(session): Signed) -> Response {
    let _turn = console.heavy().await;
    let (for_build, reading) = (console.clone(), session.clone());
    let body = console
        .inner()
        .overview
        .get(move || async move { build(&for_build, &reading).await.map(Markup::into_string) })
        .await;
    match body {
        // Markup this module rendered (every value in it escaped then), kept as text.
        Ok(body) => Page::new("Overview", &session)
            .body(PreEscaped(body.as_str().to_owned()))
            .render(),
        Err(status) => api_error(&session, &status),
    }
}

async fn build(console: &Console, session: &Session) -> Result<Markup, Status> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let today = now - now.rem_euclid(86_400);
    let mut days = Vec::new();
    let mut by_cluster: HashMap<String, (u64, u64)> = HashMap::new();
    let mut by_policy: HashMap<String, (u64, u64)> = HashMap::new();
    for back in (0..DAYS).rev() {
        let start = today - back * 86_400;
        let mut day = Day {
            start,
            blocked: 0,
            alerted: 0,
        };
        for row in summarize(console, session, start, start + 86_400).await? {
            let blocked = row.action == "blocked";
            let add = |entry: &mut (u64, u64)| {
                if blocked {
                    entry.0 += row.admissions
                } else {
                    entry.1 += row.admissions
                }
            };
            add(by_cluster.entry(row.cluster.clone()).or_default());
            add(by_policy.entry(row.policy.clone()).or_default());
            if blocked {
                day.blocked += row.admissions
            } else {
                day.alerted += row.admissions
            }
        }
        days.push(day);
    }
    let recent = console
        .inner()
        .events
        .list_events(call(
            session,
            ListEventsRequest {
                filter: Some(EventFilter {
                    since: Some(at(today - (DAYS - 1) * 86_400)),
                    ..EventFilter::default()
                }),
                page_size: RECENT,
                page_token: String::new(),
            },
        ))
        .await?
        .into_inner()
        .events;
    let mut images: HashMap<&str, u64> = HashMap::new();
    for event in &recent {
        for image in &event.images {
            *images.entry(image).or_default() += u64::from(event.count.max(1));
        }
    }
    let blocked: u64 = days.iter().map(|d| d.blocked).sum();
    let alerted: u64 = days.iter().map(|d| d.alerted).sum();
    Ok(html! {
        p.muted { "Counted at most 10 seconds ago." }
        div.cards {
            div.card { div.n { (blocked) } div.muted { "admissions blocked, " (DAYS) " days" } }
            div.card { div.n { (alerted) } div.muted { "admissions alerted, " (DAYS) " days" } }
            div.card { div.n { (by_cluster.len()) } div.muted { "clusters with events" } }
        }
        h2 { "Admissions per day (UTC)" }
        p.legend { span { span.sw.blocked {} "blocked" } span { span.sw.alerted {} "alerted" } }
        (chart(&days))
        div.columns {
            div { h2 { "Top clusters" } (top_table("Cluster", "cluster", &by_cluster)) }
            div { h2 { "Top policies" } (top_table("Policy", "policy", &by_policy)) }
            div {
                h2 { "Top images" }
                p.muted { "In the latest " (recent.len()) " events." }
                table #top-images {
                    thead { tr { th { "Image" } th.num { "Admissions" } } }
                    tbody {
                        @for (image, count) in top(images.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()) {
                            tr { td { a href=(link("/events", &[("text", image.as_str())])) { code { (image) } } } td.num { (count) } }
                        }
                    }
                }
            }
        }
    })
}

fn top(mut rows: Vec<(String, u64)>) -> Vec<(String, u64)> {
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    rows.truncate(TOP);
    rows
}

fn top_table(heading: &str, field: &str, counts: &HashMap<String, (u64, u64)>) -> Markup {
    let mut rows: Vec<(&String, (u64, u64))> = counts.iter().map(|(k, v)| (k, *v)).collect();
    rows.sort_by(|a, b| {
        (b.1.0 + b.1.1)
            .cmp(&(a.1.0 + a.1.1))
            .then_with(|| a.0.cmp(b.0))
    });
    rows.truncate(TOP);
    html! {
        table {
            thead { tr { th { (heading) } th.num { "Blocked" } th.num { "Alerted" } } }
            tbody {
                @for (name, (blocked, alerted)) in rows {
                    tr {
                        td { a href=(link("/events", &[(field, name.as_str())])) { (name) } }
                        td.num { (blocked) } td.num { (alerted) }
                    }
                }
            }
        }
    }
}

/// Stacked bars, one per day; drawn here so the page needs no script to show it.
fn chart(days: &[Day]) -> Markup {
    const WIDTH: i64 = 840;
    const HEIGHT: i64 = 180;
    const BOTTOM: i64 = 20;
    let max = days
        .iter()
        .map(|d| d.blocked + d.alerted)
        .max()
        .unwrap_or(0)
        .max(1);
    let slot = WIDTH / days.len().max(1) as i64;
    let scale = |n: u64| ((n as f64 / max as f64) * (HEIGHT - BOTTOM - 14) as f64).round() as i64;
    html! {
        svg.chart #admissions-chart width=(WIDTH) height=(HEIGHT) viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } role="img" aria-label="Blocked and alerted admissions per day" {
            @for (i, day) in days.iter().enumerate() {
                @let x = i as i64 * slot + 6;
                @let blocked = scale(day.blocked);
                @let alerted = scale(day.alerted);
                @let base = HEIGHT - BOTTOM;
                @let date = time::OffsetDateTime::from_unix_timestamp(day.start).map(|d| format!("{:02}-{:02}", u8::from(d.month()), d.day())).unwrap_or_default();
                g {
                    title { (date) ": " (day.blocked) " blocked, " (day.alerted) " alerted" }
                    rect.blocked x=(x) y=(base - blocked) width=(slot - 12) height=(blocked) {}
                    rect.alerted x=(x) y=(base - blocked - alerted) width=(slot - 12) height=(alerted) {}
                    @if day.blocked + day.alerted > 0 {
                        text x=(x) y=(base - blocked - alerted - 3) { (day.blocked + day.alerted) }
                    }
                    text x=(x) y=(HEIGHT - 5) { (date) }
                }
            }
        }
    }
}
