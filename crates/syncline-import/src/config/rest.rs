//! `[imports.sources.NAME.rest]`: a REST API described in TOML, so a user adds a source without writing
//! Rust. Read and checked in one go: once a [`RestConfig`] exists, every path, JSON pointer, parameter and
//! header template in it is valid, and the connector never meets a bad configuration at run time.
//!
//! ```toml
//! [imports.sources.github]
//! kind = "rest"
//! base_url = "https://api.github.com"
//! streams = { starred = "github_stars" }          # stream -> declared table
//!
//! [imports.sources.github.rest]
//! auth = { header = "Authorization", value = "Bearer {access_token}" }   # {field}: from the credential
//! headers = { Accept = "application/vnd.github+json" }
//! max_page_size = 100
//!
//! [imports.sources.github.rest.streams.starred]
//! path = "/user/starred"
//! records = ""                                     # JSON pointer to the array ("": the body itself)
//! id = "/id"
//! fields = { full_name = "/full_name", stars = "/stargazers_count" }     # or left out: pass-through
//! pagination = { style = "link_header", size_param = "per_page" }
//! ```
//!
//! A stream may add its own `query` parameters and `headers` (over the source's).
//!
//! Pagination styles: `none` (one request), `offset` (`offset_param`), `page` (`page_param`, `first_page`),
//! `cursor` (`cursor_param`, and `cursor`: a pointer to the next cursor in the answer), `next_url` (`next`:
//! a pointer to the next page's url) and `link_header` (RFC 8288 `Link: <…>; rel="next"`). Each takes an
//! optional `size_param`, the query parameter that carries the page size.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use crate::source::{Credential, SourceError};

/// A checked `[imports.sources.NAME.rest]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(try_from = "RestToml")]
pub struct RestConfig {
    pub(crate) auth: Option<AuthHeader>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) max_page_size: usize,
    pub(crate) streams: BTreeMap<String, RestStream>,
}

impl RestConfig {
    /// The credential fields the auth header's template names.
    pub(crate) fn credential_fields(&self) -> Vec<String> {
        self.auth
            .as_ref()
            .map(|a| a.value.fields())
            .unwrap_or_default()
    }
}

/// The header that carries the credential: its name and the template of its value.
#[derive(Debug, Clone)]
pub(crate) struct AuthHeader {
    pub(crate) name: HeaderName,
    pub(crate) value: Template,
}

/// One stream of a REST source.
#[derive(Debug, Clone)]
pub(crate) struct RestStream {
    /// Starts with one `/`; appended to the base url.
    pub(crate) path: String,
    /// Fixed query parameters, sent with the first page.
    pub(crate) query: Vec<(String, String)>,
    /// Fixed headers of this stream's requests, over the source's `headers`.
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    /// Where the array of records is in an answer.
    pub(crate) records: Pointer,
    /// Where a record's id is, inside the record.
    pub(crate) id: Pointer,
    /// Where the stream's total is in an answer, when the API says.
    pub(crate) total: Option<Pointer>,
    /// Column -> where its value is inside a record; `None`: the record's own top-level fields.
    pub(crate) fields: Option<BTreeMap<String, Pointer>>,
    pub(crate) pagination: Pagination,
    /// The API lists records newest first by this field: the incremental walk stops at the first record
    /// that is not newer than the last walk's newest.
    pub(crate) newest_first_by: Option<Pointer>,
}

/// How the pages of a stream are walked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pagination {
    None,
    Offset {
        offset_param: String,
        size_param: Option<String>,
    },
    Page {
        page_param: String,
        first_page: u64,
        size_param: Option<String>,
    },
    Cursor {
        cursor_param: String,
        cursor: Pointer,
        size_param: Option<String>,
    },
    NextUrl {
        next: Pointer,
        size_param: Option<String>,
    },
    LinkHeader {
        size_param: Option<String>,
    },
}

