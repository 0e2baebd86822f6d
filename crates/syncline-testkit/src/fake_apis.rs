//! Fake third-party APIs for import tests: Spotify, Steam, PlayStation, Xbox and a generic REST API, served
//! by axum on 127.0.0.1 with the real APIs' documented response shapes, paging and error behaviour (401 on
//! a bad or expired credential, 429 with `Retry-After`), plus knobs for latency, rate limits and injected
//! failures.
//!
//! Each fake counts its requests, logs their paths and queries, and lets a test change the upstream data
//! while it runs.

mod oauth;
mod playstation;
mod rest;
mod xbox;

pub use oauth::{FakeAuthServer, FakeXboxAuth, OAuthClientStyle, PSN_NPSSO};

pub use playstation::{FakePlayStation, PSN_ACCOUNT_ID, PsnLibrary};
pub use rest::{FakeRest, REST_MAX_PAGE, RestItems};
pub use xbox::{FakeXbox, XboxLibrary};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// A canned answer: status, headers, JSON body.
type Canned = (u16, Vec<(String, String)>, Value);

/// Faults and limits shared by every fake.
#[derive(Debug, Default)]
pub struct Control {
    requests: AtomicU64,
    latency_ms: AtomicU64,
    fail_next: AtomicU32,
    limit_next: AtomicU32,
    retry_after_secs: AtomicU64,
    expired: AtomicBool,
    log: Mutex<Vec<String>>,
    /// Access tokens a fake authorization server issued for this API, each with the requests it is still
    /// good for (it "expires" after that many: a short-lived token that runs out mid-walk).
    issued: Mutex<HashMap<String, u64>>,
    /// Answers given, in order, to the next requests instead of their real ones.
    canned: Mutex<std::collections::VecDeque<Canned>>,
    /// When set, requests after this many wait unanswered until [`Control::release`].
    hold_after: Mutex<Option<u64>>,
    released: tokio::sync::Notify,
}

impl Control {
    /// Requests served so far (including refused ones).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// The path and query of every request so far, in order (including refused ones).
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Every request waits this long before it is answered.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next `n` requests fail with 503.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// The next `n` requests get 429 with `Retry-After: retry_after_secs`.
    pub fn rate_limit_next(&self, n: u32, retry_after_secs: u64) {
        self.retry_after_secs
            .store(retry_after_secs, Ordering::SeqCst);
        self.limit_next.store(n, Ordering::SeqCst);
    }

    /// The next request gets this answer (queued after earlier ones): a status, headers and a JSON body.
    /// For the rate-limit signals and refusals each service documents.
    pub fn answer_next(&self, status: u16, headers: &[(&str, &str)], body: Value) {
        let headers = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        self.canned
            .lock()
            .unwrap()
            .push_back((status, headers, body));
    }

    /// Requests after the first `n` (counting every request so far) get no answer until [`Control::release`]:
    /// a walk that stops at a known page, however fast or slow the machine is, with that page in flight.
    pub fn hold_after(&self, n: u64) {
        *self.hold_after.lock().unwrap() = Some(n);
    }

    /// Held requests are answered, and no more are held.
    pub fn release(&self) {
        *self.hold_after.lock().unwrap() = None;
        self.released.notify_waiters();
    }

    /// Every request gets 401 (an expired token) while set.
    pub fn set_expired(&self, expired: bool) {
        self.expired.store(expired, Ordering::SeqCst);
    }

    /// Accepts `token` for the next `uses` requests (what an authorization server does when it issues one).
    pub fn issue(&self, token: &str, uses: u64) {
        self.issued.lock().unwrap().insert(token.to_string(), uses);
    }

    /// Every issued access token stops working (they all expired).
    pub fn expire_issued(&self) {
        self.issued.lock().unwrap().clear();
    }

    /// Whether `token` was issued and is still good, spending one of its uses.
    pub fn accepts(&self, token: &str) -> bool {
        let mut issued = self.issued.lock().unwrap();
        match issued.get_mut(token) {
            Some(uses) if *uses > 0 => {
                *uses -= 1;
                true
            }
            _ => false,
        }
    }

