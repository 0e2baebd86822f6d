//! SQLite pulls: the read snapshot (one WAL read transaction on a pooled reader connection) and the log reads
//! the shared pull driver (`crate::pull`) asks for, each one statement over `records_log`.

use super::*;
use crate::pull::{Dialect, EachId, EachRow, LiveRead, PullSource, PullTx, PullUser, Range};

impl PullSource for SqliteStore {
    fn snapshot(
        &self,
        read: &mut dyn FnMut(&mut dyn PullTx) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut guard = self.reader()?;
        let conn = guard.conn.as_ref().expect("present until drop");
        // A read transaction from cached statements (a small pull would otherwise spend a good part of its
        // time compiling BEGIN and ROLLBACK).
        conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
        let result = read(&mut Snapshot { tx: conn });
        let ended = conn
            .prepare_cached("ROLLBACK")
            .and_then(|mut end| end.execute([]));
        if !conn.is_autocommit() {
            // Still in the transaction: never hand this connection to another pull.
            guard.conn = None;
        }
        result?;
        ended?;
        Ok(())
    }

    fn raise_counter(&self, _user: &str, cursor: i64) -> Result<(), StoreError> {
        // One counter for every user (see the module docs).
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "UPDATE meta SET value = max(value, ?1) WHERE key = 'seq'",
            [cursor],
        )?;
        Ok(())
    }
}

const SQL: Dialect = Dialect {
    records: "records",
    param: '?',
};

/// A pull's read transaction (begun and ended by `snapshot`) on a reader connection.
struct Snapshot<'t> {
    tx: &'t Connection,
}

/// `LIMIT` for "no limit".
fn limit(n: Option<usize>) -> i64 {
    n.map_or(-1, |n| n as i64)
}

impl PullTx for Snapshot<'_> {
    fn user(&mut self, name: &str) -> Result<PullUser, StoreError> {
        // The first read fixes the snapshot: the sequence and every row read after it come from the same one.
        // One statement for the counter and the user (who may have no row yet).
        let (counter, uid, horizon): (i64, Option<i64>, Option<i64>) = self
            .tx
            .prepare_cached(
                "SELECT m.value, u.uid, u.tombstone_horizon FROM meta m
                 LEFT JOIN users u ON u.name = ?1 WHERE m.key = 'seq'",
            )?
            .query_row([name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(PullUser {
            uid: uid.unwrap_or(-1),
            horizon: horizon.unwrap_or(0),
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
        let mut stmt = self.tx.prepare_cached(&SQL.log_seqs(live_only))?;
        let mut rows = stmt.query(params![r.uid, r.tid, r.since, r.upto, limit(Some(n))])?;
        while let Some(row) = rows.next()? {
            seqs.push(row.get(0)?);
        }
        Ok(())
    }

    fn live_rows(&mut self, read: &LiveRead<'_>, each: EachRow<'_>) -> Result<(), StoreError> {
        let r = read.range;
        let sql = SQL.live_rows(read, |col| {
            format!("ifnull(json_extract(data, '$.{col}'), 0) NOT IN (0, '')")
        });
        let mut stmt = self.tx.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![r.uid, r.tid, r.since, r.upto, limit(read.limit)])?;
        while let Some(row) = rows.next()? {
            each(row.get(1)?, text(row)?)?;
        }
        Ok(())
    }

    fn tombstones(&mut self, r: Range, each: EachId<'_>) -> Result<(), StoreError> {
        let mut stmt = self.tx.prepare_cached(&SQL.tombstones())?;
        let mut rows = stmt.query(params![r.uid, r.tid, r.since, r.upto])?;
        while let Some(row) = rows.next()? {
            each(text(row)?)?;
        }
        Ok(())
    }
}
