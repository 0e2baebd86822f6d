//! Spotify Web API: saved tracks and saved albums (offset/limit paging, newest first, so the incremental
//! phase stops at the last walk's newest `added_at`), followed artists (cursor paging) and playlists.
//! Authenticated with the user's OAuth `access_token`; 429s carry `Retry-After` seconds.

use serde_json::{Value, json};

use super::{get_json, offset, seen_before, str_at, unknown_stream};
use crate::source::{BoxFuture, Credential, Page, PageRequest, Source, SourceError};

/// The API's largest page.
const MAX_LIMIT: usize = 50;

pub(crate) struct Spotify {
    http: reqwest::Client,
    base: String,
}

impl Spotify {
    pub(crate) fn new(http: reqwest::Client, base: String) -> Spotify {
        Spotify {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    async fn page(
        &self,
        credential: &Credential,
        req: PageRequest<'_>,
    ) -> Result<Page, SourceError> {
        let token = credential.field("access_token")?;
        let limit = req.page_size.clamp(1, MAX_LIMIT);
        let (path, cursor_paged) = match req.stream {
            "saved_tracks" => ("/v1/me/tracks", false),
            "saved_albums" => ("/v1/me/albums", false),
            "playlists" => ("/v1/me/playlists", false),
            "followed_artists" => ("/v1/me/following", true),
            other => return Err(unknown_stream(other)),
        };
        let mut url = format!("{}{path}?limit={limit}", self.base);
        if cursor_paged {
            url.push_str("&type=artist");
            if let Some(after) = req.checkpoint {
                url.push_str(&format!("&after={after}"));
            }
        } else {
            url.push_str(&format!("&offset={}", offset::<u64>(req.checkpoint)?));
        }
        let fetched = get_json(self.http.get(url).bearer_auth(token), &[]).await?;
        let body = fetched.body;
        let mut page = if cursor_paged {
            artists(&body, req.checkpoint)
        } else {
            offset_page(req, &body)?
        };
        page.remaining = fetched.remaining;
        Ok(page)
    }
}

fn offset_page(req: PageRequest<'_>, body: &Value) -> Result<Page, SourceError> {
    let items = body["items"].as_array().cloned().unwrap_or_default();
    let start: u64 = offset(req.checkpoint)?;
    // A page naming a `next` must bring items, or the walk would ask for the same offset again.
    let mut next = (!body["next"].is_null() && !items.is_empty())
        .then(|| (start + items.len() as u64).to_string());
    let newest = items
        .first()
        .and_then(|i| i["added_at"].as_str())
        .map(str::to_string);
    let mut records = Vec::with_capacity(items.len());
    for item in &items {
        // Newest first: in the incremental phase, everything from the last walk's newest item on is known.
        if seen_before(&req, item["added_at"].as_str()) {
            next = None;
            break;
        }
        records.push(match req.stream {
            "saved_tracks" => track(item),
            "saved_albums" => album(item),
            _ => playlist(item),
        });
    }
    Ok(Page {
        records: records.into_iter().flatten().collect(),
        next,
        total: body["total"].as_u64(),
        newest,
        remaining: None,
        window_spent: None,
    })
}

fn joined(list: &Value, field: &str) -> Value {
    let parts: Vec<&str> = list
        .as_array()
        .map(|a| a.iter().filter_map(|x| x[field].as_str()).collect())
        .unwrap_or_default();
    Value::String(parts.join(", "))
}

fn track(item: &Value) -> Option<Value> {
    // A saved track is `{added_at, track}`; accept the February 2026 `item` name too.
    let t = if item["track"].is_object() {
        &item["track"]
    } else {
        &item["item"]
    };
    Some(json!({
        "id": t["id"].as_str()?,
        "name": str_at(t, "/name"),
        "album_id": str_at(t, "/album/id"),
        "album_name": str_at(t, "/album/name"),
        "artist_names": joined(&t["artists"], "name"),
        "duration_ms": t["duration_ms"],
        "added_at": str_at(item, "/added_at"),
    }))
}

fn album(item: &Value) -> Option<Value> {
    let a = &item["album"];
    Some(json!({
        "id": a["id"].as_str()?,
        "name": str_at(a, "/name"),
        "artist_names": joined(&a["artists"], "name"),
        "release_date": str_at(a, "/release_date"),
        "total_tracks": a["total_tracks"],
        "added_at": str_at(item, "/added_at"),
    }))
}

fn playlist(item: &Value) -> Option<Value> {
    Some(json!({
        "id": item["id"].as_str()?,
        "name": str_at(item, "/name"),
        "owner_id": str_at(item, "/owner/id"),
        "snapshot_id": str_at(item, "/snapshot_id"),
        // Development Mode apps since February 2026 get the summary as `items`, and `tracks` is null
        // (developer.spotify.com/documentation/web-api/tutorials/february-2026-migration-guide).
        "tracks_total": match &item["tracks"]["total"] {
            Value::Number(n) => Value::Number(n.clone()),
            _ => item["items"]["total"].clone(),
        },
    }))
}

fn artists(body: &Value, checkpoint: Option<&str>) -> Page {
    let a = &body["artists"];
    let records: Vec<Value> = a["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|x| {
                    Some(json!({
                        "id": x["id"].as_str()?,
                        "name": str_at(x, "/name"),
                        "genres": Value::String(
                            x["genres"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", ")).unwrap_or_default()
                        ),
                        "popularity": x["popularity"],
                    }))
                })
                .collect()
        })
        .unwrap_or_default();
    // An `after` cursor that does not move (or a page without artists) ends the walk instead of
    // asking for the same page again.
    let next = if a["next"].is_null() || records.is_empty() {
        None
    } else {
        a["cursors"]["after"]
            .as_str()
            .filter(|after| Some(*after) != checkpoint)
            .map(str::to_string)
    };
    Page {
        records,
        next,
        total: a["total"].as_u64(),
        newest: None,
        remaining: None,
        window_spent: None,
    }
}

impl Source for Spotify {
    fn credential_fields(&self) -> Vec<String> {
        vec!["access_token".to_string()]
    }

    fn streams(&self) -> &'static [&'static str] {
        &[
            "saved_tracks",
            "saved_albums",
            "followed_artists",
            "playlists",
        ]
    }

    fn fetch<'a>(
        &'a self,
        credential: &'a Credential,
        request: PageRequest<'a>,
    ) -> BoxFuture<'a, Result<Page, SourceError>> {
        Box::pin(self.page(credential, request))
    }
}
