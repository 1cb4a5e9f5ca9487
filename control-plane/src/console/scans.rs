//! Scans: images with their severity counts, malware and baseline failures; search by
//! repository, image reference or vulnerability id; one image's findings, searchable; upload a
//! Trivy or Grype report.

use axum::{
    extract::{Multipart, Path, Query, State, multipart::MultipartError},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use maud::{Markup, html};
use serde::{Deserialize, Serialize};

use portcullis_proto::v1::{
    GetImageScanRequest, ImageScan, ImportReportRequest, ListImageScansRequest,
    scan_service_server::ScanService,
};

use super::{
    Console, FormRefused, Session, Signed, api_error, call, csrf_refused,
    layout::{Page, csrf_field, link, segment, time},
    multipart_csrf, viewer_refused,
};

#[derive(Deserialize, Serialize, Default, Clone)]
pub struct ScanQuery {
    /// A repository (exact or glob), or an image reference (`nginx:1.25`, `…@sha256:…`).
    #[serde(default)]
    q: String,
    #[serde(default)]
    min_severity: String,
    /// "yes" | "no" | "".
    #[serde(default)]
    malware: String,
    /// A vulnerability id the image's scan lists.
    #[serde(default)]
    vulnerability: String,
    #[serde(default)]
    page_token: String,
}

fn counts(scan: &ImageScan) -> Markup {
    let c = scan.counts.unwrap_or_default();
    html! {
        td.num { @if c.critical > 0 { span.badge.bad { (c.critical) } } @else { "0" } }
        td.num { (c.high) } td.num { (c.medium) } td.num { (c.low) } td.num { (c.unknown) }
    }
}

fn image_name(scan: &ImageScan) -> String {
    let image = scan.image.clone().unwrap_or_default();
    match image.tags.first() {
        Some(tag) => format!("{}:{tag}", image.repository),
        None => image.repository,
    }
}

fn scan_rows(scans: &[ImageScan]) -> Markup {
    html! {
        @for scan in scans {
            tr {
                td { a href={ "/scans/" (segment(&scan.id)) } { (image_name(scan)) } br; code.muted { (scan.id) } }
                (counts(scan))
                td.num { @if scan.malicious_files.is_empty() { "0" } @else { span.badge.bad { (scan.malicious_files.len()) } } }
                td.num { (scan.baseline_failures.len()) }
                td { (scan.scanner.as_ref().map(|s| format!("{} {}", s.name, s.version)).unwrap_or_default()) }
                td { (time(scan.import_time.as_ref())) }
            }
        }
    }
}

pub async fn list(
    State(console): State<Console>,
    Signed(session): Signed,
    Query(query): Query<ScanQuery>,
) -> Response {
    let q = query.q.trim();
    // A reference with a tag or digest names one image; anything else is a repository filter.
    let reference = q.contains('@') || q.rsplit('/').next().is_some_and(|last| last.contains(':'));
    let (scans, next) = if reference {
        match console
            .inner()
            .scans
            .get_image_scan(call(
                &session,
                GetImageScanRequest {
                    image: q.to_owned(),
                },
            ))
            .await
        {
            Ok(scan) => (vec![scan.into_inner()], String::new()),
            Err(status) if status.code() == tonic::Code::NotFound => (Vec::new(), String::new()),
            Err(status) => return api_error(&session, &status),
        }
    } else {
        let has_malware = match query.malware.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        };
        let request = ListImageScansRequest {
            repository: q.to_owned(),
            min_severity: query.min_severity.clone(),
            has_malware,
            vulnerability: query.vulnerability.clone(),
            page_size: 100,
            page_token: query.page_token.clone(),
        };
        match console
            .inner()
            .scans
            .list_image_scans(call(&session, request))
            .await
        {
            Ok(page) => {
                let page = page.into_inner();
                (page.scans, page.next_page_token)
            }
            Err(status) => return api_error(&session, &status),
        }
    };
    let first = ScanQuery {
        page_token: String::new(),
        ..query.clone()
    };
    let body = html! {
        @if session.is_admin() { p { a href="/scans/upload" { "Upload a Trivy or Grype report →" } } }
        form.filters method="get" action="/scans" {
            label { "Repository, glob or image reference" input type="search" name="q" value=(query.q) placeholder="nginx, ghcr.io/acme/*, nginx:1.25"; }
            label { "At least" select name="min_severity" {
                @for value in ["", "critical", "high", "medium", "low"] { option value=(value) selected[query.min_severity == value] { (if value.is_empty() { "any severity" } else { value }) } }
            } }
            label { "Vulnerability id" input type="search" name="vulnerability" value=(query.vulnerability) placeholder="CVE-2021-44228"; }
            label { "Malware" select name="malware" {
                @for (value, label) in [("", "any"), ("yes", "with malware"), ("no", "without")] { option value=(value) selected[query.malware == value] { (label) } }
            } }
            button type="submit" { "Search" }
        }
        @if !query.vulnerability.trim().is_empty() {
            p.hint { "A vulnerability search reads every stored scan: it takes longer than the other filters." }
        }
        table #scans {
            thead { tr { th { "Image" } th.num { "Critical" } th.num { "High" } th.num { "Medium" } th.num { "Low" } th.num { "Unknown" } th.num { "Malware" } th.num { "Baseline" } th { "Scanner" } th { "Imported" } } }
            tbody {
                (scan_rows(&scans))
                @if scans.is_empty() { tr { td colspan="10" .muted { "No scans match." } } }
            }
        }
        div.pager {
            @if !query.page_token.is_empty() { a href=(link("/scans", &first)) { "← First" } }
            @if !next.is_empty() { a href=(link("/scans", &ScanQuery { page_token: next.clone(), ..first.clone() })) rel="next" { "Next →" } }
        }
    };
    Page::new("Scans", &session).body(body).render()
}

