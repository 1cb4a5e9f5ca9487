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

/// Cuts a page's `items` to what fits `limits::RESPONSE_BUDGET_BYTES` encoded (at least one
/// item, which every store bounds well below it), so no listing's response can exceed the
/// message limit clients decode, whatever its items hold; true when items were cut (the
/// listing then resumes after the last one kept).
pub fn within_budget<T: prost::Message>(items: &mut Vec<T>) -> bool {
    let mut total = 0;
    // Each item is a length-delimited field: its bytes plus a tag and a length prefix.
    let keep = items
        .iter()
        .position(|item| {
            total += item.encoded_len() + 8;
            total > portcullis_proto::limits::RESPONSE_BUDGET_BYTES
        })
        .map(|at| at.max(1));
    match keep {
        Some(keep) if keep < items.len() => {
            items.truncate(keep);
            true
        }
        _ => false,
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
    fn pages_are_cut_to_the_response_budget() {
        let item = |n: usize| portcullis_proto::v1::Cluster {
            description: "d".repeat(n),
            ..Default::default()
        };
        let mut small: Vec<_> = (0..10).map(|_| item(100)).collect();
        assert!(!within_budget(&mut small));
        assert_eq!(small.len(), 10);
        let mut big: Vec<_> = (0..10).map(|_| item(1024 * 1024)).collect();
        assert!(within_budget(&mut big));
        assert_eq!(big.len(), 2);
        // One item over the budget still makes a page (its store bounds it).
        let mut huge = vec![item(4 * 1024 * 1024), item(1)];
        assert!(within_budget(&mut huge));
        assert_eq!(huge.len(), 1);
    }

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
