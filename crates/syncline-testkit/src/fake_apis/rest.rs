//! A fake generic REST API: one list of items, newest first by `updated_at`, served under every pagination
//! style the REST connector knows: `/offset/items`, `/page/items`, `/cursor/items`, `/next/items` (next url
//! in the body), `/link/items` (RFC 8288 `Link` header) and `/single/items` (no paging). Requests need
//! `Authorization: Token {token}`; pages hold at most [`REST_MAX_PAGE`] items (more is a 400).
//!
//! Next urls are absolute by default; a test can make them relative, or point them at another origin to
//! check that the connector refuses to follow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Control, Served, iso, param, serve};

/// The largest page the fake serves.
pub const REST_MAX_PAGE: u64 = 100;

/// The fake API's data.
#[derive(Debug, Default)]
pub struct RestItems {
    /// `{id, name, updated_at, stars, owner: {login}}`, newest first.
    pub items: Vec<Value>,
    clock: u64,
    made: u64,
}

impl RestItems {
    /// Adds `n` items, newer than every other; returns their ids.
    pub fn add(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            self.made += 1;
            self.clock += 1;
            let id = self.made;
            self.items.insert(
                0,
                json!({
                    "id": id, "name": format!("Item {id}"), "updated_at": iso(self.clock),
                    "stars": id * 3, "owner": {"login": format!("user{}", id % 7)}, "tags": ["a", "b"],
                }),
            );
            ids.push(id);
        }
        ids
    }

    /// Renames item `id` in place (its `updated_at` stays).
    pub fn rename(&mut self, id: u64, name: &str) {
        for item in &mut self.items {
            if item["id"] == id {
                item["name"] = json!(name);
            }
        }
    }
}

#[derive(Debug, Default)]
struct Links {
    relative: bool,
    /// Next urls point at this origin instead of the fake's own.
    elsewhere: Option<String>,
    /// `Link` goes out as one field line per link (`next` last) instead of one comma-separated line.
    separate_link_lines: bool,
}

/// A GitHub-style primary rate limit (docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api):
/// `limit` requests per window of `secs` seconds; every answer carries `x-ratelimit-limit`,
/// `x-ratelimit-remaining` and `x-ratelimit-reset` (the window's end, in UTC epoch seconds), and a request
/// made once the window is spent gets `403` with `x-ratelimit-remaining: 0` and `{"message": "API rate
/// limit exceeded …"}`.
#[derive(Debug)]
struct Window {
    limit: u64,
    secs: u64,
    used: u64,
    reset: u64,
    refused: u64,
    /// The time, in epoch seconds (the test's clock).
    now_secs: fn() -> u64,
}

#[derive(Debug)]
struct RestShared {
    control: Arc<Control>,
    items: Arc<Mutex<RestItems>>,
    token: String,
    base: Mutex<String>,
    links: Mutex<Links>,
    window: Mutex<Option<Window>>,
}

/// A fake REST API whose token is `token`.
#[derive(Debug)]
pub struct FakeRest {
    pub control: Arc<Control>,
    pub items: Arc<Mutex<RestItems>>,
    pub served: Served,
    shared: Arc<RestShared>,
}

