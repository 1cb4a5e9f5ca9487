//! Policies: the list, a policy's normalised YAML and where it is applied, apply from YAML
//! (text or file; validate only, or for real) and delete after confirmation.

use axum::{
    Form,
    extract::{Multipart, Path, State, multipart::MultipartError},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::Deserialize;
use tonic::{Code, Status};

use portcullis_proto::v1::{
    ApplyPoliciesRequest, DeletePolicyRequest, GetPolicyRequest, ListPoliciesRequest, Policy,
    policy_service_server::PolicyService,
};

use super::{
    Console, FormRefused, MAX_POLICY_BYTES, Session, Signed, api_error, call, csrf_refused,
    fleet::all_clusters,
    layout::{Page, csrf_field, segment, time},
    multipart_csrf, viewer_refused,
};

/// Every policy, read page by page.
pub async fn all_policies(console: &Console, session: &Session) -> Result<Vec<Policy>, Status> {
    let mut policies = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = console
            .inner()
            .policies
            .list_policies(call(
                session,
                ListPoliciesRequest {
                    page_size: 1000,
                    page_token,
                },
            ))
            .await?
            .into_inner();
        policies.extend(page.policies);
        if page.next_page_token.is_empty() {
            return Ok(policies);
        }
        page_token = page.next_page_token;
    }
}

fn action(policy: &Policy) -> &str {
    if policy.action.is_empty() {
        "block"
    } else {
        &policy.action
    }
}

fn rule_kinds(policy: &Policy) -> String {
    let rules = policy.rules.clone().unwrap_or_default();
    match (rules.image.is_some(), rules.resource.is_some()) {
        (true, true) => "image, resource",
        (true, false) => "image",
        (false, true) => "resource",
        (false, false) => "—",
    }
    .to_owned()
}

pub async fn list(State(console): State<Console>, Signed(session): Signed) -> Response {
    let policies = match all_policies(&console, &session).await {
        Ok(policies) => policies,
        Err(status) => return api_error(&session, &status),
    };
    let body = html! {
        @if session.is_admin() {
            p { a href="/policies/apply" { "Apply policies from YAML →" } }
        }
        table #policies {
            thead { tr { th { "Policy" } th { "Description" } th { "Enabled" } th { "Action" } th { "Rules" } th.num { "Revision" } th { "Updated" } } }
            tbody {
                @for policy in &policies {
                    tr {
                        td { a href={ "/policies/" (segment(&policy.name)) } { (policy.name) } }
                        td { (policy.description) }
                        td { @if policy.enabled.unwrap_or(true) { "yes" } @else { span.badge { "no" } } }
                        td { (action(policy)) }
                        td { (rule_kinds(policy)) }
                        td.num { (policy.revision) }
                        td { (time(policy.update_time.as_ref())) }
                    }
                }
                @if policies.is_empty() {
                    tr { td colspan="7" .muted { "No policies yet." } }
                }
            }
        }
    };
    Page::new("Policies", &session).body(body).render()
}

