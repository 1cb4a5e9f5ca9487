//! Sign-in with an operator token, and sign-out.

use axum::{
    Form,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use maud::html;
use serde::Deserialize;
use tonic::{Code, metadata::MetadataMap};
use tracing::info;

use super::{Console, Signed, csrf_refused, layout::Page, session};
use crate::auth::Access;

/// Longest token accepted in the form (operator tokens are 64 characters or so).
const MAX_TOKEN_CHARS: usize = 512;

pub async fn form(signed: Option<Signed>) -> Response {
    if signed.is_some() {
        return Redirect::to("/").into_response();
    }
    signin_page(StatusCode::OK, None)
}

fn signin_page(status: StatusCode, error: Option<&str>) -> Response {
    let mut page = Page::anonymous("Sign in").status(status).body(html! {
        form.signin method="post" action="/signin" {
            label for="token" { "Operator token" }
            input #token type="password" name="token" autocomplete="off" required autofocus;
            p.hint { "An admin or viewer token of this control plane (the bootstrap admin token, or one from --tokens-file). Agent tokens cannot sign in." }
            button type="submit" { "Sign in" }
        }
    });
    if let Some(error) = error {
        page = page.error(error);
    }
    page.render()
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    token: String,
}

pub async fn submit(
    State(console): State<Console>,
    headers: HeaderMap,
    Form(form): Form<SignIn>,
) -> Response {
    let token = form.token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_CHARS || !token.is_ascii() {
        return signin_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not a token of this control plane."),
        );
    }
    let mut metadata = MetadataMap::new();
    let Ok(value) = format!("Bearer {token}").parse() else {
        return signin_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not a token of this control plane."),
        );
    };
    metadata.insert("authorization", value);
    match console.inner().auth.operator(&metadata, Access::Read).await {
        Ok(operator) => {
            info!(operator = %operator.name, role = ?operator.role, "Console sign-in");
            // A session this browser still had ends: one browser, one session.
            if let Some(previous) = session::cookie_value(&headers) {
                console.inner().sessions.end(previous);
            }
            let (cookie, _) = console.inner().sessions.create(operator, token);
            (
                [(header::SET_COOKIE, session::set_cookie(&cookie))],
                Redirect::to("/"),
            )
                .into_response()
        }
        Err(status) if status.code() == Code::PermissionDenied => signin_page(
            StatusCode::FORBIDDEN,
            Some("That is an agent's token: agents cannot sign in to the console."),
        ),
        Err(status) if status.code() == Code::Unavailable => {
            signin_page(StatusCode::SERVICE_UNAVAILABLE, Some(status.message()))
        }
        Err(_) => signin_page(
            StatusCode::UNAUTHORIZED,
            Some("That is not a token of this control plane."),
        ),
    }
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

pub async fn signout(
    State(console): State<Console>,
    Signed(session): Signed,
    headers: HeaderMap,
    Form(form): Form<SignOut>,
) -> Response {
    if !session.csrf_matches(&form.csrf) {
        return csrf_refused(&session);
    }
    if let Some(value) = session::cookie_value(&headers) {
        console.inner().sessions.end(value);
    }
    (
        [(header::SET_COOKIE, session::clear_cookie())],
        Redirect::to("/signin"),
    )
        .into_response()
}
