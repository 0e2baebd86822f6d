//! PostgreSQL pulls: the read snapshot (one REPEATABLE READ, read-only transaction) and the log reads the
//! shared pull driver (`crate::pull`) asks for; row reads stream through portals, a few thousand rows per
//! round trip.

use super::*;
use crate::pull::{Dialect, EachId, EachRow, LiveRead, PullSource, PullTx, PullUser, Range};

impl PullSource for PostgresStore {
    fn snapshot(
        &self,
        read: &mut dyn FnMut(&mut dyn PullTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let mut tx = pooled
            .get()
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        read(&mut Snapshot { tx: &mut tx })?;
        tx.commit()?;
        Ok(())
    }

    fn raise_counter(&self, user: &str, cursor: i64) -> Result<(), StoreError> {
        let mut pooled = self.client()?;
        let client = pooled.get();
        client.execute(INSERT_USER, &[&user])?;
        client.execute(
            "INSERT INTO syncline_sequences AS s (uid, seq)
             SELECT uid, $2 FROM syncline_users WHERE name = $1
             ON CONFLICT (uid) DO UPDATE SET seq = greatest(s.seq, excluded.seq)",
            &[&user, &cursor],
        )?;
        Ok(())
    }
}

const SQL: Dialect = Dialect {
    records: "syncline_records",
    param: '$',
};

/// A pull's read transaction.
struct Snapshot<'t, 'c> {
    tx: &'t mut Transaction<'c>,
}

impl Snapshot<'_, '_> {
    /// Streams the first column of `sql`'s rows, as text, into `each`.
    fn stream(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        mut each: impl FnMut(&postgres::Row) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let portal = self.tx.bind(sql, params)?;
        loop {
            let rows = self.tx.query_portal(&portal, FETCH_ROWS)?;
            for row in &rows {
                each(row)?;
            }
            if rows.len() < FETCH_ROWS as usize {
                return Ok(());
            }
        }
    }
}

impl PullTx for Snapshot<'_, '_> {
    fn user(&mut self, name: &str) -> Result<PullUser, StoreError> {
        // The first statement fixes the snapshot: the counter and every row read after it come from the same
        // one.
        let (uid, horizon, counter) = user_counter(self.tx, name)?;
        Ok(PullUser {
            uid,
            horizon,
            counter,
        })
    }

    fn log_seqs(
        &mut self,
        r: Range,
        live_only: bool,
        n: usize,
        seqs: &mut Vec<i64>,
    ) -> Result<(), StoreError> {
        let tid = r.tid as i32;
        let rows = self.tx.query(
            &SQL.log_seqs(live_only),
            &[&r.uid, &tid, &r.since, &r.upto, &(n as i64)],
        )?;
        seqs.extend(rows.iter().map(|row| row.get::<_, i64>(0)));
        Ok(())
    }

    fn live_rows(&mut self, read: &LiveRead<'_>, each: EachRow<'_>) -> Result<(), StoreError> {
        let r = read.range;
        let sql = SQL.live_rows(read, |col| {
            format!(
                "coalesce(data::jsonb -> '{col}', 'null') NOT IN ('null', '0', '\"\"', 'false')"
            )
        });
        let (tid, limit) = (r.tid as i32, read.limit.map(|n| n as i64));
        self.stream(&sql, &[&r.uid, &tid, &r.since, &r.upto, &limit], |row| {
            each(row.get(1), row.get(0))
        })
    }

    fn tombstones(&mut self, r: Range, each: EachId<'_>) -> Result<(), StoreError> {
        let tid = r.tid as i32;
        self.stream(
            &SQL.tombstones(),
            &[&r.uid, &tid, &r.since, &r.upto],
            |row| each(row.get(0)),
        )
    }
}
