//! PlayStation: trophy titles, then each title's trophies from the service its `npServiceName` names,
//! listing the titles once per walk; a private profile is `profile_private`.

use serde_json::json;
use syncline_core::{ImportPhase, ImportStatus};
use syncline_testkit::fake_apis::{FakePlayStation, PSN_ACCOUNT_ID};

use super::{PSN_TOKEN, assert_complete, harness, playstation_source, psn_harness, requests_since};

#[tokio::test]
async fn a_full_playstation_import_brings_every_title_and_every_trophy() {
    let fake = FakePlayStation::start(PSN_TOKEN, 1_500, 4).await;
    let h = harness(
        "",
        &playstation_source(&fake),
        &[(
            "psn",
            json!({"access_token": PSN_TOKEN, "account_id": PSN_ACCOUNT_ID}),
        )],
    )
    .await;
    let states = h.import("psn", 20).await;
    assert_complete(&states);
    assert_eq!(h.rows("psn_titles"), 1_500);
    assert_eq!(h.rows("psn_trophies"), 6_000);
    assert_eq!(states[0].total_estimated, Some(1_500));
    // Titles: 30 pages of 50. Trophies: the title list once (pages of 800), then one trophy list per title,
    // never the title list again.
    assert_eq!(fake.control.requests(), 30 + 2 + 1_500);
    let log = fake.control.log();
    let listed = log.iter().filter(|r| r.contains("/trophyTitles")).count();
    assert_eq!(listed, 30 + 2, "the trophies stream lists the titles once");
    // The service comes from each title's npServiceName: a PS4 title also listed for PS5 is `trophy`.
    let cross_gen = log.iter().find(|r| r.contains("NPWR00005_00/")).unwrap();
    assert!(cross_gen.ends_with("?npServiceName=trophy"), "{cross_gen}");
    assert!(
        log.iter()
            .any(|r| r.contains("NPWR00002_00/") && r.contains("npServiceName=trophy2"))
    );
    assert!(
        fake.control
            .log()
            .iter()
            .all(|r| r.starts_with(&format!("/api/trophy/v1/users/{PSN_ACCOUNT_ID}/")))
    );

    let titles = h.table("psn_titles");
    let ps5 = &titles["NPWR00002_00"];
    assert_eq!(
        (&ps5["name"], &ps5["platform"], &ps5["defined_total"]),
        (&json!("Game 2"), &json!("PS5"), &json!(4))
    );
    assert_eq!(
        (&ps5["earned_platinum"], &ps5["earned_bronze"]),
        (&json!(1), &json!(1))
    );
    let trophies = h.table("psn_trophies");
    let earned = &trophies["NPWR00002_00-0"];
    assert_eq!(
        (&earned["trophy_type"], &earned["earned"]),
        (&json!("platinum"), &json!(true))
    );
    assert!(earned["earned_at"].is_string());
    assert_eq!(earned["earned_rate"], json!(0.5));
    let locked = &trophies["NPWR00002_00-1"];
    assert_eq!(
        (&locked["earned"], &locked["earned_at"]),
        (&json!(false), &json!(null))
    );
}

