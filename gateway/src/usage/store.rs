//! The usage database: SQLite (WAL, one file) or PostgreSQL, through sqlx's
//! `Any` driver, so every query is written once. Queries are plain strings
//! checked by the tests against both databases (no compile-time macros);
//! they are written with `?` and numbered `$n` for PostgreSQL.
//! Only the recorder actor and the report handlers hold a `Store`.

use super::report::{Bucket, Filter};
use super::UsageRecord;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

pub const DAY_MS: i64 = 86_400_000;

/// Rows per INSERT statement (12 values each: well under both databases' limits).
const INSERT_CHUNK: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// One gateway's own file.
    Sqlite,
    /// Shared by every gateway that names it.
    Postgres,
}

/// Where the store is: what to (re)open.
#[derive(Debug, Clone)]
pub enum Location {
    /// `[usage] database_url` (never logged: it may hold a password).
    Url { url: String, node: String },
    SqliteFile {
        path: std::path::PathBuf,
        node: String,
    },
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url { .. } => f.write_str("[usage] database_url"),
            Self::SqliteFile { path, .. } => write!(f, "{}", path.display()),
        }
    }
}

impl Location {
    pub async fn open(&self) -> Result<Store, sqlx::Error> {
        match self {
            Self::Url { url, node } => Store::connect(url, node).await,
            Self::SqliteFile { path, node } => Store::sqlite(path, node).await,
        }
    }
}

/// The store once it is open, shared by the recorder actor (which opens it)
/// and the report handlers.
#[derive(Clone, Default)]
pub struct StoreCell(std::sync::Arc<std::sync::OnceLock<Store>>);

impl StoreCell {
    pub fn set(&self, store: Store) {
        let _ = self.0.set(store);
    }

    pub fn get(&self) -> Option<&Store> {
        self.0.get()
    }
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    kind: StoreKind,
    /// This gateway's node name, stored with each row.
    node: String,
}

