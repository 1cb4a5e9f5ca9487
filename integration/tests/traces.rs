//! Traces end to end: the control plane and an agent, with the standard OpenTelemetry variables
//! pointing at an OTLP collector started here (a tonic server of the OTLP trace service), send
//! their spans to it: every gRPC call, the sync sessions and snapshots on both sides (linked
//! parent to child), sampled admission reviews with their decision, event delivery batches.
//! Without the variables nothing is exported (the other tests run that way).

use std::{
    collections::HashMap,
    fs,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, any_value::Value as Any},
};
use portcullis_testkit::{
    Agent, ControlPlane, admission_fixture, eventually, post_review, success,
};

/// A span as received: its service, ids and string or integer attributes.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans.resource.unwrap_or_default();
            let service = attributes(&resource.attributes)
                .remove("service.name")
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    list.iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()? {
                AnyValue {
                    value: Some(Any::StringValue(s)),
                } => s.clone(),
                AnyValue {
                    value: Some(Any::IntValue(i)),
                } => i.to_string(),
                AnyValue {
                    value: Some(Any::BoolValue(b)),
                } => b.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// Starts the collector on a loopback port, on a runtime of its own.
fn start_collector() -> (Collector, SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let collector = Collector::default();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(collector.clone());
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, addr, runtime)
}

impl Collector {
    fn spans(&self) -> Vec<Received> {
        self.0.lock().unwrap().clone()
    }
}

/// The one span of `service` named `name` (the first, if several).
fn find<'a>(spans: &'a [Received], service: &str, name: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
}

fn child_of(child: &Received, parent: &Received) -> bool {
    child.trace_id == parent.trace_id && child.parent_span_id == parent.span_id
}

#[test]
fn spans_reach_an_otlp_collector_with_their_links() {
    let (collector, addr, _runtime) = start_collector();
    let endpoint = format!("http://{addr}");
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let mut cp = ControlPlane::start_with_env(&[], &env);
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("p.yaml");
    fs::write(
        &policies,
        "name: no-privileged\nrules: {resource: {privileged: {}}}\n",
    )
    .unwrap();
    success(&cp.admin_cli(&["policy", "apply", "-f", policies.to_str().unwrap()]));
    let token = cp.register("c1");
    let agent = Agent::start_with_env(&cp, "c1", &token, &["--trace-reviews", "1"], &env);
    agent.wait_revision(cp.revision());
    let (status, review) = post_review(&agent, admission_fixture("pod-create-privileged.json"));
    assert_eq!(
        (status, &review["response"]["allowed"]),
        (200, &false.into())
    );
    eventually("the event to be delivered", || {
        agent.state()["events"]["pending"] == 0
            && find(&collector.spans(), "portcullis-agent", "events.deliver").is_some()
    });
    // Ending the sessions closes the spans that last as long as a session: the control
    // plane's (it stops, and sends what it holds) and the agent's (its stream breaks).
    cp.terminate();

    let cp_name = "portcullis-control-plane";
    let agent_name = "portcullis-agent";
    eventually("the spans of both sessions", || {
        let spans = collector.spans();
        find(&spans, cp_name, "sync").is_some()
            && find(&spans, agent_name, "sync.session").is_some()
    });
    let spans = collector.spans();

    // Every gRPC call, named by its method.
    let apply = find(
        &spans,
        cp_name,
        "/portcullis.v1.PolicyService/ApplyPolicies",
    )
    .expect("the ApplyPolicies call");
    assert_eq!(apply.attributes["rpc.system"], "grpc");
    let sync_call =
        find(&spans, cp_name, "/portcullis.v1.AgentService/Sync").expect("the Sync call");
    assert!(find(&spans, cp_name, "/portcullis.v1.AgentService/ReportEvents").is_some());

    // The control plane's session under its call, the snapshot under the session.
    let session = find(&spans, cp_name, "sync").unwrap();
    assert!(
        child_of(session, sync_call),
        "{session:?} under {sync_call:?}"
    );
    assert_eq!(session.attributes["cluster"], "c1");
    let snapshot = find(&spans, cp_name, "snapshot").expect("the snapshot sent");
    assert!(
        child_of(snapshot, session),
        "{snapshot:?} under {session:?}"
    );
    assert_eq!(snapshot.attributes["reason"], "new agent");

    // The agent's snapshot under its session.
    let agent_session = find(&spans, agent_name, "sync.session").unwrap();
    assert!(
        agent_session.parent_span_id.is_empty(),
        "a session is a trace of its own"
    );
    let received = find(&spans, agent_name, "snapshot").expect("the snapshot received");
    assert!(
        child_of(received, agent_session),
        "{received:?} under {agent_session:?}"
    );

    // The review, with its decision and the policy that fired.
    let review = find(&spans, agent_name, "admission.review").expect("the review");
    assert_eq!(review.attributes["outcome"], "block");
    assert_eq!(review.attributes["policies"], "no-privileged");
    assert_eq!(review.attributes["kind"], "Pod");
    assert!(review.parent_span_id.is_empty());

    // The event batch.
    let delivery = find(&spans, agent_name, "events.deliver").unwrap();
    assert_eq!(delivery.attributes["events"], "1");
}

/// On the real kube-apiserver, each Kubernetes reconcile of the agent is a span of its own.
#[test]
fn kubernetes_reconciles_are_spans() {
    let Some(env) = portcullis_testkit::kube::KubeEnv::new("k-traces", serde_json::json!({}))
    else {
        return;
    };
    let (collector, addr, _runtime) = start_collector();
    let endpoint = format!("http://{addr}");
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let _agent = env.start_agent_with_env("agent-0", &[], &otel);
    eventually("a reconcile span", || {
        find(
            &collector.spans(),
            "portcullis-agent",
            "kubernetes.reconcile",
        )
        .is_some_and(|span| span.parent_span_id.is_empty())
    });
}
