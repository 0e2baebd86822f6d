//! What a stored value may hold, so that every client's JSON reader can read it back: finite numbers, valid
//! Unicode (no lone surrogate escapes), no NUL character, and at most [`MAX_DEPTH`] levels of arrays and
//! objects. Python's and Go's JSON readers refuse `1e400`, strict UTF-16 readers refuse `"\ud800"`,
//! PostgreSQL's `jsonb` refuses both `\u0000` and lone surrogates: one such value in a pull would break every
//! device of its user, so a record carrying one is refused at the door, on every backend alike.
//!
//! The check runs on JSON text that serde_json already accepted (so it is syntactically valid, and valid
//! UTF-8 as a `&str`); it is one pass over the bytes and builds nothing. It must never accept what it does
//! not understand: anything unexpected is refused.

/// The deepest nesting of arrays and objects a column value may have (`[[1]]` is 2 deep).
pub const MAX_DEPTH: usize = 64;

/// Why a value cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ValueProblem {
    /// A number beyond the range of a 64-bit float (`1e400`), which readers turn into infinity or refuse.
    NumberOutOfRange,
    /// A lone UTF-16 surrogate escape (`"\ud800"`), or a raw control character in a string.
    InvalidUnicode,
    /// `\u0000` in a string.
    Nul,
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Checks one JSON value's text (already accepted by serde_json).
pub(crate) fn check_json(text: &str) -> Result<(), ValueProblem> {
    let b = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = check_string(b, i + 1)?,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(ValueProblem::TooDeep);
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                let mut exponent = false;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    exponent |= matches!(b[i], b'e' | b'E');
                    i += 1;
                }
                // Without an exponent, fewer than 300 digits always fit an f64 (its largest is ~1.8e308).
                if exponent || i - start >= 300 {
                    let finite = text[start..i].parse::<f64>().is_ok_and(|n| n.is_finite());
                    if !finite {
                        return Err(ValueProblem::NumberOutOfRange);
                    }
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Checks a string from just after its opening quote; returns the index just after its closing quote.
fn check_string(b: &[u8], mut i: usize) -> Result<usize, ValueProblem> {
    // A high surrogate escape seen just before, waiting for its low half.
    let mut pending_high = false;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            let escaped = *b.get(i + 1).ok_or(ValueProblem::InvalidUnicode)?;
            if escaped == b'u' {
                let unit = b
                    .get(i + 2..i + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                    .ok_or(ValueProblem::InvalidUnicode)?;
                match unit {
                    0 => return Err(ValueProblem::Nul),
                    0xD800..=0xDBFF if !pending_high => pending_high = true,
                    0xDC00..=0xDFFF if pending_high => pending_high = false,
                    0xD800..=0xDFFF => return Err(ValueProblem::InvalidUnicode),
                    _ if pending_high => return Err(ValueProblem::InvalidUnicode),
                    _ => {}
                }
                i += 6;
            } else {
                if pending_high {
                    return Err(ValueProblem::InvalidUnicode);
                }
                i += 2;
            }
            continue;
        }
        if pending_high {
            return Err(ValueProblem::InvalidUnicode);
        }
        match c {
            b'"' => return Ok(i + 1),
            0 => return Err(ValueProblem::Nul),
            0x01..=0x1F => return Err(ValueProblem::InvalidUnicode),
            _ => i += 1,
        }
    }
    Err(ValueProblem::InvalidUnicode)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), ValueProblem> {
        // Only what serde_json accepts reaches the check.
        serde_json::from_str::<&serde_json::value::RawValue>(text).unwrap();
        check_json(text)
    }

    #[test]
    fn readable_values_pass() {
        for ok in [
            "null",
            "0",
            "-0.5",
            "1e308",
            "-1.7976931348623157e308",
            "5e-400",
            r#""plain""#,
            r#""\"quoted\" \\ \/ \n \u00e9 \ud83d\ude00""#,
            "\"raw é 😀\"",
            r#"{"a":[1,{"b":"\u0001"}]}"#,
            &format!("{}1{}", "[".repeat(64), "]".repeat(64)),
            &"9".repeat(299),
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn unreadable_values_get_their_problem() {
        use ValueProblem::*;
        for (bad, problem) in [
            ("1e400", NumberOutOfRange),
            ("-1e400", NumberOutOfRange),
            ("[1, 2e999]", NumberOutOfRange),
            (&"9".repeat(400), NumberOutOfRange),
            (r#""\ud800""#, InvalidUnicode),
            (r#""\udc00""#, InvalidUnicode),
            (r#""\ud800x""#, InvalidUnicode),
            (r#""\ud800\n""#, InvalidUnicode),
            (r#""\ud800\ud800""#, InvalidUnicode),
            (r#"{"\udfff":1}"#, InvalidUnicode),
            (r#""a\u0000b""#, Nul),
            (r#"{"k\u0000":1}"#, Nul),
            (&format!("{}1{}", "[".repeat(65), "]".repeat(65)), TooDeep),
            (
                &format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65)),
                TooDeep,
            ),
        ] {
            assert_eq!(check(bad), Err(problem), "{bad}");
        }
    }
}
