//! A fake Xbox Live: TitleHub's title history (most recently played first) and the achievements service
//! (`orderBy=unlockTime`: most recently unlocked first, locked ones last). Requests need `Authorization:
//! XBL3.0 x={uhs};{token}` and `x-xbl-contract-version: 2`.
//!
//! Shapes as OpenXbox/xbox-webapi-python reads them (`api/provider/titlehub`, `api/provider/achievements`):
//! - TitleHub, `GET /users/xuid({xuid})/titles/titlehistory/decoration/{fields}?maxItems=N`, answers
//!   `{"xuid", "titles": [...]}`: the first `maxItems` titles and **no paging** (no `pagingInfo`, no
//!   continuation token). Each title's `achievement` counts (`currentAchievements`, `totalAchievements`,
//!   `currentGamerscore`, `totalGamerscore`, `progressPercentage`) are there only when the decoration names
//!   `achievement`, and `images` only with `image`.
//! - Achievements v2, `GET /users/xuid({xuid})/achievements?orderBy=unlockTime&maxItems=N`, pages with an
//!   opaque `pagingInfo.continuationToken` (null on the last page) and `totalRecords`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Control, Served, iso, param, serve};

/// The largest `maxItems` the fake takes.
const MAX_ITEMS: u64 = 1000;
/// What the achievements service says for "never unlocked".
const NEVER: &str = "0001-01-01T00:00:00.0000000Z";

/// The titles and achievements of one fake Xbox user.
#[derive(Debug, Default)]
pub struct XboxLibrary {
    /// Title history, most recently played first.
    pub titles: Vec<Value>,
    /// Every achievement of every title, most recently unlocked first, then the locked ones.
    pub achievements: Vec<Value>,
    clock: u64,
    made: u64,
}

impl XboxLibrary {
    fn tick(&mut self) -> String {
        self.clock += 1;
        iso(self.clock)
    }

    /// Adds `n` titles of `achievements_per_title` achievements (every fourth one unlocked), played just now.
    /// Returns their title ids.
    pub fn add_titles(&mut self, n: usize, achievements_per_title: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            self.made += 1;
            let title_id = (1_700_000_000 + self.made).to_string();
            let name = format!("Xbox Game {}", self.made);
            let scid = format!("00000000-0000-0000-0000-{:012}", self.made);
            for j in 0..achievements_per_title {
                let unlocked = j % 4 == 0;
                let at = if unlocked { self.tick() } else { NEVER.into() };
                self.achievements.push(json!({
                    "id": (j + 1).to_string(), "serviceConfigId": scid, "name": format!("Achievement {}", j + 1),
                    "titleAssociations": [{"name": name, "id": title_id.parse::<u64>().unwrap_or(0)}],
                    "progressState": if unlocked { "Achieved" } else { "NotStarted" },
                    "progression": {"requirements": [], "timeUnlocked": at},
                    "mediaAssets": [], "isSecret": false, "description": "Do the thing",
                    "rewards": [{"name": null, "description": null, "value": ((j % 5 + 1) * 5).to_string(), "type": "Gamerscore", "valueType": "Int"}],
                    "rarity": {"currentCategory": "Common", "currentPercentage": 42.5},
                }));
            }
            let played = self.tick();
            let mut title = json!({
                "titleId": title_id, "pfn": null, "type": "Game", "name": name, "devices": ["XboxSeries"],
                "titleHistory": {"lastTimePlayed": played, "visible": true, "canHide": false},
            });
            self.summarize(&mut title);
            self.titles.insert(0, title);
            ids.push(title_id);
        }
        self.sort_achievements();
        ids
    }

    /// The user plays title `title_id` and unlocks its achievement `achievement_id`: that achievement
    /// changes, the title moves to the front with new counts and a new `lastTimePlayed`.
    pub fn unlock(&mut self, title_id: &str, achievement_id: &str) {
        let at = self.tick();
        let numeric: u64 = title_id.parse().expect("a numeric title id");
        for a in &mut self.achievements {
            if a["titleAssociations"][0]["id"] == numeric && a["id"] == achievement_id {
                a["progressState"] = json!("Achieved");
                a["progression"]["timeUnlocked"] = json!(at);
            }
        }
        self.sort_achievements();
        let index = self
            .titles
            .iter()
            .position(|t| t["titleId"] == title_id)
            .expect("listed");
        let mut title = self.titles.remove(index);
        title["titleHistory"]["lastTimePlayed"] = json!(at);
        self.summarize(&mut title);
        self.titles.insert(0, title);
    }

    fn sort_achievements(&mut self) {
        // Unlock times sort as text; the locked ones (the zero time) keep their order at the end.
        self.achievements.sort_by(|a, b| {
            let t = |x: &Value| {
                x["progression"]["timeUnlocked"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            };
            t(b).cmp(&t(a))
        });
    }

    fn summarize(&self, title: &mut Value) {
        let id: u64 = title["titleId"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let mine: Vec<&Value> = self
            .achievements
            .iter()
            .filter(|a| a["titleAssociations"][0]["id"] == id)
            .collect();
        let score = |a: &&Value| -> u64 {
            a["rewards"][0]["value"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let unlocked: Vec<&Value> = mine
            .iter()
            .copied()
            .filter(|a| a["progressState"] == "Achieved")
            .collect();
        title["achievement"] = json!({
            "currentAchievements": unlocked.len(), "totalAchievements": mine.len(),
            "currentGamerscore": unlocked.iter().map(score).sum::<u64>(),
            "totalGamerscore": mine.iter().map(score).sum::<u64>(),
            "progressPercentage": (unlocked.len() * 100).checked_div(mine.len()).unwrap_or(0),
        });
    }
}

#[derive(Debug)]
struct XboxShared {
    control: Arc<Control>,
    library: Arc<Mutex<XboxLibrary>>,
    authorization: String,
    xuid: String,
}

/// A fake Xbox Live for one user (`xuid`) holding an XSTS `token` with user hash `uhs`.
#[derive(Debug)]
pub struct FakeXbox {
    pub control: Arc<Control>,
    pub library: Arc<Mutex<XboxLibrary>>,
    pub served: Served,
}

impl FakeXbox {
    /// Serves `titles` titles of `achievements_per_title` achievements each.
    pub async fn start(
        uhs: &str,
        token: &str,
        xuid: &str,
        titles: usize,
        achievements_per_title: usize,
    ) -> FakeXbox {
        let mut library = XboxLibrary::default();
        library.add_titles(titles, achievements_per_title);
        let shared = Arc::new(XboxShared {
            control: Arc::new(Control::default()),
            library: Arc::new(Mutex::new(library)),
            authorization: format!("XBL3.0 x={uhs};{token}"),
            xuid: xuid.to_string(),
        });
        let router = Router::new()
            .route("/users/{user}/titles/titlehistory", get(xbox_titles_plain))
            .route(
                "/users/{user}/titles/titlehistory/decoration/{fields}",
                get(xbox_titles),
            )
            .route("/users/{user}/achievements", get(xbox_achievements))
            .with_state(shared.clone());
        FakeXbox {
            control: shared.control.clone(),
            library: shared.library.clone(),
            served: serve(router, shared.control.clone()).await,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }
}

async fn xbox_gate(s: &XboxShared, headers: &HeaderMap, user: &str) -> Option<Response> {
    if let Some(r) = s.control.gate().await {
        return Some(r);
    }
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // A token an authorization server issued for this user hash (`XBL3.0 x={uhs};{token}`).
    let issued = presented.split_once(';').is_some_and(|(uhs, token)| {
        s.authorization.split(';').next() == Some(uhs) && s.control.accepts(token)
    });
    if presented != s.authorization && !issued {
        // Xbox Live answers a bad or expired XSTS token with an empty 401.
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [("www-authenticate", "XSTS error=token_expired")],
            )
                .into_response(),
        );
    }
    if headers
        .get("x-xbl-contract-version")
        .and_then(|v| v.to_str().ok())
        != Some("2")
    {
        return Some(
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"code": 1028, "source": "XboxLive", "description": "contract version 2 required"})),
            )
                .into_response(),
        );
    }
    if user != format!("xuid({})", s.xuid) {
        return Some(StatusCode::FORBIDDEN.into_response());
    }
    None
}

