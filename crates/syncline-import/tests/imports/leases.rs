//! Several import engines on one store, as several server instances on one database: a job's lease lets
//! only one of them walk it at a time, and when the holder dies another finishes the job from its
//! checkpoint once the lease has expired, with every item imported exactly once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sqlite_store;
use serde_json::json;
use syncline_core::ImportStatus;
use syncline_core::SystemClock;
use syncline_import::{Importer, ImportsConfig};
use syncline_store::Store;
use syncline_testkit::fake_apis::FakeSpotify;

const USER: &str = "alice";
const TOKEN: &str = "spotify-token";
const TRACKS: usize = 1_200;
const PAGE: usize = 50;

struct Cluster {
    store: Arc<dyn Store>,
    instances: Vec<Arc<Importer>>,
    _dir: tempfile::TempDir,
}

/// `n` background-mode engines on one SQLite store, importing saved tracks from `fake`.
async fn cluster(fake: &FakeSpotify, n: usize, lease_ms: u64, budget_ms: u64) -> Cluster {
    let (schema, store, dir) = sqlite_store(&[r#"[spotify_tracks]
columns = { name = "string", album_id = "string", album_name = "string", artist_names = "string", duration_ms = "number", added_at = "string", user_id = "string" }"#]);
    let config: ImportsConfig = toml::from_str(&format!(
        r#"encryption_key = "{}"
page_size = {PAGE}
lease_ms = {lease_ms}
step_budget_ms = {budget_ms}
[sources.spotify]
kind = "spotify"
base_url = "{}"
streams = {{ saved_tracks = "spotify_tracks" }}
"#,
        syncline_import::Sealer::generate_key(),
        fake.base_url()
    ))
    .unwrap();
    let instances: Vec<Arc<Importer>> = (0..n)
        .map(|_| {
            Arc::new(
                Importer::from_config(
                    &config,
                    store.clone(),
                    schema.clone(),
                    Arc::new(SystemClock),
                )
                .unwrap(),
            )
        })
        .collect();
    let credential = json!({"access_token": TOKEN});
    instances[0]
        .connect(USER, "spotify", credential.as_object().unwrap().clone())
        .await
        .unwrap();
    Cluster {
        store,
        instances,
        _dir: dir,
    }
}

impl Cluster {
    async fn wait_for_success(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let status = self.instances[0].status(USER, "spotify").await.unwrap();
            if status[0].status == ImportStatus::Success {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not done in {within:?}: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn rows(&self) -> u64 {
        self.store.user_stats(USER).unwrap().tables["spotify_tracks"].records
    }
}

/// Pages a single walk of a library of `tracks` asks for.
fn pages(tracks: usize) -> u64 {
    tracks.div_ceil(PAGE) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_stepping_one_job_fetch_every_page_exactly_once() {
    let tracks = 200;
    let fake = FakeSpotify::start(TOKEN, tracks, 0, 0, 0).await;
    // Every page takes longer than the lease: the holder must renew it while a page is in flight, while the
    // other two try to take the job every 5 ms. It renews every third of the lease, so a renewal may be late
    // by two thirds of it before the lease lapses. With a 250 ms lease that slack was 167 ms, and with 1.2 s
    // it was 800 ms, which a 2-core machine busy with a build still spent on one renewal once (a SQLite write
    // contending with the two other instances' claims and every other process). 2.4 s of lease leaves
    // 1.6 s, and 3 s per page still outlasts it; four pages keep the test at about 12 s.
    fake.control.set_latency(Duration::from_millis(3_000));
    let c = cluster(&fake, 3, 2_400, 60_000).await;
    c.instances[1].start(USER, "spotify").await.unwrap();
    let steppers: Vec<_> = c
        .instances
        .iter()
        .map(|i| {
            let i = i.clone();
            tokio::spawn(async move {
                let mut walked = 0;
                loop {
                    let report = i.step(USER, "spotify").await.unwrap();
                    assert!(!report.lease_lost, "the lease was renewed in time");
                    walked += report.batches;
                    if !report.more {
                        return walked;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    let mut batches = Vec::new();
    for s in steppers {
        batches.push(s.await.unwrap());
    }
    assert_eq!(batches.iter().sum::<u64>(), pages(tracks), "{batches:?}");
    assert_eq!(
        batches.iter().filter(|b| **b > 0).count(),
        1,
        "one instance walked the job: {batches:?}"
    );
    assert_eq!(c.rows(), tracks as u64);
    assert_eq!(
        fake.control.requests(),
        pages(tracks),
        "no page was fetched twice: two instances never walked the job at once"
    );
    let state = &c.instances[2].status(USER, "spotify").await.unwrap()[0];
    assert_eq!(
        (state.status, state.processed, state.progress),
        (ImportStatus::Success, tracks as u64, 100)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_lease_holder_dies_another_instance_finishes_after_the_lease_expires() {
    let fake = FakeSpotify::start(TOKEN, TRACKS, 0, 0, 0).await;
    fake.control.set_latency(Duration::from_millis(20));
    let lease = Duration::from_millis(1_500);
    let c = cluster(&fake, 2, lease.as_millis() as u64, 60_000).await;
    let doomed = tokio::spawn(c.instances[0].clone().run());
    c.instances[0].start(USER, "spotify").await.unwrap();
    // Let it import a few pages, then kill it mid-step: its lease is never given back.
    let mut changes = c.instances[0].subscribe();
    while c.rows() < 200 {
        changes.changed().await.unwrap();
    }
    doomed.abort();
    let _ = doomed.await;
    let died_at = Instant::now();
    let before = c.rows();
    assert!(before < TRACKS as u64, "killed mid-import");
    let status = c.instances[1].status(USER, "spotify").await.unwrap();
    assert_eq!(
        status[0].status,
        ImportStatus::Running,
        "the dead step's lease is still live"
    );

    let survivor = tokio::spawn(c.instances[1].clone().run());
    c.wait_for_success(Duration::from_secs(60)).await;
    survivor.abort();
    assert!(
        died_at.elapsed() >= lease - Duration::from_millis(200),
        "the survivor waited for the lease to expire ({:?})",
        died_at.elapsed()
    );
    assert_eq!(c.rows(), TRACKS as u64, "no gaps and no duplicates");
    let state = &c.instances[1].status(USER, "spotify").await.unwrap()[0];
    assert_eq!(state.processed, TRACKS as u64, "every item counted once");
    // At most the page in flight when the instance died was fetched twice.
    assert!(
        fake.control.requests() <= pages(TRACKS) + 1,
        "{} requests for {} pages",
        fake.control.requests(),
        pages(TRACKS)
    );
}
