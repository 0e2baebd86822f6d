//! The storage conformance suite: behaviour every backend must show, written once against `&dyn Store`.
//! Each backend runs every case through `backends()`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use syncline_core::{
    BulkRequest, ImportPhase, ImportState, PullRequest, PushRequest, Schema, TableConfig,
    WriteBatch, plan_bulk, plan_push,
};
use syncline_store::{
    ACTIVITY_BUCKET_MS, ActivityBucket, IdempotencyKey, Lease, LeaseHolder, PullSink, Store,
    StoreError, StoreOptions, SyncActivity, SyncKind, WriteOutcome, WriteSummary, activity_bucket,
};

fn schema() -> Arc<Schema> {
    let config: BTreeMap<String, TableConfig> = toml::from_str(
        r#"
        [projects]
        columns = { name = "string", user_id = "string" }
        [tasks]
        columns = { title = "string", done = "boolean", project_id = "string", position = { type = "number", since = 2 } }
        parent = { table = "projects", column = "project_id" }
        [task_tags]
        since = 2
        columns = { task_id = "string", tag = "string" }
        parents = [{ table = "tasks", column = "task_id" }]
        [settings]
        singleton = true
        columns = { theme = "string" }
        "#,
    )
    .unwrap();
    Arc::new(Schema::from_config(&config).unwrap())
}

struct Backend {
    store: Arc<dyn Store>,
    schema: Arc<Schema>,
    url: String,
    _dir: Option<tempfile::TempDir>,
}

/// Every backend, each on a fresh empty database: SQLite in a temp file, PostgreSQL in a throwaway cluster.
fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
    let postgres = syncline_testkit::TempPostgres::shared().fresh_database();
    vec![
        Backend::open(&sqlite, Some(dir)),
        Backend::open(&postgres, None),
    ]
}

impl Backend {
    fn open(url: &str, dir: Option<tempfile::TempDir>) -> Backend {
        Backend::open_with(url, dir, &StoreOptions::default())
    }

    fn open_with(url: &str, dir: Option<tempfile::TempDir>, options: &StoreOptions) -> Backend {
        let schema = schema();
        let store = syncline_store::open_with(url, schema.clone(), options)
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        Backend {
            store,
            schema,
            url: url.to_string(),
            _dir: dir,
        }
    }

    /// Closes this store and opens the same database again, as a restarted server would.
    fn reopen(self) -> Backend {
        let Backend {
            store, url, _dir, ..
        } = self;
        drop(store);
        Backend::open(&url, _dir)
    }
}

const NOW: i64 = 1_700_000_000_000;

impl Backend {
    fn push(&self, user: &str, last_pulled_at: i64, changes: Value) -> WriteOutcome {
        let body = json!({"lastPulledAt": last_pulled_at, "changes": changes}).to_string();
        let request: PushRequest = serde_json::from_str(&body).unwrap();
        let (batch, _) = plan_push(&self.schema, &request, user).unwrap();
        self.write(user, &batch, None, NOW)
    }

    fn bulk(
        &self,
        user: &str,
        body: Value,
        key: Option<&IdempotencyKey>,
    ) -> Result<WriteOutcome, StoreError> {
        let body = body.to_string();
        let request: BulkRequest = serde_json::from_str(&body).unwrap();
        let batch = plan_bulk(&self.schema, &request, user).unwrap();
        self.store.write(user, &batch, key, NOW, &|s| {
            serde_json::to_string(&s.counts).unwrap()
        })
    }

    fn write(
        &self,
        user: &str,
        batch: &WriteBatch<'_>,
        key: Option<&IdempotencyKey>,
        now: i64,
    ) -> WriteOutcome {
        self.store
            .write(user, batch, key, now, &|s| s.sequence.to_string())
            .unwrap()
    }

    fn pull(&self, user: &str, request: Value) -> Value {
        let request: PullRequest = serde_json::from_value(request).unwrap();
        let mut out = Vec::new();
        self.store.pull(user, &request, &mut out).unwrap();
        serde_json::from_slice(&out).expect("pull output is JSON")
    }

    fn pull_since(&self, user: &str, since: Option<i64>) -> Value {
        self.pull(user, json!({"lastPulledAt": since}))
    }
}

fn sequence(outcome: &WriteOutcome) -> i64 {
    match outcome {
        WriteOutcome::Applied { summary, .. } => summary.sequence,
        other => panic!("expected an applied write, got {other:?}"),
    }
}

fn ids(pull: &Value, table: &str, list: &str) -> Vec<String> {
    let mut ids: Vec<String> = pull["changes"][table][list]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            if list == "deleted" {
                v.as_str().unwrap().to_string()
            } else {
                v["id"].as_str().unwrap().to_string()
            }
        })
        .collect();
    ids.sort();
    ids
}

fn project(id: &str, name: &str) -> Value {
    json!({"id": id, "name": name})
}

fn task(id: &str, project: &str) -> Value {
    json!({"id": id, "title": id, "done": false, "project_id": project})
}

#[test]
fn first_pull_returns_everything_as_updated_with_a_positive_timestamp() {
    for b in backends() {
        let empty = b.pull_since("alice", None);
        assert!(empty["timestamp"].as_i64().unwrap() > 0);
        assert_eq!(
            empty["changes"]["tasks"],
            json!({"created": [], "updated": [], "deleted": []})
        );
        b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        );
        let pull = b.pull_since("alice", None);
        assert_eq!(
            pull["changes"]["projects"]["updated"],
            json!([{"id": "p1", "name": "A", "user_id": "alice"}])
        );
        assert_eq!(pull["changes"]["projects"]["created"], json!([]));
        assert!(pull["timestamp"].as_i64().unwrap() > empty["timestamp"].as_i64().unwrap());
    }
}

#[test]
fn incremental_pull_returns_only_later_changes_and_deletes() {
    for b in backends() {
        b.push("alice", 0, json!({"projects": {"created": [project("p1", "A"), project("p2", "B")], "updated": [], "deleted": []}}));
        let t1 = b.pull_since("alice", None)["timestamp"].as_i64().unwrap();
        b.push("alice", t1, json!({"projects": {"created": [project("p3", "C")], "updated": [project("p1", "A2")], "deleted": ["p2"]}}));
        let pull = b.pull_since("alice", Some(t1));
        assert_eq!(ids(&pull, "projects", "updated"), ["p1", "p3"]);
        assert_eq!(ids(&pull, "projects", "deleted"), ["p2"]);
        let t2 = pull["timestamp"].as_i64().unwrap();
        assert_eq!(
            ids(&b.pull_since("alice", Some(t2)), "projects", "updated"),
            Vec::<String>::new()
        );
        // A first pull never carries tombstones.
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "deleted"),
            Vec::<String>::new()
        );
    }
}

#[test]
fn push_conflicts_when_a_record_changed_after_the_cursor() {
    for b in backends() {
        let t0 = sequence(&b.push("alice", 0, json!({"projects": {"created": [project("p1", "A"), project("p2", "B")], "updated": [], "deleted": []}})));
        b.push("alice", t0, json!({"projects": {"created": [], "updated": [project("p1", "from B")], "deleted": []}}));
        // A device that pulled at t0 pushes an update and a delete touching records changed after t0.
        let outcome = b.push("alice", t0, json!({"projects": {"created": [project("p9", "new")], "updated": [project("p1", "from A")], "deleted": ["p2"]}}));
        let WriteOutcome::Conflict { conflicts } = outcome else {
            panic!("expected a conflict, got {outcome:?}")
        };
        assert_eq!(conflicts["projects"], ["p1"]);
        let pull = b.pull_since("alice", None);
        assert_eq!(
            ids(&pull, "projects", "updated"),
            ["p1", "p2"],
            "nothing of the rejected push was applied"
        );
        let p1 = pull["changes"]["projects"]["updated"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "p1")
            .unwrap();
        assert_eq!(p1["name"], "from B");
    }
}

#[test]
fn created_that_exists_updates_and_unknown_deletes_are_ignored() {
    for b in backends() {
        let t = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let t = sequence(&b.push("alice", t, json!({"projects": {"created": [project("p1", "again")], "updated": [project("p7", "made by update")], "deleted": ["never-existed"]}})));
        let pull = b.pull_since("alice", None);
        assert_eq!(ids(&pull, "projects", "updated"), ["p1", "p7"]);
        let p1 = pull["changes"]["projects"]["updated"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == "p1")
            .unwrap();
        assert_eq!(p1["name"], "again");
        assert_eq!(
            ids(&b.pull_since("alice", Some(t - 1)), "projects", "deleted"),
            Vec::<String>::new()
        );
    }
}

