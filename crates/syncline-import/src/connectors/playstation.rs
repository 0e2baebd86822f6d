//! PlayStation Network trophies, through the trophy API that psn-api and PSNAWP document: the user's trophy
//! titles (`trophy_titles`), then the trophies of each title (`trophies`), earned or not. Authenticated with
//! the user's OAuth `access_token` as a bearer token; `account_id` defaults to `me`.
//!
//! The title list comes newest first by `lastUpdatedDateTime`, and a title's time moves whenever one of its
//! trophies is earned. Both streams take the newest title's time as their watermark, and their incremental
//! walks stop at the first title not updated since: only changed titles are fetched again.
//!
//! `trophy_titles` pages with `limit`/`offset`; its checkpoint is the next offset. `trophies` walks the
//! same title list: one page fetches up to [`TITLES_PER_PAGE`] titles from the checkpoint, then each
//! title's trophies (one unpaged request per title). Its checkpoint is the offset of the next title whose
//! trophies are still to fetch. A title updated during a walk moves to the front of the list, which only
//! pushes the others back (one title may be fetched twice, none skipped); the moved title itself is newer
//! than the walk's watermark, so the next incremental walk fetches it.

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
}

impl PlayStation {
    pub(crate) fn new(http: reqwest::Client, base: String) -> PlayStation {
        PlayStation {
            http,
            base: base.trim_end_matches('/').to_string(),
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
        get_json(
            self.http.get(url).query(query).bearer_auth(token),
            ok_statuses,
        )
        .await
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
        })
    }

    async fn trophies(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let position: u64 = offset(req.checkpoint)?;
        let listed = self.titles(credential, position, TITLES_PER_PAGE).await?;
        let titles = titles_of(&listed.body);
        let more_titles = listed.body["nextOffset"].as_u64().is_some();
        let mut remaining = listed.remaining;
        let mut records = Vec::new();
        let mut at = position;
        let mut reached_watermark = false;
        for title in titles {
            if title_seen_before(&req, title) {
                reached_watermark = true;
                break;
            }
            if records.len() >= req.page_size.max(1) {
                break;
            }
            let Some(id) = title["npCommunicationId"].as_str() else {
                at += 1;
                continue;
            };
            if safe_id(id) == id {
                let fetched = self.title_trophies(credential, title, id).await?;
                remaining = fetched.remaining.or(remaining);
                for trophy in fetched.body["trophies"].as_array().into_iter().flatten() {
                    records.extend(trophy_row(id, trophy));
                }
            } else {
                tracing::warn!("a trophy title with an unusable npCommunicationId was left out");
            }
            at += 1;
        }
        let stopped_early = at < position + titles.len() as u64;
        let next = if reached_watermark || titles.is_empty() {
            None
        } else if stopped_early || more_titles {
            Some(at.to_string())
        } else {
            None
        };
        Ok(Page {
            records,
            next,
            total: None,
            newest: newest(position, titles),
            remaining,
        })
    }

    /// Every trophy of one title with the user's progress. PS5 titles live in the `trophy2` service, older
    /// ones in `trophy`; a title without trophies answers 404.
    async fn title_trophies(
        &self,
        credential: &Credential,
        title: &Value,
        id: &str,
    ) -> Result<Fetched, SourceError> {
        let service = if title["trophyTitlePlatform"]
            .as_str()
            .is_some_and(|p| p.contains("PS5"))
        {
            "trophy2"
        } else {
            "trophy"
        };
        self.get(
            credential,
            &format!("/npCommunicationIds/{id}/trophyGroups/all/trophies"),
            &[("npServiceName", service.to_string())],
            &[StatusCode::NOT_FOUND],
        )
        .await
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
