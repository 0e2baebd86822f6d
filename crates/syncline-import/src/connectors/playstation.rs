//! PlayStation Network trophies, through the trophy API that psn-api and PSNAWP document: the user's trophy
//! titles (`trophy_titles`), then the trophies of each title (`trophies`), earned or not. Authenticated with
//! the user's OAuth `access_token` as a bearer token; `account_id` defaults to `me`.
//!
//! The title list comes newest first by `lastUpdatedDateTime`, and a title's time moves whenever one of its
//! trophies is earned. Both streams take the newest title's time as their watermark, and their incremental
//! walks stop at the first title not updated since: only changed titles are fetched again.
//!
//! `trophy_titles` pages with `limit`/`offset`; its checkpoint is the next offset. `trophies` lists the
//! titles once per walk (pages of [`MAX_LIMIT`], stopping at the watermark in an incremental walk), keeps
//! what it needs of each (`npCommunicationId`, `npServiceName`, `lastUpdatedDateTime`) between pages, and
//! then fetches up to [`TITLES_PER_PAGE`] titles' trophies per page (one unpaged request per title). Its
//! checkpoint is the position in that list; a walk resumed where the list is not held (another instance,
//! a restart) lists the titles again. A title updated during a walk moves to the front of the list, which
//! only pushes the others back (one title may be fetched twice, none skipped); the moved title itself is
//! newer than the walk's watermark, so the next incremental walk fetches it.
//!
//! Shapes from psn-api (achievements-app/psn-api, `src/trophy`, `website/docs/api-docs`): the title list
//! `GET /api/trophy/v1/users/{accountId}/trophyTitles?limit&offset` answers `{trophyTitles, totalItemCount,
//! nextOffset?}`; each title names its trophy service in `npServiceName`, `"trophy"` for PS3, PS4 and Vita
//! titles and `"trophy2"` for PS5 ones, which the trophies request must send as `npServiceName`. A profile
//! whose trophies are hidden by its privacy settings is refused with 403 "Not permitted by access control"
//! (`profile_private`); psn-api reads an `error` object in any answer as a failure, so one in a 200 is too.
//! A title's trophies may come in pages (`nextOffset`, as the title list), which are followed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Fetched, get_json, offset, safe_id, seen_before, str_at, unknown_stream};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

/// The API's largest `limit` for trophy titles.
const MAX_LIMIT: usize = 800;
/// Titles whose trophies one page of `trophies` fetches at most.
const TITLES_PER_PAGE: usize = 10;

pub(crate) struct PlayStation {
    http: reqwest::Client,
    base: String,
    /// The titles of the latest `trophies` walk per credential fingerprint, kept between its pages.
    lists: Mutex<HashMap<u64, Arc<TitleList>>>,
}

/// What a `trophies` walk needs of each title, in list order, and the walk it belongs to.
struct TitleList {
    watermark: Option<String>,
    titles: Vec<ListedTitle>,
}

struct ListedTitle {
    id: String,
    service: String,
    updated: Option<String>,
}

impl PlayStation {
    pub(crate) fn new(http: reqwest::Client, base: String) -> PlayStation {
        PlayStation {
            http,
            base: base.trim_end_matches('/').to_string(),
            lists: Mutex::new(HashMap::new()),
        }
    }