impl FakeRest {
    /// Serves `items` items.
    pub async fn start(token: &str, items: usize) -> FakeRest {
        let mut data = RestItems::default();
        data.add(items);
        let shared = Arc::new(RestShared {
            control: Arc::new(Control::default()),
            items: Arc::new(Mutex::new(data)),
            token: token.to_string(),
            base: Mutex::new(String::new()),
            links: Mutex::new(Links::default()),
            window: Mutex::new(None),
        });
        let router = Router::new()
            .route("/offset/items", get(rest_offset))
            .route("/page/items", get(rest_page))
            .route("/cursor/items", get(rest_cursor))
            .route("/next/items", get(rest_next))
            .route("/link/items", get(rest_link))
            .route("/single/items", get(rest_single))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                rate_window,
            ))
            .with_state(shared.clone());
        let served = serve(router, shared.control.clone()).await;
        *shared.base.lock().unwrap() = served.base_url.clone();
        FakeRest {
            control: shared.control.clone(),
            items: shared.items.clone(),
            served,
            shared,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }

    /// Next urls (in bodies and `Link` headers) become relative (`/next/items?…`).
    pub fn set_relative_links(&self, relative: bool) {
        self.shared.links.lock().unwrap().relative = relative;
    }

    /// `/link/items` sends one `Link` field line per link, `rel="next"` on the last one. RFC 9110 §5.3 lets
    /// a field come as several lines that mean their comma-joined list, and RFC 8288 §3 (the `Link` field)
    /// is such a list: a server may send `Link: <…>; rel="first"` and `Link: <…>; rel="next"` apart.
    pub fn set_separate_link_lines(&self, separate: bool) {
        self.shared.links.lock().unwrap().separate_link_lines = separate;
    }

    /// From now on, at most `limit` requests per window of `secs` seconds, GitHub's way (see [`Window`]),
    /// by the clock `now_secs` (epoch seconds).
    pub fn set_rate_window(&self, limit: u64, secs: u64, now_secs: fn() -> u64) {
        *self.shared.window.lock().unwrap() = Some(Window {
            limit,
            secs,
            used: 0,
            reset: 0,
            refused: 0,
            now_secs,
        });
    }

    /// The window's reset (epoch seconds) and how many requests came once it was spent.
    pub fn rate_window(&self) -> Option<(u64, u64)> {
        let window = self.shared.window.lock().unwrap();
        window.as_ref().map(|w| (w.reset, w.refused))
    }

    /// Next urls point at `origin` (e.g. another fake's base url) instead of this fake.
    pub fn send_next_links_to(&self, origin: Option<&str>) {
        self.shared.links.lock().unwrap().elsewhere = origin.map(str::to_string);
    }
}

impl RestShared {
    fn link(&self, path_and_query: &str) -> String {
        let links = self.links.lock().unwrap();
        match (&links.elsewhere, links.relative) {
            (Some(origin), _) => format!("{origin}{path_and_query}"),
            (None, true) => path_and_query.to_string(),
            (None, false) => format!("{}{path_and_query}", self.base.lock().unwrap()),
        }
    }
}

/// Counts a request against the [`Window`], if one is set, and refuses it once the window is spent.
async fn rate_window(
    State(s): State<Arc<RestShared>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = (|| {
        let mut window = s.window.lock().unwrap();
        let w = window.as_mut()?;
        let now = (w.now_secs)();
        if now >= w.reset {
            w.used = 0;
            w.reset = now + w.secs;
        }
        if w.used >= w.limit {
            w.refused += 1;
            let mut r = (
                StatusCode::FORBIDDEN,
                axum::Json(json!({
                    "message": "API rate limit exceeded for user ID 1.",
                    "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
                })),
            )
                .into_response();
            for (name, value) in [
                ("x-ratelimit-limit", w.limit),
                ("x-ratelimit-remaining", 0),
                ("x-ratelimit-reset", w.reset),
            ] {
                r.headers_mut().insert(name, HeaderValue::from(value));
            }
            return Some(Err(r));
        }
        w.used += 1;
        Some(Ok([
            ("x-ratelimit-limit", w.limit),
            ("x-ratelimit-remaining", w.limit - w.used),
            ("x-ratelimit-reset", w.reset),
        ]))
    })();
    let headers = match headers {
        None => return next.run(request).await,
        Some(Err(refused)) => return refused,
        Some(Ok(headers)) => headers,
    };
    let mut response = next.run(request).await;
    for (name, value) in headers {
        response
            .headers_mut()
            .insert(name, HeaderValue::from(value));
    }
    response
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"message": message})),
    )
        .into_response()
}

/// The gate, the token check and the page size check; then the items and the asked page size.
async fn rest_gate(
    s: &RestShared,
    headers: &HeaderMap,
    size: Option<u64>,
) -> Result<(Vec<Value>, usize), Response> {
    if let Some(r) = s.control.gate().await {
        return Err(r);
    }
    let expected = format!("Token {}", s.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"message": "Bad credentials"})),
        )
            .into_response());
    }
    let size = size.unwrap_or(20);
    if !(1..=REST_MAX_PAGE).contains(&size) {
        return Err(bad_request("the page size must be 1 to 100"));
    }
    Ok((s.items.lock().unwrap().items.clone(), size as usize))
}