#[test]
fn an_update_of_a_record_deleted_before_the_cursor_does_not_resurrect_it() {
    for b in backends() {
        let t = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let t = sequence(&b.push(
            "alice",
            t,
            json!({"projects": {"created": [], "updated": [], "deleted": ["p1"]}}),
        ));
        b.push("alice", t, json!({"projects": {"created": [], "updated": [project("p1", "zombie")], "deleted": []}}));
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            Vec::<String>::new()
        );
    }
}

/// WatermelonDB's backend guide, push rule 4: a record to delete that does not exist is ignored with no error,
/// also "if another user deleted this record in between user's pull and push calls". Only a delete of a
/// record that is still live and changed after the cursor conflicts (rule 5).
#[test]
fn a_delete_of_a_record_deleted_elsewhere_after_the_cursor_is_ignored() {
    for b in backends() {
        let t0 = sequence(&b.push(
            "alice",
            0,
            json!({
                "projects": {"created": [project("p1", "A"), project("p2", "B"), project("p3", "C")]},
                "tasks": {"created": [task("t1", "p1")]}
            }),
        ));
        // Device A, at t0, deletes p2 and p1 (whose task t1 goes with it) and renames p3.
        b.push(
            "alice",
            t0,
            json!({"projects": {"updated": [project("p3", "C2")], "deleted": ["p1", "p2"]}}),
        );
        // Device B, also at t0, deleted p2 and t1 itself and made p9: nothing conflicts.
        let outcome = b.push(
            "alice",
            t0,
            json!({
                "projects": {"created": [project("p9", "new")], "deleted": ["p2"]},
                "tasks": {"deleted": ["t1"]}
            }),
        );
        let t1 = sequence(&outcome);
        let pull = b.pull_since("alice", None);
        assert_eq!(ids(&pull, "projects", "updated"), ["p3", "p9"], "{}", b.url);
        assert_eq!(ids(&pull, "tasks", "updated"), Vec::<String>::new());
        // The deletes moved nothing: B's next pull brings p9 only, not the tombstones again.
        let after = b.pull_since("alice", Some(t1 - 1));
        assert_eq!(ids(&after, "projects", "updated"), ["p9"]);
        assert_eq!(ids(&after, "projects", "deleted"), Vec::<String>::new());
        // Deleting p3, live and renamed after t0, still conflicts, and then nothing of that push applies.
        let outcome = b.push(
            "alice",
            t0,
            json!({"projects": {"created": [project("p8", "x")], "deleted": ["p2", "p3"]}}),
        );
        let WriteOutcome::Conflict { conflicts } = outcome else {
            panic!("expected a conflict, got {outcome:?}")
        };
        assert_eq!(
            conflicts,
            BTreeMap::from([("projects".to_string(), vec!["p3".to_string()])])
        );
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            ["p3", "p9"]
        );
    }
}

#[test]
fn an_unchanged_record_does_not_move_the_sequence() {
    for b in backends() {
        let t = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let again = b
            .bulk(
                "alice",
                json!({"upserts": {"projects": [project("p1", "A")]}}),
                None,
            )
            .unwrap();
        let WriteOutcome::Applied { summary, .. } = again else {
            panic!()
        };
        assert_eq!(summary.sequence, t);
        assert_eq!(summary.counts["projects"].unchanged, 1);
        assert_eq!(
            ids(&b.pull_since("alice", Some(t)), "projects", "updated"),
            Vec::<String>::new()
        );
    }
}

#[test]
fn partial_upserts_keep_the_other_columns() {
    for b in backends() {
        b.bulk("alice", json!({"upserts": {"tasks": [{"id": "t1", "title": "T", "done": true, "project_id": "p"}]}}), None).unwrap();
        b.bulk(
            "alice",
            json!({"upserts": {"tasks": [{"id": "t1", "title": "T2"}]}}),
            None,
        )
        .unwrap();
        let pull = b.pull_since("alice", None);
        assert_eq!(
            pull["changes"]["tasks"]["updated"][0],
            json!({"id": "t1", "done": true, "position": null, "project_id": "p", "title": "T2"})
        );
    }
}

#[test]
fn deletes_cascade_to_children_and_grandchildren() {
    for b in backends() {
        b.bulk(
            "alice",
            json!({"upserts": {
                "projects": [project("p1", "A"), project("p2", "B")],
                "tasks": [task("t1", "p1"), task("t2", "p1"), task("t3", "p2")],
                "task_tags": [{"id": "g1", "task_id": "t1", "tag": "x"}, {"id": "g3", "task_id": "t3", "tag": "y"}]
            }}),
            None,
        )
        .unwrap();
        // Bob has a task pointing at an id equal to alice's project: never touched.
        b.bulk(
            "bob",
            json!({"upserts": {"tasks": [task("t1", "p1")]}}),
            None,
        )
        .unwrap();
        let t = b.pull_since("alice", None)["timestamp"].as_i64().unwrap();
        let outcome = b
            .bulk("alice", json!({"deletes": {"projects": ["p1"]}}), None)
            .unwrap();
        let WriteOutcome::Applied { summary, .. } = outcome else {
            panic!()
        };
        assert_eq!(
            (
                summary.counts["projects"].deleted,
                summary.counts["tasks"].deleted,
                summary.counts["task_tags"].deleted
            ),
            (1, 2, 1)
        );
        let pull = b.pull_since("alice", Some(t));
        assert_eq!(ids(&pull, "tasks", "deleted"), ["t1", "t2"]);
        assert_eq!(ids(&pull, "task_tags", "deleted"), ["g1"]);
        assert_eq!(
            ids(&b.pull_since("alice", None), "tasks", "updated"),
            ["t3"]
        );
        assert_eq!(ids(&b.pull_since("bob", None), "tasks", "updated"), ["t1"]);
    }
}

#[test]
fn users_never_see_or_touch_each_others_records() {
    for b in backends() {
        b.push("alice", 0, json!({"projects": {"created": [project("p1", "alice's")], "updated": [], "deleted": []}}));
        let t = sequence(&b.push("bob", 0, json!({"projects": {"created": [], "updated": [project("p1", "bob's")], "deleted": []}})));
        sequence(&b.push(
            "bob",
            t,
            json!({"projects": {"created": [], "updated": [], "deleted": ["p1"]}}),
        ));
        let alice = b.pull_since("alice", None);
        assert_eq!(
            alice["changes"]["projects"]["updated"],
            json!([{"id": "p1", "name": "alice's", "user_id": "alice"}])
        );
        assert_eq!(
            ids(&b.pull_since("bob", None), "projects", "updated"),
            Vec::<String>::new()
        );
    }
}

#[test]
fn paged_pulls_cover_every_change_exactly_once() {
    for b in backends() {
        let mut expected = Vec::new();
        for round in 0..5 {
            let projects: Vec<Value> = (0..7)
                .map(|i| project(&format!("p{round}-{i}"), "x"))
                .collect();
            let tasks: Vec<Value> = (0..5)
                .map(|i| task(&format!("t{round}-{i}"), "none"))
                .collect();
            expected.extend(
                projects
                    .iter()
                    .chain(&tasks)
                    .map(|r| r["id"].as_str().unwrap().to_string()),
            );
            b.bulk(
                "alice",
                json!({"upserts": {"projects": projects, "tasks": tasks}}),
                None,
            )
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor: Option<i64> = None;
        let mut pages = 0;
        loop {
            let page = b.pull("alice", json!({"lastPulledAt": cursor, "limit": 7}));
            for table in ["projects", "tasks", "settings", "task_tags"] {
                seen.extend(ids(&page, table, "updated"));
            }
            pages += 1;
            cursor = Some(page["timestamp"].as_i64().unwrap());
            if !page["hasMore"].as_bool().unwrap() {
                break;
            }
            assert!(pages < 100);
        }
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected);
        assert_eq!(pages, 9, "60 changes in pages of 7");
    }
}