    /// Counts the request, waits the latency and answers with an injected fault, if any.
    async fn gate(&self) -> Option<Response> {
        let n = self.requests.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            let released = self.released.notified();
            let mut released = std::pin::pin!(released);
            // Registered before the check, so a release between the check and the wait is not missed.
            released.as_mut().enable();
            if !self
                .hold_after
                .lock()
                .unwrap()
                .is_some_and(|after| n > after)
            {
                break;
            }
            released.await;
        }
        let latency = self.latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let canned = self.canned.lock().unwrap().pop_front();
        if let Some((status, headers, body)) = canned {
            let mut r = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                axum::Json(body),
            )
                .into_response();
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    r.headers_mut().insert(name, value);
                }
            }
            return Some(r);
        }
        if take(&self.fail_next) {
            return Some((StatusCode::SERVICE_UNAVAILABLE, "try later").into_response());
        }
        if take(&self.limit_next) {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(json!({"error": {"status": 429, "message": "API rate limit exceeded"}})),
            )
                .into_response();
            let secs = self.retry_after_secs.load(Ordering::SeqCst);
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
            return Some(r);
        }
        if self.expired.load(Ordering::SeqCst) {
            return Some(unauthorized());
        }
        None
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({"error": {"status": 401, "message": "The access token expired"}})),
    )
        .into_response()
}

/// An ISO 8601 time `secs` seconds after 2020-01-01, in a calendar of 28-day months (valid dates that sort
/// as text, which is all the fakes need).
pub fn iso(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        2020 + days / 336,
        1 + (days % 336) / 28,
        1 + days % 28,
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// A fake served on a loopback port; dropping it stops the server.
#[derive(Debug)]
pub struct Served {
    pub base_url: String,
    pub(crate) task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `router` over HTTPS on a loopback port (the shared throwaway CA, [`crate::FakeTls::shared`]), logging every request's path and query into `control`.
async fn serve(router: Router, control: Arc<Control>) -> Served {
    let router = router.layer(axum::middleware::from_fn_with_state(control, log_request));
    crate::serve_https(router).await
}

async fn log_request(
    State(control): State<Arc<Control>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |pq| pq.to_string());
    control.log.lock().unwrap().push(target);
    next.run(request).await
}

fn param(q: &HashMap<String, String>, name: &str) -> Option<u64> {
    q.get(name).and_then(|v| v.parse().ok())
}

// ---------------------------------------------------------------------------------------------------------
// Spotify

/// The library of one fake Spotify user.
#[derive(Debug, Default)]
pub struct SpotifyLibrary {
    /// Saved tracks, newest first: `{added_at, track: {...}}`.
    pub tracks: Vec<Value>,
    pub albums: Vec<Value>,
    /// Followed artists, ordered by id (the cursor order).
    pub artists: Vec<Value>,
    pub playlists: Vec<Value>,
    /// The `added_at` clock: each saved item is one second newer than the last.
    clock: u64,
}

impl SpotifyLibrary {
    fn tick(&mut self) -> String {
        self.clock += 1;
        iso(self.clock)
    }

    /// Saves `n` new tracks (newest first, as Spotify lists them); returns their ids.
    pub fn save_tracks(&mut self, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            let at = self.tick();
            let id = format!("trk{:010}", self.clock);
            let item = json!({
                "added_at": at,
                "track": {
                    "id": id, "name": format!("Track {}", self.clock), "duration_ms": 180_000 + self.clock % 1000,
                    "album": {"id": format!("alb{:06}", self.clock % 97), "name": "An album"},
                    "artists": [{"id": "art1", "name": "Someone"}, {"id": "art2", "name": "Else"}],
                    "popularity": 50, "explicit": false, "uri": format!("spotify:track:{id}"),
                },
            });
            self.tracks.insert(0, item);
            ids.push(id);
        }
        ids
    }

    pub fn save_albums(&mut self, n: usize) {
        for _ in 0..n {
            let at = self.tick();
            self.albums.insert(0, json!({
                "added_at": at,
                "album": {"id": format!("alb{:010}", self.clock), "name": format!("Album {}", self.clock),
                          "artists": [{"id": "art1", "name": "Someone"}], "release_date": "2020-05-01", "total_tracks": 11},
            }));
        }
    }

    pub fn follow_artists(&mut self, n: usize) {
        for _ in 0..n {
            self.clock += 1;
            self.artists.push(json!({
                "id": format!("art{:010}", self.clock), "name": format!("Artist {}", self.clock),
                "genres": ["indie", "pop"], "popularity": self.clock % 100, "type": "artist",
                "followers": {"href": null, "total": self.clock * 3},
            }));
        }
    }

    pub fn add_playlists(&mut self, n: usize) {
        for _ in 0..n {
            self.clock += 1;
            self.playlists.push(json!({
                "id": format!("pl{:010}", self.clock), "name": format!("Playlist {}", self.clock),
                "owner": {"id": "me"}, "snapshot_id": "s1", "tracks": {"total": 12}, "public": false,
            }));
        }
    }

    /// Turns the library into what a Development Mode app gets since February 2026
    /// (developer.spotify.com/documentation/web-api/tutorials/february-2026-migration-guide): a simplified
    /// playlist's `tracks` summary is renamed `items` (`{"href", "total"}`) and `tracks` is null; artists
    /// have no `popularity` and no `followers`; tracks and albums no `popularity`.
    pub fn development_mode_2026(&mut self) {
        for p in &mut self.playlists {
            let summary = p["tracks"].take();
            p["items"] = json!({"href": format!("https://api.spotify.com/v1/playlists/{}/items", p["id"].as_str().unwrap_or("")), "total": summary["total"]});
        }
        for a in &mut self.artists {
            if let Some(a) = a.as_object_mut() {
                a.remove("popularity");
                a.remove("followers");
            }
        }
        for item in self.tracks.iter_mut().chain(self.albums.iter_mut()) {
            for key in ["track", "album"] {
                if let Some(o) = item[key].as_object_mut() {
                    o.remove("popularity");
                }
            }
        }
    }

    /// Renames the saved track with `id` (an upstream change).
    pub fn rename_track(&mut self, id: &str, name: &str) {
        for item in &mut self.tracks {
            if item["track"]["id"] == id {
                item["track"]["name"] = json!(name);
            }
        }
    }
}

