//! Usage reports: the filters `GET /admin/usage` and `herd usage` take
//! (`since`, `by`, `key`, `user`, `model`), validated into a [`Query`], and
//! the pure grouping of stored totals ([`Bucket`]s, from one store or summed
//! over every node's) into report rows.

use crate::openai::ApiError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::store::DAY_MS;

/// What `since` defaults to.
pub const DEFAULT_SINCE: &str = "7d";

/// Stored totals for one day × key × user × model ('' = none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub key: String,
    pub user: String,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
}

/// Which rows to count.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Filter {
    /// Requests that arrived at or after this (ms since the epoch); rolled-up days count whole.
    pub since_ms: i64,
    pub key: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Key,
    User,
    Model,
    Day,
}

impl GroupBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::User => "user",
            Self::Model => "model",
            Self::Day => "day",
        }
    }
}

/// The query string as sent.
#[derive(Debug, Default, Deserialize)]
pub struct RawQuery {
    pub since: Option<String>,
    pub by: Option<String>,
    pub key: Option<String>,
    pub user: Option<String>,
    pub model: Option<String>,
    /// `cluster` (default: every gateway's usage) or `node` (this one's).
    pub scope: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub by: GroupBy,
    pub cluster: bool,
}

impl RawQuery {
    pub fn validate(self, now_ms: i64) -> Result<Query, ApiError> {
        let since = self.since.as_deref().unwrap_or(DEFAULT_SINCE);
        let since_ms = parse_since(since, now_ms).map_err(|why| ApiError::invalid("since", why))?;
        let by = match self.by.as_deref().unwrap_or("model") {
            "key" => GroupBy::Key,
            "user" => GroupBy::User,
            "model" => GroupBy::Model,
            "day" => GroupBy::Day,
            other => {
                return Err(ApiError::invalid(
                    "by",
                    format!("`by` must be one of key, user, model, day; got {other:?}"),
                ))
            }
        };
        let cluster = match self.scope.as_deref().unwrap_or("cluster") {
            "cluster" => true,
            "node" => false,
            other => {
                return Err(ApiError::invalid(
                    "scope",
                    format!("`scope` must be cluster or node; got {other:?}"),
                ))
            }
        };
        let nonempty = |v: Option<String>| v.filter(|s| !s.is_empty());
        Ok(Query {
            filter: Filter {
                since_ms,
                key: nonempty(self.key),
                user: nonempty(self.user),
                model: nonempty(self.model),
            },
            by,
            cluster,
        })
    }
}

/// `7d`, `24h`, `30m`, `90s`, `2w` before `now_ms`, or a UTC date `2026-12-01`.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let bad = || {
        format!(
            "`since` must be a duration like 7d, 24h, 30m or a date like 2026-12-01; got {text:?}"
        )
    };
    let t = text.trim();
    if let Some(day) = parse_date(t) {
        return Ok(day * DAY_MS);
    }
    let unit_at = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = t.split_at(unit_at);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .and_then(|back| now_ms.checked_sub(back))
        .ok_or_else(bad)
}

