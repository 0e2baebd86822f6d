//! Xbox: title history (one TitleHub request with the achievement decoration, paged locally: TitleHub has
//! no continuation paging), then achievements (continuation tokens).

use serde_json::json;
use syncline_core::ImportPhase;
use syncline_testkit::fake_apis::FakeXbox;

use super::{
    XBOX_TOKEN, XBOX_UHS, XBOX_XUID, assert_complete, harness, requests_since, xbox_credential,
    xbox_source,
};

#[tokio::test]
async fn a_full_xbox_import_brings_every_title_and_every_achievement() {
    let fake = FakeXbox::start(XBOX_UHS, XBOX_TOKEN, XBOX_XUID, 1_000, 5).await;
    let h = harness("", &xbox_source(&fake), &[("xbox", xbox_credential())]).await;
    let states = h.import("xbox", 10).await;
    assert_complete(&states);
    assert_eq!(h.rows("xbox_titles"), 1_000);
    assert_eq!(h.rows("xbox_achievements"), 5_000);
    assert_eq!(
        (states[0].total_estimated, states[1].total_estimated),
        (Some(1_000), Some(5_000))
    );
    assert_eq!(
        fake.control.requests(),
        1 + 100,
        "the title history once, then achievements in pages of 50"
    );
    let log = fake.control.log();
    assert!(
        log[0].contains("/titlehistory/decoration/achievement,image?maxItems=10000"),
        "{}",
        log[0]
    );
    assert!(
        log[2].contains("continuationToken=ct-00000032"),
        "{}",
        log[2]
    );

    let title = &h.table("xbox_titles")["1700000007"];
    assert_eq!(
        (
            &title["name"],
            &title["current_achievements"],
            &title["total_achievements"]
        ),
        (&json!("Xbox Game 7"), &json!(2), &json!(5))
    );
    assert_eq!(
        (&title["current_gamerscore"], &title["total_gamerscore"]),
        (&json!(5 + 25), &json!(5 + 10 + 15 + 20 + 25))
    );
    let achievements = h.table("xbox_achievements");
    let unlocked = &achievements["1700000007-1"];
    assert_eq!(
        (
            &unlocked["progress_state"],
            &unlocked["gamerscore"],
            &unlocked["title_name"]
        ),
        (&json!("Achieved"), &json!(5), &json!("Xbox Game 7"))
    );
    assert!(unlocked["unlocked_at"].is_string());
    assert_eq!(achievements["1700000007-2"]["unlocked_at"], json!(null));
}

#[tokio::test]
async fn the_xbox_incremental_walk_fetches_only_titles_played_and_achievements_unlocked_since() {
    let fake = FakeXbox::start(XBOX_UHS, XBOX_TOKEN, XBOX_XUID, 400, 4).await;
    let h = harness("", &xbox_source(&fake), &[("xbox", xbox_credential())]).await;
    assert_complete(&h.import("xbox", 10).await);
    let sequence = h.sequence();
    {
        let mut library = fake.library.lock().unwrap();
        library.unlock("1700000003", "2");
        library.unlock("1700000250", "3");
        library.unlock("1700000003", "4");
        library.add_titles(2, 4);
    }
    let before = fake.control.log().len();
    h.import("xbox", 10).await;
    let requests = requests_since(&fake.control, before);
    assert_eq!(requests.len(), 2, "one page per stream: {requests:#?}");
    assert!(
        requests.iter().all(|r| !r.contains("continuationToken")),
        "{requests:#?}"
    );
    let titles = h.state("xbox", "titles", ImportPhase::Incremental).await;
    let achievements = h
        .state("xbox", "achievements", ImportPhase::Incremental)
        .await;
    assert_eq!((titles.processed, achievements.processed), (4, 5));
    assert_eq!(h.rows("xbox_titles"), 402);
    // The new titles' locked achievements are not unlocked yet, so the incremental walk does not meet them
    // (documented: they arrive at the next full walk); their one unlocked achievement each does.
    assert_eq!(h.rows("xbox_achievements"), 1_600 + 2);
    assert_eq!(h.sequence(), sequence + 4 + 5);
    assert_eq!(
        h.table("xbox_achievements")["1700000250-3"]["progress_state"],
        "Achieved"
    );
    assert_eq!(
        h.table("xbox_titles")["1700000003"]["current_achievements"],
        3
    );
}
