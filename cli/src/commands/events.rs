//! `portcullis events …`: list, get, watch, handle and summarise protection events.

use anyhow::{Context, Result, bail};

use portcullis_proto::v1::{
    Event, EventFilter, GetEventRequest, HandleEventsRequest, ListEventsRequest, SummarizeRequest,
    WatchEventsRequest,
};

use super::{collect_pages, rpc};
use crate::{
    args::{Connection, EventFilterArgs, EventsCommand},
    client,
    output::{self, Table},
};

pub async fn run(command: EventsCommand, connection: &Connection) -> Result<()> {
    // Parse times before connecting, so a typo is reported at once.
    let now = time::OffsetDateTime::now_utc();
    let filter = match &command {
        EventsCommand::List { filter, .. } | EventsCommand::Watch { filter, .. } => {
            to_filter(filter, now)?
        }
        _ => EventFilter::default(),
    };
    let mut clients = client::connect(connection).await?;
    match command {
        EventsCommand::List { limit, output, .. } => {
            let events: Vec<Event> = collect_pages(limit, |page_size, page_token| {
                let (mut client, filter) = (clients.events.clone(), filter.clone());
                async move {
                    let request = ListEventsRequest {
                        filter: Some(filter),
                        page_size,
                        page_token,
                    };
                    let page = rpc(client.list_events(request).await)?;
                    Ok((page.events, page.next_page_token))
                }
            })
            .await?;
            output::print(output, &events, || event_table(&events))
        }
        EventsCommand::Get { id, output } => {
            let event = rpc(clients.events.get_event(GetEventRequest { id }).await)?;
            output::print(output, &event, || details(&event))
        }
        EventsCommand::Watch { output, .. } => {
            let mut stream = rpc(clients
                .events
                .watch_events(WatchEventsRequest {
                    filter: Some(filter),
                })
                .await)?;
            let mut header = true;
            loop {
                let event = match stream.message().await {
                    Ok(Some(event)) => event,
                    Ok(None) => return Ok(()),
                    Err(status) => bail!("{:?}: {}", status.code(), status.message()),
                };
                output::print_streamed(output, &event, &mut header, || {
                    event_table(std::slice::from_ref(&event))
                })?;
            }
        }
        EventsCommand::Handle { ids, note, state } => {
            let response = rpc(clients
                .events
                .handle_events(HandleEventsRequest { ids, state, note })
                .await)?;
            for event in &response.events {
                println!("event {} {}", event.id, event.state);
            }
            Ok(())
        }
        EventsCommand::Summary {
            since,
            until,
            output,
        } => {
            let request = SummarizeRequest {
                since: since.as_deref().map(|t| parse_time(t, now)).transpose()?,
                until: until.as_deref().map(|t| parse_time(t, now)).transpose()?,
            };
            let summary = rpc(clients.events.summarize(request).await)?;
            output::print(output, &summary, || {
                let mut table =
                    Table::new(vec!["CLUSTER", "POLICY", "ACTION", "EVENTS", "ADMISSIONS"]);
                for row in &summary.counts {
                    table.row(vec![
                        row.cluster.clone(),
                        row.policy.clone(),
                        row.action.clone(),
                        row.events.to_string(),
                        row.admissions.to_string(),
                    ]);
                }
                table
            })
        }
    }
}

fn to_filter(args: &EventFilterArgs, now: time::OffsetDateTime) -> Result<EventFilter> {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    Ok(EventFilter {
        cluster: text(&args.cluster),
        namespace: text(&args.namespace),
        kind: text(&args.kind),
        name: text(&args.name),
        policy: text(&args.policy),
        action: text(&args.action),
        state: text(&args.state),
        since: args
            .since
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|t| parse_time(t, now))
            .transpose()?,
        text: text(&args.search),
    })
}

/// RFC 3339, or an age (`90s`, `30m`, `2h`, `7d`) before `now`.
fn parse_time(text: &str, now: time::OffsetDateTime) -> Result<pbjson_types::Timestamp> {
    let at = if let Ok(t) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        t
    } else {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let n: i64 = number
            .parse()
            .with_context(|| format!("{text:?}: not an RFC 3339 time or an age such as 2h"))?;
        let seconds = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            "d" => n * 86_400,
            _ => bail!("{text:?}: not an RFC 3339 time or an age such as 2h (units s, m, h, d)"),
        };
        now - time::Duration::seconds(seconds)
    };
    Ok(pbjson_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    })
}

fn event_table(events: &[Event]) -> Table {
    let mut table = Table::new(vec![
        "TIME",
        "CLUSTER",
        "NAMESPACE",
        "OBJECT",
        "POLICY",
        "ACTION",
        "COUNT",
        "STATE",
        "ID",
    ]);
    for e in events {
        table.row(vec![
            output::time(e.time.as_ref()),
            e.cluster.clone(),
            e.namespace.clone(),
            format!("{}/{}", e.kind, e.name),
            e.policy.clone(),
            e.action.clone(),
            e.count.to_string(),
            e.state.clone(),
            e.id.clone(),
        ]);
    }
    table
}

/// One event in full: a field table, then its findings.
fn details(e: &Event) -> Table {
    let mut table = Table::new(vec!["FIELD", "VALUE"]);
    let mut row = |k: &'static str, v: String| table.row(vec![k.to_owned(), v]);
    row("id", e.id.clone());
    row("time", output::time(e.time.as_ref()));
    row("cluster", e.cluster.clone());
    row("object", format!("{} {}/{}", e.kind, e.namespace, e.name));
    row("operation", e.operation.clone());
    row("user", e.user.clone());
    row("images", e.images.join(", "));
    row(
        "policy",
        format!("{} (revision {})", e.policy, e.policy_revision),
    );
    row("action", format!("{} x{}", e.action, e.count));
    row("state", e.state.clone());
    if !e.handled_by.is_empty() {
        row(
            "handled",
            format!(
                "by {} at {}: {}",
                e.handled_by,
                output::time(e.handled_time.as_ref()),
                e.note
            ),
        );
    }
    for f in &e.findings {
        row(
            "finding",
            format!("{} at {} = {}: {}", f.rule, f.path, f.value, f.message),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(parse_time("2h", now).unwrap().seconds, 1_800_000_000 - 7200);
        assert_eq!(
            parse_time("7d", now).unwrap().seconds,
            1_800_000_000 - 7 * 86_400
        );
        assert_eq!(
            parse_time("2026-11-27T00:00:00Z", now).unwrap().seconds,
            1_795_737_600
        );
        for bad in ["yesterday", "2w", "", "-1h"] {
            assert!(parse_time(bad, now).is_err(), "{bad}");
        }
    }
}