/// `YYYY-MM-DD` → days since the epoch.
fn parse_date(t: &str) -> Option<i64> {
    let mut parts = t.splitn(3, '-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if y.len() != 4 || m.len() != 2 || d.len() != 2 {
        return None;
    }
    let (y, m, d): (i64, i64, i64) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Days since the epoch → `YYYY-MM-DD` (Hinnant's civil_from_days).
pub fn format_day(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// One line of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The key, user, model or day (`YYYY-MM-DD`); null for requests without a key or user.
    pub group: Option<String>,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub cached_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// `GET /admin/usage`'s answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub object: String,
    pub by: GroupBy,
    /// The start of the period, in ms since the epoch.
    pub since_ms: i64,
    /// `cluster` or `node`.
    pub scope: String,
    /// Gateways whose usage is counted (every one sharing the database counts, for PostgreSQL).
    pub nodes: Vec<String>,
    /// Gateways that did not answer (their usage is missing).
    pub missing_nodes: Vec<String>,
    pub data: Vec<ReportRow>,
}

/// Sums `buckets` by `by`, sorted by group.
pub fn group(buckets: &[Bucket], by: GroupBy) -> Vec<ReportRow> {
    let mut rows: BTreeMap<String, ReportRow> = BTreeMap::new();
    for b in buckets {
        let name = match by {
            GroupBy::Key => b.key.clone(),
            GroupBy::User => b.user.clone(),
            GroupBy::Model => b.model.clone(),
            GroupBy::Day => format_day(b.day),
        };
        let row = rows.entry(name.clone()).or_insert_with(|| ReportRow {
            group: (!name.is_empty()).then_some(name),
            requests: 0,
            errors: 0,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
        });
        row.requests += b.requests;
        row.errors += b.errors;
        row.prompt_tokens += b.prompt_tokens;
        row.cached_tokens += b.cached_tokens;
        row.completion_tokens += b.completion_tokens;
        row.total_tokens += b.prompt_tokens + b.completion_tokens;
    }
    rows.into_values().collect()
}

/// The report as CSV, header first.
pub fn to_csv(report: &Report) -> String {
    let mut out = format!(
        "{},requests,errors,prompt_tokens,cached_tokens,completion_tokens,total_tokens\n",
        report.by.as_str()
    );
    for r in &report.data {
        let group = r.group.as_deref().unwrap_or("");
        let group = if group.contains([',', '"', '\n']) {
            format!("\"{}\"", group.replace('"', "\"\""))
        } else {
            group.to_string()
        };
        out.push_str(&format!(
            "{group},{},{},{},{},{},{}\n",
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.cached_tokens,
            r.completion_tokens,
            r.total_tokens
        ));
    }
    out
}

/// The report as an aligned table.
pub fn to_table(report: &Report) -> String {
    let heads = [
        report.by.as_str(),
        "requests",
        "errors",
        "prompt",
        "cached",
        "completion",
        "total",
    ];
    let mut lines: Vec<[String; 7]> = vec![heads.map(str::to_string)];
    for r in &report.data {
        lines.push([
            r.group.clone().unwrap_or_else(|| "-".into()),
            r.requests.to_string(),
            r.errors.to_string(),
            r.prompt_tokens.to_string(),
            r.cached_tokens.to_string(),
            r.completion_tokens.to_string(),
            r.total_tokens.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| {
            lines
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if !report.missing_nodes.is_empty() {
        out.push_str(&format!(
            "(no answer from {}: their usage is missing)\n",
            report.missing_nodes.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_durations_and_dates() {
        let now = 100 * DAY_MS;
        assert_eq!(parse_since("7d", now), Ok(93 * DAY_MS));
        assert_eq!(parse_since("24h", now), Ok(99 * DAY_MS));
        assert_eq!(parse_since("2w", now), Ok(86 * DAY_MS));
        assert_eq!(parse_since("1970-01-11", now), Ok(10 * DAY_MS));
        assert_eq!(format_day(20_000), "2024-10-04");
        assert_eq!(parse_date("2024-10-04"), Some(20_000));
        for bad in [
            "",
            "7",
            "d",
            "7y",
            "-1d",
            "2024-13-01",
            "99999999999999999999d",
        ] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_filters_name_their_field() {
        let q = RawQuery {
            by: Some("color".into()),
            ..RawQuery::default()
        };
        let e = q
            .validate(0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("`by`"), "{e}");
    }

    #[test]
    fn grouping_sums_every_bucket() {
        let b = |day, key: &str, model: &str, p, c| Bucket {
            day,
            key: key.into(),
            user: String::new(),
            model: model.into(),
            requests: 1,
            errors: 0,
            prompt_tokens: p,
            cached_tokens: 0,
            completion_tokens: c,
        };
        let all = [
            b(1, "a", "m", 10, 5),
            b(2, "", "m", 1, 1),
            b(2, "a", "n", 3, 4),
        ];
        let by_key = group(&all, GroupBy::Key);
        assert_eq!(by_key.len(), 2);
        assert_eq!(by_key[0].group, None);
        assert_eq!(by_key[1].group.as_deref(), Some("a"));
        assert_eq!(by_key[1].total_tokens, 22);
        let by_day = group(&all, GroupBy::Day);
        assert_eq!(by_day[1].group.as_deref(), Some("1970-01-03"));
        assert_eq!(by_day[1].requests, 2);
    }
}