impl Pagination {
    pub(crate) fn size_param(&self) -> Option<&str> {
        match self {
            Pagination::None => None,
            Pagination::Offset { size_param, .. }
            | Pagination::Page { size_param, .. }
            | Pagination::Cursor { size_param, .. }
            | Pagination::NextUrl { size_param, .. }
            | Pagination::LinkHeader { size_param } => size_param.as_deref(),
        }
    }

    /// The query parameters the pagination itself sends.
    fn params(&self) -> Vec<&str> {
        let mut params: Vec<&str> = self.size_param().into_iter().collect();
        match self {
            Pagination::Offset { offset_param, .. } => params.push(offset_param),
            Pagination::Page { page_param, .. } => params.push(page_param),
            Pagination::Cursor { cursor_param, .. } => params.push(cursor_param),
            _ => {}
        }
        params
    }
}

/// A JSON pointer (RFC 6901): empty, or `/`-separated tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer(String);

impl Pointer {
    fn parse(what: &str, text: &str) -> Result<Pointer, String> {
        if !(text.is_empty() || text.starts_with('/')) {
            return Err(format!(
                "{what} `{text}` is not a JSON pointer: write `/{text}` (or \"\" for the whole value)"
            ));
        }
        Ok(Pointer(text.to_string()))
    }

    pub(crate) fn get<'a>(&self, value: &'a Value) -> Option<&'a Value> {
        value.pointer(&self.0)
    }
}

impl std::fmt::Display for Pointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text with `{field}` holes filled from the credential; `{{` and `}}` stand for braces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Field(String),
}

impl Template {
    pub(crate) fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    literal.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) if c.is_ascii_alphanumeric() || c == '_' => name.push(c),
                            Some(c) => {
                                return Err(format!(
                                    "`{text}`: `{c}` in a `{{field}}` name (letters, digits and `_` only; `{{{{` for a brace)"
                                ));
                            }
                            None => return Err(format!("`{text}`: a `{{` is never closed")),
                        }
                    }
                    if name.is_empty() {
                        return Err(format!("`{text}`: `{{}}` names no credential field"));
                    }
                    if !literal.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Field(name));
                }
                '}' => {
                    return Err(format!(
                        "`{text}`: a `}}` without its `{{` (`}}}}` for a brace)"
                    ));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Text(literal));
        }
        Ok(Template(pieces))
    }

    /// The credential fields the holes name, in order, each once.
    pub(crate) fn fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for piece in &self.0 {
            if let Piece::Field(f) = piece
                && !out.contains(f)
            {
                out.push(f.clone());
            }
        }
        out
    }

    /// The text with every hole filled; an `Auth` failure names a field the credential lacks.
    pub(crate) fn render(&self, credential: &Credential) -> Result<String, SourceError> {
        let mut out = String::new();
        for piece in &self.0 {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Field(f) => out.push_str(credential.field(f)?),
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------------
// The TOML shape, before its checks.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RestToml {
    auth: Option<AuthToml>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "default_max_page_size")]
    max_page_size: usize,
    #[serde(default)]
    streams: BTreeMap<String, StreamToml>,
}

