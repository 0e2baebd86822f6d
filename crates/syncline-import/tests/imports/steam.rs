//! Steam: the incremental walk (the owned-games list again, achievements only of games played since the
//! last walk), and the documented shapes: played free games, games without stats never asked for
//! achievements, private profiles (`{"response":{}}`, `403 "Profile is not public"`), vanity names.

use serde_json::json;
use syncline_core::ImportPhase;
use syncline_testkit::fake_apis::FakeSteam;

use syncline_core::ImportStatus;

use super::{USER, assert_complete, harness, requests_since};

const KEY: &str = "steam-key-s3cr3t";

#[tokio::test]
async fn the_steam_incremental_walk_fetches_achievements_only_of_games_played_since() {
    let fake = FakeSteam::start(KEY, "76561197960287930", 90, 12).await;
    let sources = format!(
        "[sources.steam]\nkind = \"steam\"\nbase_url = \"{}\"\n\
         streams = {{ owned_games = \"steam_games\", achievements = \"steam_achievements\" }}\n",
        fake.base_url()
    );
    let h = harness(
        "",
        &sources,
        &[(
            "steam",
            json!({"api_key": KEY, "steam_id": "76561197960287930"}),
        )],
    )
    .await;
    assert_complete(&h.import("steam", 10).await);
    assert_eq!(
        fake.control.requests(),
        1 + 1 + 60,
        "owned twice, then every game with stats (two in three)"
    );
    let sequence = h.sequence();

    // Nothing played since: the owned list for each stream, no achievements.
    let before = fake.control.log().len();
    h.import("steam", 10).await;
    assert_eq!(requests_since(&fake.control, before).len(), 2);
    assert_eq!(h.sequence(), sequence);

    // Games 20 and 50 are played; 50 unlocks an achievement. Game 40 has no stats but is played too.
    {
        let mut library = fake.library.lock().unwrap();
        for game in &mut library.games {
            if let Some(20 | 40 | 50) = game["appid"].as_u64() {
                game["rtime_last_played"] = json!(1_700_000_000);
            }
        }
        library.achievements.get_mut(&50).unwrap()[0] =
            json!({"apiname": "ACH_0", "achieved": 1, "unlocktime": 1_700_000_000});
    }
    let before = fake.control.log().len();
    h.import("steam", 10).await;
    let requests = requests_since(&fake.control, before);
    let achievement_requests: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("GetPlayerAchievements"))
        .collect();
    // Game 40 has no stats: it is not asked for.
    assert_eq!(requests.len(), 2 + 2, "{requests:#?}");
    for (request, appid) in achievement_requests.iter().zip([20, 50]) {
        assert!(request.contains(&format!("appid={appid}&")), "{request}");
    }
    assert_eq!(
        h.state("steam", "achievements", ImportPhase::Incremental)
            .await
            .processed,
        24
    );
    // Three games' play times and one achievement changed.
    assert_eq!(h.sequence(), sequence + 3 + 1);
    assert_eq!(h.rows("steam_achievements"), 60 * 12);
}

fn steam_source(fake: &FakeSteam) -> String {
    format!(
        "[sources.steam]\nkind = \"steam\"\nbase_url = \"{}\"\n\
         streams = {{ owned_games = \"steam_games\", achievements = \"steam_achievements\" }}\n",
        fake.base_url()
    )
}

#[tokio::test]
async fn played_free_games_arrive_and_only_games_with_stats_are_asked_for_achievements() {
    let fake = FakeSteam::start(KEY, "76561197960287930", 9, 4).await;
    fake.library.lock().unwrap().add_played_free_games(2, 3);
    let h = harness(
        "",
        &steam_source(&fake),
        &[(
            "steam",
            json!({"api_key": KEY, "steam_id": "76561197960287930"}),
        )],
    )
    .await;
    assert_complete(&h.import("steam", 10).await);
    assert_eq!(h.rows("steam_games"), 9 + 2, "the played free games too");
    // Six of the nine have stats (4 each), and both free games (3 each).
    assert_eq!(h.rows("steam_achievements"), 6 * 4 + 2 * 3);
    let log = fake.control.log();
    assert!(log[0].contains("include_played_free_games=1") && log[0].contains("include_appinfo=1"));
    let asked = log
        .iter()
        .filter(|r| r.contains("GetPlayerAchievements"))
        .count();
    assert_eq!(
        asked,
        6 + 2,
        "no request for a game without stats: {log:#?}"
    );
}

