//! A fake PlayStation Network trophy API (the shapes psn-api documents: achievements-app/psn-api,
//! `website/docs/api-docs/user-titles.md`, `title-trophies.md`, `data-models/trophy-title.md`): trophy
//! titles with `limit`/`offset`/`nextOffset` paging, most recently updated first, and each title's trophies
//! from the service its `npServiceName` names (`trophy2` for PS5 titles, `trophy` for PS3/PS4/Vita ones,
//! also when a PS4 title is listed for PS5 too), 404 from the wrong one, whole or in `limit`/`offset`/
//! `nextOffset` pages. A private profile is refused with 403 "Not permitted by access control" (or, as
//! psn-api allows, with that error in a 200).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{Control, Served, iso, param, serve};

/// The API's largest `limit`.
const MAX_LIMIT: u64 = 800;
/// The account id the fake knows besides `me`.
pub const PSN_ACCOUNT_ID: &str = "6515971742264256071";

/// The trophies of one fake PSN user.
#[derive(Debug, Default)]
pub struct PsnLibrary {
    /// Trophy titles, most recently updated first, as the API lists them.
    pub titles: Vec<Value>,
    /// npCommunicationId -> the title's trophies, with the user's progress.
    pub trophies: HashMap<String, Vec<Value>>,
    /// The profile's privacy settings hide its trophies.
    pub private: bool,
    /// The refusal of a hidden profile comes with status 200 (psn-api reads the `error` object of any
    /// answer, whatever its status: `src/trophy/user/getUserTrophiesEarnedForTitle.ts`).
    pub private_with_200: bool,
    /// A title's trophies come in pages of this many when the request names no `limit`, each naming its
    /// `nextOffset` (the `limit`/`offset`/`nextOffset` of psn-api's `UserTrophiesEarnedForTitleResponse`);
    /// `None`: whole.
    pub trophy_page: Option<usize>,
    clock: u64,
    made: u64,
}

fn trophy_type(j: usize) -> &'static str {
    match j {
        0 => "platinum",
        j if j % 10 == 1 => "gold",
        j if j % 4 == 2 => "silver",
        _ => "bronze",
    }
}

impl PsnLibrary {
    fn tick(&mut self) -> String {
        self.clock += 1;
        iso(self.clock)
    }

    /// Adds `n` titles of `trophies_per_title` trophies (every third one earned), as the most recently
    /// updated; even ones are PS5 titles (`trophy2`), and every fifth odd one a PS4 title listed for PS5 too
    /// (`"PS4,PS5"`, still `trophy`). Returns their ids.
    pub fn add_titles(&mut self, n: usize, trophies_per_title: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            self.made += 1;
            let k = self.made;
            let at = self.tick();
            let id = format!("NPWR{k:05}_00");
            let ps5 = k.is_multiple_of(2);
            let trophies: Vec<Value> = (0..trophies_per_title)
                .map(|j| {
                    let mut t = json!({
                        "trophyId": j, "trophyHidden": false, "earned": j % 3 == 0, "trophyType": trophy_type(j),
                        "trophyRare": 2, "trophyEarnedRate": format!("{:.1}", (j * 7 % 90) as f64 + 0.5),
                    });
                    if j % 3 == 0 {
                        t["earnedDateTime"] = json!(at);
                    }
                    t
                })
                .collect();
            let mut title = json!({
                "npServiceName": if ps5 { "trophy2" } else { "trophy" },
                "npCommunicationId": id, "trophySetVersion": "01.00",
                "trophyTitleName": format!("Game {k}"),
                "trophyTitleIconUrl": format!("https://image.api.playstation.com/trophy/np/{id}/icon.png"),
                "trophyTitlePlatform": match (ps5, k.is_multiple_of(5)) {
                    (true, _) => "PS5",
                    (false, true) => "PS4,PS5",
                    (false, false) => "PS4",
                },
                "hasTrophyGroups": false, "hiddenFlag": false, "lastUpdatedDateTime": at,
            });
            summarize(&mut title, &trophies);
            self.titles.insert(0, title);
            self.trophies.insert(id.clone(), trophies);
            ids.push(id);
        }
        ids
    }

    /// The user earns trophy `trophy` of title `id`: that trophy changes, and the title's counts change and it
    /// moves to the front with a new `lastUpdatedDateTime`.
    pub fn earn(&mut self, id: &str, trophy: u64) {
        let at = self.tick();
        let Some(list) = self.trophies.get_mut(id) else {
            panic!("no title {id}");
        };
        for t in list.iter_mut() {
            if t["trophyId"] == trophy {
                t["earned"] = json!(true);
                t["earnedDateTime"] = json!(at);
            }
        }
        let list = list.clone();
        let at_index = self
            .titles
            .iter()
            .position(|t| t["npCommunicationId"] == id)
            .expect("listed");
        let mut title = self.titles.remove(at_index);
        title["lastUpdatedDateTime"] = json!(at);
        summarize(&mut title, &list);
        self.titles.insert(0, title);
    }
}

/// Sets a title's `definedTrophies`, `earnedTrophies` and `progress` from its trophies.
fn summarize(title: &mut Value, trophies: &[Value]) {
    let count = |earned_only: bool, kind: &str| {
        trophies
            .iter()
            .filter(|t| t["trophyType"] == kind && (!earned_only || t["earned"] == true))
            .count()
    };
    let kinds = ["bronze", "silver", "gold", "platinum"];
    let defined: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|k| (k.to_string(), json!(count(false, k))))
        .collect();
    let earned: serde_json::Map<String, Value> = kinds
        .iter()
        .map(|k| (k.to_string(), json!(count(true, k))))
        .collect();
    let done = trophies.iter().filter(|t| t["earned"] == true).count();
    title["definedTrophies"] = Value::Object(defined);
    title["earnedTrophies"] = Value::Object(earned);
    title["progress"] = json!((done * 100).checked_div(trophies.len()).unwrap_or(0));
}