/// One page of `items` from the continuation token's position.
fn xbox_page(key: &str, items: &[Value], q: &HashMap<String, String>) -> Response {
    let max = param(q, "maxItems").unwrap_or(25);
    if !(1..=MAX_ITEMS).contains(&max) {
        return (StatusCode::BAD_REQUEST, "maxItems out of range").into_response();
    }
    let start = match q.get("continuationToken") {
        None => 0,
        Some(token) => match token
            .strip_prefix("ct-")
            .and_then(|t| usize::from_str_radix(t, 16).ok())
        {
            Some(at) => at,
            None => return (StatusCode::BAD_REQUEST, "bad continuationToken").into_response(),
        },
    };
    let end = (start + max as usize).min(items.len());
    let page = items.get(start.min(items.len())..end).unwrap_or_default();
    let token = (end < items.len()).then(|| format!("ct-{end:08x}"));
    axum::Json(json!({
        key: page,
        "pagingInfo": {"continuationToken": token, "totalRecords": items.len()},
    }))
    .into_response()
}

async fn xbox_titles_plain(
    State(s): State<Arc<XboxShared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    title_history(&s, &user, "", &headers, &q).await
}

async fn xbox_titles(
    State(s): State<Arc<XboxShared>>,
    Path((user, fields)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    title_history(&s, &user, &fields, &headers, &q).await
}

/// The first `maxItems` titles, decorated with what `fields` names; no paging, as TitleHub does.
async fn title_history(
    s: &XboxShared,
    user: &str,
    fields: &str,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Response {
    if let Some(r) = xbox_gate(s, headers, user).await {
        return r;
    }
    let fields: Vec<String> = fields
        .split(',')
        .map(|f| f.trim().to_ascii_lowercase())
        .collect();
    let max = param(q, "maxItems").unwrap_or(25) as usize;
    let titles: Vec<Value> = s
        .library
        .lock()
        .unwrap()
        .titles
        .iter()
        .take(max)
        .map(|t| {
            let mut t = t.clone();
            let fields_of = t.as_object_mut().expect("a title is an object");
            if !fields.iter().any(|f| f == "achievement") {
                fields_of.remove("achievement");
            }
            if fields.iter().any(|f| f == "image") {
                fields_of.insert(
                    "displayImage".into(),
                    json!("https://store-images.s-microsoft.com/image/x"),
                );
            }
            t
        })
        .collect();
    axum::Json(json!({"xuid": s.xuid, "titles": titles})).into_response()
}

async fn xbox_achievements(
    State(s): State<Arc<XboxShared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = xbox_gate(&s, &headers, &user).await {
        return r;
    }
    if !q
        .get("orderBy")
        .is_some_and(|o| o.eq_ignore_ascii_case("unlockTime"))
    {
        return (
            StatusCode::BAD_REQUEST,
            "this fake serves orderBy=unlockTime",
        )
            .into_response();
    }
    let achievements = s.library.lock().unwrap().achievements.clone();
    xbox_page("achievements", &achievements, &q)
}