#[tokio::test]
async fn a_private_profile_is_profile_private_not_an_empty_library() {
    let fake = FakeSteam::start(KEY, "76561197960287930", 9, 4).await;
    fake.library.lock().unwrap().private = true;
    let h = harness(
        "",
        &steam_source(&fake),
        &[(
            "steam",
            json!({"api_key": KEY, "steam_id": "76561197960287930"}),
        )],
    )
    .await;
    let states = h.import("steam", 10).await;
    assert_eq!(states.len(), 2);
    for s in &states {
        assert_eq!(s.status, ImportStatus::Error, "{s:?}");
        assert_eq!(
            s.error_code.map(|c| c.as_str()),
            Some("profile_private"),
            "{s:?}"
        );
        assert!(
            s.error.as_deref().unwrap().contains("Game details"),
            "{s:?}"
        );
    }
    assert_eq!(h.rows("steam_games"), 0);

    // Public game list, but achievements refused with Steam's "Profile is not public", with a 403 or a
    // 401: the body says the profile is private, whatever the status; the key is fine.
    fake.library.lock().unwrap().private = false;
    for status in [403, 401] {
        let games = fake.library.lock().unwrap().games.clone();
        for _ in 0..2 {
            fake.control.answer_next(
                200,
                &[],
                json!({"response": {"game_count": 9, "games": games}}),
            );
        }
        fake.control.answer_next(
            status,
            &[],
            json!({"playerstats": {"error": "Profile is not public", "success": false}}),
        );
        let states = h.import("steam", 10).await;
        let achievements = states.iter().find(|s| s.stream == "achievements").unwrap();
        assert_eq!(
            achievements.error_code.map(|c| c.as_str()),
            Some("profile_private"),
            "{status}: {achievements:?}"
        );
        assert_eq!(h.rows("steam_games"), 9);
    }
}

#[tokio::test]
async fn a_bad_key_is_auth_expired_and_not_a_private_profile() {
    let fake = FakeSteam::start(KEY, "76561197960287930", 3, 1).await;
    let h = harness(
        "",
        &steam_source(&fake),
        &[(
            "steam",
            json!({"api_key": "wrong", "steam_id": "76561197960287930"}),
        )],
    )
    .await;
    let states = h.import("steam", 10).await;
    assert_eq!(
        states[0].error_code.map(|c| c.as_str()),
        Some("auth_expired"),
        "{:?}",
        states[0]
    );
}

#[tokio::test]
async fn a_vanity_name_or_profile_url_is_resolved_once_through_resolve_vanity_url() {
    let fake = FakeSteam::start(KEY, "76561197960287930", 6, 2).await;
    fake.library.lock().unwrap().vanity = Some("gabe-test".into());
    for given in ["gabe-test", "https://steamcommunity.com/id/gabe-test/"] {
        let h = harness(
            "",
            &steam_source(&fake),
            &[("steam", json!({"api_key": KEY, "steam_id": given}))],
        )
        .await;
        let before = fake.control.log().len();
        assert_complete(&h.import("steam", 10).await);
        assert_eq!(h.rows("steam_games"), 6, "{given}");
        assert_eq!(h.rows("steam_achievements"), 4 * 2, "{given}");
        let log = requests_since(&fake.control, before);
        let resolves = log
            .iter()
            .filter(|r| r.contains("ResolveVanityURL"))
            .count();
        assert_eq!(resolves, 1, "{given}: {log:#?}");
        assert!(
            log.iter()
                .filter(|r| !r.contains("ResolveVanityURL"))
                .all(|r| r.contains("steamid=76561197960287930")),
            "{log:#?}"
        );
    }
    let h = harness(
        "",
        &steam_source(&fake),
        &[("steam", json!({"api_key": KEY, "steam_id": "nobody-here"}))],
    )
    .await;
    h.importer.start(USER, "steam").await.unwrap();
    let state = &h.importer.status(USER, "steam").await.unwrap()[0];
    assert_eq!(
        state.error_code.map(|c| c.as_str()),
        Some("auth_expired"),
        "{state:?}"
    );
    assert!(
        state.error.as_deref().unwrap().contains("nobody-here"),
        "{state:?}"
    );
}
