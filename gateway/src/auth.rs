//! API keys: a file of `name:key` lines (or bare keys; `name:key:admin` for a
//! key that may also read `/admin/usage`). Requests present
//! `Authorization: Bearer KEY`; the key's *name* is what logs and metrics see.

use crate::caller::{Caller, Role};
use crate::openai::ApiError;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::path::Path;
use std::sync::Arc;

/// The authenticated caller, attached to the request for later layers.
#[derive(Debug, Clone)]
pub struct KeyName(pub Arc<str>);

#[derive(Default)]
pub struct ApiKeys {
    keys: Vec<(Arc<str>, Vec<u8>)>,
    /// Names of the keys whose line ends in `:admin`.
    admins: Vec<Arc<str>>,
}

impl ApiKeys {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read API key file {}: {e}", path.display()))?;
        let keys = Self::parse(&text);
        if keys.keys.is_empty() {
            anyhow::bail!("API key file {} holds no keys", path.display());
        }
        Ok(keys)
    }

    pub fn parse(text: &str) -> Self {
        let mut admins = Vec::new();
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .enumerate()
            .map(|(i, line)| match line.split_once(':') {
                Some((name, rest)) if rest.ends_with(":admin") && !name.trim().is_empty() => {
                    let key = rest.trim_end_matches(":admin").trim();
                    let name: Arc<str> = Arc::from(name.trim());
                    admins.push(name.clone());
                    (name, key.as_bytes().to_vec())
                }
                Some((name, key)) if !name.trim().is_empty() && !key.trim().is_empty() => {
                    (Arc::from(name.trim()), key.trim().as_bytes().to_vec())
                }
                _ => (
                    Arc::from(format!("key-{}", i + 1).as_str()),
                    line.as_bytes().to_vec(),
                ),
            })
            .collect();
        Self { keys, admins }
    }

    fn role(&self, name: &KeyName) -> Role {
        if self.admins.contains(&name.0) {
            Role::Admin
        } else {
            Role::User
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Constant-time comparison against every key, so timing reveals nothing.
    pub fn check(&self, presented: &[u8]) -> Option<KeyName> {
        let mut found = None;
        for (name, key) in &self.keys {
            if constant_time_eq(key, presented) {
                found = Some(KeyName(name.clone()));
            }
        }
        found
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(n, _)| n.as_ref())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl ApiKeys {
    /// The caller a request's `Authorization: Bearer KEY` names, if the key is one of ours.
    pub fn caller(&self, headers: &HeaderMap) -> Option<KeyName> {
        let presented = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)?;
        self.check(presented.as_bytes())
    }
}

pub async fn require_key(
    State(keys): State<Arc<ApiKeys>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !keys.is_enabled() {
        req.extensions_mut().insert(KeyName(Arc::from("anonymous")));
        // Without keys the API is open: everyone may read usage too.
        req.extensions_mut().insert(Caller {
            key_name: None,
            role: Role::Admin,
        });
        return next.run(req).await;
    }
    match keys.caller(req.headers()) {
        Some(name) => {
            req.extensions_mut().insert(Caller {
                key_name: Some(name.0.to_string()),
                role: keys.role(&name),
            });
            req.extensions_mut().insert(name);
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
        let keys = ApiKeys::parse("# team keys\nalice:sk-a\n\nsk-bare\n");
        assert_eq!(
            keys.check(b"sk-a").map(|k| k.0.to_string()),
            Some("alice".into())
        );
        assert_eq!(
            keys.check(b"sk-bare").map(|k| k.0.to_string()),
            Some("key-2".into())
        );
        assert!(keys.check(b"sk-").is_none());
        assert!(keys.check(b"").is_none());
        assert!(ApiKeys::parse("\n# none\n").keys.is_empty());
        let keys = ApiKeys::parse("boss:sk-b:admin\nalice:sk-a\n");
        let boss = keys.check(b"sk-b");
        assert_eq!(boss.as_ref().map(|k| keys.role(k)), Some(Role::Admin));
        let alice = keys.check(b"sk-a");
        assert_eq!(alice.as_ref().map(|k| keys.role(k)), Some(Role::User));
    }
}