/// A paged first pull of one table whose rows are partly one bulk write (consecutive sequences) and partly
/// spread among another user's writes, one in three: every live record once, in the order written, full
/// pages of `limit` changes, the other user's records never, and the records deleted after the first page as
/// `deleted` on the page that reaches them.
#[test]
fn paged_first_pull_of_bulk_and_spread_rows_brings_each_live_record_once_in_order() {
    for b in backends() {
        let mut expected = Vec::new();
        let dense: Vec<Value> = (0..30).map(|i| task(&format!("d{i:02}"), "none")).collect();
        expected.extend((0..30).map(|i| format!("d{i:02}")));
        b.bulk("alice", json!({"upserts": {"tasks": dense}}), None)
            .unwrap();
        for i in 0..30 {
            b.bulk(
                "alice",
                json!({"upserts": {"tasks": [task(&format!("s{i:02}"), "none")]}}),
                None,
            )
            .unwrap();
            b.bulk(
                "bob",
                json!({"upserts": {"tasks": [task(&format!("b{i:02}"), "none"), task(&format!("c{i:02}"), "none")]}}),
                None,
            )
            .unwrap();
            expected.push(format!("s{i:02}"));
        }
        let gone = ["d03", "d17", "s05", "s29"];
        b.bulk("alice", json!({"deletes": {"tasks": gone}}), None)
            .unwrap();
        expected.retain(|id| !gone.contains(&id.as_str()));
        let (mut seen, mut seen_deleted, mut cursor, mut pages) =
            (Vec::new(), Vec::new(), None::<i64>, 0);
        loop {
            let page = b.pull("alice", json!({"lastPulledAt": cursor, "limit": 7}));
            let updated: Vec<String> = page["changes"]["tasks"]["updated"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            let more = page["hasMore"].as_bool().unwrap();
            let deleted = ids(&page, "tasks", "deleted");
            assert!(!more || updated.len() + deleted.len() == 7, "a full page");
            seen.extend(updated);
            seen_deleted.extend(deleted);
            pages += 1;
            cursor = Some(page["timestamp"].as_i64().unwrap());
            if !more {
                break;
            }
            assert!(pages < 100);
        }
        assert_eq!(seen, expected, "in the order written");
        assert_eq!(seen_deleted, gone);
        // 7 live records on the first page, then 49 more and 4 deletions.
        assert_eq!(pages, 9);
    }
}

/// Pages end where the `limit`-th change ends, across tables and with tombstones: an incremental page counts
/// a deletion as a change and sends it under `deleted`, a first pull's pages hold `limit` live records each
/// and skip deleted ones, whether one table or several have changes.
#[test]
fn pages_end_at_the_limit_th_change_across_tables_and_tombstones() {
    for b in backends() {
        let mut t = 0;
        for i in 0..4 {
            t = sequence(&b.push("alice", t, json!({
                "projects": {"created": [project(&format!("p{i}"), "x")], "updated": [], "deleted": []},
                "tasks": {"created": [task(&format!("t{i}"), "none")], "updated": [], "deleted": []}})));
        }
        let cursor = t;
        t = sequence(&b.push(
            "alice",
            t,
            json!({"projects": {"created": [], "updated": [], "deleted": ["p1"]}}),
        ));
        t = sequence(&b.push(
            "alice",
            t,
            json!({"tasks": {"created": [], "updated": [task("t2", "p0")], "deleted": []}}),
        ));
        sequence(&b.push(
            "alice",
            t,
            json!({"tasks": {"created": [], "updated": [], "deleted": ["t3"]}}),
        ));
        // Incremental, one change a page, in sequence order: p1 deleted, t2 updated, t3 deleted.
        let mut pages = Vec::new();
        let mut at = cursor;
        loop {
            let page = b.pull("alice", json!({"lastPulledAt": at, "limit": 1}));
            pages.push((
                ids(&page, "projects", "deleted"),
                ids(&page, "tasks", "updated"),
                ids(&page, "tasks", "deleted"),
                ids(&page, "projects", "updated").len(),
            ));
            at = page["timestamp"].as_i64().unwrap();
            if !page["hasMore"].as_bool().unwrap() {
                break;
            }
        }
        let none = Vec::<String>::new;
        assert_eq!(
            pages,
            [
                (vec!["p1".to_string()], none(), none(), 0),
                (none(), vec!["t2".to_string()], none(), 0),
                (none(), none(), vec!["t3".to_string()], 0),
            ],
            "{}",
            b.url
        );
        // A first pull's page counts live records only, across both tables: six live records (p0, t0, t1,
        // p2, p3, then t2's newest version) fill a page of 6 with nothing more to come, although tombstones lie
        // between and after them.
        let live = |page: &Value| {
            let mut live = ids(page, "projects", "updated");
            live.extend(ids(page, "tasks", "updated"));
            live
        };
        let whole = b.pull("alice", json!({"lastPulledAt": null, "limit": 6}));
        assert_eq!(
            live(&whole),
            ["p0", "p2", "p3", "t0", "t1", "t2"],
            "{}",
            b.url
        );
        assert_eq!(whole["hasMore"], json!(false));
        assert!(ids(&whole, "projects", "deleted").is_empty());
        // In pages of 5 the first page stops before t2; the next, an incremental page, has the rest.
        let first = b.pull("alice", json!({"lastPulledAt": null, "limit": 5}));
        assert_eq!(live(&first), ["p0", "p2", "p3", "t0", "t1"], "{}", b.url);
        assert_eq!(first["hasMore"], json!(true));
        let rest = b.pull(
            "alice",
            json!({"lastPulledAt": first["timestamp"], "limit": 5}),
        );
        assert_eq!(live(&rest), ["t2"]);
        assert_eq!(ids(&rest, "projects", "deleted"), ["p1"]);
        assert_eq!(ids(&rest, "tasks", "deleted"), ["t3"]);
        assert_eq!(rest["hasMore"], json!(false));
        // Only tasks have live rows for bob: a page is read from that one table, and still ends at its limit.
        let mut t = 0;
        for i in 0..5 {
            t = sequence(&b.push("bob", t, json!({"tasks": {"created": [task(&format!("b{i}"), "none")], "updated": [], "deleted": []}})));
        }
        sequence(&b.push(
            "bob",
            t,
            json!({"tasks": {"created": [], "updated": [], "deleted": ["b1"]}}),
        ));
        let page = b.pull("bob", json!({"lastPulledAt": null, "limit": 3}));
        assert_eq!(ids(&page, "tasks", "updated"), ["b0", "b2", "b3"]);
        assert_eq!(page["hasMore"], json!(true));
        let last = b.pull(
            "bob",
            json!({"lastPulledAt": page["timestamp"], "limit": 3}),
        );
        assert_eq!(ids(&last, "tasks", "updated"), ["b4"]);
        assert_eq!(last["hasMore"], json!(false));
    }
}

#[test]
fn collected_tombstones_send_old_cursors_a_replacement() {
    for b in backends() {
        let t0 = sequence(&b.push("alice", 0, json!({"projects": {"created": [project("p1", "A"), project("p2", "B")], "updated": [], "deleted": []}})));
        let t1 = sequence(&b.push(
            "alice",
            t0,
            json!({"projects": {"created": [], "updated": [], "deleted": ["p2"]}}),
        ));
        let gc = b.store.collect_garbage(NOW + 1, 0).unwrap();
        assert_eq!(gc.tombstones, 1);
        let stale = b.pull_since("alice", Some(t0));
        assert_eq!(stale["experimentalStrategy"], "replacement");
        assert_eq!(ids(&stale, "projects", "updated"), ["p1"]);
        let fresh = b.pull_since("alice", Some(t1));
        assert!(fresh.get("experimentalStrategy").is_none());
        // Bob never deleted anything: his old cursors stay incremental.
        let tb = sequence(&b.push(
            "bob",
            0,
            json!({"projects": {"created": [project("b1", "B")], "updated": [], "deleted": []}}),
        ));
        assert!(
            b.pull_since("bob", Some(tb - 1))
                .get("experimentalStrategy")
                .is_none()
        );
    }
}

#[test]
fn idempotency_keys_replay_the_first_answer_and_refuse_other_requests() {
    for b in backends() {
        let key = IdempotencyKey {
            key: "k1".into(),
            request_hash: [7; 32],
        };
        let body = json!({"upserts": {"projects": [project("p1", "A")]}});
        let first = b.bulk("alice", body.clone(), Some(&key)).unwrap();
        let WriteOutcome::Applied { response, .. } = first else {
            panic!()
        };
        let t = b.pull_since("alice", None)["timestamp"].clone();
        assert_eq!(
            b.bulk("alice", body.clone(), Some(&key)).unwrap(),
            WriteOutcome::Replayed { response }
        );
        assert_eq!(
            b.pull_since("alice", None)["timestamp"],
            t,
            "the replay applied nothing"
        );
        let other = IdempotencyKey {
            key: "k1".into(),
            request_hash: [8; 32],
        };
        assert!(matches!(
            b.bulk("alice", body.clone(), Some(&other)),
            Err(StoreError::IdempotencyKeyReused)
        ));
        // Keys are per user.
        assert!(matches!(
            b.bulk("bob", body, Some(&other)).unwrap(),
            WriteOutcome::Applied { .. }
        ));
    }
}

#[test]
fn migration_pulls_add_new_tables_and_rows_with_new_columns() {
    for b in backends() {
        b.bulk(
            "alice",
            json!({"upserts": {
                "tasks": [{"id": "t1", "title": "a", "position": 3}, {"id": "t2", "title": "b", "position": 0}, {"id": "t3", "title": "c"}],
                "task_tags": [{"id": "g1", "task_id": "t1", "tag": "x"}]
            }}),
            None,
        )
        .unwrap();
        let v1 = b.pull("alice", json!({"lastPulledAt": null, "schemaVersion": 1}));
        assert!(
            v1["changes"].get("task_tags").is_none(),
            "a v1 client does not get v2 tables"
        );
        let t = v1["timestamp"].as_i64().unwrap();
        let migration = b.pull(
            "alice",
            json!({"lastPulledAt": t, "schemaVersion": 2,
                   "migration": {"from": 1, "tables": ["task_tags"], "columns": [{"table": "tasks", "columns": ["position"]}]}}),
        );
        assert_eq!(ids(&migration, "task_tags", "updated"), ["g1"]);
        assert_eq!(ids(&migration, "tasks", "updated"), ["t1"]);
    }
}

#[test]
fn a_singleton_table_keeps_one_row_per_user() {
    for b in backends() {
        let t = sequence(&b.push("alice", 0, json!({"settings": {"created": [{"id": "s1", "theme": "dark"}], "updated": [], "deleted": []}})));
        b.push("alice", t, json!({"settings": {"created": [{"id": "s2", "theme": "light"}], "updated": [], "deleted": []}}));
        let pull = b.pull_since("alice", Some(t));
        assert_eq!(ids(&pull, "settings", "updated"), ["s2"]);
        assert_eq!(ids(&pull, "settings", "deleted"), ["s1"]);
    }
}

#[test]
fn the_sequence_survives_a_restart() {
    for b in backends() {
        let t = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let b = b.reopen();
        let t2 = sequence(&b.push(
            "alice",
            t,
            json!({"projects": {"created": [project("p2", "B")], "updated": [], "deleted": []}}),
        ));
        assert!(t2 > t);
        assert_eq!(
            ids(&b.pull_since("alice", Some(t)), "projects", "updated"),
            ["p2"]
        );
    }
}

/// Concurrent writers on separate store handles (separate connections, as separate server instances would
/// have) and concurrent pullers: every puller, following only its timestamps, sees every committed change.
#[test]
fn concurrent_writers_never_hide_a_change_from_a_puller() {
    for b in backends() {
        let handles: Vec<Backend> = (0..3).map(|_| Backend::open(&b.url, None)).collect();
        let committed = std::sync::Mutex::new(Vec::new());
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let pullers: Vec<_> = (0..2)
                .map(|p| {
                    let (h, done) = (&handles[p], &done);
                    scope.spawn(move || {
                        let mut seen = std::collections::HashSet::new();
                        let mut cursor: Option<i64> = None;
                        loop {
                            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                            let page = h.pull("alice", json!({"lastPulledAt": cursor, "limit": 5}));
                            seen.extend(ids(&page, "projects", "updated"));
                            cursor = Some(page["timestamp"].as_i64().unwrap());
                            if finished && !page["hasMore"].as_bool().unwrap() {
                                return seen;
                            }
                        }
                    })
                })
                .collect();
            let writers: Vec<_> = (0..3)
                .map(|w| {
                    let (h, committed) = (&handles[w], &committed);
                    scope.spawn(move || {
                        for i in 0..30 {
                            let id = format!("w{w}-{i}");
                            sequence(&h.push("alice", 0, json!({"projects": {"created": [project(&id, "x")], "updated": [], "deleted": []}})));
                            committed.lock().unwrap().push(id);
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            let committed: std::collections::HashSet<String> =
                committed.lock().unwrap().iter().cloned().collect();
            assert_eq!(committed.len(), 90);
            for p in pullers {
                let seen = p.join().unwrap();
                let missed: Vec<_> = committed.difference(&seen).collect();
                assert!(missed.is_empty(), "{}: a puller missed {missed:?}", b.url);
            }
        });
    }
}

fn import_state(stream: &str) -> ImportState {
    ImportState::new("steam", stream, ImportPhase::Initial)
}

const STEP: Lease<'static> = Lease {
    owner: "instance-a",
    ttl_ms: 10_000,
};

impl Backend {
    /// One batch of a step that holds (or takes) the job's lease as `STEP`.
    fn import(&self, user: &str, rows: Value, state: &ImportState) -> Option<WriteSummary> {
        assert!(
            self.store
                .claim_import(user, &state.source, STEP, NOW)
                .unwrap(),
            "{}",
            self.url
        );
        self.import_as(user, rows, state, STEP, NOW)
    }

    /// One applied batch of walk `walk` of steam's owned games at `now`: projects `p{i}` for `ids`.
    fn import_batch(&self, user: &str, walk: i64, now: i64, ids: std::ops::Range<usize>) {
        let mut state = import_state("owned_games");
        state.started_at = Some(walk);
        let rows: Vec<Value> = ids
            .map(|i| project(&format!("p{i}"), &format!("P{i}")))
            .collect();
        assert!(self.store.claim_import(user, "steam", STEP, now).unwrap());
        self.import_as(user, json!({ "projects": rows }), &state, STEP, now)
            .expect("the lease is held");
    }

    fn import_as(
        &self,
        user: &str,
        rows: Value,
        state: &ImportState,
        lease: Lease<'_>,
        now: i64,
    ) -> Option<WriteSummary> {
        let body = json!({ "upserts": rows }).to_string();
        let request: BulkRequest = serde_json::from_str(&body).unwrap();
        let batch = plan_bulk(&self.schema, &request, user).unwrap();
        self.store
            .write_import(user, &batch, state, lease, now)
            .unwrap()
    }
}

#[test]
fn an_import_lease_is_held_by_one_instance_until_it_expires_or_is_released() {
    let other = Lease {
        owner: "instance-b",
        ttl_ms: 10_000,
    };
    for b in backends() {
        let s = &b.store;
        assert!(s.claim_import("alice", "steam", STEP, NOW).unwrap());
        assert!(
            !s.claim_import("alice", "steam", other, NOW + 1).unwrap(),
            "{}: a live lease is not taken",
            b.url
        );
        assert!(
            s.claim_import("bob", "steam", other, NOW + 1).unwrap(),
            "{}: jobs are per user",
            b.url
        );
        assert!(
            s.claim_import("alice", "steam", STEP, NOW + 5_000).unwrap(),
            "{}: the holder renews",
            b.url
        );
        assert_eq!(
            s.import_lease("alice", "steam", NOW + 5_000).unwrap(),
            Some(LeaseHolder {
                owner: "instance-a".into(),
                until: NOW + 15_000
            })
        );
        assert!(
            !s.claim_import("alice", "steam", other, NOW + 14_999)
                .unwrap()
        );
        // The holder went away: after the lease expires, another instance takes the job.
        assert!(
            s.claim_import("alice", "steam", other, NOW + 15_000)
                .unwrap()
        );
        assert_eq!(
            s.import_lease("alice", "steam", NOW + 24_999)
                .unwrap()
                .unwrap()
                .owner,
            "instance-b"
        );
        assert_eq!(
            s.import_lease("alice", "steam", NOW + 25_000).unwrap(),
            None,
            "{}",
            b.url
        );
        // Releasing by a non-holder does nothing; by the holder frees the job at once.
        s.release_import("alice", "steam", "instance-a").unwrap();
        assert!(
            !s.claim_import("alice", "steam", STEP, NOW + 15_001)
                .unwrap()
        );
        s.release_import("alice", "steam", "instance-b").unwrap();
        assert!(
            s.claim_import("alice", "steam", STEP, NOW + 15_002)
                .unwrap(),
            "{}",
            b.url
        );
    }
}

#[test]
fn an_import_batch_under_a_lost_lease_applies_nothing_and_a_held_one_renews_it() {
    let other = Lease {
        owner: "instance-b",
        ttl_ms: 10_000,
    };
    for b in backends() {
        let mut state = import_state("owned_games");
        state.start(NOW);
        b.store.save_import_state("alice", &state).unwrap();
        assert!(b.store.claim_import("alice", "steam", STEP, NOW).unwrap());
        // A batch renews the lease: at NOW + 15s it is still held, so instance-b cannot take it.
        let mut step = state.clone();
        step.batch_applied(1, None, Some("1".into()), None, NOW + 5_000);
        let rows = json!({"projects": [project("p1", "A")]});
        assert!(
            b.import_as("alice", rows, &step, STEP, NOW + 5_000)
                .is_some()
        );
        assert!(
            !b.store
                .claim_import("alice", "steam", other, NOW + 14_999)
                .unwrap(),
            "{}",
            b.url
        );
        // Instance-a stalls past its lease; instance-b takes the job; instance-a's late batch is refused.
        assert!(
            b.store
                .claim_import("alice", "steam", other, NOW + 15_000)
                .unwrap()
        );
        let mut late = step.clone();
        late.batch_applied(1, None, Some("2".into()), None, NOW + 15_001);
        let rows = json!({"projects": [project("p2", "B")]});
        assert_eq!(
            b.import_as("alice", rows, &late, STEP, NOW + 15_001),
            None,
            "{}",
            b.url
        );
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            ["p1"],
            "{}",
            b.url
        );
        assert_eq!(
            b.store.import_states("alice", None).unwrap(),
            vec![step],
            "{}",
            b.url
        );
    }
}

#[test]
fn an_import_batch_applies_its_rows_and_saves_its_checkpoint_together() {
    for b in backends() {
        let mut state = import_state("owned_games");
        state.start(NOW);
        state.batch_applied(2, Some(4), Some("2".into()), None, NOW);
        let rows = json!({"projects": [project("p1", "A"), project("p2", "B")]});
        let first = b
            .import("alice", rows.clone(), &state)
            .expect("current generation");
        assert_eq!(first.counts["projects"].upserted, 2, "{}", b.url);
        assert_eq!(
            b.store.import_states("alice", None).unwrap(),
            vec![state.clone()]
        );
        // The same rows again change nothing and move nothing.
        let again = b.import("alice", rows, &state).unwrap();
        assert_eq!(again.counts["projects"].unchanged, 2, "{}", b.url);
        assert_eq!(again.sequence, first.sequence, "{}", b.url);
        // One changed row moves only that row.
        let third = b
            .import(
                "alice",
                json!({"projects": [project("p1", "A"), project("p2", "B2")]}),
                &state,
            )
            .unwrap();
        assert_eq!(third.counts["projects"].upserted, 1, "{}", b.url);
        assert_eq!(third.counts["projects"].unchanged, 1, "{}", b.url);
        let pulled = b.pull_since("alice", Some(first.sequence));
        assert_eq!(ids(&pulled, "projects", "updated"), ["p2"], "{}", b.url);
        let b = b.reopen();
        assert_eq!(
            b.store.import_states("alice", Some("steam")).unwrap(),
            vec![state],
            "{}",
            b.url
        );
    }
}

#[test]
fn an_import_batch_of_a_stale_generation_applies_nothing() {
    for b in backends() {
        let mut state = import_state("owned_games");
        state.start(NOW);
        b.store.save_import_state("alice", &state).unwrap();
        let loaded = state.clone();
        state.stopped(NOW + 1);
        b.store.save_import_state("alice", &state).unwrap();
        let mut step = loaded;
        step.batch_applied(1, None, Some("1".into()), None, NOW + 2);
        assert_eq!(
            b.import("alice", json!({"projects": [project("p1", "A")]}), &step),
            None,
            "{}",
            b.url
        );
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            Vec::<String>::new()
        );
        assert_eq!(
            b.store.import_states("alice", None).unwrap(),
            vec![state],
            "{}",
            b.url
        );
    }
}

#[test]
fn import_states_are_per_user_and_active_ones_are_listed_for_the_runner() {
    for b in backends() {
        let mut games = import_state("owned_games");
        games.start(NOW);
        let mut later = import_state("owned_games");
        later.phase = ImportPhase::Incremental;
        let idle = import_state("achievements");
        b.store.save_import_state("alice", &games).unwrap();
        b.store.save_import_state("alice", &later).unwrap();
        b.store.save_import_state("alice", &idle).unwrap();
        b.store.save_import_state("bob", &idle).unwrap();
        let alice = b.store.import_states("alice", None).unwrap();
        let keys: Vec<_> = alice.iter().map(|s| (s.stream.as_str(), s.phase)).collect();
        assert_eq!(
            keys,
            [
                ("achievements", ImportPhase::Initial),
                ("owned_games", ImportPhase::Initial),
                ("owned_games", ImportPhase::Incremental)
            ],
            "{}",
            b.url
        );
        assert_eq!(
            b.store.import_states("bob", Some("spotify")).unwrap(),
            vec![]
        );
        assert_eq!(b.store.import_states("carol", None).unwrap(), vec![]);
        assert_eq!(
            b.store.active_imports().unwrap(),
            vec![("alice".to_string(), games)],
            "{}",
            b.url
        );
    }
}

#[test]
fn connections_are_per_user_and_source() {
    for b in backends() {
        assert_eq!(b.store.get_connection("alice", "steam").unwrap(), None);
        b.store.put_connection("alice", "steam", b"one").unwrap();
        b.store.put_connection("alice", "steam", b"two").unwrap();
        b.store.put_connection("bob", "steam", b"bob").unwrap();
        assert_eq!(
            b.store.get_connection("alice", "steam").unwrap().as_deref(),
            Some(&b"two"[..]),
            "{}",
            b.url
        );
        assert_eq!(b.store.get_connection("alice", "psn").unwrap(), None);
        assert!(b.store.delete_connection("alice", "steam").unwrap());
        assert!(!b.store.delete_connection("alice", "steam").unwrap());
        assert_eq!(
            b.store.get_connection("bob", "steam").unwrap().as_deref(),
            Some(&b"bob"[..])
        );
    }
}

fn pull_by(device: Option<&str>, at_ms: i64, records: u64) -> SyncActivity<'_> {
    SyncActivity {
        kind: SyncKind::Pull,
        at_ms,
        requests: 1,
        device,
        outbox_pending: None,
        records,
        rejected: 0,
        conflicts: 0,
        rejection: None,
    }
}