fn default_max_page_size() -> usize {
    100
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthToml {
    header: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamToml {
    path: String,
    #[serde(default)]
    query: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    records: String,
    #[serde(default = "default_id")]
    id: String,
    total: Option<String>,
    fields: Option<BTreeMap<String, String>>,
    pagination: Option<PaginationToml>,
    newest_first_by: Option<String>,
}

fn default_id() -> String {
    "/id".into()
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Style {
    None,
    Offset,
    Page,
    Cursor,
    NextUrl,
    LinkHeader,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PaginationToml {
    style: Style,
    size_param: Option<String>,
    offset_param: Option<String>,
    page_param: Option<String>,
    first_page: Option<u64>,
    cursor_param: Option<String>,
    cursor: Option<String>,
    next: Option<String>,
}

impl TryFrom<RestToml> for RestConfig {
    type Error = String;

    fn try_from(raw: RestToml) -> Result<RestConfig, String> {
        let auth = raw
            .auth
            .map(|a| {
                let name = HeaderName::from_bytes(a.header.as_bytes()).map_err(|_| {
                    format!("`rest.auth.header` `{}` is not a header name", a.header)
                })?;
                let value =
                    Template::parse(&a.value).map_err(|e| format!("`rest.auth.value` {e}"))?;
                Ok::<_, String>(AuthHeader { name, value })
            })
            .transpose()?;
        let auth_header = auth.as_ref().map(|a| &a.name);
        let headers = headers(raw.headers, auth_header).map_err(|e| format!("`rest.{e}"))?;
        if raw.max_page_size == 0 {
            return Err("`rest.max_page_size` must be at least 1".into());
        }
        if raw.streams.is_empty() {
            return Err(
                "`rest` declares no stream: add `[imports.sources.NAME.rest.streams.STREAM]`"
                    .into(),
            );
        }
        let mut streams = BTreeMap::new();
        for (name, stream) in raw.streams {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(format!(
                    "`rest.streams.{name}`: a stream name has only a-z, 0-9 and `_`"
                ));
            }
            let checked = stream_config(stream, auth_header)
                .map_err(|e| format!("`rest.streams.{name}`: {e}"))?;
            streams.insert(name, checked);
        }
        Ok(RestConfig {
            auth,
            headers,
            max_page_size: raw.max_page_size,
            streams,
        })
    }
}

/// Checked fixed headers; an error starts with the key (`headers.NAME` …).
fn headers(
    raw: BTreeMap<String, String>,
    auth: Option<&HeaderName>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut headers = Vec::new();
    for (name, value) in raw {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("headers`: `{name}` is not a header name"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("headers.{name}` is not a valid header value"))?;
        if auth == Some(&header) {
            return Err(format!(
                "headers.{name}` is also the `rest.auth` header: keep it in one place"
            ));
        }
        headers.push((header, value));
    }
    Ok(headers)
}

fn stream_config(raw: StreamToml, auth: Option<&HeaderName>) -> Result<RestStream, String> {
    let path = raw.path;
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "`path` `{path}` must start with a single `/`: it is appended to `base_url`"
        ));
    }
    if path.contains(['?', '#']) || path.chars().any(char::is_whitespace) {
        return Err(format!(
            "`path` `{path}` must be a plain path: put query parameters in `query`"
        ));
    }
    let pagination = pagination(raw.pagination)?;
    for param in pagination.params() {
        if param.is_empty() {
            return Err("a pagination parameter name is empty".into());
        }
        if raw.query.contains_key(param) {
            return Err(format!(
                "`query.{param}` is also a pagination parameter: leave it to the pagination"
            ));
        }
    }
    let fields =
        raw.fields
            .map(|fields| {
                fields
                    .into_iter()
                    .map(|(column, pointer)| {
                        if column == "id" {
                            return Err("`fields.id`: the id comes from `id`, not from `fields`"
                                .to_string());
                        }
                        Ok((
                            column.clone(),
                            Pointer::parse(&format!("`fields.{column}`"), &pointer)?,
                        ))
                    })
                    .collect::<Result<BTreeMap<_, _>, String>>()
            })
            .transpose()?;
    Ok(RestStream {
        path,
        query: raw.query.into_iter().collect(),
        headers: headers(raw.headers, auth).map_err(|e| format!("`{e}"))?,
        records: Pointer::parse("`records`", &raw.records)?,
        id: Pointer::parse("`id`", &raw.id)?,
        total: raw
            .total
            .map(|t| Pointer::parse("`total`", &t))
            .transpose()?,
        fields,
        pagination,
        newest_first_by: raw
            .newest_first_by
            .map(|t| Pointer::parse("`newest_first_by`", &t))
            .transpose()?,
    })
}