impl Store {
    /// Opens (creating if needed) the SQLite file `path`.
    pub async fn sqlite(path: &Path, node: &str) -> Result<Self, sqlx::Error> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Self::open(&url, StoreKind::Sqlite, node).await
    }

    /// Connects to `url` (`postgres://…` or `sqlite://…`).
    pub async fn connect(url: &str, node: &str) -> Result<Self, sqlx::Error> {
        let kind = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            StoreKind::Postgres
        } else {
            StoreKind::Sqlite
        };
        Self::open(url, kind, node).await
    }

    async fn open(url: &str, kind: StoreKind, node: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let mut options = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5));
        if kind == StoreKind::Sqlite {
            // WAL: readers (reports) never block the writer. NORMAL sync: a
            // committed batch survives a crash of herd (not of the machine's power).
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = NORMAL",
                        "PRAGMA busy_timeout = 5000",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            });
        }
        let pool = options.connect(url).await?;
        let store = Self {
            pool,
            kind,
            node: node.to_string(),
        };
        // Two processes opening a new SQLite file at once may both try to apply
        // the migration (SQLite has no migration lock); the loser finds it done on a retry.
        if let Err(first) = store.migrator().run(&store.pool).await {
            tracing::debug!("usage migration failed once, retrying: {first}");
            tokio::time::sleep(Duration::from_millis(250)).await;
            store.migrator().run(&store.pool).await?;
        }
        Ok(store)
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    fn migrator(&self) -> Migrator {
        let sql = match self.kind {
            StoreKind::Sqlite => include_str!("migrations/sqlite/0001_usage.sql"),
            StoreKind::Postgres => include_str!("migrations/postgres/0001_usage.sql"),
        };
        Migrator {
            migrations: Cow::Owned(vec![Migration::new(
                1,
                Cow::Borrowed("usage"),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )]),
            ..Migrator::DEFAULT
        }
    }

    /// `?` placeholders as this database wants them.
    fn sql(&self, text: &str) -> String {
        match self.kind {
            StoreKind::Sqlite => text.to_string(),
            StoreKind::Postgres => {
                let mut out = String::with_capacity(text.len() + 16);
                let mut n = 0;
                for c in text.chars() {
                    if c == '?' {
                        n += 1;
                        out.push_str(&format!("${n}"));
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }

    /// Writes `rows` in one transaction.
    pub async fn insert(&self, rows: &[UsageRecord]) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let text = self.sql(&format!(
                "INSERT INTO usage_requests (at_ms, node, key_name, end_user, model, endpoint, status, \
                 prompt_tokens, cached_tokens, completion_tokens, ttft_ms, duration_ms) VALUES {values}"
            ));
            let mut q = sqlx::query(&text);
            for r in chunk {
                q = q
                    .bind(r.at_ms)
                    .bind(self.node.clone())
                    .bind(r.key_name.clone())
                    .bind(r.end_user.clone())
                    .bind(r.model.clone())
                    .bind(r.endpoint)
                    .bind(i64::from(r.status))
                    .bind(int(r.prompt_tokens))
                    .bind(int(r.cached_tokens))
                    .bind(int(r.completion_tokens))
                    .bind(r.ttft_ms)
                    .bind(r.duration_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await
    }

    /// Moves raw rows older than `cutoff_ms` into the daily roll-up, in one
    /// transaction. Returns the number of raw rows moved.
    pub async fn roll_up(&self, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
        const SUMS: &str =
            "at_ms / 86400000, COALESCE(key_name, ''), COALESCE(end_user, ''), model, \
             COUNT(*), SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), SUM(prompt_tokens), \
             SUM(cached_tokens), SUM(completion_tokens), SUM(duration_ms)";
        const UPSERT: &str = "ON CONFLICT (day, key_name, end_user, model) DO UPDATE SET \
             requests = usage_daily.requests + excluded.requests, \
             errors = usage_daily.errors + excluded.errors, \
             prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
             cached_tokens = usage_daily.cached_tokens + excluded.cached_tokens, \
             completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, \
             duration_ms = usage_daily.duration_ms + excluded.duration_ms";
        const INTO: &str =
            "INSERT INTO usage_daily (day, key_name, end_user, model, requests, errors, \
             prompt_tokens, cached_tokens, completion_tokens, duration_ms)";
        match self.kind {
            // Several gateways may roll up at once: deleting first (and summing
            // what the delete returned) moves each row exactly once.
            StoreKind::Postgres => {
                let text = format!(
                    "WITH moved AS (DELETE FROM usage_requests WHERE at_ms < $1 RETURNING *) \
                     {INTO} SELECT {SUMS} FROM moved GROUP BY 1, 2, 3, 4 {UPSERT}"
                );
                let mut tx = self.pool.begin().await?;
                let before: i64 =
                    sqlx::query("SELECT COUNT(*) FROM usage_requests WHERE at_ms < $1")
                        .bind(cutoff_ms)
                        .fetch_one(&mut *tx)
                        .await?
                        .try_get(0)?;
                sqlx::query(&text).bind(cutoff_ms).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(u64::try_from(before).unwrap_or(0))
            }
            // SQLite has one writer at a time: the INSERT takes the write lock
            // before it reads, so nothing slips in between.
            StoreKind::Sqlite => {
                let text = format!(
                    "{INTO} SELECT {SUMS} FROM usage_requests WHERE at_ms < ? GROUP BY 1, 2, 3, 4 {UPSERT}"
                );
                let mut tx = self.pool.begin().await?;
                sqlx::query(&text).bind(cutoff_ms).execute(&mut *tx).await?;
                let moved = sqlx::query("DELETE FROM usage_requests WHERE at_ms < ?")
                    .bind(cutoff_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(moved)
            }
        }
    }

    /// Totals per day × key × user × model matching `f`, raw rows and roll-ups together.
    pub async fn buckets(&self, f: &Filter) -> Result<Vec<Bucket>, sqlx::Error> {
        let mut out = Vec::new();
        let raw =
            "SELECT at_ms / 86400000, COALESCE(key_name, ''), COALESCE(end_user, ''), model, \
             COUNT(*), CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(prompt_tokens) AS BIGINT), CAST(SUM(cached_tokens) AS BIGINT), \
             CAST(SUM(completion_tokens) AS BIGINT) FROM usage_requests WHERE at_ms >= ?";
        let daily = "SELECT day, key_name, end_user, model, requests, errors, prompt_tokens, \
             cached_tokens, completion_tokens FROM usage_daily WHERE day >= ?";
        for (select, since, key, user, group) in [
            (
                raw,
                f.since_ms,
                "COALESCE(key_name, '')",
                "COALESCE(end_user, '')",
                " GROUP BY 1, 2, 3, 4",
            ),
            (
                daily,
                f.since_ms.div_euclid(DAY_MS),
                "key_name",
                "end_user",
                "",
            ),
        ] {
            let mut text = select.to_string();
            let mut binds = Vec::new();
            for (column, value) in [(key, &f.key), (user, &f.user), ("model", &f.model)] {
                if let Some(v) = value {
                    text.push_str(&format!(" AND {column} = ?"));
                    binds.push(v.clone());
                }
            }
            text.push_str(group);
            let text = self.sql(&text);
            let mut q = sqlx::query(&text).bind(since);
            for b in binds {
                q = q.bind(b);
            }
            for row in q.fetch_all(&self.pool).await? {
                out.push(bucket(&row)?);
            }
        }
        Ok(out)
    }

    /// Raw rows stored (tests and benchmarks).
    pub async fn raw_rows(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM usage_requests")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn bucket(row: &AnyRow) -> Result<Bucket, sqlx::Error> {
    let count = |i: usize| -> Result<u64, sqlx::Error> {
        Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0))
    };
    Ok(Bucket {
        day: row.try_get(0)?,
        key: row.try_get(1)?,
        user: row.try_get(2)?,
        model: row.try_get(3)?,
        requests: count(4)?,
        errors: count(5)?,
        prompt_tokens: count(6)?,
        cached_tokens: count(7)?,
        completion_tokens: count(8)?,
    })
}