/// Pulls added up by the server and written many at once, in any order: the totals are the sum of what
/// each entry counts, per user, device and time bucket.
#[test]
fn pulls_added_up_are_counted_many_at_once() {
    for b in backends() {
        let minute = ACTIVITY_BUCKET_MS;
        let t0 = activity_bucket(NOW);
        let added = |device, at_ms, requests, records, outbox_pending| SyncActivity {
            requests,
            outbox_pending,
            ..pull_by(device, at_ms, records)
        };
        let batch = [
            ("bob", added(None, t0 + 3, 2, 4, None)),
            ("alice", added(Some("tablet"), t0 + minute, 1, 7, Some(2))),
            ("alice", added(Some("phone"), t0 + 20, 40, 120, Some(3))),
            ("alice", added(Some("tablet"), t0 + 9, 10, 30, Some(5))),
        ];
        b.store.record_syncs(&batch).unwrap();
        b.store.record_syncs(&[]).unwrap();
        let a = &b.store.user_activity(Some("alice"), 1).unwrap()[0];
        assert_eq!(
            (a.pulls, a.records_pulled, a.pushes, a.last_pull_at),
            (51, 157, 0, Some(t0 + minute)),
            "{}",
            b.url
        );
        let devices: Vec<_> = a
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.last_pull_at, d.outbox_pending))
            .collect();
        assert_eq!(
            devices,
            [
                ("tablet", Some(t0 + minute), Some(2)),
                ("phone", Some(t0 + 20), Some(3))
            ],
            "{}",
            b.url
        );
        let series = |user| {
            b.store
                .activity_series(user, t0)
                .unwrap()
                .iter()
                .map(|s| (s.at, s.pulled))
                .collect::<Vec<_>>()
        };
        assert_eq!(series(Some("alice")), [(t0, 150), (t0 + minute, 7)]);
        assert_eq!(series(None), [(t0, 154), (t0 + minute, 7)], "{}", b.url);
        assert_eq!(b.store.user_activity(Some("bob"), 1).unwrap()[0].pulls, 2);
    }
}