#[tokio::test]
async fn the_playstation_incremental_walk_fetches_only_updated_and_new_titles() {
    let fake = FakePlayStation::start(PSN_TOKEN, 300, 5).await;
    let h = psn_harness(&fake).await;
    assert_complete(&h.import("psn", 10).await);
    let sequence = h.sequence();

    // Nothing changed upstream: one request per stream, and no row moves.
    let before = fake.control.log().len();
    h.import("psn", 10).await;
    assert_eq!(requests_since(&fake.control, before).len(), 2);
    assert_eq!(h.sequence(), sequence);

    // Two titles get a trophy each (one unearned trophy, so its title's counts change too); three are new.
    let new_ids = {
        let mut library = fake.library.lock().unwrap();
        library.earn("NPWR00010_00", 1);
        library.earn("NPWR00123_00", 2);
        library.add_titles(3, 5)
    };
    let before = fake.control.log().len();
    let states = h.import("psn", 10).await;
    let incremental: Vec<_> = states
        .iter()
        .filter(|s| s.phase == ImportPhase::Incremental)
        .collect();
    assert_eq!(incremental.len(), 2);
    assert!(
        incremental
            .iter()
            .all(|s| s.status == ImportStatus::Success),
        "{states:?}"
    );
    let requests = requests_since(&fake.control, before);
    let trophy_lists: Vec<&String> = requests
        .iter()
        .filter(|r| r.contains("/trophyGroups/all/trophies"))
        .collect();
    assert_eq!(
        requests.len(),
        2 + trophy_lists.len(),
        "one page of titles per stream: {requests:#?}"
    );
    let mut fetched: Vec<&str> = trophy_lists
        .iter()
        .map(|r| r.split('/').nth(7).unwrap())
        .collect();
    fetched.sort_unstable();
    let mut expected: Vec<&str> = new_ids.iter().map(String::as_str).collect();
    expected.extend(["NPWR00010_00", "NPWR00123_00"]);
    expected.sort_unstable();
    assert_eq!(fetched, expected, "only the updated and the new titles");
    assert_eq!(
        h.state("psn", "trophies", ImportPhase::Incremental)
            .await
            .processed,
        25
    );
    assert_eq!(h.rows("psn_titles"), 303);
    assert_eq!(h.rows("psn_trophies"), 1_515);
    // Titles: 3 new and 2 changed. Trophies: 15 new and the 2 earned; their siblings did not change.
    assert_eq!(h.sequence(), sequence + 5 + 17);
    assert_eq!(h.table("psn_trophies")["NPWR00010_00-1"]["earned"], true);
}

/// A hidden profile's "Not permitted by access control" (code 2240526), with a 403 or, as psn-api reads
/// any answer carrying an `error` object (`src/trophy/user/getUserTrophiesEarnedForTitle.ts`), in a 200:
/// `profile_private` either way, never an empty library.
#[tokio::test]
async fn a_private_playstation_profile_is_profile_private() {
    for with_200 in [false, true] {
        let fake = FakePlayStation::start(PSN_TOKEN, 5, 2).await;
        {
            let mut library = fake.library.lock().unwrap();
            library.private = true;
            library.private_with_200 = with_200;
        }
        let h = psn_harness(&fake).await;
        let states = h.import("psn", 5).await;
        assert_eq!(states.len(), 2);
        for s in &states {
            assert_eq!(s.status, ImportStatus::Error, "{with_200}: {s:?}");
            assert_eq!(
                s.error_code.map(|c| c.as_str()),
                Some("profile_private"),
                "{with_200}: {s:?}"
            );
            assert!(
                s.error.as_deref().unwrap().contains("privacy settings"),
                "{s:?}"
            );
        }
        assert_eq!(h.rows("psn_titles"), 0);
    }
}

/// psn-api's `UserTrophiesEarnedForTitleResponse` may name a `nextOffset` (the endpoint takes
/// `limit`/`offset`): a title's trophies served in pages of 3 all arrive, each page asked once.
#[tokio::test]
async fn a_titles_trophies_served_in_pages_all_arrive() {
    let fake = FakePlayStation::start(PSN_TOKEN, 4, 8).await;
    fake.library.lock().unwrap().trophy_page = Some(3);
    let h = psn_harness(&fake).await;
    assert_complete(&h.import("psn", 10).await);
    assert_eq!(h.rows("psn_trophies"), 4 * 8);
    let log = fake.control.log();
    let pages: Vec<&String> = log.iter().filter(|r| r.contains("NPWR00001_00/")).collect();
    assert_eq!(pages.len(), 3, "8 trophies in pages of 3: {pages:#?}");
    assert!(
        pages[1].contains("offset=3") && pages[2].contains("offset=6"),
        "{pages:#?}"
    );
}
