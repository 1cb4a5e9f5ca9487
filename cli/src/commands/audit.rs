//! `portcullis audit …`: list, summarise and watch the audit violations of the fleet's running
//! workloads.

use anyhow::{Result, bail};

use portcullis_proto::v1::{
    ListViolationsRequest, SummarizeViolationsRequest, SummarizeViolationsResponse, Violation,
    ViolationFilter, WatchViolationsRequest,
};
use portcullis_proto::words::ViolationState;

use super::{collect_pages, rpc};
use crate::{
    args::{ALL_STATES, AuditCommand, Connection, ViolationFilterArgs},
    client,
    output::{self, Table},
};

pub async fn run(command: AuditCommand, connection: &Connection) -> Result<()> {
    let mut clients = client::connect(connection).await?;
    match command {
        AuditCommand::List {
            filter,
            limit,
            output,
        } => {
            let filter = to_filter(&filter, ViolationState::Open.as_str());
            let violations: Vec<Violation> = collect_pages(limit, |page_size, page_token| {
                let (mut audit, filter) = (clients.audit.clone(), filter.clone());
                async move {
                    let request = ListViolationsRequest {
                        filter: Some(filter),
                        page_size,
                        page_token,
                    };
                    let page = rpc(audit.list_violations(request).await)?;
                    Ok((page.violations, page.next_page_token))
                }
            })
            .await?;
            output::print(output, &violations, || violation_table(&violations))
        }
        AuditCommand::Summary { cluster, output } => {
            let request = SummarizeViolationsRequest {
                cluster: cluster.unwrap_or_default(),
            };
            let summary = rpc(clients.audit.summarize_violations(request).await)?;
            output::print(output, &summary, || summary_table(&summary))
        }
        AuditCommand::Watch { filter, output } => {
            let filter = to_filter(&filter, ALL_STATES);
            let mut stream = rpc(clients
                .audit
                .watch_violations(WatchViolationsRequest {
                    filter: Some(filter),
                })
                .await)?;
            let mut header = true;
            loop {
                let violation = match stream.message().await {
                    Ok(Some(violation)) => violation,
                    Ok(None) => return Ok(()),
                    Err(status) => bail!("{:?}: {}", status.code(), status.message()),
                };
                output::print_streamed(output, &violation, &mut header, || {
                    violation_table(std::slice::from_ref(&violation))
                })?;
            }
        }
    }
}

/// The request's filter; `default_state` when `--state` is not given (`all`: both states).
fn to_filter(args: &ViolationFilterArgs, default_state: &str) -> ViolationFilter {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let state = match args.state.as_deref().unwrap_or(default_state) {
        ALL_STATES => "",
        state => state,
    };
    ViolationFilter {
        cluster: text(&args.cluster),
        namespace: text(&args.namespace),
        kind: text(&args.kind),
        name: text(&args.name),
        policy: text(&args.policy),
        action: text(&args.action),
        image: text(&args.image),
        vulnerability_id: text(&args.vulnerability),
        state: state.to_owned(),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_owned()
    }
}

fn violation_table(violations: &[Violation]) -> Table {
    let mut table = Table::new(vec![
        "CLUSTER",
        "NAMESPACE",
        "KIND",
        "NAME",
        "POLICY",
        "ACTION",
        "SEVERITY",
        "STATE",
        "FIRST-SEEN",
        "STALE",
    ]);
    for v in violations {
        table.row(vec![
            v.cluster.clone(),
            or_dash(&v.namespace),
            v.kind.clone(),
            v.name.clone(),
            v.policy.clone(),
            or_dash(&v.action),
            or_dash(&v.severity),
            v.state.clone(),
            output::time(v.first_seen.as_ref()),
            if v.stale { "yes" } else { "no" }.into(),
        ]);
    }
    table
}