#[test]
fn sync_activity_keeps_last_contacts_counts_and_rejections_per_user_and_device() {
    for b in backends() {
        let minute = ACTIVITY_BUCKET_MS;
        let t0 = activity_bucket(NOW);
        let s = &b.store;
        s.record_sync("alice", &pull_by(Some("phone"), t0 + 10, 5))
            .unwrap();
        let push = SyncActivity {
            kind: SyncKind::Push,
            outbox_pending: Some(7),
            records: 3,
            rejected: 2,
            rejection: Some("2 invalid record(s) in tasks"),
            ..pull_by(Some("phone"), t0 + 20, 0)
        };
        s.record_sync("alice", &push).unwrap();
        // An older report arriving late (another instance, or a pull counted after a later push) moves
        // neither the last contact nor the outbox count back.
        let late = SyncActivity {
            outbox_pending: Some(1),
            ..pull_by(Some("phone"), t0 + 5, 1)
        };
        s.record_sync("alice", &late).unwrap();
        let conflict = SyncActivity {
            kind: SyncKind::Push,
            conflicts: 4,
            rejection: Some("4 record(s) conflicted"),
            ..pull_by(Some("laptop"), t0 + minute + 1, 0)
        };
        s.record_sync("alice", &conflict).unwrap();
        s.record_sync("bob", &pull_by(None, t0 + 30, 9)).unwrap();

        let alice = s.user_activity(Some("alice"), 10).unwrap();
        assert_eq!(alice.len(), 1, "{}", b.url);
        let a = &alice[0];
        assert_eq!(
            (a.last_pull_at, a.last_push_at),
            (Some(t0 + 10), Some(t0 + minute + 1)),
            "{}",
            b.url
        );
        assert_eq!(
            (a.pulls, a.pushes, a.records_pulled, a.records_pushed),
            (2, 2, 6, 3)
        );
        assert_eq!((a.rejected, a.conflicts), (2, 4), "{}", b.url);
        assert_eq!(a.last_rejection.as_deref(), Some("4 record(s) conflicted"));
        assert_eq!(a.last_rejection_at, Some(t0 + minute + 1));
        let devices: Vec<_> = a
            .devices
            .iter()
            .map(|d| {
                (
                    d.device.as_str(),
                    d.last_seen_at,
                    d.last_pull_at,
                    d.last_push_at,
                    d.outbox_pending,
                )
            })
            .collect();
        assert_eq!(
            devices,
            [
                ("laptop", t0 + minute + 1, None, Some(t0 + minute + 1), None),
                ("phone", t0 + 20, Some(t0 + 10), Some(t0 + 20), Some(7)),
            ],
            "{}",
            b.url
        );
        assert!(
            s.user_activity(Some("carol"), 10).unwrap().is_empty(),
            "{}",
            b.url
        );
        let everyone: Vec<_> = s
            .user_activity(None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.user)
            .collect();
        assert_eq!(everyone, ["alice", "bob"], "most recent first: {}", b.url);
        assert_eq!(s.user_activity(None, 1).unwrap().len(), 1);
        // Activity is durable: a restarted server (or another instance) sees the same.
        let b = b.reopen();
        assert_eq!(b.store.user_activity(Some("alice"), 10).unwrap(), alice);
    }
}