    async fn get(
        &self,
        credential: &Credential,
        path: &str,
        query: &[(&str, String)],
        ok_statuses: &[StatusCode],
    ) -> Result<Fetched, SourceError> {
        let token = credential.field("access_token")?;
        let account = credential.field("account_id").unwrap_or("me");
        if safe_id(account) != account {
            return Err(SourceError::Auth(
                "the connection's `account_id` is not an account id".into(),
            ));
        }
        let url = format!("{}/api/trophy/v1/users/{account}{path}", self.base);
        match get_json(
            self.http.get(url).query(query).bearer_auth(token),
            ok_statuses,
        )
        .await
        {
            Err(SourceError::Forbidden(message))
                if message.contains("access control") || message.contains("rivate") =>
            {
                Err(hidden())
            }
            // psn-api reads an `error` object in any answer as a failure, whatever its status
            // (`src/trophy/user/getUserTrophiesEarnedForTitle.ts`): a refusal is never an empty list.
            Ok(fetched) if fetched.body["error"].is_object() => {
                let error = &fetched.body["error"];
                let message: String = error["message"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(160)
                    .collect();
                if error["code"] == 2_240_526 || message.contains("access control") {
                    Err(hidden())
                } else if !ok_statuses.is_empty()
                    && (error["code"] == 2_240_525 || message.contains("not found"))
                {
                    // A title without trophies for this user: nothing to import.
                    Ok(fetched)
                } else {
                    Err(SourceError::Permanent(format!(
                        "PlayStation Network answered an error (\"{message}\")"
                    )))
                }
            }
            other => other,
        }
    }

    async fn titles(
        &self,
        credential: &Credential,
        offset: u64,
        limit: usize,
    ) -> Result<Fetched, SourceError> {
        self.get(
            credential,
            "/trophyTitles",
            &[("limit", limit.to_string()), ("offset", offset.to_string())],
            &[],
        )
        .await
    }

    async fn page(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        match req.stream {
            "trophy_titles" => self.trophy_titles(credential, req).await,
            "trophies" => self.trophies(credential, req).await,
            other => Err(unknown_stream(other)),
        }
    }

    async fn trophy_titles(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let offset: u64 = offset(req.checkpoint)?;
        let fetched = self
            .titles(credential, offset, req.page_size.clamp(1, MAX_LIMIT))
            .await?;
        let body = &fetched.body;
        let titles = titles_of(body);
        let mut next = match body["nextOffset"].as_u64() {
            Some(n) if !titles.is_empty() && n > offset => Some(n.to_string()),
            _ => None,
        };
        let mut records = Vec::with_capacity(titles.len());
        for title in titles {
            if title_seen_before(&req, title) {
                next = None;
                break;
            }
            records.extend(title_row(title));
        }
        Ok(Page {
            records,
            next,
            total: body["totalItemCount"].as_u64(),
            newest: newest(offset, titles),
            remaining: fetched.remaining,
            window_spent: None,
        })
    }

    async fn trophies(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let position: usize = offset(req.checkpoint)?;
        let watermark = (req.phase == syncline_core::ImportPhase::Incremental)
            .then(|| req.watermark.map(str::to_string))
            .flatten();
        let fingerprint = credential.fingerprint();
        let held = self
            .lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fingerprint)
            .cloned();
        let mut remaining = None;
        let list = match held.filter(|l| position > 0 && l.watermark == watermark) {
            Some(list) => list,
            None => {
                let (list, left) = self.list_titles(credential, &req, watermark).await?;
                remaining = left;
                let list = Arc::new(list);
                self.lists
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fingerprint, list.clone());
                list
            }
        };
        let mut records = Vec::new();
        let mut at = position;
        while at < list.titles.len()
            && at < position + TITLES_PER_PAGE
            && records.len() < req.page_size.max(1)
        {
            let title = &list.titles[at];
            // A title's trophies come whole, or in pages that name their `nextOffset`.
            let mut from = 0u64;
            loop {
                let fetched = self.title_trophies(credential, title, from).await?;
                remaining = fetched.remaining.or(remaining);
                let trophies = fetched.body["trophies"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice);
                for trophy in trophies {
                    records.extend(trophy_row(&title.id, trophy));
                }
                match fetched.body["nextOffset"].as_u64() {
                    Some(next) if next > from && !trophies.is_empty() => from = next,
                    _ => break,
                }
            }
            at += 1;
        }
        Ok(Page {
            records,
            next: (at < list.titles.len()).then(|| at.to_string()),
            total: None,
            newest: (position == 0)
                .then(|| list.titles.first().and_then(|t| t.updated.clone()))
                .flatten(),
            remaining,
            window_spent: None,
        })
    }

    /// The titles a `trophies` walk visits, newest first: every listed title, or in an incremental walk
    /// those updated after its watermark. Pages of [`MAX_LIMIT`] until the list (or the watermark) ends.
    async fn list_titles(
        &self,
        credential: &Credential,
        req: &PageRequest<'_>,
        watermark: Option<String>,
    ) -> Result<(TitleList, Option<u64>), SourceError> {
        let mut titles = Vec::new();
        let mut offset = 0u64;
        let mut remaining = None;
        loop {
            let fetched = self.titles(credential, offset, MAX_LIMIT).await?;
            remaining = fetched.remaining.or(remaining);
            let page = titles_of(&fetched.body);
            for title in page {
                if title_seen_before(req, title) {
                    return Ok((TitleList { watermark, titles }, remaining));
                }
                let Some(id) = title["npCommunicationId"].as_str() else {
                    continue;
                };
                if safe_id(id) != id {
                    tracing::warn!(
                        "a trophy title with an unusable npCommunicationId was left out"
                    );
                    continue;
                }
                titles.push(ListedTitle {
                    id: id.to_string(),
                    service: service_of(title).to_string(),
                    updated: title["lastUpdatedDateTime"].as_str().map(str::to_string),
                });
            }
            match fetched.body["nextOffset"].as_u64() {
                Some(next) if next > offset && !page.is_empty() => offset = next,
                _ => return Ok((TitleList { watermark, titles }, remaining)),
            }
        }
    }

    /// The trophies of one title with the user's progress, from the title's own trophy service, from
    /// `offset` on (psn-api's `getUserTrophiesEarnedForTitle` takes `limit`/`offset` and its answer may
    /// name a `nextOffset`); a title without trophies answers 404.
    async fn title_trophies(
        &self,
        credential: &Credential,
        title: &ListedTitle,
        offset: u64,
    ) -> Result<Fetched, SourceError> {
        let mut query = vec![("npServiceName", title.service.clone())];
        if offset > 0 {
            query.push(("offset", offset.to_string()));
        }
        self.get(
            credential,
            &format!("/npCommunicationIds/{}/trophyGroups/all/trophies", title.id),
            &query,
            &[StatusCode::NOT_FOUND],
        )
        .await
    }
}