fn summary_table(summary: &SummarizeViolationsResponse) -> Table {
    let mut table = Table::new(vec![
        "CLUSTER",
        "NAMESPACE",
        "POLICY",
        "SEVERITY",
        "VIOLATIONS",
    ]);
    for row in &summary.counts {
        table.row(vec![
            row.cluster.clone(),
            or_dash(&row.namespace),
            row.policy.clone(),
            row.severity.clone(),
            row.violations.to_string(),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::args::{Cli, Command, Output};
    use portcullis_proto::v1::ViolationCount;

    fn parse(args: &[&str]) -> Result<AuditCommand, clap::Error> {
        let cli = Cli::try_parse_from(["portcullis", "audit"].iter().chain(args))?;
        match cli.command {
            Command::Audit(command) => Ok(command),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn list_filters_become_the_request_filter_and_default_to_open() {
        let AuditCommand::List {
            filter,
            limit,
            output,
        } = parse(&[
            "list",
            "--cluster",
            "prod",
            "-n",
            "shop",
            "--kind",
            "Deployment",
            "--name",
            "web",
            "--policy",
            "no-critical",
            "--action",
            "block",
            "--image",
            "nginx",
            "--vulnerability",
            "CVE-2024-3094",
            "--limit",
            "0",
            "-o",
            "json",
        ])
        .unwrap()
        else {
            panic!("not list");
        };
        assert_eq!((limit, output), (0, Output::Json));
        assert_eq!(
            to_filter(&filter, ViolationState::Open.as_str()),
            ViolationFilter {
                cluster: "prod".into(),
                namespace: "shop".into(),
                kind: "Deployment".into(),
                name: "web".into(),
                policy: "no-critical".into(),
                action: "block".into(),
                image: "nginx".into(),
                vulnerability_id: "CVE-2024-3094".into(),
                state: "open".into(),
            }
        );
    }

    #[test]
    fn state_defaults_to_open_for_list_and_all_for_watch() {
        let state = |args: &[&str], default: &str| {
            let (AuditCommand::List { filter, .. } | AuditCommand::Watch { filter, .. }) =
                parse(args).unwrap()
            else {
                panic!("not list or watch");
            };
            to_filter(&filter, default).state
        };
        assert_eq!(state(&["list"], "open"), "open");
        assert_eq!(state(&["list", "--state", "all"], "open"), "");
        assert_eq!(state(&["list", "--state", "resolved"], "open"), "resolved");
        assert_eq!(state(&["watch"], ALL_STATES), "");
        assert_eq!(state(&["watch", "--state", "open"], ALL_STATES), "open");
    }

    #[test]
    fn unknown_words_are_refused_with_the_words_allowed() {
        let error = parse(&["list", "--state", "closed"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("[possible values: open, resolved, all]"),
            "{error}"
        );
        let error = parse(&["watch", "--action", "blocked"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("[possible values: block, alert]"), "{error}");
        assert!(parse(&["summary", "--cluster", "prod", "-o", "yaml"]).is_ok());
    }

    #[test]
    fn tables_show_every_column_and_mark_stale_violations() {
        let violation = Violation {
            cluster: "prod".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            policy: "no-critical".into(),
            action: "block".into(),
            severity: "critical".into(),
            state: "open".into(),
            first_seen: Some(pbjson_types::Timestamp {
                seconds: 0,
                nanos: 0,
            }),
            stale: true,
            ..Default::default()
        };
        assert_eq!(
            violation_table(&[violation]).render(),
            "CLUSTER  NAMESPACE  KIND        NAME  POLICY       ACTION  SEVERITY  STATE  FIRST-SEEN            STALE\n\
             prod     -          Deployment  web   no-critical  block   critical  open   1970-01-01T00:00:00Z  yes\n"
        );
        let summary = SummarizeViolationsResponse {
            counts: vec![ViolationCount {
                cluster: "prod".into(),
                namespace: "shop".into(),
                policy: "no-critical".into(),
                severity: "high".into(),
                violations: 3,
            }],
            total: 3,
        };
        assert_eq!(
            summary_table(&summary).render(),
            "CLUSTER  NAMESPACE  POLICY       SEVERITY  VIOLATIONS\n\
             prod     shop       no-critical  high      3\n"
        );
    }
}
