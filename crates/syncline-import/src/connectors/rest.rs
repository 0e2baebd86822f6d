//! The generic REST source (`kind = "rest"`): walks the streams a [`RestConfig`] describes, one GET per
//! page, and maps each record to a row through JSON pointers.
//!
//! Checkpoints: the next offset (`offset`), the next page number and the records seen before it
//! (`page`, as `3:200`), the next cursor (`cursor`) or the next page's url (`next_url`, `link_header`). Credential values that an API echoes into a cursor or a
//! url are replaced by a `{{credential:FIELD}}` marker before the checkpoint is stored (and shown in the
//! import status), and put back only when the request is made.
//!
//! A walk ends at an empty page, when `total` says every record was seen, or when the API gives no next
//! cursor or url. It fails (`upstream_failed`), instead of going round forever, when the API answers the
//! same cursor or next url again, or the same records as for an earlier page of the walk: an API that
//! ignores the paging parameter (or a stream configured with a name the API does not take), or cursors
//! that go round. A next url (from the body or the `Link` header) is followed only on the origin of
//! `base_url`: the credential is never sent anywhere else.
//!
//! Streams run in the order of their names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;
use std::sync::Mutex;

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use syncline_core::ImportPhase;

use super::{Fetched, get_json, offset, safe_id, unknown_stream};
use crate::config::{Pagination, RestConfig, RestStream};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

pub(crate) struct Rest {
    http: reqwest::Client,
    /// The base url without a trailing `/`; paths are appended to it.
    base: String,
    /// The base url's origin (`scheme://host:port`); `None` only for a source built by hand without a
    /// base url, which offers no stream.
    origin: Option<String>,
    config: Option<RestConfig>,
    names: &'static [&'static str],
    /// Per credential fingerprint and stream: the checkpoint the last page gave and the digests of the
    /// records of every page of the walk so far, so a page that repeats one of them is caught.
    last_pages: Mutex<HashMap<(u64, String), WalkSeen>>,
}

/// The checkpoint a walk's last page gave, and the digests of its pages' records so far.
type WalkSeen = (String, HashSet<u64>);

