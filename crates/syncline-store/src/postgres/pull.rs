//! PostgreSQL pulls: the per-table log reads of unpaged (streamed through portals) and paged pulls.

use super::*;

impl PostgresStore {
    pub(super) fn pull_changes(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        // The first statement fixes the snapshot: the counter and every row below come from the same one.
        let (uid, horizon, snapshot) = user_counter(&mut tx, user)?;
        let plan = PullPlan::new(request, horizon, snapshot);
        let tables: Vec<&Table> = self
            .schema
            .tables()
            .filter(|t| t.visible_at(request.schema_version))
            .collect();
        let mut out = Output::new(sink, plan.replacement);
        match plan.limit {
            Some(limit) => {
                let sql = if plan.first {
                    "SELECT seq, id, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 AND deleted_at IS NULL ORDER BY seq LIMIT $4"
                } else {
                    "SELECT seq, id, data FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 ORDER BY seq LIMIT $4"
                };
                let mut cursors: Vec<Box<dyn Iterator<Item = Result<LogRow, StoreError>>>> =
                    Vec::new();
                for table in &tables {
                    let tid = self.tid(&table.name) as i32;
                    let rows = tx.query(sql, &[&uid, &tid, &plan.since, &((limit + 1) as i64)])?;
                    let rows: Vec<LogRow> = rows
                        .iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2)))
                        .collect();
                    cursors.push(Box::new(rows.into_iter().map(Ok)));
                }
                let has_more = write_page(&tables, cursors, limit, &mut out)?;
                out.writer.finish(
                    has_more.unwrap_or(snapshot),
                    Some(has_more.is_some()),
                    false,
                );
            }
            None => {
                for table in &tables {
                    self.pull_table(&mut tx, uid, table, plan, request, &mut out)?;
                }
                out.writer
                    .finish(snapshot, request.limit.map(|_| false), plan.replacement);
            }
        }
        out.flush(true)?;
        tx.commit()?;
        if plan.ahead {
            // A cursor from the future (the database was restored from a backup older than the cursor):
            // the device got a replacement; now move the counter past the cursor, so that no later change
            // gets a sequence at or below a cursor some device still holds.
            let cursor = request.last_pulled_at.unwrap_or(0);
            let client = pooled.get();
            client.execute(INSERT_USER, &[&user])?;
            client.execute(
                "INSERT INTO syncline_sequences AS s (uid, seq)
                 SELECT uid, $2 FROM syncline_users WHERE name = $1
                 ON CONFLICT (uid) DO UPDATE SET seq = greatest(s.seq, excluded.seq)",
                &[&user, &cursor],
            )?;
        }
        Ok(out.stats)
    }
}

impl PostgresStore {
    /// Streams one table of an unpaged pull through a portal, a few thousand rows per round trip.
    fn pull_table(
        &self,
        tx: &mut Transaction<'_>,
        uid: i64,
        table: &Table,
        plan: PullPlan,
        request: &PullRequest,
        out: &mut Output<'_>,
    ) -> Result<(), StoreError> {
        let tid = self.tid(&table.name) as i32;
        let filter = live_rows_filter(table, request, "seq > $3", |col| {
            format!(
                "coalesce(data::jsonb -> '{col}', 'null') NOT IN ('null', '0', '\"\"', 'false')"
            )
        });
        out.writer.begin_table(&table.name);
        let live = format!(
            "SELECT data FROM syncline_records WHERE uid = $1 AND tid = $2 AND deleted_at IS NULL AND ({filter}) ORDER BY seq"
        );
        let portal = tx.bind(live.as_str(), &[&uid, &tid, &plan.since])?;
        loop {
            let rows = tx.query_portal(&portal, FETCH_ROWS)?;
            for row in &rows {
                out.record(row.get::<_, &str>(0))?;
            }
            if rows.len() < FETCH_ROWS as usize {
                break;
            }
        }
        out.writer.begin_deleted();
        if !plan.first {
            let portal = tx.bind(
                "SELECT id FROM syncline_records WHERE uid = $1 AND tid = $2 AND seq > $3 AND deleted_at IS NOT NULL ORDER BY seq",
                &[&uid, &tid, &plan.since],
            )?;
            loop {
                let rows = tx.query_portal(&portal, FETCH_ROWS)?;
                for row in &rows {
                    out.deleted(row.get::<_, &str>(0))?;
                }
                if rows.len() < FETCH_ROWS as usize {
                    break;
                }
            }
        }
        out.writer.end_table();
        Ok(())
    }
}
