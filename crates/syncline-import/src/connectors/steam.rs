//! Steam Web API: owned games (`IPlayerService/GetOwnedGames`, one unpaged answer) and achievements per game
//! (`ISteamUserStats/GetPlayerAchievements`, one request per game; the checkpoint is the position in the
//! list of games to visit, ordered by appid). Authenticated with a Web API `api_key` and the user's
//! `steam_id`: a SteamID64 (17 digits), or a vanity name (or profile url) resolved once through
//! `ISteamUser/ResolveVanityURL`.
//!
//! Shapes, from developer.valvesoftware.com/wiki/Steam_Web_API and partner.steamgames.com/doc/webapi:
//! - GetOwnedGames is asked with `include_appinfo=1` (names, icons and `has_community_visible_stats`) and
//!   `include_played_free_games=1` (free games are left out otherwise, even when played). A profile whose
//!   game details are private answers `200 {"response":{}}`, without `game_count`: that is the error
//!   `profile_private`, not an empty library.
//! - Achievements are asked only for games with `has_community_visible_stats` (the others answer `400
//!   "Requested app has no stats"`). A private profile answers `403 {"playerstats":{"error":"Profile is not
//!   public","success":false}}`: `profile_private`, although the key is fine. A bad key is a bare 403 page:
//!   the credential is refused (`auth_expired`).
//! - ResolveVanityURL answers `{"response":{"steamid":"…","success":1}}`, or `{"response":{"success":42,
//!   "message":"No match"}}` for a name that matches no profile.
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

use super::{Fetched, get_json, offset, safe_id, str_at, unknown_stream};
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
    /// SteamID64s resolved from vanity names, per credential fingerprint.
    resolved: Mutex<HashMap<u64, String>>,
}

impl Steam {
    pub(crate) fn new(http: reqwest::Client, base: String) -> Steam {
        Steam {
            http,
            base: base.trim_end_matches('/').to_string(),
            visits: Mutex::new(HashMap::new()),
            resolved: Mutex::new(HashMap::new()),
        }
    }

    /// One GET with the key, its refusals read the Steam way: a 403 (or 401) that says the profile is not
    /// public is `Private`; any other 403 is Steam's answer to a bad key.
    async fn get(
        &self,
        url: String,
        key: &str,
        ok_statuses: &[StatusCode],
    ) -> Result<Fetched, SourceError> {
        match get_json(self.http.get(url).query(&[("key", key)]), ok_statuses).await {
            // Steam's refusal names the private profile in the body (`playerstats.error`), with a 403 or a
            // 401: either way the key is fine.
            Err(SourceError::Forbidden(message) | SourceError::Auth(message))
                if message.contains("not public") =>
            {
                Err(SourceError::Private(
                    "Steam says the profile is not public: set \"Game details\" to Public in the \
                     profile's privacy settings"
                        .into(),
                ))
            }
            Err(SourceError::Forbidden(_)) => Err(SourceError::Auth(
                "Steam refused the Web API key (403): check the key and connect again".into(),
            )),
            other => other,
        }
    }

    /// The connection's SteamID64: `steam_id` itself when it is one (17 digits), else the vanity name it
    /// holds (or the name or id in a `steamcommunity.com/id/…` or `/profiles/…` url), resolved once.
    async fn steam_id(&self, credential: &Credential) -> Result<String, SourceError> {
        let given = credential.field("steam_id")?.trim();
        let given = given.trim_end_matches('/');
        let given = given
            .rsplit_once("/id/")
            .or_else(|| given.rsplit_once("/profiles/"))
            .map_or(given, |(_, name)| name);
        if given.len() == 17 && given.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(given.to_string());
        }
        if given.is_empty() || safe_id(given) != given {
            return Err(SourceError::Auth(
                "the connection's `steam_id` is neither a SteamID64 nor a vanity name".into(),
            ));
        }
        let fingerprint = credential.fingerprint();
        if let Some(id) = self
            .resolved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&fingerprint)
        {
            return Ok(id.clone());
        }
        let url = format!("{}/ISteamUser/ResolveVanityURL/v0001/", self.base);
        let key = credential.field("api_key")?;
        let fetched = get_json(
            self.http
                .get(url)
                .query(&[("key", key), ("vanityurl", given)]),
            &[],
        )
        .await?;
        let response = &fetched.body["response"];
        match response["steamid"].as_str() {
            Some(id) if response["success"] == 1 && id.len() == 17 => {
                self.resolved
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(fingerprint, id.to_string());
                Ok(id.to_string())
            }
            _ => Err(SourceError::Auth(format!(
                "Steam found no profile with the vanity name `{given}`: give the SteamID64 or the \
                 name in the profile's url"
            ))),
        }
    }

    async fn owned_games(
        &self,
        credential: &Credential,
    ) -> Result<(Value, Option<u64>), SourceError> {
        let key = credential.field("api_key")?;
        let steam_id = self.steam_id(credential).await?;
        let url = format!(
            "{}/IPlayerService/GetOwnedGames/v0001/?steamid={steam_id}&include_appinfo=1\
             &include_played_free_games=1&format=json",
            self.base
        );
        let fetched = self.get(url, key, &[]).await?;
        if fetched.body["response"]["game_count"].is_null() {
            return Err(SourceError::Private(
                "Steam lists no games for this profile (`{\"response\":{}}`): its game details are \
                 private; set \"Game details\" to Public in the profile's privacy settings"
                    .into(),
            ));
        }
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
                    window_spent: None,
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
                // Only games with stats have achievements to ask for.
                let mut appids: Vec<u64> = games
                    .iter()
                    .filter(|g| g["has_community_visible_stats"].as_bool() == Some(true))
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
        let steam_id = self.steam_id(credential).await?;
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
            let fetched = self.get(url, key, &[StatusCode::BAD_REQUEST]).await?;
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
            window_spent: None,
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