fn slice(items: &[Value], start: usize, size: usize) -> (&[Value], usize) {
    let end = (start + size).min(items.len());
    (
        items.get(start.min(items.len())..end).unwrap_or_default(),
        end,
    )
}

/// `?offset=&limit=` -> `{"data": [...], "meta": {"total": N}}`.
async fn rest_offset(
    State(s): State<Arc<RestShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (items, size) = match rest_gate(&s, &headers, param(&q, "limit")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let offset = param(&q, "offset").unwrap_or(0) as usize;
    let (page, _) = slice(&items, offset, size);
    axum::Json(
        json!({"data": page, "meta": {"total": items.len(), "offset": offset, "limit": size}}),
    )
    .into_response()
}

/// `?page=&per_page=` (1-based) -> `{"results": [...], "total_count": N}`.
async fn rest_page(
    State(s): State<Arc<RestShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (items, size) = match rest_gate(&s, &headers, param(&q, "per_page")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let page = param(&q, "page").unwrap_or(1);
    if page == 0 {
        return bad_request("pages start at 1");
    }
    let (results, _) = slice(&items, (page as usize - 1) * size, size);
    axum::Json(json!({"results": results, "total_count": items.len(), "page": page}))
        .into_response()
}

/// `?cursor=&limit=` -> `{"items": [...], "meta": {"next_cursor": "…" | null}}`.
async fn rest_cursor(
    State(s): State<Arc<RestShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (items, size) = match rest_gate(&s, &headers, param(&q, "limit")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let start = match q.get("cursor") {
        None => 0,
        Some(c) => match c
            .strip_prefix("cur_")
            .and_then(|c| usize::from_str_radix(c, 16).ok())
        {
            Some(at) => at,
            None => return bad_request("a bad cursor"),
        },
    };
    let (page, end) = slice(&items, start, size);
    let next = (end < items.len()).then(|| format!("cur_{end:x}"));
    axum::Json(json!({"items": page, "meta": {"next_cursor": next}})).into_response()
}

/// `?offset=&limit=` -> `{"data": [...], "links": {"next": url | null}}`.
async fn rest_next(
    State(s): State<Arc<RestShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (items, size) = match rest_gate(&s, &headers, param(&q, "limit")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let offset = param(&q, "offset").unwrap_or(0) as usize;
    let (page, end) = slice(&items, offset, size);
    let next =
        (end < items.len()).then(|| s.link(&format!("/next/items?offset={end}&limit={size}")));
    axum::Json(json!({"data": page, "links": {"next": next}})).into_response()
}

/// `?page=&per_page=` -> a bare array, with `Link: <…>; rel="next", <…>; rel="last"` (and `prev`, `first`).
async fn rest_link(
    State(s): State<Arc<RestShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (items, size) = match rest_gate(&s, &headers, param(&q, "per_page")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let page = param(&q, "page").unwrap_or(1).max(1) as usize;
    let (list, end) = slice(&items, (page - 1) * size, size);
    let url = |p: usize| s.link(&format!("/link/items?per_page={size}&page={p}"));
    let last = items.len().div_ceil(size).max(1);
    let mut links = vec![
        format!("<{}>; rel=\"first\"", url(1)),
        format!("<{}>; rel=\"last\"", url(last)),
    ];
    if page > 1 {
        links.insert(0, format!("<{}>; rel=\"prev\"", url(page - 1)));
    }
    let separate = s.links.lock().unwrap().separate_link_lines;
    if end < items.len() {
        let next = format!("<{}>; rel=\"next\"", url(page + 1));
        if separate {
            links.push(next);
        } else {
            links.insert(0, next);
        }
    }
    let mut response = axum::Json(Value::Array(list.to_vec())).into_response();
    let lines = if separate {
        links
    } else {
        vec![links.join(", ")]
    };
    for line in lines {
        if let Ok(v) = HeaderValue::from_str(&line) {
            response.headers_mut().append("link", v);
        }
    }
    response
}

/// Every item at once: `{"items": [...]}`.
async fn rest_single(State(s): State<Arc<RestShared>>, headers: HeaderMap) -> Response {
    let (items, _) = match rest_gate(&s, &headers, None).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    axum::Json(json!({"items": items})).into_response()
}
