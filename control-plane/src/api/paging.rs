//! Page tokens: opaque to clients, bound to the listing that issued them, so a token from
//! another query is refused rather than silently misread.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::Status;

pub const DEFAULT_PAGE_SIZE: usize = 100;
pub const MAX_PAGE_SIZE: usize = 1000;

/// The page size a request asked for, defaulted and capped.
pub fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// A token that resumes `listing` after `last_key`.
pub fn encode(listing: &str, last_key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{listing}\n{last_key}"))
}

/// The key to resume after, or None for the first page.
pub fn decode(listing: &str, token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || Status::invalid_argument(format!("page_token: not a token of {listing}"));
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let (from, key) = text.split_once('\n').ok_or_else(invalid)?;
    if from != listing {
        return Err(invalid());
    }
    Ok(Some(key.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_tokens() {
        let token = encode("ListPolicies", "abc");
        assert_eq!(
            decode("ListPolicies", &token).unwrap().as_deref(),
            Some("abc")
        );
        assert_eq!(decode("ListPolicies", "").unwrap(), None);
        for bad in [
            encode("ListClusters", "abc"),
            "!!".into(),
            URL_SAFE_NO_PAD.encode("x"),
        ] {
            let err = decode("ListPolicies", &bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(page_size(0), DEFAULT_PAGE_SIZE);
        assert_eq!(page_size(5), 5);
        assert_eq!(page_size(1_000_000), MAX_PAGE_SIZE);
    }
}
