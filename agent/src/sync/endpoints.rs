//! The control plane's addresses and the order the sync client tries them in. Every
//! `--control-plane` URL counts as one endpoint per IP address its host resolves to (resolved
//! again at every round); a round tries each endpoint once, starting from the one that last
//! worked, or from the one after it when its stream ended.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use http::Uri;

/// A name lookup taking longer than this fails the URL for the round.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A control plane URL, checked: `https://` with a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlPlaneUrl {
    text: String,
    uri: Uri,
    /// The host without the brackets of an IPv6 literal: the name the certificate must carry.
    host: String,
    port: u16,
}

impl ControlPlaneUrl {
    /// Accepts `https://` URLs only, so the agent's token never travels in cleartext.
    pub fn parse(text: &str) -> Result<Self, String> {
        let https = text
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
            && text.len() > 8;
        if !https {
            return Err(format!(
                "{text:?} is not an https:// URL: the control plane only speaks TLS, and the \
                 agent's token must not travel in cleartext"
            ));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("{text:?} has no host"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        Ok(Self {
            text: text.to_owned(),
            uri,
            host,
            port,
        })
    }

    /// The host as the TLS certificate must name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The address of a URL whose host is an IP address (no lookup needed).
    fn literal(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for ControlPlaneUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// One place to connect to: an IP address of a URL's host, whose certificate is checked
/// against that host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub url: ControlPlaneUrl,
    pub address: SocketAddr,
}

impl Endpoint {
    /// The URI to connect to: the address (requests still carry the URL as their origin).
    pub fn connect_uri(&self) -> String {
        format!("https://{}", self.address)
    }
}

impl fmt::Display for Endpoint {
    /// The URL, and the address when the URL names a host rather than an IP address.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.url.literal().is_some() {
            write!(f, "{}", self.url)
        } else {
            write!(f, "{} ({})", self.url, self.address)
        }
    }
}

/// The endpoints of a round: each URL's addresses in the order given (URLs in flag order,
/// addresses in the resolver's order), each address once.
pub fn endpoints(resolved: Vec<(ControlPlaneUrl, Vec<SocketAddr>)>) -> Vec<Endpoint> {
    let mut all: Vec<Endpoint> = Vec::new();
    for (url, addresses) in resolved {
        for address in addresses {
            if !all.iter().any(|e| e.address == address) {
                all.push(Endpoint {
                    url: url.clone(),
                    address,
                });
            }
        }
    }
    all
}

/// Resolves every URL's host (IP addresses as they are): the round's endpoints, and the URLs
/// that could not be resolved with why.
pub async fn resolve(urls: &[ControlPlaneUrl]) -> (Vec<Endpoint>, Vec<(ControlPlaneUrl, String)>) {
    let lookups = urls.iter().map(|url| async move {
        if let Some(address) = url.literal() {
            return (url, Ok(vec![address]));
        }
        let lookup = tokio::net::lookup_host((url.host.as_str(), url.port));
        let result = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
            Err(_) => Err(format!("resolving {}: timed out", url.host)),
            Ok(Err(e)) => Err(format!("resolving {}: {e}", url.host)),
            Ok(Ok(found)) => {
                let found: Vec<SocketAddr> = found.collect();
                if found.is_empty() {
                    Err(format!("resolving {}: no address", url.host))
                } else {
                    Ok(found)
                }
            }
        };
        (url, result)
    });
    let mut resolved = Vec::new();
    let mut failed = Vec::new();
    for (url, result) in futures::future::join_all(lookups).await {
        match result {
            Ok(addresses) => resolved.push((url.clone(), addresses)),
            Err(error) => failed.push((url.clone(), error)),
        }
    }
    (endpoints(resolved), failed)
}

/// Where the next round starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Rotation {
    /// Nothing has worked yet: the first endpoint.
    #[default]
    First,
    /// The endpoint that last worked.
    At(Endpoint),
    /// The endpoint after this one, whose stream ended (it comes last in the round).
    After(Endpoint),
}

impl Rotation {
    /// The order to try `endpoints` in: from where the rotation starts, wrapping around. An
    /// endpoint gone from the names' addresses is stood for by its URL's first address.
    pub fn order(&self, mut endpoints: Vec<Endpoint>) -> Vec<Endpoint> {
        let (last, after) = match self {
            Rotation::First => return endpoints,
            Rotation::At(last) => (last, false),
            Rotation::After(last) => (last, true),
        };
        let start = match endpoints.iter().position(|e| e == last) {
            Some(index) => index + usize::from(after),
            None => endpoints
                .iter()
                .position(|e| e.url == last.url)
                .unwrap_or(0),
        };
        let len = endpoints.len();
        if len > 0 {
            endpoints.rotate_left(start % len);
        }
        endpoints
    }

    /// A stream got going on `endpoint`: the next round starts there.
    pub fn worked(&mut self, endpoint: &Endpoint) {
        *self = Rotation::At(endpoint.clone());
    }

