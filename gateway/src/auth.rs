//! API-key authentication. Keys come from the [`KeyStore`] (named keys
//! created with `herd keys`, stored hashed) and from the older
//! `api_key_file` (`name:key` lines, hashed when loaded). A request
//! presents `Authorization: Bearer KEY`; what later layers see is the
//! key's *name* ([`KeyName`], [`Caller`]) and its entry (limits), never the
//! key itself. A server with no key at all is open.

use crate::caller::{Caller, Role};
use crate::keys::store::lookup_now;
use crate::keys::KeyStore;
use crate::openai::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::Arc;

/// The authenticated key's name, attached to the request for later layers.
#[derive(Debug, Clone)]
pub struct KeyName(pub Arc<str>);

/// One `api_key_file` line: a name, the key, and its role.
pub type LegacyKey = (String, Vec<u8>, Role);

/// Reads an `api_key_file`: `name:key` lines (or bare keys, named `key-N`);
/// `name:key:admin` is a key that may also manage keys and read usage.
pub fn load_key_file(path: &Path) -> anyhow::Result<Vec<LegacyKey>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read API key file {}: {e}", path.display()))?;
    let keys = parse_key_file(&text);
    if keys.is_empty() {
        anyhow::bail!("API key file {} holds no keys", path.display());
    }
    Ok(keys)
}

pub fn parse_key_file(text: &str) -> Vec<LegacyKey> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .enumerate()
        .map(|(i, line)| match line.split_once(':') {
            Some((name, key)) if !name.trim().is_empty() && !key.trim().is_empty() => {
                let (key, role) = match key.strip_suffix(":admin") {
                    Some(k) if !k.trim().is_empty() => (k, Role::Admin),
                    _ => (key, Role::User),
                };
                (
                    name.trim().to_string(),
                    key.trim().as_bytes().to_vec(),
                    role,
                )
            }
            _ => (
                format!("key-{}", i + 1),
                line.as_bytes().to_vec(),
                Role::User,
            ),
        })
        .collect()
}

/// The key a request presents as `Authorization: Bearer KEY`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

pub async fn require_key(State(keys): State<KeyStore>, mut req: Request, next: Next) -> Response {
    let table = keys.table();
    if !table.required() {
        drop(table);
        req.extensions_mut().insert(KeyName(Arc::from("anonymous")));
        req.extensions_mut().insert(Caller {
            key_name: None,
            role: Role::User,
        });
        return next.run(req).await;
    }
    let found = bearer(req.headers())
        .and_then(|k| table.lookup(k.as_bytes(), lookup_now()))
        .cloned();
    drop(table);
    match found {
        Some(entry) => {
            let ext = req.extensions_mut();
            ext.insert(KeyName(entry.name.clone()));
            ext.insert(Caller {
                key_name: Some(entry.name.to_string()),
                role: entry.role,
            });
            ext.insert(entry);
            next.run(req).await
        }
        None => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_and_bare_keys() {
        let keys = parse_key_file("# team keys\nalice:sk-a\n\nsk-bare\nboss:sk-b:admin\n");
        assert_eq!(
            keys,
            vec![
                ("alice".to_string(), b"sk-a".to_vec(), Role::User),
                ("key-2".to_string(), b"sk-bare".to_vec(), Role::User),
                ("boss".to_string(), b"sk-b".to_vec(), Role::Admin),
            ]
        );
        let store = KeyStore::fixed(keys);
        let t = store.table();
        assert_eq!(
            t.lookup(b"sk-a", 0).map(|e| e.name.to_string()),
            Some("alice".into())
        );
        assert!(t.lookup(b"sk-", 0).is_none());
        assert_eq!(t.lookup(b"sk-b", 0).map(|e| e.role), Some(Role::Admin));
        assert!(t.lookup(b"", 0).is_none());
        assert!(parse_key_file("\n# none\n").is_empty());
    }
}
