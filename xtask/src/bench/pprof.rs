//! Where the API server spends its CPU: a Go CPU profile (`/debug/pprof/profile`, the pprof
//! protobuf format, gzipped) read without the Go toolchain, and its samples under the
//! validating-webhook dispatcher attributed to what their innermost recognizable frame does
//! (TLS, JSON, HTTP, the Go runtime, other).

use std::{collections::HashMap, io::Read};

use anyhow::{Context, Result};

/// The subset of pprof's `profile.proto` needed to name the functions of each sample.
#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
}

/// CPU time by what it was spent on.
#[derive(Debug, Default)]
pub struct Breakdown {
    /// All CPU time in the profile, in nanoseconds.
    pub total_ns: i64,
    /// Under the webhook dispatcher, by category, largest first.
    pub webhook: Vec<(&'static str, i64)>,
    pub webhook_ns: i64,
}

/// The category of a stack (innermost frame first): the first frame that says what it does.
fn category(frames: &[&str]) -> &'static str {
    for frame in frames {
        if frame.starts_with("crypto/") || frame.contains("vendor/golang.org/x/crypto") {
            return "TLS and crypto";
        }
        if frame.starts_with("encoding/json")
            || frame.contains("json-iterator")
            || frame.contains("sigs.k8s.io/json")
            || frame.contains("serializer/json")
        {
            return "JSON encode/decode";
        }
        if frame.starts_with("net/http") || frame.starts_with("golang.org/x/net/http2") {
            return "HTTP client";
        }
        if frame.starts_with("net.")
            || frame.starts_with("internal/poll")
            || frame.starts_with("syscall")
        {
            return "sockets and syscalls";
        }
        if frame.starts_with("runtime.") {
            continue; // allocation and GC on behalf of whatever called it
        }
    }
    if frames.iter().any(|f| f.starts_with("runtime.")) {
        "Go runtime (GC, allocation, scheduling)"
    } else {
        "other"
    }
}

/// Reads a gzipped pprof CPU profile and attributes the samples under the validating webhook
/// dispatcher (`k8s.io/apiserver/pkg/admission/plugin/webhook`).
pub fn breakdown(gzipped: &[u8]) -> Result<Breakdown> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut bytes)
        .context("the profile is not gzip")?;
    let profile = <Profile as prost::Message>::decode(bytes.as_slice())
        .context("the profile is not a pprof protobuf")?;
    let name = |i: i64| {
        profile
            .string_table
            .get(usize::try_from(i).unwrap_or(usize::MAX))
            .map(String::as_str)
            .unwrap_or("?")
    };
    // The value that holds CPU time: the sample type whose unit is nanoseconds.
    let value_index = profile
        .sample_type
        .iter()
        .position(|t| name(t.unit) == "nanoseconds")
        .context("no CPU time in the profile")?;
    let functions: HashMap<u64, &str> = profile
        .function
        .iter()
        .map(|f| (f.id, name(f.name)))
        .collect();
    let locations: HashMap<u64, Vec<&str>> = profile
        .location
        .iter()
        .map(|l| {
            let names = l
                .line
                .iter()
                .filter_map(|line| functions.get(&line.function_id).copied())
                .collect();
            (l.id, names)
        })
        .collect();
    let mut result = Breakdown::default();
    let mut by_category: HashMap<&'static str, i64> = HashMap::new();
    for sample in &profile.sample {
        let ns = sample.value.get(value_index).copied().unwrap_or(0);
        result.total_ns += ns;
        let frames: Vec<&str> = sample
            .location_id
            .iter()
            .filter_map(|id| locations.get(id))
            .flatten()
            .copied()
            .collect();
        if frames
            .iter()
            .any(|f| f.contains("admission/plugin/webhook"))
        {
            result.webhook_ns += ns;
            *by_category.entry(category(&frames)).or_default() += ns;
        }
    }
    let mut webhook: Vec<_> = by_category.into_iter().collect();
    webhook.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    result.webhook = webhook;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_attributed_to_their_innermost_known_frame() {
        assert_eq!(
            category(&[
                "runtime.mallocgc",
                "encoding/json.(*decodeState).object",
                "net/http.(*Client).Do"
            ]),
            "JSON encode/decode"
        );
        assert_eq!(
            category(&["crypto/aes.encryptBlock", "crypto/tls.(*Conn).Write"]),
            "TLS and crypto"
        );
        assert_eq!(
            category(&["runtime.gcBgMarkWorker"]),
            "Go runtime (GC, allocation, scheduling)"
        );
        assert_eq!(category(&["k8s.io/foo.Bar"]), "other");
    }

    #[test]
    fn a_profile_is_read_and_webhook_samples_counted() {
        use prost::Message;
        let strings = [
            "",
            "samples",
            "count",
            "cpu",
            "nanoseconds",
            "encoding/json.Marshal",
            "k8s.io/apiserver/pkg/admission/plugin/webhook/validating.(*Plugin).Validate",
            "main.other",
        ];
        let profile = Profile {
            sample_type: vec![
                ValueType { r#type: 1, unit: 2 },
                ValueType { r#type: 3, unit: 4 },
            ],
            sample: vec![
                Sample {
                    location_id: vec![1, 2],
                    value: vec![1, 30],
                },
                Sample {
                    location_id: vec![3],
                    value: vec![1, 70],
                },
            ],
            location: vec![
                Location {
                    id: 1,
                    line: vec![Line { function_id: 1 }],
                },
                Location {
                    id: 2,
                    line: vec![Line { function_id: 2 }],
                },
                Location {
                    id: 3,
                    line: vec![Line { function_id: 3 }],
                },
            ],
            function: vec![
                Function { id: 1, name: 5 },
                Function { id: 2, name: 6 },
                Function { id: 3, name: 7 },
            ],
            string_table: strings.iter().map(|s| (*s).to_owned()).collect(),
        };
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &profile.encode_to_vec()).unwrap();
        let result = breakdown(&gz.finish().unwrap()).unwrap();
        assert_eq!(result.total_ns, 100);
        assert_eq!(result.webhook_ns, 30);
        assert_eq!(result.webhook, [("JSON encode/decode", 30)]);
    }
}