pub async fn detail(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
) -> Response {
    let policy = match console
        .inner()
        .policies
        .get_policy(call(&session, GetPolicyRequest { name }))
        .await
    {
        Ok(policy) => policy.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    let _turn = console.heavy().await;
    let (clusters, _) = match all_clusters(&console, &session).await {
        Ok(found) => found,
        Err(status) => return api_error(&session, &status),
    };
    let in_scope: Vec<_> = clusters
        .iter()
        .filter(|c| crate::sync::in_scope(&policy, &c.name))
        .collect();
    let applied: Vec<_> = in_scope
        .iter()
        .filter(|c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.applied_revision >= policy.revision)
        })
        .collect();
    let yaml = serde_yaml::to_string(&policy).unwrap_or_else(|e| format!("# {e}"));
    let body = html! {
        p { (policy.description) }
        p.muted { "Revision " (policy.revision) ", updated " (time(policy.update_time.as_ref())) "." }
        @if session.is_admin() {
            p { a href={ "/policies/" (segment(&policy.name)) "/delete" } { "Delete this policy…" } }
        }
        h2 { "Normalised" }
        pre #policy-yaml { (yaml) }
        h2 { "Applied by " (applied.len()) " of " (in_scope.len()) " clusters in scope" }
        table #applied {
            thead { tr { th { "Cluster" } th.num { "Applied revision" } th { "Has this revision" } } }
            tbody {
                @for cluster in &in_scope {
                    @let revision = cluster.status.as_ref().map_or(0, |s| s.applied_revision);
                    tr {
                        td { a href={ "/fleet/" (segment(&cluster.name)) } { (cluster.name) } }
                        td.num { (revision) }
                        td { @if revision >= policy.revision { span.badge.good { "applied" } } @else { span.badge.warn { "not yet" } } }
                    }
                }
            }
        }
    };
    Page::new(format!("Policy {}", policy.name), &session)
        .body(body)
        .render()
}

fn apply_body(session: &Session, text: &str) -> Markup {
    html! {
        p.hint { "One or more policies in the policy file format (YAML documents separated by ---). Paste them, or choose a file; a file wins over the text." }
        form method="post" action="/policies/apply" enctype="multipart/form-data" {
            (csrf_field(session))
            textarea name="yaml" spellcheck="false" { (text) }
            p { label { "Or a file: " input type="file" name="file" accept=".yaml,.yml,.json"; } }
            p {
                button type="submit" name="mode" value="validate" { "Validate only" }
                " "
                button type="submit" name="mode" value="apply" { "Apply" }
            }
        }
    }
}

pub async fn apply_form(Signed(session): Signed) -> Response {
    if !session.is_admin() {
        return viewer_refused(&session);
    }
    Page::new("Apply policies", &session)
        .body(apply_body(&session, ""))
        .render()
}

/// What an apply form carried.
#[derive(Default)]
struct ApplyForm {
    text: String,
    file: Vec<u8>,
    validate_only: bool,
}

async fn read_apply_form(mut multipart: Multipart) -> Result<ApplyForm, (StatusCode, String)> {
    let unreadable = |e: MultipartError| {
        (
            e.status(),
            format!("the form could not be read: {}", e.body_text()),
        )
    };
    // Without a mode (not from the page's buttons), nothing is applied.
    let mut form = ApplyForm {
        validate_only: true,
        ..ApplyForm::default()
    };
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = field.bytes().await.map_err(unreadable)?;
        match name.as_str() {
            "yaml" => {
                form.text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    (
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "yaml: not UTF-8 text".to_owned(),
                    )
                })?
            }
            "file" => form.file = bytes.to_vec(),
            "mode" => form.validate_only = &bytes[..] != b"apply",
            _ => {}
        }
    }
    Ok(form)
}

