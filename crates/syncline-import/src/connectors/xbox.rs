//! Xbox Live: the user's title history (`titles`, from TitleHub) and achievements (`achievements`, from the
//! achievements service). Authenticated with an XSTS token: `Authorization: XBL3.0 x={uhs};{token}` and
//! `x-xbl-contract-version: 2`; the credential holds `uhs`, `token` and the user's `xuid`.
//!
//! TitleHub's title history has **no continuation paging** (OpenXbox/xbox-webapi-python,
//! `api/provider/titlehub`: `GET /users/xuid({xuid})/titles/titlehistory/decoration/{fields}` with only
//! `maxItems`, answering `{"xuid", "titles"}`). So `titles` asks once for up to [`MAX_TITLES`] titles,
//! decorated with `achievement` (the counts and gamerscore per title; without it they are absent) and
//! `image`, keeps the list between pages, and pages through it locally: its checkpoint is the position in
//! that list. A walk resumed elsewhere (another instance, a restart) asks for the list again. The
//! achievements service does page with `maxItems` and an opaque `pagingInfo.continuationToken`, which is
//! the `achievements` checkpoint (`api/provider/achievements`).
//!
//! Title history comes most recently played first, and achievements are asked for by `orderBy=unlockTime`
//! (most recently unlocked first, locked ones last, with the zero time `0001-01-01T…`). So both streams keep
//! the first item's time as their watermark, and their incremental walks stop at the first item not newer:
//! they fetch the titles played and the achievements unlocked since the last walk. Progress on achievements
//! that are still locked shows up at the next full walk (`reset`).
//!
//! With a configured `base_url`, both services are asked there (a fake in tests); otherwise each at its
//! real host.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::header::HeaderValue;
use serde_json::{Value, json};

use super::{get_json, offset, safe_id, seen_before, str_at, unknown_stream};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

/// Where an item's time is: when a title was last played, when an achievement was unlocked.
type TimeOf = fn(&Value) -> Option<&str>;

/// The largest `maxItems` asked of the achievements service.
const MAX_ITEMS: usize = 1000;
/// The `maxItems` of the one title-history request: more titles than any one person has played.
const MAX_TITLES: usize = 10_000;
/// TitleHub's decoration: the achievement counts and the title's images.
const DECORATION: &str = "achievement,image";

pub(crate) struct Xbox {
    http: reqwest::Client,
    titlehub: String,
    achievements: String,
    /// The title history of the latest `titles` walk per credential fingerprint, paged locally.
    titles: Mutex<HashMap<u64, Arc<Vec<Value>>>>,
}

impl Xbox {
    pub(crate) fn new(http: reqwest::Client, base: Option<String>) -> Xbox {
        let base = |real: &str| {
            base.as_deref()
                .unwrap_or(real)
                .trim_end_matches('/')
                .to_string()
        };
        Xbox {
            http,
            titlehub: base("https://titlehub.xboxlive.com"),
            achievements: base("https://achievements.xboxlive.com"),
            titles: Mutex::new(HashMap::new()),
        }
    }

