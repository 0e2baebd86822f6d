//! Steam's incremental walk: the owned-games list again (one request), achievements only of games played
//! since the last walk.

use serde_json::json;
use syncline_core::ImportPhase;
use syncline_testkit::fake_apis::FakeSteam;

use super::{assert_complete, harness, requests_since};

const KEY: &str = "steam-key-s3cr3t";

#[tokio::test]
async fn the_steam_incremental_walk_fetches_achievements_only_of_games_played_since() {
    let fake = FakeSteam::start(KEY, "7656", 90, 12).await;
    let sources = format!(
        "[sources.steam]\nkind = \"steam\"\nbase_url = \"{}\"\n\
         streams = {{ owned_games = \"steam_games\", achievements = \"steam_achievements\" }}\n",
        fake.base_url()
    );
    let h = harness(
        "",
        &sources,
        &[("steam", json!({"api_key": KEY, "steam_id": "7656"}))],
    )
    .await;
    assert_complete(&h.import("steam", 10).await);
    assert_eq!(
        fake.control.requests(),
        1 + 1 + 90,
        "owned twice, then every game"
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
    assert_eq!(requests.len(), 2 + 3, "{requests:#?}");
    for (request, appid) in achievement_requests.iter().zip([20, 40, 50]) {
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