#[test]
fn a_counted_push_is_applied_and_counted_in_one_write_and_a_refused_one_counts_nothing() {
    for b in backends() {
        let t0 = activity_bucket(NOW);
        let push = |changes: Value, last_pulled_at: i64| {
            let body = json!({"lastPulledAt": last_pulled_at, "changes": changes}).to_string();
            let request: PushRequest = serde_json::from_str(&body).unwrap();
            let (batch, _) = plan_push(&b.schema, &request, "alice").unwrap();
            let activity = SyncActivity {
                kind: SyncKind::Push,
                records: 99, // replaced by what the write applied
                rejected: 1,
                rejection: Some("1 record(s) rejected as invalid"),
                ..pull_by(Some("phone"), t0 + 7, 0)
            };
            b.store
                .write_counted(
                    "alice",
                    &batch,
                    None,
                    NOW,
                    &|s| s.sequence.to_string(),
                    Some(&activity),
                )
                .unwrap()
        };
        let first = push(
            json!({"projects": {"created": [project("p1", "a"), project("p2", "b")]}}),
            0,
        );
        let at = sequence(&first);
        // p1 changes after the cursor `at - 2`: a push from that cursor conflicts and applies nothing.
        push(json!({"projects": {"updated": [project("p1", "c")]}}), at);
        let refused = push(
            json!({"projects": {"updated": [project("p1", "d")]}}),
            at - 2,
        );
        assert!(
            matches!(refused, WriteOutcome::Conflict { .. }),
            "{}",
            b.url
        );

        let a = &b.store.user_activity(Some("alice"), 1).unwrap()[0];
        assert_eq!(
            (a.pushes, a.records_pushed, a.rejected, a.conflicts),
            (2, 3, 2, 0),
            "{}",
            b.url
        );
        assert_eq!(a.last_push_at, Some(t0 + 7), "{}", b.url);
        assert_eq!(a.devices.len(), 1, "{}", b.url);
        let buckets = b.store.activity_series(Some("alice"), t0).unwrap();
        assert_eq!(
            buckets.iter().map(|x| x.pushed).sum::<u64>(),
            3,
            "{}",
            b.url
        );
        let stats = b.store.user_stats("alice").unwrap();
        assert_eq!(stats.last_push_at, Some(NOW), "{}", b.url);
        assert_eq!(stats.tables["projects"].records, 2, "{}", b.url);
    }
}

#[test]
fn activity_is_counted_in_time_buckets_per_user_and_for_everyone() {
    for b in backends() {
        let minute = ACTIVITY_BUCKET_MS;
        let t0 = activity_bucket(NOW);
        let s = &b.store;
        s.record_sync("alice", &pull_by(None, t0 + 1, 5)).unwrap();
        let push = SyncActivity {
            kind: SyncKind::Push,
            ..pull_by(None, t0 + 2, 3)
        };
        s.record_sync("alice", &push).unwrap();
        s.record_sync("bob", &pull_by(None, t0 + minute, 10))
            .unwrap();
        // An import batch of 5 rows, counted by the store in the batch's own transaction.
        b.import_batch("alice", t0, t0 + minute + 5, 0..5);
        let bucket = |at, pushed, pulled, imported| ActivityBucket {
            at,
            pushed,
            pulled,
            imported,
        };
        assert_eq!(
            s.activity_series(Some("alice"), t0).unwrap(),
            [bucket(t0, 3, 5, 0), bucket(t0 + minute, 0, 0, 5)],
            "{}",
            b.url
        );
        assert_eq!(
            s.activity_series(None, t0).unwrap(),
            [bucket(t0, 3, 5, 0), bucket(t0 + minute, 0, 10, 5)],
            "{}",
            b.url
        );
        assert_eq!(
            s.activity_series(None, t0 + minute + 30).unwrap(),
            [bucket(t0 + minute, 0, 10, 5)],
            "the bucket a time falls in is included"
        );
        assert_eq!(s.prune_activity(t0 + minute).unwrap(), 1, "{}", b.url);
        assert_eq!(s.activity_series(None, 0).unwrap().len(), 1);
    }
}

#[test]
fn import_outcomes_add_up_per_walk_and_start_again_with_a_new_walk() {
    for b in backends() {
        let s = &b.store;
        // Walk 1: ten new rows, then five of them again (unchanged) and five new ones.
        b.import_batch("alice", NOW, NOW + 100, 0..10);
        b.import_batch("alice", NOW, NOW + 100, 5..15);
        let imports = &s.user_activity(Some("alice"), 1).unwrap()[0].imports;
        assert_eq!(imports.len(), 1, "{}", b.url);
        assert_eq!(
            (
                imports[0].batches,
                imports[0].upserted,
                imports[0].unchanged
            ),
            (2, 15, 5),
            "{}",
            b.url
        );
        // Walk 2 starts its counts again: fifteen rows, none changed.
        b.import_batch("alice", NOW + 1000, NOW + 1100, 0..15);
        let imports = &s.user_activity(Some("alice"), 1).unwrap()[0].imports;
        assert_eq!(
            (
                imports[0].walk_started_at,
                imports[0].batches,
                imports[0].upserted,
                imports[0].unchanged
            ),
            (NOW + 1000, 1, 0, 15),
            "{}",
            b.url
        );
        assert_eq!(imports[0].last_batch_at, NOW + 1100);
    }
}

#[test]
fn every_users_import_states_are_listed_for_the_admin() {
    for b in backends() {
        let mut games = import_state("owned_games");
        games.start(NOW);
        games.failed("auth_expired", "the API answered 401", NOW + 1);
        let idle = import_state("achievements");
        b.store.save_import_state("bob", &games).unwrap();
        b.store.save_import_state("alice", &idle).unwrap();
        assert_eq!(
            b.store.all_import_states().unwrap(),
            vec![("alice".to_string(), idle), ("bob".to_string(), games)],
            "{}",
            b.url
        );
        // A user with imports but no sync yet still shows up in the activity overview.
        let users: Vec<_> = b
            .store
            .user_activity(None, 10)
            .unwrap()
            .into_iter()
            .map(|a| a.user)
            .collect();
        assert_eq!(users, ["alice", "bob"], "{}", b.url);
    }
}

