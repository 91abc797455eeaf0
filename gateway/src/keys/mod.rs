//! Named API keys: records kept hashed in a file in the state dir, owned by
//! the [`KeyStore`] actor of a running server, changed by `herd keys` and
//! `/admin/keys`, replicated across the cluster (last writer wins per name).
//!
//! A key is `sk-herd-` and 43 base62 characters (256 random bits). Only its
//! SHA-256 and a 12-character display prefix are stored: a key with that
//! much entropy cannot be found from its hash by guessing, so a slow
//! password hash (which protects low-entropy passwords) would only slow
//! every request down. See docs/keys.md.

pub mod admin;
pub mod enforce;
pub mod file;
pub mod limits;
pub mod ops;
pub mod replicate;
pub mod store;

pub use store::{KeyEntry, KeyStore};

use crate::caller::Role;
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// What every herd key starts with.
pub const KEY_PREFIX: &str = "sk-herd-";
/// Characters of a key kept for display (`sk-herd-` and four more).
pub const DISPLAY_CHARS: usize = 12;
const RANDOM_CHARS: usize = 43;
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The limits one key runs under (`None`: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<u64>,
    /// Model names (ids or aliases) the key may use; others look absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrency.is_none()
    }

    pub fn allows_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }
}

/// One key as stored and replicated: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    /// SHA-256 of the whole key, hex.
    pub hash: String,
    /// The key's first characters, to tell keys apart in a list.
    pub prefix: String,
    #[serde(default)]
    pub role: Role,
    #[serde(default)]
    pub limits: Limits,
    /// Unix milliseconds.
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// Version for last-writer-wins merges: unix ms of the last change.
    pub updated_ms: u64,
}

impl KeyRecord {
    /// Newer `updated_ms` wins; a tie goes to the larger hash, then to the
    /// revoked one, so every node picks the same record.
    pub fn newer_than(&self, other: &Self) -> bool {
        (self.updated_ms, &self.hash, self.revoked_ms.is_some())
            > (other.updated_ms, &other.hash, other.revoked_ms.is_some())
    }

    pub fn is_usable(&self, now_ms: u64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    pub fn status(&self, now_ms: u64) -> &'static str {
        match (self.revoked_ms, self.expires_ms) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if now_ms >= e => "expired",
            _ => "active",
        }
    }
}

/// A new secret and the record that stands for it.
pub struct NewKey {
    pub secret: String,
    pub record: KeyRecord,
}

/// What `create` needs besides the name.
#[derive(Debug, Clone, Default)]
pub struct KeySpec {
    pub role: Role,
    pub limits: Limits,
    /// Lifetime from now, in milliseconds.
    pub expires_in_ms: Option<u64>,
}

pub fn new_key(name: &str, spec: &KeySpec, now_ms: u64) -> NewKey {
    let mut rng = rand::rng();
    let random: String = (0..RANDOM_CHARS)
        .map(|_| char::from(BASE62[rng.random_range(0..BASE62.len())]))
        .collect();
    let secret = format!("{KEY_PREFIX}{random}");
    let record = KeyRecord {
        name: name.to_string(),
        hash: hex::encode(hash_secret(secret.as_bytes())),
        prefix: secret.chars().take(DISPLAY_CHARS).collect(),
        role: spec.role,
        limits: spec.limits.clone(),
        created_ms: now_ms,
        expires_ms: spec.expires_in_ms.map(|d| now_ms.saturating_add(d)),
        revoked_ms: None,
        updated_ms: now_ms,
    };
    NewKey { secret, record }
}

pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a key name: what logs, metrics and URLs show.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a key name is 1–64 characters of letters, digits, `-`, `_`, `.`, `@`; got {name:?}"
        ))
    }
}

/// `30d`, `12h`, `90m`, `45s` → milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration like 30d, 12h, 90m; got {text:?}"))?;
    let per = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => {
            return Err(format!(
                "expected a duration like 30d, 12h, 90m; got {text:?}"
            ))
        }
    };
    match n.checked_mul(per) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(format!("the duration {text:?} must be positive and finite")),
    }
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_are_long_random_and_stored_hashed() {
        let spec = KeySpec::default();
        let a = new_key("alice", &spec, 1);
        let b = new_key("alice", &spec, 1);
        assert_ne!(a.secret, b.secret);
        assert!(a.secret.starts_with(KEY_PREFIX));
        assert_eq!(a.secret.len(), KEY_PREFIX.len() + RANDOM_CHARS);
        assert_eq!(a.record.hash, hex::encode(hash_secret(a.secret.as_bytes())));
        assert!(!a.record.hash.contains(&a.secret[KEY_PREFIX.len()..]));
        assert_eq!(a.record.prefix.len(), DISPLAY_CHARS);
        let text = serde_json::to_string(&a.record).unwrap_or_default();
        assert!(!text.contains(&a.secret));
    }

    #[test]
    fn durations_and_names() {
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("90m"), Ok(5_400_000));
        assert!(parse_duration_ms("0d").is_err());
        assert!(parse_duration_ms("5w").is_err());
        assert!(parse_duration_ms("d").is_err());
        assert!(check_name("open-webui").is_ok());
        assert!(check_name("a b").is_err());
        assert!(check_name("").is_err());
    }

    #[test]
    fn last_writer_wins() {
        let spec = KeySpec::default();
        let old = new_key("a", &spec, 1).record;
        let mut newer = new_key("a", &spec, 2).record;
        assert!(newer.newer_than(&old));
        assert!(!old.newer_than(&newer));
        newer.updated_ms = 1;
        assert_eq!(newer.newer_than(&old), newer.hash > old.hash);
    }
}