impl Rest {
    pub(crate) fn new(http: reqwest::Client, base: &str, config: RestConfig) -> Rest {
        let origin = Url::parse(base).ok().map(|u| origin(&u));
        let names = interned(config.streams.keys().cloned().collect());
        Rest {
            http,
            base: base.trim_end_matches('/').to_string(),
            origin,
            config: Some(config),
            names,
            last_pages: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn unconfigured(http: reqwest::Client) -> Rest {
        Rest {
            http,
            base: String::new(),
            origin: None,
            config: None,
            names: &[],
            last_pages: Mutex::new(HashMap::new()),
        }
    }

    async fn page(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let (Some(config), Some(base_origin)) = (&self.config, &self.origin) else {
            return Err(SourceError::Permanent(
                "the source is not configured".into(),
            ));
        };
        let stream = config
            .streams
            .get(req.stream)
            .ok_or_else(|| unknown_stream(req.stream))?;
        let size = req.page_size.clamp(1, config.max_page_size);
        let checkpoint = req.checkpoint.map(|c| restore(credential, c));
        let url = self.url(stream, checkpoint.as_deref(), size)?;
        if origin(&url) != *base_origin {
            return Err(SourceError::Permanent(
                "the checkpoint points away from the source's base url".into(),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in config.headers.iter().chain(&stream.headers) {
            headers.insert(name.clone(), value.clone());
        }
        if let Some(auth) = &config.auth {
            let mut value =
                HeaderValue::from_str(&auth.value.render(credential)?).map_err(|_| {
                    SourceError::Auth(format!(
                        "the connection's fields do not make a valid `{}` header",
                        auth.name
                    ))
                })?;
            value.set_sensitive(true);
            headers.insert(auth.name.clone(), value);
        }
        let fetched = get_json(self.http.get(url.clone()).headers(headers), &[]).await?;
        let body = &fetched.body;
        let items: &[Value] = match stream.records.get(body) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) => &[],
            Some(_) => {
                return Err(SourceError::Permanent(format!(
                    "the answer's `{}` is not an array of records",
                    stream.records
                )));
            }
            None => {
                return Err(SourceError::Permanent(format!(
                    "the answer has no `{}` (the stream's `records`)",
                    stream.records
                )));
            }
        };
        let mut records = Vec::with_capacity(items.len());
        let mut reached_watermark = false;
        let mut without_id = 0;
        for item in items {
            if req.phase == ImportPhase::Incremental
                && let (Some(by), Some(mark)) = (&stream.newest_first_by, req.watermark)
                && by.get(item).is_some_and(|v| !newer(v, mark))
            {
                reached_watermark = true;
                break;
            }
            match stream.id.get(item).and_then(id_text) {
                Some(id) => records.push(record(stream, item, id)),
                None => without_id += 1,
            }
        }
        if without_id > 0 {
            tracing::warn!(stream = req.stream, without_id, pointer = %stream.id, "records without an id were left out");
        }
        let total = stream
            .total
            .as_ref()
            .and_then(|p| p.get(body))
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()));
        let next = if reached_watermark || items.is_empty() {
            None
        } else {
            self.next(
                stream,
                checkpoint.as_deref(),
                &url,
                &fetched,
                items.len() as u64,
                total,
            )?
        };
        let next = next.map(|n| redact(credential, &n));
        self.no_repeat(credential, &req, items, next.as_deref())?;
        let newest = match (&stream.newest_first_by, req.checkpoint) {
            (Some(by), None) => items.first().and_then(|i| by.get(i)).and_then(mark_text),
            _ => None,
        };
        Ok(Page {
            records,
            next,
            total,
            newest,
            remaining: fetched.remaining,
            window_spent: fetched.window_spent,
        })
    }

    /// Fails when this page's records are those of an earlier page of this walk (the page before it, or
    /// one before that: a cursor or next url that goes round); otherwise remembers this page. A walk is
    /// followed while each page is fetched at the checkpoint the one before it gave.
    fn no_repeat(
        &self,
        credential: &Credential,
        req: &PageRequest<'_>,
        items: &[Value],
        next: Option<&str>,
    ) -> Result<(), SourceError> {
        let key = (credential.fingerprint(), req.stream.to_string());
        // The records' JSON is hashed as it is written out, not collected into a string first.
        struct HashWriter(std::collections::hash_map::DefaultHasher);
        impl std::io::Write for HashWriter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.write(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut hasher = HashWriter(Default::default());
        // Writing JSON values into a writer that never fails cannot fail.
        let _ = serde_json::to_writer(&mut hasher, items);
        let digest = hasher.0.finish();
        let mut last = self.last_pages.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = match (req.checkpoint, last.remove(&key)) {
            (Some(at), Some((given, seen))) if at == given => seen,
            _ => HashSet::new(),
        };
        if !items.is_empty() && !seen.insert(digest) {
            return Err(SourceError::Permanent(format!(
                "the API answered the same records for a page of `{}` as for an earlier one: it ignores \
                 the paging parameter, or its cursors go round (check the stream's `pagination`)",
                req.stream
            )));
        }
        if let Some(next) = next {
            last.insert(key, (next.to_string(), seen));
        }
        Ok(())
    }

    /// The url of the page at `checkpoint` (the first page when `None`).
    fn url(
        &self,
        stream: &RestStream,
        checkpoint: Option<&str>,
        size: usize,
    ) -> Result<Url, SourceError> {
        let bad = || SourceError::Permanent("a bad checkpoint".into());
        if let (Pagination::NextUrl { .. } | Pagination::LinkHeader { .. }, Some(next)) =
            (&stream.pagination, checkpoint)
        {
            return Url::parse(next).map_err(|_| bad());
        }
        let mut url = Url::parse(&format!("{}{}", self.base, stream.path))
            .map_err(|_| SourceError::Permanent("the stream's url is not valid".into()))?;
        {
            let mut query = url.query_pairs_mut();
            for (k, v) in &stream.query {
                query.append_pair(k, v);
            }
            if let Some(size_param) = stream.pagination.size_param() {
                query.append_pair(size_param, &size.to_string());
            }
            match &stream.pagination {
                Pagination::Offset { offset_param, .. } => {
                    let offset: u64 = offset(checkpoint)?;
                    query.append_pair(offset_param, &offset.to_string());
                }
                Pagination::Page {
                    page_param,
                    first_page,
                    ..
                } => {
                    let (page, _) = page_checkpoint(checkpoint, *first_page).ok_or_else(bad)?;
                    query.append_pair(page_param, &page.to_string());
                }
                Pagination::Cursor { cursor_param, .. } => {
                    if let Some(cursor) = checkpoint {
                        query.append_pair(cursor_param, cursor);
                    }
                }
                Pagination::None | Pagination::NextUrl { .. } | Pagination::LinkHeader { .. } => {}
            }
        }
        // A query-less url keeps no dangling `?`.
        if url.query() == Some("") {
            url.set_query(None);
        }
        Ok(url)
    }

    /// The checkpoint after a non-empty page of `count` records fetched from `url`; `None`: the stream is
    /// complete.
    fn next(
        &self,
        stream: &RestStream,
        checkpoint: Option<&str>,
        url: &Url,
        fetched: &Fetched,
        count: u64,
        total: Option<u64>,
    ) -> Result<Option<String>, SourceError> {
        let body = &fetched.body;
        Ok(match &stream.pagination {
            Pagination::None => None,
            Pagination::Offset { .. } => {
                let offset = checkpoint.and_then(|c| c.parse::<u64>().ok()).unwrap_or(0) + count;
                (total.is_none_or(|t| offset < t)).then(|| offset.to_string())
            }
            Pagination::Page { first_page, .. } => {
                let (page, seen) =
                    page_checkpoint(checkpoint, *first_page).unwrap_or((*first_page, 0));
                let seen = seen + count;
                (total.is_none_or(|t| seen < t)).then(|| format!("{}:{seen}", page + 1))
            }
            Pagination::Cursor { cursor, .. } => {
                let next = match cursor.get(body) {
                    Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                if next.is_some() && next.as_deref() == checkpoint {
                    return Err(SourceError::Permanent(
                        "the API answered the same cursor again".into(),
                    ));
                }
                next
            }
            Pagination::NextUrl { next, .. } => match next.get(body).and_then(Value::as_str) {
                Some(s) if !s.is_empty() => Some(self.follow(url, s)?),
                _ => None,
            },
            Pagination::LinkHeader { .. } => match fetched.link.as_deref().and_then(link_next) {
                Some(s) => Some(self.follow(url, s)?),
                None => None,
            },
        })
    }

    /// A next url, resolved against the page it came with, if it stays on the base url's origin.
    fn follow(&self, current: &Url, next: &str) -> Result<String, SourceError> {
        let next = current
            .join(next)
            .map_err(|_| SourceError::Permanent("the API's next url is not a url".into()))?;
        if Some(origin(&next)) != self.origin {
            return Err(SourceError::Permanent(format!(
                "the API's next url leaves {}: not followed, so the credential stays with the source",
                origin(current)
            )));
        }
        if next == *current {
            return Err(SourceError::Permanent(
                "the API's next url is the page just fetched".into(),
            ));
        }
        Ok(next.to_string())
    }
}

impl Source for Rest {
    fn credential_fields(&self) -> Vec<String> {
        // The `{field}`s its auth header names.
        self.config
            .as_ref()
            .map(RestConfig::credential_fields)
            .unwrap_or_default()
    }

    fn streams(&self) -> &'static [&'static str] {
        self.names
    }

    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(self.page(credential, request))
    }
}

/// A `page` checkpoint, `{page}:{records seen before it}` (the count tells when `total` is reached, however
/// long the API's pages really are); the first page when `None`.
fn page_checkpoint(checkpoint: Option<&str>, first_page: u64) -> Option<(u64, u64)> {
    let Some(c) = checkpoint else {
        return Some((first_page, 0));
    };
    let (page, seen) = c.split_once(':')?;
    Some((page.parse().ok()?, seen.parse().ok()?))
}

/// `scheme://host:port`; an opaque origin (`null`) never equals an http(s) base url's.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// A row: `id`, then each mapped column, or the record's own top-level fields.
fn record(stream: &RestStream, item: &Value, id: String) -> Value {
    let mut row = Map::new();
    match (&stream.fields, item) {
        (Some(fields), _) => {
            for (column, pointer) in fields {
                row.insert(
                    column.clone(),
                    pointer.get(item).cloned().unwrap_or(Value::Null),
                );
            }
        }
        (None, Value::Object(own)) => row.extend(own.clone()),
        (None, _) => {}
    }
    row.insert("id".into(), Value::String(id));
    Value::Object(row)
}

fn id_text(v: &Value) -> Option<String> {
    let id = match v {
        Value::String(s) => safe_id(s),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!id.is_empty()).then_some(id)
}

/// A record's `newest_first_by` value as a watermark.
fn mark_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Whether a record's `newest_first_by` value is newer than the watermark: numbers as numbers, text as
/// text (ISO 8601 times sort as text); a value that cannot be compared counts as newer.
fn newer(v: &Value, mark: &str) -> bool {
    match v {
        Value::Number(n) => match (n.as_f64(), mark.parse::<f64>()) {
            (Some(n), Ok(m)) => n > m,
            _ => true,
        },
        Value::String(s) => s.as_str() > mark,
        _ => true,
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header.
fn link_next(header: &str) -> Option<&str> {
    let mut start = 0;
    let (mut in_target, mut in_quotes) = (false, false);
    let mut links = Vec::new();
    for (i, c) in header.char_indices() {
        match c {
            '<' if !in_quotes => in_target = true,
            '>' if !in_quotes => in_target = false,
            '"' if !in_target => in_quotes = !in_quotes,
            ',' if !in_target && !in_quotes => {
                links.push(&header[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    links.push(&header[start..]);
    links.into_iter().find_map(|link| {
        let (target, params) = link.trim().strip_prefix('<')?.split_once('>')?;
        params
            .split(';')
            .filter_map(|p| p.split_once('='))
            .any(|(key, value)| {
                key.trim().eq_ignore_ascii_case("rel")
                    && value
                        .trim()
                        .trim_matches('"')
                        .split_ascii_whitespace()
                        .any(|rel| rel.eq_ignore_ascii_case("next"))
            })
            .then_some(target)
    })
}

/// Credential values shorter than this are not taken for secrets (an account id such as `me`).
const SHORTEST_SECRET: usize = 6;

/// Replaces every credential value in `text` (as is, and percent-encoded) with a marker.
fn redact(credential: &Credential, text: &str) -> String {
    let mut out = text.to_string();
    for (name, value, encoded) in secrets(credential) {
        out = out.replace(value, &marker(name, false));
        if encoded != value {
            out = out.replace(&encoded, &marker(name, true));
        }
    }
    out
}

/// Puts the credential values back where [`redact`] left markers.
fn restore(credential: &Credential, text: &str) -> String {
    if !text.contains("{{credential:") {
        return text.to_string();
    }
    let mut out = text.to_string();
    for (name, value, encoded) in secrets(credential) {
        out = out
            .replace(&marker(name, false), value)
            .replace(&marker(name, true), &encoded);
    }
    out
}

fn marker(name: &str, encoded: bool) -> String {
    if encoded {
        format!("{{{{credential:{name}:encoded}}}}")
    } else {
        format!("{{{{credential:{name}}}}}")
    }
}

/// (name, value, percent-encoded value), longest first, so a value inside another is replaced after it.
fn secrets(credential: &Credential) -> Vec<(&str, &str, String)> {
    let mut secrets: Vec<(&str, &str, String)> = credential
        .texts()
        .filter(|(_, v)| v.len() >= SHORTEST_SECRET)
        .map(|(n, v)| (n, v, percent_encoded(v)))
        .collect();
    secrets.sort_by_key(|(_, v, _)| std::cmp::Reverse(v.len()));
    secrets
}

fn percent_encoded(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Stream names live as long as the process: the [`Source`] trait hands them out as `&'static`. Each
/// distinct list is kept once, however often a source is built from it.
fn interned(names: Vec<String>) -> &'static [&'static str] {
    static INTERNED: Mutex<BTreeMap<Vec<String>, &'static [&'static str]>> =
        Mutex::new(BTreeMap::new());
    let mut interned = INTERNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(list) = interned.get(&names) {
        return list;
    }
    let list: Vec<&'static str> = names
        .iter()
        .map(|n| &*Box::leak(n.clone().into_boxed_str()))
        .collect();
    let list: &'static [&'static str] = Box::leak(list.into_boxed_slice());
    interned.insert(names, list);
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_link_header_gives_its_next_target() {
        let header = r#"<https://api.example.com/items?page=1>; rel="prev", <https://api.example.com/items?page=3&q=a,b>; rel="next", <https://api.example.com/items?page=9>; rel="last""#;
        assert_eq!(
            link_next(header),
            Some("https://api.example.com/items?page=3&q=a,b")
        );
        assert_eq!(
            link_next(r#"</items?page=2>; title="a, b"; rel=next"#),
            Some("/items?page=2")
        );
        assert_eq!(
            link_next(r#"<https://x/2>; rel="next last""#),
            Some("https://x/2")
        );
        assert_eq!(link_next(r#"<https://x/1>; rel="prev""#), None);
        assert_eq!(link_next(""), None);
    }

    #[test]
    fn credential_values_never_stay_in_a_checkpoint() {
        let credential = Credential::new(
            json!({"api_token": "s3cr3t/token+1", "account": "me"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let url = "https://api.example.com/items?key=s3cr3t/token+1&k2=s3cr3t%2Ftoken%2B1&who=me";
        let stored = redact(&credential, url);
        assert!(!stored.contains("s3cr3t"), "{stored}");
        assert!(stored.contains("who=me"), "short values are no secrets");
        assert_eq!(restore(&credential, &stored), url);
    }

    #[test]
    fn watermarks_compare_numbers_as_numbers_and_text_as_text() {
        assert!(newer(&json!(10), "9"));
        assert!(!newer(&json!(9), "9"));
        assert!(newer(
            &json!("2024-05-02T00:00:00Z"),
            "2024-05-01T23:59:59Z"
        ));
        assert!(!newer(
            &json!("2024-05-01T00:00:00Z"),
            "2024-05-01T00:00:00Z"
        ));
        assert!(newer(&json!(null), "x"));
    }

    #[test]
    fn interned_names_are_kept_once() {
        let a = interned(vec!["a".into(), "b".into()]);
        let b = interned(vec!["a".into(), "b".into()]);
        assert_eq!(a, ["a", "b"]);
        assert!(std::ptr::eq(a, b));
    }
}