#[derive(Debug)]
struct SpotifyShared {
    control: Arc<Control>,
    library: Arc<Mutex<SpotifyLibrary>>,
    token: String,
    base: Mutex<String>,
}

/// A fake Spotify Web API for one user whose access token is `token`.
#[derive(Debug)]
pub struct FakeSpotify {
    pub control: Arc<Control>,
    pub library: Arc<Mutex<SpotifyLibrary>>,
    pub served: Served,
}

impl FakeSpotify {
    /// Serves a library of `tracks` saved tracks, `albums` saved albums, `artists` followed artists and
    /// `playlists` playlists.
    pub async fn start(
        token: &str,
        tracks: usize,
        albums: usize,
        artists: usize,
        playlists: usize,
    ) -> FakeSpotify {
        let mut library = SpotifyLibrary::default();
        library.follow_artists(artists);
        library.add_playlists(playlists);
        library.save_albums(albums);
        library.save_tracks(tracks);
        let shared = Arc::new(SpotifyShared {
            control: Arc::new(Control::default()),
            library: Arc::new(Mutex::new(library)),
            token: token.to_string(),
            base: Mutex::new(String::new()),
        });
        let router = Router::new()
            .route("/v1/me/tracks", get(spotify_tracks))
            .route("/v1/me/albums", get(spotify_albums))
            .route("/v1/me/playlists", get(spotify_playlists))
            .route("/v1/me/following", get(spotify_following))
            .with_state(shared.clone());
        let served = serve(router, shared.control.clone()).await;
        *shared.base.lock().unwrap() = served.base_url.clone();
        FakeSpotify {
            control: shared.control.clone(),
            library: shared.library.clone(),
            served,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }
}

async fn spotify_gate(s: &SpotifyShared, headers: &HeaderMap) -> Option<Response> {
    if let Some(r) = s.control.gate().await {
        return Some(r);
    }
    let expected = format!("Bearer {}", s.token);
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
    let issued = presented
        .and_then(|p| p.strip_prefix("Bearer "))
        .is_some_and(|t| s.control.accepts(t));
    (presented != Some(expected.as_str()) && !issued).then(unauthorized)
}

/// Offset paging as Spotify does it: `limit` 1–50 (default 20), `offset`, and `next` as a full url.
fn offset_page(
    s: &SpotifyShared,
    path: &str,
    items: &[Value],
    q: &HashMap<String, String>,
) -> Response {
    let limit = param(q, "limit").unwrap_or(20);
    if !(1..=50).contains(&limit) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"status": 400, "message": "Invalid limit"}})),
        )
            .into_response();
    }
    let offset = param(q, "offset").unwrap_or(0) as usize;
    let end = (offset + limit as usize).min(items.len());
    let page = items.get(offset.min(items.len())..end).unwrap_or_default();
    let base = s.base.lock().unwrap().clone();
    let url = |o: usize| format!("{base}{path}?offset={o}&limit={limit}");
    axum::Json(json!({
        "href": url(offset),
        "items": page,
        "limit": limit,
        "next": (end < items.len()).then(|| url(end)),
        "offset": offset,
        "previous": (offset > 0).then(|| url(offset.saturating_sub(limit as usize))),
        "total": items.len(),
    }))
    .into_response()
}