#[derive(Debug)]
struct PsnShared {
    control: Arc<Control>,
    library: Arc<Mutex<PsnLibrary>>,
    token: String,
}

/// A fake PSN trophy API for one user whose access token is `token` (account `me` or [`PSN_ACCOUNT_ID`]).
#[derive(Debug)]
pub struct FakePlayStation {
    pub control: Arc<Control>,
    pub library: Arc<Mutex<PsnLibrary>>,
    pub served: Served,
}

impl FakePlayStation {
    /// Serves `titles` trophy titles of `trophies_per_title` trophies each.
    pub async fn start(token: &str, titles: usize, trophies_per_title: usize) -> FakePlayStation {
        let mut library = PsnLibrary::default();
        library.add_titles(titles, trophies_per_title);
        let shared = Arc::new(PsnShared {
            control: Arc::new(Control::default()),
            library: Arc::new(Mutex::new(library)),
            token: token.to_string(),
        });
        let router = Router::new()
            .route(
                "/api/trophy/v1/users/{account}/trophyTitles",
                get(psn_titles),
            )
            .route(
                "/api/trophy/v1/users/{account}/npCommunicationIds/{id}/trophyGroups/all/trophies",
                get(psn_trophies),
            )
            .with_state(shared.clone());
        FakePlayStation {
            control: shared.control.clone(),
            library: shared.library.clone(),
            served: serve(router, shared.control.clone()).await,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.served.base_url
    }
}

fn psn_error(status: StatusCode, code: u64, message: &str) -> Response {
    (
        status,
        axum::Json(
            json!({"error": {"referenceId": "0f7e7b4c-fake", "code": code, "message": message}}),
        ),
    )
        .into_response()
}

async fn psn_gate(s: &PsnShared, headers: &HeaderMap, account: &str) -> Option<Response> {
    if let Some(r) = s.control.gate().await {
        return Some(r);
    }
    let expected = format!("Bearer {}", s.token);
    let presented = headers.get("authorization").and_then(|v| v.to_str().ok());
    let issued = presented
        .and_then(|p| p.strip_prefix("Bearer "))
        .is_some_and(|t| s.control.accepts(t));
    if presented != Some(expected.as_str()) && !issued {
        return Some(psn_error(
            StatusCode::UNAUTHORIZED,
            2_241_025,
            "Invalid token",
        ));
    }
    let (private, with_200) = {
        let library = s.library.lock().unwrap();
        (library.private, library.private_with_200)
    };
    if private {
        return Some(psn_error(
            if with_200 {
                StatusCode::OK
            } else {
                StatusCode::FORBIDDEN
            },
            2_240_526,
            "Not permitted by access control",
        ));
    }
    if account != "me" && account != PSN_ACCOUNT_ID {
        return Some(psn_error(
            StatusCode::NOT_FOUND,
            2_240_525,
            "Resource not found",
        ));
    }
    None
}

async fn psn_titles(
    State(s): State<Arc<PsnShared>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = psn_gate(&s, &headers, &account).await {
        return r;
    }
    let limit = param(&q, "limit").unwrap_or(100);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return psn_error(StatusCode::BAD_REQUEST, 2_240_526, "Invalid limit");
    }
    let offset = param(&q, "offset").unwrap_or(0) as usize;
    let titles = s.library.lock().unwrap().titles.clone();
    let end = (offset + limit as usize).min(titles.len());
    let page = titles
        .get(offset.min(titles.len())..end)
        .unwrap_or_default();
    let mut body = json!({"trophyTitles": page, "totalItemCount": titles.len()});
    if end < titles.len() {
        body["nextOffset"] = json!(end);
    }
    if offset > 0 {
        body["previousOffset"] = json!(offset.saturating_sub(limit as usize));
    }
    axum::Json(body).into_response()
}

async fn psn_trophies(
    State(s): State<Arc<PsnShared>>,
    Path((account, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = psn_gate(&s, &headers, &account).await {
        return r;
    }
    let library = s.library.lock().unwrap();
    let service = library
        .titles
        .iter()
        .find(|t| t["npCommunicationId"] == id.as_str())
        .and_then(|t| t["npServiceName"].as_str());
    let (Some(service), Some(trophies)) = (service, library.trophies.get(&id)) else {
        return psn_error(StatusCode::NOT_FOUND, 2_240_525, "Resource not found");
    };
    if q.get("npServiceName").map(String::as_str) != Some(service) {
        return psn_error(StatusCode::NOT_FOUND, 2_240_525, "Resource not found");
    }
    let offset = param(&q, "offset").unwrap_or(0) as usize;
    let size = param(&q, "limit")
        .map(|l| l as usize)
        .or(library.trophy_page)
        .unwrap_or(trophies.len());
    let end = (offset + size).min(trophies.len());
    let mut body = json!({
        "trophySetVersion": "01.00", "hasTrophyGroups": false,
        "trophies": trophies.get(offset.min(end)..end).unwrap_or_default(),
        "totalItemCount": trophies.len(),
    });
    if end < trophies.len() {
        body["nextOffset"] = json!(end);
    }
    axum::Json(body).into_response()
}