#[derive(Deserialize)]
pub struct DetailQuery {
    /// Vulnerability id or package text to keep.
    #[serde(default)]
    find: String,
}

pub async fn detail(
    State(console): State<Console>,
    Signed(session): Signed,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Response {
    let scan = match console
        .inner()
        .scans
        .get_image_scan(call(&session, GetImageScanRequest { image: id }))
        .await
    {
        Ok(scan) => scan.into_inner(),
        Err(status) => return api_error(&session, &status),
    };
    let find = query.find.trim().to_lowercase();
    let vulnerabilities: Vec<_> = scan
        .vulnerabilities
        .iter()
        .filter(|v| {
            find.is_empty()
                || v.id.to_lowercase().contains(&find)
                || v.package.to_lowercase().contains(&find)
        })
        .collect();
    let image = scan.image.clone().unwrap_or_default();
    let body = html! {
        table.facts {
            tr { th { "Repository" } td { (image.repository) } }
            tr { th { "Tags" } td { (image.tags.join(", ")) } }
            tr { th { "Digests" } td { @for digest in &image.digests { code { (digest) } br; } } }
            tr { th { "Scanner" } td { (scan.scanner.as_ref().map(|s| format!("{} {}", s.name, s.version)).unwrap_or_default()) ", scanned " (scan.scanned_at) } }
            tr { th { "OS" } td { (scan.os.as_ref().map(|o| format!("{} {}", o.family, o.name)).unwrap_or_default()) } }
            tr { th { "Imported" } td { (time(scan.import_time.as_ref())) " at revision " (scan.revision) } }
        }
        table { thead { tr { th.num { "Critical" } th.num { "High" } th.num { "Medium" } th.num { "Low" } th.num { "Unknown" } } } tbody { tr { (counts(&scan)) } } }
        @if !scan.malicious_files.is_empty() {
            h2 { "Malicious files" }
            table { thead { tr { th { "Path" } th { "Signature" } } } tbody {
                @for file in &scan.malicious_files { tr { td { code { (file.path) } } td { (file.signature) } } }
            } }
        }
        @if !scan.baseline_failures.is_empty() {
            h2 { "Baseline failures" }
            table { thead { tr { th { "Id" } th { "Severity" } th { "Kind" } th { "Title" } } } tbody {
                @for failure in &scan.baseline_failures { tr { td { (failure.id) } td { (failure.severity) } td { (failure.kind) } td { (failure.title) } } }
            } }
        }
        h2 { "Vulnerabilities (" (vulnerabilities.len()) " of " (scan.vulnerabilities.len()) ")" }
        form.filters method="get" action={ "/scans/" (segment(&scan.id)) } {
            label { "Vulnerability id or package" input type="search" name="find" value=(query.find); }
            button type="submit" { "Find" }
        }
        table #vulnerabilities {
            thead { tr { th { "Id" } th { "Severity" } th { "Package" } th { "Installed" } th { "Fixed in" } th.num { "CVSS" } } }
            tbody {
                @for v in &vulnerabilities {
                    tr {
                        td { (v.id) } td { (v.severity) } td { (v.package) } td { (v.installed_version) } td { (v.fixed_version) }
                        td.num { (v.cvss_score.map(|s| format!("{s:.1}")).unwrap_or_default()) }
                    }
                }
            }
        }
    };
    Page::new(format!("Scan of {}", image_name(&scan)), &session)
        .body(body)
        .render()
}

