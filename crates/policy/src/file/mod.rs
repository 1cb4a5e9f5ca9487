//! Policy files as operators write them: a YAML stream of one or more documents (`---`), or
//! JSON (an object, an array of objects, or several objects in a row). Each document is read
//! straight into the proto's serde form, so YAML, JSON and grpcurl documents are one model.
//! Unknown fields are errors; errors name the document, line and column.

mod documents;
mod nesting;

pub use nesting::{MAX_FLOW_DEPTH, TooDeep, check_flow_depth};

use std::cell::Cell;
use std::fmt;

use portcullis_proto::v1 as proto;
use serde::de::{Deserialize, DeserializeSeed, IgnoredAny};

use documents::{DocumentSeed, NoEmptyValues};

/// Where in a policy file an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceLocation {
    /// 1-based YAML document (or top-level JSON value), empty documents included.
    pub document: usize,
    /// 1-based entry when the document is a list of policies.
    pub item: Option<usize>,
    /// 1-based line, when the parser knows it.
    pub line: Option<usize>,
    /// 1-based column, when the parser knows it.
    pub column: Option<usize>,
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(column) = self.column {
            write!(f, ", column {column}")?;
        }
        Ok(())
    }
}

/// Why a policy file could not be read. Field validation comes later (`Policy::try_from`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyFileError {
    /// The text is not well-formed YAML or JSON.
    #[error("{at}: {message}")]
    Syntax { at: SourceLocation, message: String },
    /// Well-formed, but a document is not a policy (unknown field, wrong type, ...).
    #[error("{at}: {message}")]
    Document { at: SourceLocation, message: String },
}

/// Reads every policy in a file, in order; empty documents are skipped. JSON is read with a
/// JSON parser (YAML parsers reject the tabs JSON allows, and accept broken JSON such as
/// `{"a": }` as YAML), everything else, including YAML flow mappings, as YAML.
pub fn parse_policy_documents(text: &str) -> Result<Vec<proto::Policy>, PolicyFileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if looks_like_json(text) {
        parse_json(text)
    } else {
        parse_yaml(text)
    }
}

/// JSON starts with `{"`, `{}`, or arrays of those (`[`, `[]`); a YAML flow mapping starts
/// with an unquoted key (`{name: a}`).
fn looks_like_json(text: &str) -> bool {
    let rest = text
        .trim_start()
        .trim_start_matches(|c: char| c == '[' || c.is_whitespace());
    if rest.len() < text.trim_start().len() && (rest.is_empty() || rest.starts_with(']')) {
        return true;
    }
    rest.strip_prefix('{')
        .is_some_and(|r| r.trim_start().starts_with(['"', '}']))
}

fn parse_yaml(text: &str) -> Result<Vec<proto::Policy>, PolicyFileError> {
    // Refused before the YAML parser, whose work grows with the square of the flow depth.
    check_flow_depth(text, MAX_FLOW_DEPTH).map_err(|e| PolicyFileError::Syntax {
        at: SourceLocation {
            document: document_at_line(text, e.line),
            item: None,
            line: Some(e.line),
            column: Some(e.column),
        },
        message: format!("nested more than {} levels deep", e.max),
    })?;
    // Syntax first, over the whole stream, so a broken file is reported as such even when an
    // earlier document has a field error.
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        IgnoredAny::deserialize(document)
            .map_err(|e| yaml_error(i + 1, None, &e, ErrorKind::Syntax))?;
    }
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        NoEmptyValues { in_map: false }
            .deserialize(document)
            .map_err(|e| yaml_error(i + 1, None, &e, ErrorKind::Document))?;
    }
    let mut policies = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let item = Cell::new(None);
        let parsed = DocumentSeed { item: &item }
            .deserialize(document)
            .map_err(|e| yaml_error(i + 1, item.get(), &e, ErrorKind::Document))?;
        policies.extend(parsed);
    }
    Ok(policies)
}

/// The 1-based YAML document that `line` is in (documents start after `---` lines; a `---`
/// on the first line opens the first document).
pub fn document_at_line(text: &str, line: usize) -> usize {
    let separators = text
        .lines()
        .take(line.saturating_sub(1))
        .enumerate()
        .filter(|(i, l)| *i > 0 && l.starts_with("---"))
        .count();
    separators + 1
}

fn parse_json(text: &str) -> Result<Vec<proto::Policy>, PolicyFileError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let mut policies = Vec::new();
    let mut document = 0;
    loop {
        document += 1;
        let item = Cell::new(None);
        let parsed = DocumentSeed { item: &item }
            .deserialize(&mut deserializer)
            .map_err(|e| json_error(document, item.get(), &e))?;
        policies.extend(parsed);
        // `end` only skips whitespace: anything else is the next document.
        if deserializer.end().is_ok() {
            return Ok(policies);
        }
    }
}