    /// The stream on `endpoint` ended after it got going: the next round starts after it.
    pub fn ended(&mut self, endpoint: &Endpoint) {
        *self = Rotation::After(endpoint.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_url(text: &str) -> ControlPlaneUrl {
        ControlPlaneUrl::parse(text).unwrap()
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// The addresses of `endpoints`, for comparing orders.
    fn addresses(endpoints: &[Endpoint]) -> Vec<String> {
        endpoints.iter().map(|e| e.address.to_string()).collect()
    }

    /// `a.example` at 10.0.0.1 and .2, `b.example` at 10.0.0.3.
    fn two_names() -> Vec<Endpoint> {
        endpoints(vec![
            (
                mk_url("https://a.example:8443"),
                vec![addr("10.0.0.1:8443"), addr("10.0.0.2:8443")],
            ),
            (
                mk_url("https://b.example:8443"),
                vec![addr("10.0.0.3:8443")],
            ),
        ])
    }

    #[test]
    fn urls_are_https_with_a_host() {
        let url = mk_url("https://cp.example.com:8443");
        assert_eq!((url.host(), url.port), ("cp.example.com", 8443));
        assert_eq!(mk_url("HTTPS://cp.example.com").port, 443);
        let v6 = mk_url("https://[::1]:9000");
        assert_eq!((v6.host(), v6.literal()), ("::1", Some(addr("[::1]:9000"))));
        for bad in ["http://cp:8443", "cp:8443", "https://", ""] {
            let error = ControlPlaneUrl::parse(bad).unwrap_err();
            assert!(error.contains("is not an https:// URL"), "{bad}: {error}");
        }
        for bad in ["https://a b", "https://:8443"] {
            assert!(ControlPlaneUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_counts_once_per_address_and_each_address_once() {
        let all = endpoints(vec![
            (
                mk_url("https://a.example:8443"),
                vec![addr("10.0.0.1:8443"), addr("10.0.0.2:8443")],
            ),
            // The same replica under a second name, and the first name again.
            (
                mk_url("https://b.example:8443"),
                vec![addr("10.0.0.2:8443"), addr("10.0.0.3:8443")],
            ),
            (
                mk_url("https://a.example:8443"),
                vec![addr("10.0.0.1:8443")],
            ),
        ]);
        assert_eq!(
            addresses(&all),
            ["10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443"]
        );
        assert_eq!(all[1].url.host(), "a.example");
        assert_eq!(all[2].url.host(), "b.example");
        assert_eq!(all[1].to_string(), "https://a.example:8443 (10.0.0.2:8443)");
        assert_eq!(all[1].connect_uri(), "https://10.0.0.2:8443");
    }

    #[test]
    fn an_ip_address_is_connected_to_as_given() {
        let all = endpoints(vec![(
            mk_url("https://127.0.0.1:8443/"),
            vec![addr("127.0.0.1:8443")],
        )]);
        assert_eq!(all[0].to_string(), "https://127.0.0.1:8443/");
        assert_eq!(all[0].connect_uri(), "https://127.0.0.1:8443");
        assert_eq!(all[0].url.host(), "127.0.0.1");
    }

    #[tokio::test]
    async fn ip_addresses_need_no_lookup_and_names_are_resolved() {
        let urls = [
            mk_url("https://127.0.0.1:1"),
            mk_url("https://localhost:2"),
            mk_url("https://127.0.0.1:1"),
        ];
        let (found, failed) = resolve(&urls).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(found[0].address, addr("127.0.0.1:1"));
        assert!(
            found[1..].iter().all(|e| e.address.port() == 2),
            "{found:?}"
        );
        assert!(found[1..].iter().all(|e| e.address.ip().is_loopback()));
        let (found, failed) = resolve(&[mk_url("https://portcullis.invalid")]).await;
        assert!(found.is_empty());
        assert!(
            failed[0].1.starts_with("resolving portcullis.invalid: "),
            "{failed:?}"
        );
    }

    #[test]
    fn rounds_start_from_the_endpoint_that_last_worked() {
        let all = two_names();
        let mut rotation = Rotation::default();
        assert_eq!(
            addresses(&rotation.order(all.clone())),
            ["10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443"]
        );
        rotation.worked(&all[1]);
        assert_eq!(
            addresses(&rotation.order(all.clone())),
            ["10.0.0.2:8443", "10.0.0.3:8443", "10.0.0.1:8443"]
        );
        // Its stream ended: the others first, then it again.
        rotation.ended(&all[1]);
        assert_eq!(
            addresses(&rotation.order(all.clone())),
            ["10.0.0.3:8443", "10.0.0.1:8443", "10.0.0.2:8443"]
        );
        rotation.ended(&all[2]);
        assert_eq!(
            addresses(&rotation.order(all.clone())),
            ["10.0.0.1:8443", "10.0.0.2:8443", "10.0.0.3:8443"]
        );
    }

    #[test]
    fn an_address_gone_from_the_name_is_stood_for_by_its_url() {
        let all = two_names();
        let mut rotation = Rotation::default();
        rotation.worked(&all[2]);
        // b.example moved to 10.0.0.4.
        let moved = endpoints(vec![
            (
                mk_url("https://a.example:8443"),
                vec![addr("10.0.0.1:8443")],
            ),
            (
                mk_url("https://b.example:8443"),
                vec![addr("10.0.0.4:8443")],
            ),
        ]);
        assert_eq!(
            addresses(&rotation.order(moved)),
            ["10.0.0.4:8443", "10.0.0.1:8443"]
        );
        // A URL no longer given (or not resolved this round): from the first.
        let only_a = endpoints(vec![(
            mk_url("https://a.example:8443"),
            vec![addr("10.0.0.1:8443")],
        )]);
        assert_eq!(addresses(&rotation.order(only_a)), ["10.0.0.1:8443"]);
        assert!(rotation.order(Vec::new()).is_empty());
    }

    #[test]
    fn one_address_is_always_tried() {
        let one = endpoints(vec![(
            mk_url("https://127.0.0.1:8443"),
            vec![addr("127.0.0.1:8443")],
        )]);
        let mut rotation = Rotation::default();
        rotation.ended(&one[0]);
        assert_eq!(rotation.order(one.clone()), one);
    }
}
