//! One TLS port for both: a request whose `content-type` is `application/grpc…` goes to the
//! gRPC services, every other request to the console.

use std::{
    convert::Infallible,
    task::{Context, Poll},
};

use axum::{
    Router,
    body::Body,
    http::{Request, header},
    response::Response,
};
use tower::{Service, util::Oneshot};

/// Routes each request to `grpc` or `console` by its content type.
#[derive(Clone)]
pub struct GrpcOrConsole {
    grpc: Router,
    console: Router,
}

impl GrpcOrConsole {
    pub fn new(grpc: Router, console: Router) -> Self {
        GrpcOrConsole { grpc, console }
    }
}

/// Whether a request is gRPC (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| {
            let value = value.as_bytes();
            value.len() >= 16
                && value[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(value.get(16), None | Some(b'+' | b';'))
        })
}

impl Service<Request<Body>> for GrpcOrConsole {
    type Response = Response;
    type Error = Infallible;
    type Future = Oneshot<Router, Request<Body>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both routers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let router = if is_grpc(&request) {
            self.grpc.clone()
        } else {
            self.console.clone()
        };
        Oneshot::new(router, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(content_type: &str) -> Request<()> {
        Request::builder()
            .header(header::CONTENT_TYPE, content_type)
            .body(())
            .unwrap()
    }

    #[test]
    fn grpc_by_content_type() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC;x=1",
        ] {
            assert!(is_grpc(&with(grpc)), "{grpc}");
        }
        for other in [
            "application/grpc-web",
            "application/grpcx",
            "application/x-www-form-urlencoded",
            "text/html",
            "",
        ] {
            assert!(!is_grpc(&with(other)), "{other}");
        }
        assert!(!is_grpc(&Request::new(())));
    }
}