#[derive(Clone, Copy)]
enum ErrorKind {
    Syntax,
    Document,
}

fn yaml_error(
    document: usize,
    item: Option<usize>,
    error: &serde_yaml::Error,
    kind: ErrorKind,
) -> PolicyFileError {
    let location = error.location();
    let mut message = error.to_string();
    if let Some(l) = &location {
        // The location is reported on its own; drop it from the message.
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        message = message.replacen(&suffix, "", 1);
    }
    // serde_yaml writes the root as "." ("..[1].rules: ..."): keep "[1].rules: ...".
    if message.starts_with(".[") {
        message.remove(0);
    }
    let at = SourceLocation {
        document,
        item,
        line: location.as_ref().map(serde_yaml::Location::line),
        column: location.as_ref().map(serde_yaml::Location::column),
    };
    match kind {
        ErrorKind::Syntax => PolicyFileError::Syntax {
            at,
            message: format!("invalid YAML: {message}"),
        },
        ErrorKind::Document => PolicyFileError::Document { at, message },
    }
}

fn json_error(document: usize, item: Option<usize>, error: &serde_json::Error) -> PolicyFileError {
    let (line, column) = (error.line(), error.column());
    let full = error.to_string();
    let message = full
        .strip_suffix(&format!(" at line {line} column {column}"))
        .unwrap_or(&full)
        .to_owned();
    let known = line > 0;
    let at = SourceLocation {
        document,
        item,
        line: known.then_some(line),
        column: known.then_some(column),
    };
    match error.classify() {
        serde_json::error::Category::Data => PolicyFileError::Document { at, message },
        _ => PolicyFileError::Syntax {
            at,
            message: format!("invalid JSON: {message}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> PolicyFileError {
        parse_policy_documents(text).unwrap_err()
    }

    fn at(error: &PolicyFileError) -> &SourceLocation {
        match error {
            PolicyFileError::Syntax { at, .. } | PolicyFileError::Document { at, .. } => at,
        }
    }

    #[test]
    fn yaml_stream_skips_empty_documents() {
        let text = concat!(
            "---\n---\nname: a\nrules: {image: {requireDigest: true}}\n",
            "---\n# nothing\n---\nname: b\n",
        );
        let names: Vec<_> = parse_policy_documents(text)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(parse_policy_documents("").unwrap(), []);
        assert_eq!(parse_policy_documents("# just a comment\n").unwrap(), []);
    }

    #[test]
    fn yaml_document_may_be_a_list() {
        let policies = parse_policy_documents("- name: a\n- name: b\n").unwrap();
        assert_eq!(policies.len(), 2);
    }

    #[test]
    fn json_object_array_and_sequence() {
        let one = parse_policy_documents(r#"{"name": "a"}"#).unwrap();
        assert_eq!(one[0].name, "a");
        let array = parse_policy_documents("[{\"name\": \"a\"},\n\t{\"name\": \"b\"}]").unwrap();
        assert_eq!(array.len(), 2);
        let sequence = parse_policy_documents("{\"name\": \"a\"}\n{\"name\": \"b\"}\n").unwrap();
        assert_eq!(sequence.len(), 2);
    }

    #[test]
    fn yaml_flow_mapping_is_not_mistaken_for_json() {
        let policies = parse_policy_documents("{name: a, enabled: false}").unwrap();
        assert_eq!(policies[0].name, "a");
        assert_eq!(policies[0].enabled, Some(false));
        assert_eq!(parse_policy_documents("[{name: a}]").unwrap().len(), 1);
    }

    #[test]
    fn json_detection() {
        for json in [
            "{}",
            " {\"a\": 1}",
            "[]",
            "[ ]",
            "[{\"a\": 1}]",
            "[\n  {\n\t\"a\": 1}]",
            "{ }",
        ] {
            assert!(looks_like_json(json), "{json}");
        }
        for yaml in [
            "",
            "name: a",
            "{name: a}",
            "[{name: a}]",
            "- {\"a\": 1}",
            "# {\"a\"",
        ] {
            assert!(!looks_like_json(yaml), "{yaml}");
        }
    }

    #[test]
    fn unknown_field_names_the_document_line_and_field() {
        let text =
            "name: a\n---\nname: b\nrules:\n  image:\n    vulnerabilities:\n      fixable: true\n";
        let error = parse_err(text);
        assert!(
            matches!(error, PolicyFileError::Document { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("document 2, line 7, column 7: "),
            "{message}"
        );
        assert!(message.contains("unknown field `fixable`"), "{message}");
        assert!(message.contains("rules.image.vulnerabilities"), "{message}");
    }

    #[test]
    fn unknown_field_in_json_list_names_the_item() {
        let error = parse_err("[{\"name\": \"a\"},\n {\"name\": \"b\", \"bogus\": 1}]");
        assert_eq!(
            at(&error),
            &SourceLocation {
                document: 1,
                item: Some(2),
                line: Some(2),
                column: Some(22),
            }
        );
        assert!(
            error.to_string().contains("unknown field `bogus`"),
            "{error}"
        );
    }

    #[test]
    fn wrong_type_is_a_document_error() {
        let error = parse_err("name: a\nscope:\n  kinds: Pod\n");
        assert!(
            matches!(error, PolicyFileError::Document { .. }),
            "{error:?}"
        );
        assert_eq!(at(&error).line, Some(3));
        assert!(error.to_string().contains("scope.kinds"), "{error}");
        let error = parse_err("just some words\n");
        assert!(
            error
                .to_string()
                .contains("a policy (a mapping) or a list of policies"),
            "{error}"
        );
    }

    #[test]
    fn broken_yaml_is_a_syntax_error_with_position() {
        let error = parse_err("name: a\nscope: [unclosed\n---\nname: b\n");
        assert!(matches!(error, PolicyFileError::Syntax { .. }), "{error:?}");
        let location = at(&error);
        assert_eq!(location.document, 1);
        assert!(
            location.line.is_some() && location.column.is_some(),
            "{error}"
        );
        assert!(error.to_string().contains("invalid YAML"), "{error}");

        let error = parse_err("name: a\n  bad: indentation\n");
        assert!(matches!(error, PolicyFileError::Syntax { .. }), "{error:?}");
        assert_eq!(at(&error).line, Some(2));
    }

    #[test]
    fn broken_json_is_a_syntax_error_with_position() {
        let error = parse_err("{\"name\": \"a\",\n  \"rules\": }");
        assert!(matches!(error, PolicyFileError::Syntax { .. }), "{error:?}");
        assert_eq!(at(&error).line, Some(2));
        assert_eq!(at(&error).column, Some(12));
        assert!(
            error
                .to_string()
                .starts_with("document 1, line 2, column 12: invalid JSON: "),
            "{error}"
        );
    }

    #[test]
    fn binary_garbage_is_an_error() {
        let error = parse_err("\u{1}\u{2}garbage: [}\n");
        assert!(matches!(error, PolicyFileError::Syntax { .. }), "{error:?}");
        assert!(at(&error).line.is_some(), "{error}");
    }

    #[test]
    fn yaml_key_without_value_is_an_error() {
        let text = "name: a\nrules:\n  resource:\n    hostProbes: {}\n    privileged:\n";
        let error = parse_err(text);
        assert!(
            matches!(error, PolicyFileError::Document { .. }),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("document 1, line 5, column 16: "),
            "{message}"
        );
        assert!(
            message.contains("rules.resource.privileged: empty value: write {}"),
            "{message}"
        );
        let error = parse_err("- name: a\n  enabled: ~\n");
        assert!(
            error.to_string().contains("[0].enabled: empty value"),
            "{error}"
        );
        // Empty documents and null list entries are not map values.
        assert!(parse_policy_documents("---\n~\n---\n").unwrap().is_empty());
        // JSON keeps the proto3 meaning of null: the default.
        let policies = parse_policy_documents(r#"{"name": "a", "enabled": null}"#).unwrap();
        assert_eq!(policies[0].enabled, None);
    }

    #[test]
    fn list_item_errors_have_clean_paths() {
        let error = parse_err("- name: a\n- name: b\n  bogus: 1\n");
        let message = error.to_string();
        assert!(
            message.starts_with("document 1, item 2, line 3, column 3: [1]: unknown field `bogus`"),
            "{message}"
        );
    }

    #[test]
    fn duplicate_field_is_an_error() {
        let error = parse_err("name: a\nname: b\n");
        assert!(
            error.to_string().contains("duplicate field `name`"),
            "{error}"
        );
    }

    #[test]
    fn location_display() {
        let location = SourceLocation {
            document: 1,
            item: Some(3),
            line: Some(4),
            column: Some(5),
        };
        assert_eq!(location.to_string(), "document 1, item 3, line 4, column 5");
        let location = SourceLocation {
            document: 2,
            item: None,
            line: None,
            column: None,
        };
        assert_eq!(location.to_string(), "document 2");
    }
}