/// After a restore from an older backup, a device can hold a cursor above its user's counter. It gets a
/// replacement (everything the server still has), and every later change gets a sequence above the cursor,
/// so a device that still holds it misses nothing.
#[test]
fn a_cursor_from_the_future_gets_a_replacement_and_later_changes_land_above_it() {
    for b in backends() {
        let t = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let future = t + 1_000;
        let pull = b.pull_since("alice", Some(future));
        assert_eq!(pull["experimentalStrategy"], "replacement", "{}", b.url);
        assert_eq!(ids(&pull, "projects", "updated"), ["p1"]);
        // The counter was moved up to the device's cursor before the answer: its timestamp never goes back
        // below the device's cursor (WatermelonDB logs that as a server bug, src/sync/impl/index.js).
        assert_eq!(pull["timestamp"].as_i64().unwrap(), future, "{}", b.url);
        // The counter moved past that cursor; a paged pull from further ahead is answered the same way.
        let paged = b.pull("alice", json!({"lastPulledAt": future + 1, "limit": 10}));
        assert_eq!(paged["experimentalStrategy"], "replacement");
        let t2 = sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p2", "B")], "updated": [], "deleted": []}}),
        ));
        assert!(t2 > future, "{}: {t2} is not above {future}", b.url);
        let later = b.pull_since("alice", Some(future));
        assert!(later.get("experimentalStrategy").is_none());
        assert_eq!(ids(&later, "projects", "updated"), ["p2"]);
        // A user who never wrote and holds a cursor from the future is answered the same way.
        let nobody = b.pull_since("carol", Some(t2 + 5_000));
        assert_eq!(nobody["experimentalStrategy"], "replacement");
        assert!(nobody["timestamp"].as_i64().unwrap() >= t2 + 5_000);
        // A paged pull from ahead is one whole answer too, at or above its cursor.
        let paged_ahead = b.pull("dave", json!({"lastPulledAt": 777_777, "limit": 1}));
        assert_eq!(
            (
                &paged_ahead["experimentalStrategy"],
                &paged_ahead["hasMore"]
            ),
            (&json!("replacement"), &json!(false))
        );
        assert!(paged_ahead["timestamp"].as_i64().unwrap() >= 777_777);
    }
}

/// Several users write at once from several store handles: each user's pullers, following only their
/// timestamps, see every change of their own user and nothing of the others'.
#[test]
fn concurrent_writers_of_many_users_each_keep_their_users_order() {
    for b in backends() {
        let users = ["u0", "u1", "u2", "u3"];
        let handles: Vec<Backend> = (0..4).map(|_| Backend::open(&b.url, None)).collect();
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let pullers: Vec<_> = users
                .iter()
                .map(|&user| {
                    let (h, done) = (&handles[0], &done);
                    scope.spawn(move || {
                        let mut seen = std::collections::HashSet::new();
                        let mut cursor: Option<i64> = None;
                        loop {
                            let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                            let page = h.pull(user, json!({"lastPulledAt": cursor, "limit": 4}));
                            seen.extend(ids(&page, "projects", "updated"));
                            cursor = Some(page["timestamp"].as_i64().unwrap());
                            if finished && !page["hasMore"].as_bool().unwrap() {
                                return seen;
                            }
                        }
                    })
                })
                .collect();
            let writers: Vec<_> = users
                .iter()
                .enumerate()
                .map(|(w, &user)| {
                    let h = &handles[w];
                    scope.spawn(move || {
                        let mut last = 0;
                        for i in 0..20 {
                            let id = format!("{user}-{i}");
                            let t = sequence(&h.push(user, 0, json!({"projects": {"created": [project(&id, "x")], "updated": [], "deleted": []}})));
                            assert!(t > last, "a user's sequence only grows");
                            last = t;
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            for (user, p) in users.iter().zip(pullers) {
                let seen = p.join().unwrap();
                let expected: std::collections::HashSet<String> =
                    (0..20).map(|i| format!("{user}-{i}")).collect();
                assert_eq!(seen, expected, "{}: {user}'s puller", b.url);
            }
        });
    }
}

/// On PostgreSQL a counted push moves its user's counter and counts itself in one statement, whose row locks
/// come in no fixed order; pulls of the same user counted at the same time on two instances must neither
/// deadlock with it nor lose a count.
#[test]
fn on_postgres_counted_pushes_and_pulls_of_one_user_on_two_instances_count_exactly() {
    let url = syncline_testkit::TempPostgres::shared().fresh_database();
    let instances = [Backend::open(&url, None), Backend::open(&url, None)];
    const ROUNDS: usize = 30;
    let t0 = activity_bucket(NOW);
    std::thread::scope(|scope| {
        for (i, b) in instances.iter().enumerate() {
            let device = ["phone", "laptop"][i];
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let id = format!("{device}-{round}");
                    let body = json!({"lastPulledAt": 0, "changes": {"projects": {"created": [project(&id, "x")]}}})
                        .to_string();
                    let request: PushRequest = serde_json::from_str(&body).unwrap();
                    let (batch, _) = plan_push(&b.schema, &request, "alice").unwrap();
                    let activity = SyncActivity {
                        kind: SyncKind::Push,
                        ..pull_by(Some(device), t0 + round as i64, 0)
                    };
                    let outcome = b
                        .store
                        .write_counted("alice", &batch, None, NOW, &|s| s.sequence.to_string(), Some(&activity))
                        .unwrap();
                    assert!(matches!(outcome, WriteOutcome::Applied { .. }));
                }
            });
            for puller in 0..2 {
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        b.store
                            .record_sync(
                                "alice",
                                &pull_by(Some(device), t0 + round as i64, puller + 1),
                            )
                            .unwrap();
                    }
                });
            }
        }
    });
    let a = &instances[0].store.user_activity(Some("alice"), 1).unwrap()[0];
    let rounds = ROUNDS as u64;
    assert_eq!(
        (a.pushes, a.records_pushed, a.pulls, a.records_pulled),
        (2 * rounds, 2 * rounds, 4 * rounds, 2 * rounds * (1 + 2)),
    );
    assert_eq!(a.devices.len(), 2);
    let buckets = instances[1]
        .store
        .activity_series(Some("alice"), t0)
        .unwrap();
    assert_eq!(buckets.iter().map(|x| x.pushed).sum::<u64>(), 2 * rounds);
    assert_eq!(buckets.iter().map(|x| x.pulled).sum::<u64>(), 6 * rounds);
    assert_eq!(
        instances[1].store.user_stats("alice").unwrap().tables["projects"].records,
        2 * rounds
    );
}

/// On PostgreSQL a write locks only its user's counter: while another session holds alice's row locked (as
/// a long write of alice would), bob's writes go through, and alice's wait for the lock.
#[test]
fn on_postgres_a_write_waits_only_for_writes_of_its_own_user() {
    let url = syncline_testkit::TempPostgres::shared().fresh_database();
    let b = Backend::open(&url, None);
    for user in ["alice", "bob"] {
        sequence(&b.push(
            user,
            0,
            json!({"projects": {"created": [project("p0", "A")], "updated": [], "deleted": []}}),
        ));
    }
    let mut holder = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let mut lock = holder.transaction().unwrap();
    lock.execute(
        "SELECT 1 FROM syncline_sequences s JOIN syncline_users u ON u.uid = s.uid
         WHERE u.name = 'alice' FOR UPDATE OF s",
        &[],
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        for user in ["alice", "bob"] {
            let (b, tx) = (&b, tx.clone());
            scope.spawn(move || {
                b.push(
                    user,
                    0,
                    json!({"projects": {"created": [project("p1", "B")], "updated": [], "deleted": []}}),
                );
                tx.send(user).unwrap();
            });
        }
        let first = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("bob's write is not held up by alice's lock");
        assert_eq!(first, "bob");
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(500))
                .is_err(),
            "alice's write waits for her lock"
        );
        lock.rollback().unwrap();
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
            "alice"
        );
    });
}