fn upload_body(session: &Session) -> Markup {
    html! {
        form method="post" action="/scans/upload" enctype="multipart/form-data" {
            (csrf_field(session))
            p { label { "Report (Trivy or Grype JSON): " input type="file" name="report" required; } }
            p { label { "Format " select name="format" {
                option value="" { "detect" } option value="trivy" { "trivy" } option value="grype" { "grype" } option value="native" { "native" }
            } } }
            p { label { "Image (only for a report that names none) " input type="text" name="image"; } }
            button type="submit" { "Import" }
        }
    }
}

pub async fn upload_form(Signed(session): Signed) -> Response {
    if !session.is_admin() {
        return viewer_refused(&session);
    }
    Page::new("Upload a scan report", &session)
        .body(upload_body(&session))
        .render()
}

pub async fn upload(
    State(console): State<Console>,
    Signed(session): Signed,
    mut multipart: Multipart,
) -> Response {
    if !session.is_admin() {
        return viewer_refused(&session);
    }
    let limit = console.inner().max_report_bytes;
    match multipart_csrf(&mut multipart, &session).await {
        Ok(()) => {}
        Err(FormRefused::Csrf) => return csrf_refused(&session),
        Err(FormRefused::TooLarge) => return report_too_large(&session, limit),
    }
    let (mut report, mut format, mut image) = (Vec::new(), String::new(), String::new());
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return upload_refused(&session, limit, &e),
        };
        let name = field.name().unwrap_or_default().to_owned();
        let bytes = match field.bytes().await {
            Ok(bytes) => bytes,
            Err(e) => return upload_refused(&session, limit, &e),
        };
        let text = || String::from_utf8_lossy(&bytes).trim().to_owned();
        match name.as_str() {
            "report" => report = bytes.to_vec(),
            "format" => format = text(),
            "image" => image = text(),
            _ => {}
        }
    }
    if report.is_empty() {
        return Page::new("Upload a scan report", &session)
            .status(StatusCode::BAD_REQUEST)
            .error("report: choose a report file")
            .body(upload_body(&session))
            .render();
    }
    let request = ImportReportRequest {
        format,
        report: report.into(),
        image,
    };
    match console
        .inner()
        .scans
        .import_report(call(&session, request))
        .await
    {
        Ok(scan) => {
            Redirect::to(&format!("/scans/{}", segment(&scan.into_inner().id))).into_response()
        }
        Err(status) if status.code() == tonic::Code::InvalidArgument => {
            Page::new("Upload a scan report", &session)
                .status(StatusCode::UNPROCESSABLE_ENTITY)
                .error(format!("Not imported: {}", status.message()))
                .body(upload_body(&session))
                .render()
        }
        Err(status) => api_error(&session, &status),
    }
}

fn upload_refused(session: &Session, limit: usize, error: &MultipartError) -> Response {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return report_too_large(session, limit);
    }
    Page::new("Upload a scan report", session)
        .status(StatusCode::BAD_REQUEST)
        .error(format!("The form could not be read: {}", error.body_text()))
        .body(upload_body(session))
        .render()
}

fn report_too_large(session: &Session, limit: usize) -> Response {
    Page::new("Upload a scan report", session)
        .status(StatusCode::PAYLOAD_TOO_LARGE)
        .error(format!(
            "The report is larger than the limit of {} (--max-report-bytes).",
            size(limit)
        ))
        .body(upload_body(session))
        .render()
}

/// `128 MiB`, `256 KiB`, or bytes.
fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}
