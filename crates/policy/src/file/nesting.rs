//! A linear check of how deep a YAML or JSON text nests flow collections (`[`, `{`), run
//! before a YAML parser sees the text: libyaml (under serde_yaml) does work per token for each
//! open flow level, so a hostile file of 100,000 `[` took 76 s to refuse. Kubernetes objects
//! and policies nest a dozen levels; `MAX_FLOW_DEPTH` is far above that.
//!
//! The scan knows just enough YAML to count brackets outside quoted scalars and comments, and is
//! built to err towards counting too deep, never too shallow: every place a quoted scalar may
//! start (after whitespace, a line start or `[{,:-?`) starts a string, so no real string is
//! missed and its `]`s are never taken for closings; the `[`s inside what the scan takes for a
//! string still count until that string ends, so a quote that a YAML parser reads as plain text
//! cannot hide real openings; and a string outside any flow collection ends with its line.

/// Deepest flow nesting accepted.
pub const MAX_FLOW_DEPTH: usize = 64;

/// Where the text first nests deeper than allowed (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: nested more than {max} levels deep (flow collections)")]
pub struct TooDeep {
    pub line: usize,
    pub column: usize,
    pub max: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Plain,
    Double,
    Single,
    Comment,
}

/// Checks that `text` nests flow collections at most `max` deep. O(text), no allocation.
pub fn check_flow_depth(text: &str, max: usize) -> Result<(), TooDeep> {
    let bytes = text.as_bytes();
    let (mut depth, mut state) = (0usize, State::Plain);
    let (mut line, mut line_start) = (1, 0);
    // The last byte that was neither a space nor a tab, on this line (None at its start).
    let mut previous: Option<u8> = None;
    // Openings seen inside the current string: counted while it lasts, taken back at its end.
    let mut in_string = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\n' {
            line += 1;
            line_start = i + 1;
            previous = None;
            // Outside flow collections a quoted scalar is taken to end with its line.
            if state == State::Comment || depth <= in_string {
                if matches!(state, State::Double | State::Single) {
                    depth -= in_string;
                    in_string = 0;
                }
                state = State::Plain;
            }
            i += 1;
            continue;
        }
        let too_deep = |depth: usize| {
            (depth > max).then(|| TooDeep {
                line,
                column: text[line_start..i].chars().count() + 1,
                max,
            })
        };
        match state {
            State::Comment => {}
            State::Double | State::Single => {
                let ends = match (state, b) {
                    (State::Double, b'\\') => {
                        i += 1;
                        false
                    }
                    (State::Double, b'"') => true,
                    (State::Single, b'\'') if bytes.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        false
                    }
                    (State::Single, b'\'') => true,
                    (_, b'[' | b'{') => {
                        depth += 1;
                        in_string += 1;
                        if let Some(error) = too_deep(depth) {
                            return Err(error);
                        }
                        false
                    }
                    _ => false,
                };
                if ends {
                    depth -= in_string;
                    in_string = 0;
                    state = State::Plain;
                }
            }
            State::Plain => {
                let scalar_start = i == line_start
                    || matches!(bytes[i - 1], b' ' | b'\t')
                    || matches!(previous, Some(b'[' | b'{' | b',' | b':' | b'-' | b'?'));
                match b {
                    b'[' | b'{' => {
                        depth += 1;
                        if let Some(error) = too_deep(depth) {
                            return Err(error);
                        }
                    }
                    b']' | b'}' => depth = depth.saturating_sub(1),
                    b'"' if scalar_start => state = State::Double,
                    b'\'' if scalar_start => state = State::Single,
                    b'#' if i == line_start || matches!(bytes[i - 1], b' ' | b'\t') => {
                        state = State::Comment;
                    }
                    _ => {}
                }
            }
        }
        if !matches!(b, b' ' | b'\t') {
            previous = Some(b);
        }
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_ok(text: &str) -> bool {
        check_flow_depth(text, 3).is_ok()
    }

    #[test]
    fn counts_flow_collections_outside_strings_and_comments() {
        assert!(depth_ok("a: [[[1]]]"));
        assert!(!depth_ok("a: [[[[1]]]]"));
        assert!(depth_ok(r#"{"a": {"b": {"c": "]]]]]]"}}}"#));
        assert!(depth_ok(r#"{"a": {"b": "[x]"}, "d": "[[y]]"}"#));
        // Openings inside a string count while it lasts (the safe side).
        assert!(!depth_ok(r#"{"a": {"b": {"c": "[x]"}}}"#));
        assert!(depth_ok("a: '[ it''s ]]]]'"));
        assert!(depth_ok("a: 1 # [[[[[[\nb: 2"));
        assert!(depth_ok("a: \"\\\"]]]]]]\""));
        let error = check_flow_depth("a: 1\nb: [[[[x]]]]", 3).unwrap_err();
        assert_eq!((error.line, error.column), (2, 7));
        // Closing brackets in strings do not hide opening ones outside.
        assert!(!depth_ok(r#"[ "]", [ "]", [ "]", [ "]" ]]]]"#));
        assert!(!depth_ok("[ ']', [ ']', [ ']', [ ']' ]]]]"));
        // A `#` inside a plain scalar is not a comment.
        assert!(!depth_ok("[a#b, [[[x]]]]"));
    }

    /// A quote that a YAML parser reads as text (in a block scalar, inside a plain scalar)
    /// must not make the check skip what follows.
    #[test]
    fn a_stray_quote_cannot_hide_the_lines_after_it() {
        assert!(!depth_ok("a: |\n  \"\nb: [[[[x]]]]"));
        assert!(!depth_ok("a: it\"s\nb: [[[[x]]]]"));
        assert!(!depth_ok("a: x'y [[[[x]]]]"));
        // Quotes YAML reads as text inside plain scalars (after a tag, a dash, a colon) may
        // be taken for strings: their openings still count.
        assert!(!depth_ok(r#"[a-", [[[[x"#));
        assert!(!depth_ok(r#"[a:", [[[[x"#));
        assert!(!depth_ok(
            "[ !!str \"]\", [ !!str \"]\", [ !!str \"]\", [ !!str \"]\" ]]]]"
        ));
        // ... and a string that ends puts its openings back.
        assert!(depth_ok(r#"["[[", ["[", ["", "x"]]]"#));
    }

    #[test]
    fn deep_files_are_refused_in_linear_time() {
        let n = 1_000_000;
        let deep = "[".repeat(n) + &"]".repeat(n);
        let started = std::time::Instant::now();
        assert!(check_flow_depth(&deep, MAX_FLOW_DEPTH).is_err());
        let fine = "{\"a\": [1, 2, {\"b\": \"c\"}]}\n".repeat(100_000);
        assert!(check_flow_depth(&fine, MAX_FLOW_DEPTH).is_ok());
        // ~30 ms in a debug build; quadratic work would take hours.
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }
}