/// PlayStation's "Not permitted by access control" (code 2240526): the profile hides its trophies.
fn hidden() -> SourceError {
    SourceError::Private(
        "PlayStation Network refused to show the trophies (not permitted by access control): the \
         profile's privacy settings hide them; let anyone see the profile's games, or connect that \
         account itself"
            .into(),
    )
}

/// The title's trophy service, as it names it (`npServiceName`); only when a title leaves it out, guessed
/// from its platform (`trophy2` for PS5).
fn service_of(title: &Value) -> &str {
    match title["npServiceName"].as_str() {
        Some(service @ ("trophy" | "trophy2")) => service,
        _ if title["trophyTitlePlatform"]
            .as_str()
            .is_some_and(|p| p.contains("PS5")) =>
        {
            "trophy2"
        }
        _ => "trophy",
    }
}

fn titles_of(body: &Value) -> &[Value] {
    body["trophyTitles"].as_array().map_or(&[], Vec::as_slice)
}

/// In the incremental phase: the title was not updated since the last walk's newest.
fn title_seen_before(req: &PageRequest<'_>, title: &Value) -> bool {
    seen_before(req, title["lastUpdatedDateTime"].as_str())
}

/// The first title's time, on a walk's first page.
fn newest(offset: u64, titles: &[Value]) -> Option<String> {
    (offset == 0)
        .then(|| titles.first()?["lastUpdatedDateTime"].as_str())
        .flatten()
        .map(str::to_string)
}

fn title_row(t: &Value) -> Option<Value> {
    let id = t["npCommunicationId"].as_str()?;
    let (earned, defined) = (&t["earnedTrophies"], &t["definedTrophies"]);
    let defined_total: u64 = ["bronze", "silver", "gold", "platinum"]
        .iter()
        .filter_map(|k| defined[k].as_u64())
        .sum();
    Some(json!({
        "id": safe_id(id),
        "np_communication_id": id,
        "name": str_at(t, "/trophyTitleName"),
        "platform": str_at(t, "/trophyTitlePlatform"),
        "icon_url": str_at(t, "/trophyTitleIconUrl"),
        "progress": t["progress"],
        "earned_bronze": earned["bronze"],
        "earned_silver": earned["silver"],
        "earned_gold": earned["gold"],
        "earned_platinum": earned["platinum"],
        "defined_total": defined_total,
        "last_updated": str_at(t, "/lastUpdatedDateTime"),
    }))
}

fn trophy_row(title: &str, t: &Value) -> Option<Value> {
    let trophy = t["trophyId"].as_u64()?;
    Some(json!({
        "id": safe_id(&format!("{title}-{trophy}")),
        "np_communication_id": title,
        "trophy_id": trophy,
        "trophy_type": str_at(t, "/trophyType"),
        "earned": t["earned"].as_bool().unwrap_or(false),
        "earned_at": str_at(t, "/earnedDateTime"),
        "earned_rate": t["trophyEarnedRate"].as_str().and_then(|r| r.parse::<f64>().ok()),
    }))
}

impl Source for PlayStation {
    fn credential_fields(&self) -> Vec<String> {
        // `account_id` is optional: "me" by default.
        vec!["access_token".to_string()]
    }

    fn streams(&self) -> &'static [&'static str] {
        &["trophy_titles", "trophies"]
    }

    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(self.page(credential, request))
    }
}