/// One of the offset-paged lists of the library, behind the token check.
async fn spotify_list(
    s: &SpotifyShared,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
    path: &str,
    list: fn(&SpotifyLibrary) -> &Vec<Value>,
) -> Response {
    if let Some(r) = spotify_gate(s, headers).await {
        return r;
    }
    let items = list(&s.library.lock().unwrap()).clone();
    offset_page(s, path, &items, q)
}

async fn spotify_tracks(
    State(s): State<Arc<SpotifyShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    spotify_list(&s, &headers, &q, "/v1/me/tracks", |l| &l.tracks).await
}

async fn spotify_albums(
    State(s): State<Arc<SpotifyShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    spotify_list(&s, &headers, &q, "/v1/me/albums", |l| &l.albums).await
}

async fn spotify_playlists(
    State(s): State<Arc<SpotifyShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    spotify_list(&s, &headers, &q, "/v1/me/playlists", |l| &l.playlists).await
}

/// Cursor paging: `type=artist`, `after` (the last id seen), `limit`; `cursors.after` and `next`.
async fn spotify_following(
    State(s): State<Arc<SpotifyShared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = spotify_gate(&s, &headers).await {
        return r;
    }
    if q.get("type").map(String::as_str) != Some("artist") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": {"status": 400, "message": "type must be artist"}})),
        )
            .into_response();
    }
    let limit = param(&q, "limit").unwrap_or(20).clamp(1, 50) as usize;
    let artists = s.library.lock().unwrap().artists.clone();
    let start = match q.get("after") {
        Some(after) => artists
            .iter()
            .position(|a| a["id"].as_str().is_some_and(|id| id > after.as_str()))
            .unwrap_or(artists.len()),
        None => 0,
    };
    let end = (start + limit).min(artists.len());
    let page = &artists[start..end];
    let after = page
        .last()
        .and_then(|a| a["id"].as_str())
        .map(str::to_string);
    let base = s.base.lock().unwrap().clone();
    let next = (end < artists.len()).then(|| {
        format!(
            "{base}/v1/me/following?type=artist&after={}&limit={limit}",
            after.clone().unwrap_or_default()
        )
    });
    axum::Json(json!({"artists": {
        "href": format!("{base}/v1/me/following?type=artist&limit={limit}"),
        "items": page,
        "limit": limit,
        "next": next,
        "cursors": {"after": if next.is_some() { after } else { None }},
        "total": artists.len(),
    }}))
    .into_response()
}

// ---------------------------------------------------------------------------------------------------------
// Steam

/// The library of one fake Steam user: owned games and, per game, achievements.
///
/// Shapes from developer.valvesoftware.com/wiki/Steam_Web_API (GetOwnedGames, GetPlayerAchievements,
/// ResolveVanityURL) and partner.steamgames.com/doc/webapi/IPlayerService: played free games only with
/// `include_played_free_games=1`; `has_community_visible_stats` only on games with stats; a private profile
/// answers `{"response":{}}` to GetOwnedGames and `403 "Profile is not public"` to GetPlayerAchievements.
#[derive(Debug, Default)]
pub struct SteamLibrary {
    /// `{appid, name, playtime_forever, ...}` as GetOwnedGames lists them.
    pub games: Vec<Value>,
    /// Free games the user has played: listed only when asked with `include_played_free_games=1`.
    pub played_free_games: Vec<Value>,
    /// appid -> `[{apiname, achieved, unlocktime}]`; games without an entry have no stats.
    pub achievements: HashMap<u64, Vec<Value>>,
    /// The profile's game details are private.
    pub private: bool,
    /// The profile's vanity name (`steamcommunity.com/id/NAME`), resolved by ResolveVanityURL.
    pub vanity: Option<String>,
}

impl SteamLibrary {
    /// Adds `n` played free games (appids from 7_000_000), with stats and `achievements` each.
    pub fn add_played_free_games(&mut self, n: usize, achievements: usize) {
        for i in 0..n as u64 {
            let appid = 7_000_000 + i;
            self.played_free_games.push(json!({
                "appid": appid, "name": format!("Free {appid}"), "playtime_forever": 30 + i,
                "img_icon_url": "", "rtime_last_played": 1_600_100_000 + i,
                "has_community_visible_stats": true,
            }));
            let list = (0..achievements)
                .map(|a| json!({"apiname": format!("FREE_{a}"), "achieved": 1, "unlocktime": 1_650_000_000 + a as u64}))
                .collect();
            self.achievements.insert(appid, list);
        }
    }
}

#[derive(Debug)]
struct SteamShared {
    control: Arc<Control>,
    library: Arc<Mutex<SteamLibrary>>,
    key: String,
    steam_id: String,
}

