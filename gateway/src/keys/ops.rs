//! What `herd keys` and `/admin/keys` do to the key file: create, revoke,
//! rotate, list. Each change is one locked read-modify-write (see
//! `file.rs`); a running server notices it within 250 ms.

use super::file::KeyFile;
use super::{check_name, new_key, now_ms, KeyRecord, KeySpec, Limits, NewKey};
use crate::caller::Role;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum KeyOpError {
    #[error("a key named `{0}` already exists (rotate it, or revoke it first)")]
    Exists(String),
    #[error("no key named `{0}`")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Store(String),
}

impl From<KeyOpError> for crate::openai::ApiError {
    fn from(e: KeyOpError) -> Self {
        match e {
            KeyOpError::Exists(n) => Self::KeyExists(n),
            KeyOpError::NotFound(n) => Self::KeyNotFound(n),
            KeyOpError::Invalid(m) => Self::invalid("name", m),
            KeyOpError::Store(m) => Self::KeyStore(m),
        }
    }
}

/// A key as listed: everything but the secret, which is not kept.
#[derive(Debug, Clone, Serialize)]
pub struct KeyView {
    pub name: String,
    pub prefix: String,
    pub role: Role,
    #[serde(flatten)]
    pub limits: Limits,
    pub status: &'static str,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub revoked_ms: Option<u64>,
    pub last_used_ms: Option<u64>,
}

/// A new key's secret (shown once) and its listing.
#[derive(Debug, Serialize)]
pub struct Created {
    pub key: String,
    #[serde(flatten)]
    pub view: KeyView,
}

fn view(r: &KeyRecord, last_used: Option<u64>, now: u64) -> KeyView {
    KeyView {
        name: r.name.clone(),
        prefix: r.prefix.clone(),
        role: r.role,
        limits: r.limits.clone(),
        status: r.status(now),
        created_ms: r.created_ms,
        expires_ms: r.expires_ms,
        revoked_ms: r.revoked_ms,
        last_used_ms: last_used,
    }
}

fn store_err(e: anyhow::Error) -> KeyOpError {
    match e.downcast::<KeyOpError>() {
        Ok(op) => op,
        Err(e) => KeyOpError::Store(format!("{e:#}")),
    }
}

fn check_limits(l: &Limits) -> Result<(), KeyOpError> {
    for (field, v) in [
        ("rpm", l.rpm),
        ("tpm", l.tpm),
        ("max_concurrency", l.max_concurrency),
    ] {
        if v == Some(0) {
            return Err(KeyOpError::Invalid(format!(
                "`{field}` must be at least 1 (leave it out for no limit)"
            )));
        }
    }
    if l.models
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.iter().any(|x| x.trim().is_empty()))
    {
        return Err(KeyOpError::Invalid(
            "`models` must name at least one model, none empty".into(),
        ));
    }
    Ok(())
}

pub fn create(file: &KeyFile, name: &str, spec: &KeySpec) -> Result<Created, KeyOpError> {
    check_name(name).map_err(KeyOpError::Invalid)?;
    check_limits(&spec.limits)?;
    file.update(|keys| {
        let now = now_ms();
        let old = keys.iter().position(|k| k.name == name);
        if let Some(i) = old {
            if keys[i].revoked_ms.is_none() {
                return Err(KeyOpError::Exists(name.to_string()).into());
            }
        }
        let NewKey { secret, mut record } = new_key(name, spec, now);
        if let Some(i) = old {
            // A revoked name may be used again; its version moves on.
            record.updated_ms = now.max(keys[i].updated_ms + 1);
            keys.remove(i);
        }
        let created = Created {
            key: secret,
            view: view(&record, None, now),
        };
        keys.push(record);
        Ok((true, created))
    })
    .map_err(store_err)
}

pub fn revoke(file: &KeyFile, name: &str) -> Result<KeyView, KeyOpError> {
    file.update(|keys| {
        let now = now_ms();
        let k = keys
            .iter_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| KeyOpError::NotFound(name.to_string()))?;
        if k.revoked_ms.is_some() {
            return Ok((false, view(k, None, now)));
        }
        k.revoked_ms = Some(now);
        k.updated_ms = now.max(k.updated_ms + 1);
        Ok((true, view(k, None, now)))
    })
    .map_err(store_err)
}

/// A new secret for an existing key: same name, role, limits and expiry.
pub fn rotate(file: &KeyFile, name: &str) -> Result<Created, KeyOpError> {
    file.update(|keys| {
        let now = now_ms();
        let k = keys
            .iter_mut()
            .find(|k| k.name == name)
            .ok_or_else(|| KeyOpError::NotFound(name.to_string()))?;
        let spec = KeySpec {
            role: k.role,
            limits: k.limits.clone(),
            expires_in_ms: None,
        };
        let NewKey { secret, mut record } = new_key(name, &spec, now);
        record.created_ms = k.created_ms;
        record.expires_ms = k.expires_ms;
        record.updated_ms = now.max(k.updated_ms + 1);
        *k = record;
        let created = Created {
            key: secret,
            view: view(k, None, now),
        };
        Ok((true, created))
    })
    .map_err(store_err)
}

pub fn list(file: &KeyFile) -> Result<Vec<KeyView>, KeyOpError> {
    let records = file.read().map_err(store_err)?;
    let used = file.last_used();
    let now = now_ms();
    Ok(records
        .iter()
        .map(|r| view(r, used.get(&r.name).copied(), now))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_revoke_rotate() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = KeyFile::new(dir.path());
        let a = create(&file, "alice", &KeySpec::default())?;
        assert!(matches!(
            create(&file, "alice", &KeySpec::default()),
            Err(KeyOpError::Exists(_))
        ));
        let b = rotate(&file, "alice")?;
        assert_ne!(a.key, b.key);
        let listed = list(&file)?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].prefix, b.view.prefix);
        assert_eq!(revoke(&file, "alice")?.status, "revoked");
        assert!(matches!(revoke(&file, "bob"), Err(KeyOpError::NotFound(_))));
        let text = std::fs::read_to_string(file.path())?;
        assert!(!text.contains(&a.key) && !text.contains(&b.key));
        assert!(create(&file, "alice", &KeySpec::default()).is_ok());
        Ok(())
    }
}