pub async fn apply(
    State(console): State<Console>,
    Signed(session): Signed,
    mut multipart: Multipart,
) -> Response {
    if !session.is_admin() {
        return viewer_refused(&session);
    }
    match multipart_csrf(&mut multipart, &session).await {
        Ok(()) => {}
        Err(FormRefused::Csrf) => return csrf_refused(&session),
        Err(FormRefused::TooLarge) => return too_large(&session),
    }
    let form = match read_apply_form(multipart).await {
        Ok(form) => form,
        Err((status, _)) if status == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large(&session);
        }
        Err((status, error)) => {
            return Page::new("Apply policies", &session)
                .status(status)
                .error(error)
                .render();
        }
    };
    let text = if form.file.is_empty() {
        form.text
    } else {
        match String::from_utf8(form.file) {
            Ok(text) => text,
            Err(_) => {
                return apply_failed(&session, "", vec!["file: not UTF-8 text".to_owned()]);
            }
        }
    };
    if text.len() > MAX_POLICY_BYTES {
        return too_large(&session);
    }
    let policies = match portcullis_policy::parse_policy_documents(&text) {
        Ok(policies) if policies.is_empty() => {
            return apply_failed(&session, &text, vec!["no policies in the text".to_owned()]);
        }
        Ok(policies) => policies,
        Err(error) => return apply_failed(&session, &text, vec![error.to_string()]),
    };
    // Every invalid field, by path, before the API (which checks the same again).
    if let Err(invalid) = portcullis_policy::validate_policy_set(&policies) {
        let errors = invalid.errors.iter().map(ToString::to_string).collect();
        return apply_failed(&session, &text, errors);
    }
    let request = ApplyPoliciesRequest {
        policies,
        validate_only: form.validate_only,
    };
    match console
        .inner()
        .policies
        .apply_policies(call(&session, request))
        .await
    {
        Ok(response) => {
            let response = response.into_inner();
            let body = html! {
                table #applied {
                    thead { tr { th { "Policy" } th { "Outcome" } th.num { "Revision" } } }
                    tbody {
                        @for result in &response.results {
                            @let policy = result.policy.clone().unwrap_or_default();
                            tr {
                                td { a href={ "/policies/" (segment(&policy.name)) } { (policy.name) } }
                                td { (result.outcome) }
                                td.num { @if form.validate_only { "—" } @else { (policy.revision) } }
                            }
                        }
                    }
                }
                (apply_body(&session, &text))
            };
            let notice = if form.validate_only {
                "Valid: nothing was applied."
            } else {
                "Applied: agents receive the change at once."
            };
            Page::new("Apply policies", &session)
                .notice(notice)
                .body(body)
                .render()
        }
        Err(status) if status.code() == Code::InvalidArgument => apply_failed(
            &session,
            &text,
            status.message().split("; ").map(str::to_owned).collect(),
        ),
        Err(status) => api_error(&session, &status),
    }
}

fn too_large(session: &Session) -> Response {
    Page::new("Apply policies", session)
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .error(format!(
            "The policies are larger than {} KiB: split them.",
            MAX_POLICY_BYTES / 1024
        ))
        .body(apply_body(session, ""))
        .render()
}

fn apply_failed(session: &Session, text: &str, errors: Vec<String>) -> Response {
    Page::new("Apply policies", session)
        .status(StatusCode::UNPROCESSABLE_ENTITY)
        .error("Nothing was applied:")
        .errors(errors)
        .body(apply_body(session, text))
        .render()
}

pub async fn confirm_delete(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
) -> Response {
    if !session.is_admin() {
        return viewer_refused(&session);
    }
    let policy = match console
        .inner()
        .policies
        .get_policy(call(&session, GetPolicyRequest { name }))
        .await
    {
        Ok(policy) => policy.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    let body = html! {
        p { "Delete policy " strong { (policy.name) } " (revision " (policy.revision) ")? Every cluster stops enforcing it at its next sync." }
        form method="post" action={ "/policies/" (segment(&policy.name)) "/delete" } {
            (csrf_field(&session))
            input type="hidden" name="revision" value=(policy.revision);
            button.danger type="submit" { "Delete" }
            " "
            a href={ "/policies/" (segment(&policy.name)) } { "Cancel" }
        }
    };
    Page::new("Delete policy", &session).body(body).render()
}

#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    revision: String,
}

pub async fn delete(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(name): Path<String>,
    Form(form): Form<DeleteForm>,
) -> Response {
    if !session.csrf_matches(&form.csrf) {
        return csrf_refused(&session);
    }
    let Ok(revision) = form.revision.parse::<u64>() else {
        return Page::new("Delete policy", &session)
            .status(StatusCode::BAD_REQUEST)
            .error(format!("revision: {:?} is not a revision", form.revision))
            .render();
    };
    match console
        .inner()
        .policies
        .delete_policy(call(&session, DeletePolicyRequest { name, revision }))
        .await
    {
        Ok(_) => Redirect::to("/policies").into_response(),
        Err(status) => api_error(&session, &status),
    }
}