    /// One page of `titles`: the title history asked once per walk (at its start, or when this instance
    /// does not hold it), then paged by position.
    async fn titles(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
        url: String,
        authorization: HeaderValue,
    ) -> Result<Page, SourceError> {
        let position: usize = offset(req.checkpoint)?;
        let fingerprint = credential.fingerprint();
        let held = self
            .titles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fingerprint)
            .cloned();
        let mut remaining = None;
        let titles = match held.filter(|_| position > 0) {
            Some(titles) => titles,
            None => {
                let request = self
                    .http
                    .get(format!("{url}/decoration/{DECORATION}"))
                    .query(&[("maxItems", MAX_TITLES.to_string())])
                    .header(reqwest::header::AUTHORIZATION, authorization)
                    .header("x-xbl-contract-version", "2")
                    .header(reqwest::header::ACCEPT_LANGUAGE, "en-US");
                let fetched = get_json(request, &[]).await?;
                remaining = fetched.remaining;
                let titles = Arc::new(
                    fetched.body["titles"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default(),
                );
                self.titles
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fingerprint, titles.clone());
                titles
            }
        };
        let time_at = |t: &Value| {
            t["titleHistory"]["lastTimePlayed"]
                .as_str()
                .map(str::to_string)
        };
        let end = (position + req.page_size.max(1)).min(titles.len());
        let mut records = Vec::new();
        let mut next = (end < titles.len()).then(|| end.to_string());
        for title in titles.get(position.min(end)..end).unwrap_or_default() {
            if seen_before(&req, time_at(title).as_deref()) {
                next = None;
                break;
            }
            records.extend(title_row(title));
        }
        Ok(Page {
            records,
            next,
            total: Some(titles.len() as u64),
            newest: (position == 0)
                .then(|| titles.first().and_then(time_at))
                .flatten(),
            remaining,
            window_spent: None,
        })
    }

    async fn page(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let xuid = credential.field("xuid")?;
        if xuid.is_empty() || !xuid.bytes().all(|b| b.is_ascii_digit()) {
            return Err(SourceError::Auth(
                "the connection's `xuid` is not a number".into(),
            ));
        }
        let mut authorization = HeaderValue::from_str(&format!(
            "XBL3.0 x={};{}",
            credential.field("uhs")?,
            credential.field("token")?
        ))
        .map_err(|_| SourceError::Auth("the connection's `uhs` or `token` is malformed".into()))?;
        authorization.set_sensitive(true);
        let (url, items_key, time_at): (String, &str, TimeOf) = match req.stream {
            "titles" => {
                let url = format!("{}/users/xuid({xuid})/titles/titlehistory", self.titlehub);
                return self.titles(credential, req, url, authorization).await;
            }
            "achievements" => (
                format!("{}/users/xuid({xuid})/achievements", self.achievements),
                "achievements",
                |a| a["progression"]["timeUnlocked"].as_str(),
            ),
            other => return Err(unknown_stream(other)),
        };
        let mut query = vec![
            ("maxItems", req.page_size.clamp(1, MAX_ITEMS).to_string()),
            ("orderBy", "unlockTime".into()),
        ];
        if let Some(token) = req.checkpoint {
            query.push(("continuationToken", token.to_string()));
        }
        let request = self
            .http
            .get(url)
            .query(&query)
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header("x-xbl-contract-version", "2")
            .header(reqwest::header::ACCEPT_LANGUAGE, "en-US");
        let fetched = get_json(request, &[]).await?;
        let body = &fetched.body;
        let items = body[items_key].as_array().map_or(&[][..], Vec::as_slice);
        let mut next = match body["pagingInfo"]["continuationToken"].as_str() {
            Some(t) if !t.is_empty() && !items.is_empty() && Some(t) != req.checkpoint => {
                Some(t.to_string())
            }
            _ => None,
        };
        let mut records = Vec::with_capacity(items.len());
        for item in items {
            if seen_before(&req, time_at(item)) {
                next = None;
                break;
            }
            records.extend(achievement_row(item));
        }
        Ok(Page {
            records,
            next,
            total: body["pagingInfo"]["totalRecords"].as_u64(),
            newest: req
                .checkpoint
                .is_none()
                .then(|| items.first().and_then(time_at).map(str::to_string))
                .flatten(),
            remaining: fetched.remaining,
            window_spent: None,
        })
    }
}

fn title_row(t: &Value) -> Option<Value> {
    let id = match &t["titleId"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let a = &t["achievement"];
    Some(json!({
        "id": safe_id(&id),
        "title_id": id,
        "name": str_at(t, "/name"),
        "last_played": str_at(t, "/titleHistory/lastTimePlayed"),
        "current_achievements": a["currentAchievements"],
        "total_achievements": a["totalAchievements"],
        "current_gamerscore": a["currentGamerscore"],
        "total_gamerscore": a["totalGamerscore"],
    }))
}

fn achievement_row(a: &Value) -> Option<Value> {
    let id = a["id"].as_str()?;
    let title = &a["titleAssociations"][0];
    let title_id = match &title["id"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => a["serviceConfigId"].as_str()?.to_string(),
    };
    let gamerscore = a["rewards"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["type"] == "Gamerscore")
        .and_then(|r| r["value"].as_str()?.parse::<u64>().ok());
    let achieved = a["progressState"] == "Achieved";
    Some(json!({
        "id": safe_id(&format!("{title_id}-{id}")),
        "title_id": title_id,
        "title_name": str_at(title, "/name"),
        "achievement_id": id,
        "name": str_at(a, "/name"),
        "progress_state": str_at(a, "/progressState"),
        "unlocked_at": if achieved { str_at(a, "/progression/timeUnlocked") } else { Value::Null },
        "gamerscore": gamerscore,
    }))
}

impl Source for Xbox {
    fn credential_fields(&self) -> Vec<String> {
        ["uhs", "token", "xuid"].map(String::from).to_vec()
    }

    fn streams(&self) -> &'static [&'static str] {
        &["titles", "achievements"]
    }

    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(self.page(credential, request))
    }
}