fn pagination(raw: Option<PaginationToml>) -> Result<Pagination, String> {
    let Some(raw) = raw else {
        return Ok(Pagination::None);
    };
    let style = raw.style;
    let given = [
        ("offset_param", raw.offset_param.is_some(), Style::Offset),
        ("page_param", raw.page_param.is_some(), Style::Page),
        ("first_page", raw.first_page.is_some(), Style::Page),
        ("cursor_param", raw.cursor_param.is_some(), Style::Cursor),
        ("cursor", raw.cursor.is_some(), Style::Cursor),
        ("next", raw.next.is_some(), Style::NextUrl),
    ];
    for (key, present, belongs) in given {
        if present && style != belongs {
            return Err(format!("`pagination.{key}` does not go with this `style`"));
        }
    }
    if style == Style::None && raw.size_param.is_some() {
        return Err("`pagination.size_param` does not go with `style = \"none\"`".into());
    }
    let size_param = raw.size_param;
    Ok(match style {
        Style::None => Pagination::None,
        Style::Offset => Pagination::Offset {
            offset_param: raw.offset_param.unwrap_or_else(|| "offset".into()),
            size_param,
        },
        Style::Page => Pagination::Page {
            page_param: raw.page_param.unwrap_or_else(|| "page".into()),
            first_page: raw.first_page.unwrap_or(1),
            size_param,
        },
        Style::Cursor => Pagination::Cursor {
            cursor_param: raw.cursor_param.unwrap_or_else(|| "cursor".into()),
            cursor: Pointer::parse(
                "`pagination.cursor`",
                &raw.cursor.ok_or(
                    "`style = \"cursor\"` needs `cursor`: a JSON pointer to the next cursor in an answer",
                )?,
            )?,
            size_param,
        },
        Style::NextUrl => Pagination::NextUrl {
            next: Pointer::parse(
                "`pagination.next`",
                &raw.next.ok_or(
                    "`style = \"next_url\"` needs `next`: a JSON pointer to the next page's url in an answer",
                )?,
            )?,
            size_param,
        },
        Style::LinkHeader => Pagination::LinkHeader { size_param },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(text: &str) -> Result<RestConfig, String> {
        toml::from_str::<RestConfig>(text).map_err(|e| e.to_string())
    }

    fn check_refused(text: &str, expected: &str) {
        let err = parse(text).unwrap_err();
        assert!(err.contains(expected), "`{expected}` not in: {err}");
    }

    const STREAM: &str = "[streams.s]\npath = \"/items\"\nrecords = \"/data\"\n";

    #[test]
    fn a_full_table_reads_into_checked_parts() {
        let config = parse(&format!(
            "auth = {{ header = \"Authorization\", value = \"Token {{api_token}}\" }}\n\
             headers = {{ Accept = \"application/json\" }}\nmax_page_size = 25\n{STREAM}\
             pagination = {{ style = \"cursor\", cursor_param = \"after\", cursor = \"/meta/next\", size_param = \"limit\" }}\n\
             fields = {{ title = \"/name\", owner = \"/owner/login\" }}\ntotal = \"/meta/total\"\n"
        ))
        .unwrap();
        assert_eq!(config.max_page_size, 25);
        let s = &config.streams["s"];
        assert_eq!(
            s.pagination,
            Pagination::Cursor {
                cursor_param: "after".into(),
                cursor: Pointer("/meta/next".into()),
                size_param: Some("limit".into()),
            }
        );
        assert_eq!(s.id, Pointer("/id".into()), "the default id pointer");
        assert_eq!(s.fields.as_ref().unwrap().len(), 2);
        let auth = config.auth.unwrap();
        let credential = Credential::new(
            json!({"api_token": "t0k"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(auth.value.render(&credential).unwrap(), "Token t0k");
    }

    #[test]
    fn every_pagination_style_has_its_defaults() {
        let style = |p: &str| {
            parse(&format!("{STREAM}pagination = {p}\n")).map(|c| c.streams["s"].pagination.clone())
        };
        assert_eq!(
            style("{ style = \"offset\" }").unwrap(),
            Pagination::Offset {
                offset_param: "offset".into(),
                size_param: None
            }
        );
        assert_eq!(
            style("{ style = \"page\", size_param = \"per_page\" }").unwrap(),
            Pagination::Page {
                page_param: "page".into(),
                first_page: 1,
                size_param: Some("per_page".into())
            }
        );
        assert_eq!(
            style("{ style = \"link_header\" }").unwrap(),
            Pagination::LinkHeader { size_param: None }
        );
        assert_eq!(
            style("{ style = \"next_url\", next = \"/links/next\" }").unwrap(),
            Pagination::NextUrl {
                next: Pointer("/links/next".into()),
                size_param: None
            }
        );
        assert_eq!(
            parse(STREAM).unwrap().streams["s"].pagination,
            Pagination::None
        );
    }

    #[test]
    fn mistakes_are_refused_with_what_to_do() {
        check_refused("", "declares no stream");
        check_refused(
            "[streams.s]\npath = \"items\"\nrecords = \"\"\n",
            "must start with a single `/`",
        );
        check_refused(
            "[streams.s]\npath = \"//evil.example/x\"\nrecords = \"\"\n",
            "must start with a single `/`",
        );
        check_refused(
            "[streams.s]\npath = \"/x?a=1\"\nrecords = \"\"\n",
            "put query parameters in `query`",
        );
        check_refused(
            "[streams.s]\npath = \"/x\"\nrecords = \"data\"\n",
            "write `/data`",
        );
        check_refused(
            &format!("{STREAM}pagination = {{ style = \"cursor\" }}\n"),
            "needs `cursor`",
        );
        check_refused(
            &format!("{STREAM}pagination = {{ style = \"next_url\" }}\n"),
            "needs `next`",
        );
        check_refused(
            &format!("{STREAM}pagination = {{ style = \"offset\", next = \"/n\" }}\n"),
            "`pagination.next` does not go with this `style`",
        );
        check_refused(
            &format!("{STREAM}pagination = {{ style = \"scroll\" }}\n"),
            "unknown variant `scroll`",
        );
        check_refused(
            &format!("{STREAM}query = {{ page = \"2\" }}\npagination = {{ style = \"page\" }}\n"),
            "`query.page` is also a pagination parameter",
        );
        check_refused(
            &format!("{STREAM}fields = {{ id = \"/uuid\" }}\n"),
            "the id comes from `id`",
        );
        check_refused(&format!("{STREAM}colour = 1\n"), "unknown field `colour`");
        check_refused(
            "[streams.Stars]\npath = \"/x\"\nrecords = \"\"\n",
            "only a-z, 0-9 and `_`",
        );
        check_refused(
            &format!(
                "auth = {{ header = \"Authorization\", value = \"Bearer {{token\" }}\n{STREAM}"
            ),
            "never closed",
        );
        check_refused(
            &format!("auth = {{ header = \"Authorization\", value = \"Bearer {{}}\" }}\n{STREAM}"),
            "names no credential field",
        );
        check_refused(
            &format!("auth = {{ header = \"Bad Header\", value = \"x\" }}\n{STREAM}"),
            "is not a header name",
        );
        check_refused(
            &format!(
                "auth = {{ header = \"Authorization\", value = \"x\" }}\nheaders = {{ authorization = \"y\" }}\n{STREAM}"
            ),
            "keep it in one place",
        );
        check_refused(
            &format!(
                "auth = {{ header = \"X-Key\", value = \"{{k}}\" }}\n{STREAM}headers = {{ x-key = \"y\" }}\n"
            ),
            "`rest.streams.s`: `headers.x-key` is also the `rest.auth` header",
        );
        check_refused(&format!("max_page_size = 0\n{STREAM}"), "at least 1");
    }

    #[test]
    fn templates_fill_fields_and_keep_escaped_braces() {
        let t = Template::parse("{{literal}} {user}:{key}").unwrap();
        let credential = Credential::new(
            json!({"user": "u", "key": "k"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        assert_eq!(t.render(&credential).unwrap(), "{literal} u:k");
        let missing = Template::parse("Bearer {access_token}").unwrap();
        let err = missing.render(&credential).unwrap_err();
        assert_eq!(
            err,
            SourceError::Auth("the connection has no `access_token`".into())
        );
        assert!(Template::parse("a } b").is_err());
        assert!(Template::parse("{a-b}").is_err());
    }
}
