//! SQLite pulls: the snapshot a pull reads in, and the per-table log reads of unpaged and paged pulls.

use super::*;

impl SqliteStore {
    pub(super) fn pull_changes(
        &self,
        user: &str,
        request: &PullRequest,
        sink: &mut dyn PullSink,
    ) -> Result<PullStats, StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_mut().expect("present until drop");
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        // The first read fixes the snapshot: the sequence and every row below come from the same one.
        let snapshot: i64 =
            tx.query_row("SELECT value FROM meta WHERE key = 'seq'", [], |r| r.get(0))?;
        let user_row: Option<(i64, i64)> = tx
            .prepare_cached("SELECT uid, tombstone_horizon FROM users WHERE name = ?1")?
            .query_row([user], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (uid, horizon) = user_row.unwrap_or((-1, 0));
        let plan = PullPlan::new(request, horizon, snapshot);
        let tables: Vec<&Table> = self
            .schema
            .tables()
            .filter(|t| t.visible_at(request.schema_version))
            .collect();
        let mut out = Output::new(sink, plan.replacement);
        match plan.limit {
            Some(limit) => {
                let has_more = self.pull_page(&tx, uid, &tables, plan, limit, &mut out)?;
                out.writer.finish(
                    has_more.unwrap_or(snapshot),
                    Some(has_more.is_some()),
                    false,
                );
            }
            None => {
                for table in &tables {
                    self.pull_table(&tx, uid, table, plan, request, &mut out)?;
                }
                out.writer
                    .finish(snapshot, request.limit.map(|_| false), plan.replacement);
            }
        }
        out.flush(true)?;
        drop(tx);
        drop(guard);
        if plan.ahead {
            // A cursor from the future (the database was restored from a backup older than the cursor):
            // the device got a replacement; now move the counter past the cursor, so that no later change
            // gets a sequence at or below a cursor some device still holds.
            let cursor = request.last_pulled_at.unwrap_or(0);
            let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            conn.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'seq'",
                [cursor],
            )?;
        }
        Ok(out.stats)
    }
}

impl SqliteStore {
    /// Writes one table of an unpaged pull: live changes since the plan's cursor (plus what a migration asks
    /// for), then tombstones since the cursor (none on a first pull).
    fn pull_table(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        table: &Table,
        plan: PullPlan,
        request: &PullRequest,
        out: &mut Output<'_>,
    ) -> Result<(), StoreError> {
        let tid = self.tid(&table.name);
        let filter = live_rows_filter(table, request, "seq > ?3", |col| {
            format!("ifnull(json_extract(data, '$.{col}'), 0) NOT IN (0, '')")
        });
        out.writer.begin_table(&table.name);
        let sql = format!(
            "SELECT data FROM records WHERE uid = ?1 AND tid = ?2 AND deleted_at IS NULL AND ({filter}) ORDER BY seq"
        );
        let mut stmt = tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![uid, tid, plan.since])?;
        while let Some(row) = rows.next()? {
            out.record(text(row)?)?;
        }
        out.writer.begin_deleted();
        if !plan.first {
            let mut stmt = tx.prepare_cached(
                "SELECT id FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 AND deleted_at IS NOT NULL ORDER BY seq",
            )?;
            let mut rows = stmt.query(params![uid, tid, plan.since])?;
            while let Some(row) = rows.next()? {
                out.deleted(text(row)?)?;
            }
        }
        out.writer.end_table();
        Ok(())
    }

    /// Writes one page of a paged pull from one log cursor per table.
    fn pull_page(
        &self,
        tx: &Transaction<'_>,
        uid: i64,
        tables: &[&Table],
        plan: PullPlan,
        limit: usize,
        out: &mut Output<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let sql = if plan.first {
            "SELECT seq, id, data FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 AND deleted_at IS NULL ORDER BY seq LIMIT ?4"
        } else {
            "SELECT seq, id, data FROM records WHERE uid = ?1 AND tid = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4"
        };
        let mut stmts = Vec::with_capacity(tables.len());
        for _ in tables {
            stmts.push(tx.prepare(sql)?);
        }
        let mut cursors: Vec<Box<dyn Iterator<Item = Result<LogRow, StoreError>> + '_>> =
            Vec::new();
        for (stmt, table) in stmts.iter_mut().zip(tables) {
            let rows = stmt.query_map(
                params![uid, self.tid(&table.name), plan.since, (limit + 1) as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            cursors.push(Box::new(rows.map(|r| r.map_err(StoreError::from))));
        }
        write_page(tables, cursors, limit, out)
    }
}
