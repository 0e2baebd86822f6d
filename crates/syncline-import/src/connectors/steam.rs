//! Steam Web API: owned games (`IPlayerService/GetOwnedGames`, one unpaged answer) and achievements per game
//! (`ISteamUserStats/GetPlayerAchievements`, one request per game; the checkpoint is the position in the
//! owned-games list ordered by appid). Authenticated with a Web API `api_key` and the user's `steam_id`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{get_json, safe_id, str_at};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

/// Games whose achievements one page fetches at most.
const GAMES_PER_PAGE: usize = 10;

pub(crate) struct Steam {
    http: reqwest::Client,
    base: String,
    /// Owned appids per credential, kept between pages of the achievements walk.
    owned: Mutex<HashMap<u64, Arc<Vec<u64>>>>,
}

impl Steam {
    pub(crate) fn new(http: reqwest::Client, base: String) -> Steam {
        Steam {
            http,
            base: base.trim_end_matches('/').to_string(),
            owned: Mutex::new(HashMap::new()),
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
            other => Err(SourceError::Permanent(format!("unknown stream `{other}`"))),
        }
    }

    async fn achievements(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let position: usize = match req.checkpoint {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| SourceError::Permanent("a bad checkpoint".into()))?,
        };
        let fingerprint = credential.fingerprint();
        let cached = self
            .owned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fingerprint)
            .cloned();
        let appids = match cached.filter(|_| position > 0) {
            Some(list) => list,
            None => {
                let (body, _) = self.owned_games(credential).await?;
                let mut ids: Vec<u64> = body["response"]["games"]
                    .as_array()
                    .map(|g| g.iter().filter_map(|x| x["appid"].as_u64()).collect())
                    .unwrap_or_default();
                ids.sort_unstable();
                let ids = Arc::new(ids);
                self.owned
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fingerprint, ids.clone());
                ids
            }
        };
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
            newest: None,
            remaining,
        })
    }
}

impl Source for Steam {
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