/// A database created by Syncline 0.1 (one global counter) migrates in place: every user's counter starts at
/// the old global value, so a device holding any cursor the old server answered misses no later change.
#[test]
fn a_postgres_database_of_the_global_counter_layout_migrates_without_missing_a_change() {
    let url = syncline_testkit::TempPostgres::shared().fresh_database();
    let mut old = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    // The layout and rows as Syncline 0.1 left them: alice wrote at 40, bob at 41 and 42.
    old.batch_execute(include_str!("../migrations/postgres/0001_initial.sql"))
        .unwrap();
    old.batch_execute(
        r#"
        UPDATE syncline_meta SET value = 42 WHERE key = 'seq';
        INSERT INTO syncline_tables (tid, name) VALUES (1, 'projects');
        INSERT INTO syncline_users (uid, name, last_push_at) VALUES (1, 'alice', 1), (2, 'bob', NULL);
        INSERT INTO syncline_records (uid, tid, id, seq, deleted_at, data) VALUES
            (1, 1, 'a1', 40, NULL, '{"id":"a1","name":"A","user_id":""}'),
            (2, 1, 'b1', 41, NULL, '{"id":"b1","name":"B","user_id":""}'),
            (2, 1, 'b2', 42, NULL, '{"id":"b2","name":"C","user_id":""}');
        SELECT setval('syncline_users_uid_seq', 2), setval('syncline_tables_tid_seq', 1);
        "#,
    )
    .unwrap();
    drop(old);
    let b = Backend::open(&url, None);
    assert_eq!(b.store.user_stats("alice").unwrap().last_push_at, Some(1));
    assert_eq!(b.store.user_stats("bob").unwrap().sequence, 42);
    // Every cursor the old server could have answered is at most 42: all stay incremental.
    for user in ["alice", "bob"] {
        let pull = b.pull_since(user, Some(42));
        assert!(pull.get("experimentalStrategy").is_none(), "{user}");
        assert!(ids(&pull, "projects", "updated").is_empty());
        assert!(pull["timestamp"].as_i64().unwrap() >= 42);
    }
    assert_eq!(
        ids(&b.pull_since("alice", Some(39)), "projects", "updated"),
        ["a1"]
    );
    assert_eq!(
        ids(&b.pull_since("bob", Some(40)), "projects", "updated"),
        ["b1", "b2"]
    );
    // Later changes of every user, and of a user new since the migration, land above every old cursor.
    for user in ["alice", "bob", "carol"] {
        let t = sequence(&b.push(
            user,
            0,
            json!({"projects": {"created": [project("n1", "N")], "updated": [], "deleted": []}}),
        ));
        assert!(t > 42, "{user}: {t}");
        assert_eq!(
            ids(&b.pull_since(user, Some(42)), "projects", "updated"),
            ["n1"]
        );
    }
    // The migration is recorded and not applied again: the counters keep their values over a restart.
    let before = b.store.user_stats("alice").unwrap().sequence;
    let b = b.reopen();
    assert_eq!(b.store.user_stats("alice").unwrap().sequence, before);
    let mut check = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = check
        .query(
            "SELECT version FROM syncline_migrations ORDER BY version",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, [1, 2]);
}

/// The SQLite schema as the store created it before migrations were recorded (`SETUP` and `ACTIVITY_SETUP`,
/// run on every start): the same statements as migrations 1 and 2, which are never edited once released.
const SQLITE_UNRECORDED_LAYOUT: &str = concat!(
    include_str!("../migrations/sqlite/0001_initial.sql"),
    include_str!("../migrations/sqlite/0002_activity.sql")
);

#[test]
fn a_sqlite_database_made_before_migrations_were_recorded_opens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let state = import_state("owned_games");
    let old = rusqlite::Connection::open(&path).unwrap();
    old.execute_batch(SQLITE_UNRECORDED_LAYOUT).unwrap();
    // What the old store left: alice created a1 and a2 and deleted a2; an import, a credential, a pull.
    old.execute_batch(
        r#"
        UPDATE meta SET value = 3 WHERE key = 'seq';
        INSERT INTO users (uid, name, tombstone_horizon, last_push_at) VALUES (1, 'alice', 0, 7);
        INSERT INTO sync_tables (tid, name) VALUES (1, 'projects');
        INSERT INTO records (seq, uid, tid, id, deleted_at, data) VALUES
            (2, 1, 1, 'a1', NULL, '{"id":"a1","name":"A","user_id":""}'),
            (3, 1, 1, 'a2', 7, NULL);
        INSERT INTO connections (uid, source, sealed) VALUES (1, 'steam', x'0102');
        INSERT INTO activity_users (uid, last_pull_at, last_push_at, pulls, pushes, records_pulled,
            records_pushed, rejected, conflicts) VALUES (1, 5, 7, 1, 2, 1, 3, 0, 0);
        "#,
    )
    .unwrap();
    old.execute(
        "INSERT INTO import_states (uid, source, stream, phase, status, generation, state)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)",
        rusqlite::params![
            state.source,
            state.stream,
            state.phase.as_str(),
            state.status.as_str(),
            state.generation,
            serde_json::to_string(&state).unwrap()
        ],
    )
    .unwrap();
    drop(old);

    let b = Backend::open(&format!("sqlite://{}", path.display()), Some(dir));
    let stats = b.store.user_stats("alice").unwrap();
    assert_eq!((stats.sequence, stats.last_push_at), (3, Some(7)));
    assert_eq!(
        (
            stats.tables["projects"].records,
            stats.tables["projects"].tombstones
        ),
        (1, 1)
    );
    assert_eq!(
        ids(&b.pull_since("alice", None), "projects", "updated"),
        ["a1"]
    );
    assert_eq!(
        ids(&b.pull_since("alice", Some(2)), "projects", "deleted"),
        ["a2"]
    );
    assert_eq!(b.store.import_states("alice", None).unwrap(), [state]);
    assert_eq!(
        b.store.get_connection("alice", "steam").unwrap().as_deref(),
        Some(&[1u8, 2][..])
    );
    let activity = b.store.user_activity(Some("alice"), 1).unwrap();
    assert_eq!((activity[0].pulls, activity[0].pushes), (1, 2));
    // It takes writes after the old ones, and keeps them over a restart without applying a migration twice.
    let t = sequence(&b.push(
        "alice",
        3,
        json!({"projects": {"created": [project("a3", "C")], "updated": [], "deleted": []}}),
    ));
    assert_eq!(t, 4);
    let b = b.reopen();
    assert_eq!(
        ids(&b.pull_since("alice", Some(3)), "projects", "updated"),
        ["a3"]
    );
    let check = rusqlite::Connection::open(&path).unwrap();
    let versions: Vec<i64> = check
        .prepare("SELECT version FROM syncline_migrations ORDER BY version")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(versions, [1, 2]);
}

/// A pull sink that stops at its first chunk until `go` is dropped or sent to: the pull keeps its database
/// connection and snapshot meanwhile, as a client that stops reading would.
struct StalledSink {
    stalled: std::sync::mpsc::Sender<()>,
    go: std::sync::mpsc::Receiver<()>,
}

impl PullSink for StalledSink {
    fn write(&mut self, _chunk: Vec<u8>) -> Result<(), StoreError> {
        let _ = self.stalled.send(());
        let _ = self.go.recv();
        Ok(())
    }
}

/// When every connection stays busy (PostgreSQL: every pooled connection held by a stalled pull; SQLite:
/// the write lock held by another process), a write waits the acquire timeout, then fails with `Busy`,
/// applying nothing; once the connections free up, writes go through again.
#[test]
fn a_store_out_of_connections_answers_busy_after_the_acquire_timeout_then_recovers() {
    let timeout = std::time::Duration::from_millis(400);
    let options = StoreOptions {
        max_connections: 2,
        acquire_timeout: timeout,
        ..StoreOptions::default()
    };
    for plain in backends() {
        let b = Backend::open_with(&plain.url, None, &options);
        sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p1", "A")], "updated": [], "deleted": []}}),
        ));
        let sqlite_path = plain.url.strip_prefix("sqlite://").map(str::to_string);
        let (stalled_tx, stalled) = std::sync::mpsc::channel();
        let mut releases = Vec::new();
        std::thread::scope(|scope| {
            let mut lock = None;
            match &sqlite_path {
                Some(path) => {
                    let conn = rusqlite::Connection::open(path).unwrap();
                    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
                    lock = Some(conn);
                }
                None => {
                    for _ in 0..2 {
                        let (go_tx, go) = std::sync::mpsc::channel();
                        releases.push(go_tx);
                        let stalled_tx = stalled_tx.clone();
                        let store = &b.store;
                        scope.spawn(move || {
                            let request: PullRequest = serde_json::from_value(json!({})).unwrap();
                            let mut sink = StalledSink {
                                stalled: stalled_tx,
                                go,
                            };
                            store.pull("alice", &request, &mut sink).unwrap();
                        });
                        stalled
                            .recv_timeout(std::time::Duration::from_secs(10))
                            .expect("the pull started");
                    }
                }
            }
            let started = std::time::Instant::now();
            let body = json!({"lastPulledAt": 0, "changes": {"projects": {"created": [project("p2", "B")], "updated": [], "deleted": []}}}).to_string();
            let request: PushRequest = serde_json::from_str(&body).unwrap();
            let (batch, _) = plan_push(&b.schema, &request, "alice").unwrap();
            let busy = b
                .store
                .write("alice", &batch, None, NOW, &|s| s.sequence.to_string());
            let waited = started.elapsed();
            assert!(
                matches!(busy, Err(StoreError::Busy)),
                "{}: {busy:?}",
                plain.url
            );
            assert!(
                waited >= timeout - std::time::Duration::from_millis(50)
                    && waited < std::time::Duration::from_secs(5),
                "{}: waited {waited:?}",
                plain.url
            );
            drop(lock);
            releases.clear();
        });
        // Nothing of the refused write was applied; the same write now goes through.
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            ["p1"]
        );
        sequence(&b.push(
            "alice",
            0,
            json!({"projects": {"created": [project("p2", "B")], "updated": [], "deleted": []}}),
        ));
        assert_eq!(
            ids(&b.pull_since("alice", None), "projects", "updated"),
            ["p1", "p2"]
        );
    }
}
