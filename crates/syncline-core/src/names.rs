//! Rules for names and ids that reach SQL or the client: table and column names, and record ids.

/// A table or column name: ascii lowercase letter first, then lowercase letters, digits or `_`; 1–63 chars.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
}

/// A record id the client and the server can both handle: 1–64 chars of `[A-Za-z0-9_.-]`.
/// WatermelonDB makes 16 alphanumerics; quotes, slashes, `$` and the like are refused.
pub fn is_safe_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["tasks", "task_tags", "a1", "x"] {
            assert!(is_valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Tasks",
            "_status",
            "1a",
            "__proto__",
            "a-b",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(!is_valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn ids() {
        for ok in ["abcdefgh12345678", "a-b_c.d", "X"] {
            assert!(is_safe_id(ok), "{ok}");
        }
        for bad in [
            "",
            "a'b",
            "a\"b",
            "a/b",
            "a\\b",
            "$x",
            "a b",
            &"a".repeat(65),
        ] {
            assert!(!is_safe_id(bad), "{bad}");
        }
    }
}
