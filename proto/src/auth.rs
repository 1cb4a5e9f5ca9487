//! The bearer token a client sends on every call (`authorization: Bearer <token>`): one
//! interceptor for the CLI, the agent and the benchmarks.

use std::fmt;

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
};

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(MetadataValue<Ascii>);

/// Why a token cannot be sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidToken {
    Empty,
    NotAHeaderValue,
}

impl fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "the token is empty",
            Self::NotAHeaderValue => "the token has characters that cannot go in a header",
        })
    }
}

impl std::error::Error for InvalidToken {}

impl Bearer {
    pub fn new(token: &str) -> Result<Self, InvalidToken> {
        if token.is_empty() {
            return Err(InvalidToken::Empty);
        }
        MetadataValue::try_from(format!("Bearer {token}"))
            .map(Self)
            .map_err(|_| InvalidToken::NotAHeaderValue)
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_carries_the_token() {
        let mut bearer = Bearer::new("pca_x").unwrap();
        let request = bearer.call(Request::new(())).unwrap();
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer pca_x"
        );
        assert_eq!(Bearer::new("").err(), Some(InvalidToken::Empty));
        assert_eq!(
            Bearer::new("a\nb").err(),
            Some(InvalidToken::NotAHeaderValue)
        );
    }
}