/// A fake Steam Web API for one user (`steam_id`) and Web API key `key`.
#[derive(Debug)]
pub struct FakeSteam {
    pub control: Arc<Control>,
    pub library: Arc<Mutex<SteamLibrary>>,
    pub served: Served,
}

impl FakeSteam {
    /// `games` owned games; every third game has no stats, the others `achievements_per_game` each.
    pub async fn start(
        key: &str,
        steam_id: &str,
        games: usize,
        achievements_per_game: usize,
    ) -> FakeSteam {
        let mut library = SteamLibrary::default();
        for i in 0..games as u64 {
            let appid = 10 + i * 10;
            library.games.push(json!({
                "appid": appid, "name": format!("Game {appid}"), "playtime_forever": i * 7,
                "img_icon_url": format!("icon{appid}"), "rtime_last_played": 1_600_000_000 + i,
                "playtime_windows_forever": 0,
            }));
            if i % 3 != 0 {
                // Steam sends the field only for games that have stats.
                library.games.last_mut().unwrap()["has_community_visible_stats"] = json!(true);
            }
            if i % 3 != 0 {
                let list = (0..achievements_per_game)
                    .map(|a| json!({"apiname": format!("ACH_{a}"), "achieved": (a % 2) as u64, "unlocktime": if a % 2 == 1 { 1_650_000_000 + a as u64 } else { 0 }}))
                    .collect();
                library.achievements.insert(appid, list);
            }
        }
        let shared = Arc::new(SteamShared {
            control: Arc::new(Control::default()),
            library: Arc::new(Mutex::new(library)),
            key: key.to_string(),
            steam_id: steam_id.to_string(),
        });
        let router = Router::new()
            .route("/IPlayerService/GetOwnedGames/v0001/", get(steam_owned))
            .route(
                "/ISteamUserStats/GetPlayerAchievements/v0001/",
                get(steam_achievements),
            )
            .route("/ISteamUser/ResolveVanityURL/v0001/", get(steam_resolve))
            .with_state(shared.clone());
        FakeSteam {
            control: shared.control.clone(),
            library: shared.library.clone(),
            served: serve(router, shared.control.clone()).await,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }
}

async fn steam_gate(s: &SteamShared, q: &HashMap<String, String>) -> Option<Response> {
    if let Some(r) = s.control.gate().await {
        return Some(r);
    }
    if q.get("key") != Some(&s.key) {
        // Steam answers a bad key with a bare 403 page.
        return Some(
            (StatusCode::FORBIDDEN, "<html><body>Forbidden</body></html>").into_response(),
        );
    }
    None
}

async fn steam_owned(
    State(s): State<Arc<SteamShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = steam_gate(&s, &q).await {
        return r;
    }
    let library = s.library.lock().unwrap();
    if q.get("steamid") != Some(&s.steam_id) || library.private {
        return axum::Json(json!({"response": {}})).into_response();
    }
    let mut games = library.games.clone();
    if q.get("include_played_free_games").map(String::as_str) == Some("1") {
        games.extend(library.played_free_games.iter().cloned());
    }
    axum::Json(json!({"response": {"game_count": games.len(), "games": games}})).into_response()
}

/// `ISteamUser/ResolveVanityURL/v0001/?key=…&vanityurl=NAME`.
async fn steam_resolve(
    State(s): State<Arc<SteamShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = steam_gate(&s, &q).await {
        return r;
    }
    let library = s.library.lock().unwrap();
    match (&library.vanity, q.get("vanityurl")) {
        (Some(name), Some(asked)) if name == asked => {
            axum::Json(json!({"response": {"steamid": s.steam_id, "success": 1}})).into_response()
        }
        _ => {
            axum::Json(json!({"response": {"success": 42, "message": "No match"}})).into_response()
        }
    }
}

async fn steam_achievements(
    State(s): State<Arc<SteamShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = steam_gate(&s, &q).await {
        return r;
    }
    let appid = param(&q, "appid").unwrap_or(0);
    let library = s.library.lock().unwrap();
    if library.private {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(
                json!({"playerstats": {"error": "Profile is not public", "success": false}}),
            ),
        )
            .into_response();
    }
    match library.achievements.get(&appid) {
        Some(list) => axum::Json(json!({"playerstats": {
            "steamID": s.steam_id, "gameName": format!("Game {appid}"), "achievements": list, "success": true,
        }}))
        .into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"playerstats": {"error": "Requested app has no stats", "success": false}})),
        )
            .into_response(),
    }
}
