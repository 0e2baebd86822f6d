//! Steam Web API: owned games (`IPlayerService/GetOwnedGames`, one unpaged answer) and achievements per game
//! (`ISteamUserStats/GetPlayerAchievements`, one request per game; the checkpoint is the position in the
//! list of games to visit, ordered by appid). Authenticated with a Web API `api_key` and the user's
//! `steam_id`.
//!
//! Incremental walks. `owned_games` is one request whatever is asked, and Steam has no "changed since"
//! filter, so its incremental walk fetches the whole list again. That is also the only way to see a game
//! bought since, which has never been played; the unchanged rows it brings cost nothing (the store skips
//! rows equal to what it has, and the sequence does not move). `achievements` is where the requests are:
//! a game's achievements only change while it is played, and GetOwnedGames says when each game was last
//! played (`rtime_last_played`). The walk keeps the latest of those times as its watermark, and its
//! incremental walk visits only the games played since: one request per such game instead of one per owned
//! game. A game bought but not yet played has no unlocked achievement; its locked ones arrive once it is
//! played (or at the next full walk, after `reset`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};
use syncline_core::ImportPhase;

use super::{get_json, offset, safe_id, str_at, unknown_stream};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

/// Games whose achievements one page fetches at most.
const GAMES_PER_PAGE: usize = 10;

/// The games an achievements walk visits, and the latest time any owned game was played.
struct Visits {
    /// The walk's "played after" (`None`: every game), so a list is reused only by its own walk.
    played_after: Option<u64>,
    appids: Vec<u64>,
    last_played: Option<u64>,
}

pub(crate) struct Steam {
    http: reqwest::Client,
    base: String,
    /// The latest walk's list per credential fingerprint, kept between its pages.
    visits: Mutex<HashMap<u64, Arc<Visits>>>,
}

impl Steam {
    pub(crate) fn new(http: reqwest::Client, base: String) -> Steam {
        Steam {
            http,
            base: base.trim_end_matches('/').to_string(),
            visits: Mutex::new(HashMap::new()),
        }
    }

    async fn owned_games(
        &self,
        credential: &Credential,
    ) -> Result<(Value, Option<u64>), SourceError> {
        let key = credential.field("api_key")?;
        let steam_id = credential.field("steam_id")?;
        let url = format!(
            "{}/IPlayerService/GetOwnedGames/v0001/?steamid={steam_id}&include_appinfo=1&format=json",
            self.base
        );
        let fetched = get_json(self.http.get(url).query(&[("key", key)]), &[]).await?;
        Ok((fetched.body, fetched.remaining))
    }

    async fn page(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        match req.stream {
            "owned_games" => {
                let (body, remaining) = self.owned_games(credential).await?;
                let games = body["response"]["games"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let records = games
                    .iter()
                    .filter_map(|g| {
                        let appid = g["appid"].as_u64()?;
                        Some(json!({
                            "id": appid.to_string(),
                            "appid": appid,
                            "name": str_at(g, "/name"),
                            "playtime_forever": g["playtime_forever"],
                            "rtime_last_played": g["rtime_last_played"],
                            "img_icon_url": str_at(g, "/img_icon_url"),
                        }))
                    })
                    .collect();
                Ok(Page {
                    records,
                    next: None,
                    total: body["response"]["game_count"].as_u64(),
                    newest: None,
                    remaining,
                })
            }
            "achievements" => self.achievements(credential, req).await,
            other => Err(unknown_stream(other)),
        }
    }

    async fn achievements(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let position: usize = offset(req.checkpoint)?;
        // Incremental: only the games played after the last walk's latest play.
        let played_after = match (req.phase, req.watermark) {
            (ImportPhase::Incremental, Some(mark)) => Some(
                mark.parse::<u64>()
                    .map_err(|_| SourceError::Permanent("a bad watermark".into()))?,
            ),
            _ => None,
        };
        let fingerprint = credential.fingerprint();
        let cached = self
            .visits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fingerprint)
            .cloned();
        let visits = match cached.filter(|v| position > 0 && v.played_after == played_after) {
            Some(visits) => visits,
            None => {
                let (body, _) = self.owned_games(credential).await?;
                let games = body["response"]["games"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice);
                let played = |g: &Value| g["rtime_last_played"].as_u64().unwrap_or(0);
                let mut appids: Vec<u64> = games
                    .iter()
                    .filter(|g| played_after.is_none_or(|after| played(g) > after))
                    .filter_map(|g| g["appid"].as_u64())
                    .collect();
                appids.sort_unstable();
                let visits = Arc::new(Visits {
                    played_after,
                    appids,
                    last_played: games.iter().map(played).max(),
                });
                self.visits
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fingerprint, visits.clone());
                visits
            }
        };
        let appids = &visits.appids;
        let key = credential.field("api_key")?;
        let steam_id = credential.field("steam_id")?;
        let mut records = Vec::new();
        let mut at = position;
        let mut remaining = None;
        while at < appids.len()
            && at < position + GAMES_PER_PAGE
            && records.len() < req.page_size.max(1)
        {
            let appid = appids[at];
            let url = format!(
                "{}/ISteamUserStats/GetPlayerAchievements/v0001/?appid={appid}&steamid={steam_id}",
                self.base
            );
            // A game without stats answers 400 with `success: false`: it has no achievements.
            let fetched = get_json(
                self.http.get(url).query(&[("key", key)]),
                &[StatusCode::BAD_REQUEST],
            )
            .await?;
            remaining = fetched.remaining.or(remaining);
            for a in fetched.body["playerstats"]["achievements"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let Some(name) = a["apiname"].as_str() else {
                    continue;
                };
                records.push(json!({
                    "id": safe_id(&format!("{appid}-{name}")),
                    "appid": appid,
                    "apiname": name,
                    "achieved": a["achieved"].as_u64() == Some(1),
                    "unlocktime": a["unlocktime"],
                }));
            }
            at += 1;
        }
        Ok(Page {
            records,
            next: (at < appids.len()).then(|| at.to_string()),
            total: None,
            newest: (position == 0)
                .then(|| visits.last_played.map(|t| t.to_string()))
                .flatten(),
            remaining,
        })
    }
}

impl Source for Steam {
    fn credential_fields(&self) -> Vec<String> {
        ["api_key", "steam_id"].map(String::from).to_vec()
    }

    fn streams(&self) -> &'static [&'static str] {
        &["owned_games", "achievements"]
    }

    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(self.page(credential, request))
    }
}
