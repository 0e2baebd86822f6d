//! Test support: the tables of docs/protocol.md, so tests can hold the closed code enums and the document
//! together. Never part of the library.

/// The protocol document, as the repository has it.
pub(crate) const PROTOCOL: &str = include_str!("../../../docs/protocol.md");

/// The rows of the first table after `heading` (a line of the document) whose header row starts with
/// `header`, each as its cells, trimmed; the header and separator rows left out. Panics, naming what is
/// missing, when the section or the table is not there.
pub(crate) fn rows(heading: &str, header: &str) -> Vec<Vec<String>> {
    let start = PROTOCOL
        .lines()
        .position(|l| l.trim_end() == heading)
        .unwrap_or_else(|| panic!("docs/protocol.md has no heading {heading:?}"));
    let mut lines = PROTOCOL.lines().skip(start + 1);
    lines
        .by_ref()
        .find(|l| l.starts_with(header))
        .unwrap_or_else(|| panic!("no table starting {header:?} under {heading:?}"));
    lines
        .skip(1) // |---|---|
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_string())
                .collect()
        })
        .collect()
}

/// The `code`s written in backquotes in one cell.
pub(crate) fn codes(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}
