//! The frame every page shares, and small pieces pages use. maud escapes every value it
//! interpolates; nothing here uses `PreEscaped` on input.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use maud::{DOCTYPE, Markup, html};
use serde::Serialize;

use super::session::Session;

/// A page being built.
pub struct Page<'a> {
    title: String,
    session: Option<&'a Session>,
    status: StatusCode,
    error: Option<String>,
    errors: Vec<String>,
    notice: Option<String>,
    body: Markup,
}

impl<'a> Page<'a> {
    pub fn new(title: impl Into<String>, session: &'a Session) -> Self {
        Page {
            session: Some(session),
            ..Page::anonymous(title)
        }
    }

    /// A page for someone not signed in (the sign-in page).
    pub fn anonymous(title: impl Into<String>) -> Self {
        Page {
            title: title.into(),
            session: None,
            status: StatusCode::OK,
            error: None,
            errors: Vec::new(),
            notice: None,
            body: html! {},
        }
    }

    pub fn status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn error(mut self, message: impl Into<String>) -> Self {
        self.error = Some(message.into());
        self
    }

    /// Several errors, one per line (validation errors by field path).
    pub fn errors(mut self, errors: Vec<String>) -> Self {
        self.errors = errors;
        self
    }

    pub fn notice(mut self, message: impl Into<String>) -> Self {
        self.notice = Some(message.into());
        self
    }

    pub fn body(mut self, body: Markup) -> Self {
        self.body = body;
        self
    }

    pub fn render(self) -> Response {
        let markup = html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (self.title) " · Portcullis" }
                    link rel="stylesheet" href="/assets/console.css";
                    script src="/assets/console.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/" { "Portcullis" }
                        @if let Some(session) = self.session {
                            nav {
                                a href="/" { "Overview" }
                                a href="/fleet" { "Fleet" }
                                a href="/policies" { "Policies" }
                                a href="/events" { "Events" }
                                a href="/scans" { "Scans" }
                            }
                            div.who {
                                span { (session.operator.name) " · " (role(session)) }
                                form method="post" action="/signout" {
                                    (csrf_field(session))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                    main {
                        h1 { (self.title) }
                        @if let Some(error) = &self.error {
                            p.error role="alert" { (error) }
                        }
                        @if !self.errors.is_empty() {
                            ul.errors role="alert" {
                                @for error in &self.errors { li { code { (error) } } }
                            }
                        }
                        @if let Some(notice) = &self.notice {
                            p.notice role="status" { (notice) }
                        }
                        (self.body)
                    }
                }
            }
        };
        (
            self.status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            markup.into_string(),
        )
            .into_response()
    }
}

pub fn role(session: &Session) -> &'static str {
    if session.is_admin() {
        "admin"
    } else {
        "viewer"
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// `2026-12-07 05:31:12Z`, or `—` for none.
pub fn time(timestamp: Option<&pbjson_types::Timestamp>) -> String {
    timestamp
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            )
        })
        .unwrap_or_else(|| "—".to_owned())
}

/// `path?query` with the given parameters (empty ones left out), URL-encoded.
pub fn link<T: Serialize>(path: &str, query: &T) -> String {
    match serde_urlencoded::to_string(query) {
        Ok(query) if !query.is_empty() => {
            let query: Vec<&str> = query.split('&').filter(|p| !p.ends_with('=')).collect();
            if query.is_empty() {
                path.to_owned()
            } else {
                format!("{path}?{}", query.join("&"))
            }
        }
        _ => path.to_owned(),
    }
}

/// A path segment, percent-encoded (names are DNS labels, event ids UUIDs, scan ids digests or
/// references with `/` and `:`).
pub fn segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
