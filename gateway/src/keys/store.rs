//! The [`KeyStore`]: one actor per server owns the key records (the state
//! dir's key file merged, last writer wins per name, with the records
//! other nodes replicate) and publishes an immutable [`KeyTable`] that the
//! auth middleware reads without a lock. It notices changes to the file
//! within 250 ms (it polls its size and mtime), writes records learnt from
//! peers back to the file, and writes "last used" times every 5 s.

use super::file::KeyFile;
use super::limits::{KeyLimiter, Quota};
use super::{constant_time_eq, hash_secret, now_ms, KeyRecord, Limits};
use crate::auth::LegacyKey;
use crate::caller::Role;
use arc_swap::ArcSwap;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const POLL: Duration = Duration::from_millis(250);
const LAST_USED_EVERY: Duration = Duration::from_secs(5);

/// A key as the request path sees it.
#[derive(Debug)]
pub struct KeyEntry {
    pub name: Arc<str>,
    pub role: Role,
    pub limits: Limits,
    hash: [u8; 32],
    expires_ms: Option<u64>,
    /// Present when the key has a numeric limit.
    pub limiter: Option<Arc<KeyLimiter>>,
    last_used: AtomicU64,
}

impl KeyEntry {
    fn new(name: &str, hash: [u8; 32], record: Option<&KeyRecord>, legacy_role: Role) -> Self {
        let (role, limits, expires_ms) = record
            .map_or((legacy_role, Limits::default(), None), |r| {
                (r.role, r.limits.clone(), r.expires_ms)
            });
        let limiter = (!limits.is_unlimited()).then(|| {
            Arc::new(KeyLimiter::new(Quota {
                rpm: limits.rpm,
                tpm: limits.tpm,
                max_concurrency: limits.max_concurrency,
            }))
        });
        Self {
            name: Arc::from(name),
            role,
            limits,
            hash,
            expires_ms,
            limiter,
            last_used: AtomicU64::new(0),
        }
    }
}

/// Everything the request path needs, swapped whole on every change.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<KeyEntry>>,
    /// True once any key exists (revoked ones included: revoking the last
    /// key must not open the server).
    required: bool,
}

impl KeyTable {
    pub fn required(&self) -> bool {
        self.required
    }

    /// The usable key whose SHA-256 is that of `presented`, if any.
    pub fn lookup(&self, presented: &[u8], now_ms: u64) -> Option<&Arc<KeyEntry>> {
        let hash = hash_secret(presented);
        let entry = self.by_hash.get(&hash)?;
        let fresh = entry.expires_ms.is_none_or(|e| now_ms < e);
        (constant_time_eq(&entry.hash, &hash) && fresh).then(|| {
            entry.last_used.store(now_ms, Ordering::Relaxed);
            entry
        })
    }
}

enum Command {
    /// Records from another node.
    Merge(Vec<KeyRecord>),
    /// The file changed through this process (admin route): read it now.
    Reload,
}

/// Cheap handle to the key actor.
#[derive(Clone)]
pub struct KeyStore {
    table: Arc<ArcSwap<KeyTable>>,
    records: watch::Receiver<Arc<Vec<KeyRecord>>>,
    tx: Option<mpsc::Sender<Command>>,
    file: Option<KeyFile>,
}

impl KeyStore {
    /// Keys from an `api_key_file` only (hashed now; the text is dropped), no store.
    pub fn fixed(legacy: Vec<LegacyKey>) -> Self {
        let table = build(&hashed(legacy), &BTreeMap::new(), &HashMap::new());
        let (_, records) = watch::channel(Arc::new(Vec::new()));
        Self {
            table: Arc::new(ArcSwap::from_pointee(table)),
            records,
            tx: None,
            file: None,
        }
    }

    /// Starts the actor over `file`, with the `api_key_file` keys beside it.
    pub fn start(file: KeyFile, legacy: Vec<LegacyKey>) -> anyhow::Result<Self> {
        let legacy = hashed(legacy);
        let mut records = BTreeMap::new();
        merge(&mut records, file.read()?);
        let table = Arc::new(ArcSwap::from_pointee(build(
            &legacy,
            &records,
            &HashMap::new(),
        )));
        let (records_tx, records_rx) =
            watch::channel(Arc::new(records.values().cloned().collect()));
        let (tx, rx) = mpsc::channel(64);
        let actor = Actor {
            file: file.clone(),
            legacy,
            stamp: file.stamp(),
            records,
            table: table.clone(),
            records_tx,
            used_written: file.last_used(),
        };
        tokio::spawn(actor.run(rx));
        Ok(Self {
            table,
            records: records_rx,
            tx: Some(tx),
            file: Some(file),
        })
    }

    pub fn table(&self) -> arc_swap::Guard<Arc<KeyTable>> {
        self.table.load()
    }

    /// The merged records (for replication), and a way to wait for changes.
    pub fn records(&self) -> watch::Receiver<Arc<Vec<KeyRecord>>> {
        self.records.clone()
    }

    pub fn file(&self) -> Option<&KeyFile> {
        self.file.as_ref()
    }

    /// Offers records from another node.
    pub fn merge_remote(&self, records: Vec<KeyRecord>) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Command::Merge(records));
        }
    }

    pub fn reload(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Command::Reload);
        }
    }
}

fn hashed(legacy: Vec<LegacyKey>) -> Vec<(String, [u8; 32], Role)> {
    legacy
        .into_iter()
        .map(|(name, key, role)| (name, hash_secret(&key), role))
        .collect()
}

/// Merges `incoming` into `records`, last writer wins; true if anything changed.
fn merge(records: &mut BTreeMap<String, KeyRecord>, incoming: Vec<KeyRecord>) -> bool {
    let mut changed = false;
    for r in incoming {
        if records.get(&r.name).is_none_or(|have| r.newer_than(have)) {
            records.insert(r.name.clone(), r);
            changed = true;
        }
    }
    changed
}

/// A new table; entries whose record did not change keep their limiter and last-used time.
fn build(
    legacy: &[(String, [u8; 32], Role)],
    records: &BTreeMap<String, KeyRecord>,
    old: &HashMap<[u8; 32], Arc<KeyEntry>>,
) -> KeyTable {
    let mut by_hash = HashMap::new();
    for (name, hash, role) in legacy {
        by_hash.insert(*hash, Arc::new(KeyEntry::new(name, *hash, None, *role)));
    }
    for r in records.values().filter(|r| r.revoked_ms.is_none()) {
        let Ok(bytes) = hex::decode(&r.hash) else {
            continue;
        };
        let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            continue;
        };
        let fresh = Arc::new(KeyEntry::new(&r.name, hash, Some(r), Role::User));
        let entry = match old.get(&hash) {
            Some(e) if e.limits == fresh.limits && e.role == fresh.role && e.name == fresh.name => {
                e.clone()
            }
            _ => fresh,
        };
        by_hash.insert(hash, entry);
    }
    KeyTable {
        by_hash,
        required: !legacy.is_empty() || !records.is_empty(),
    }
}

struct Actor {
    file: KeyFile,
    legacy: Vec<(String, [u8; 32], Role)>,
    stamp: Option<(u64, std::time::SystemTime)>,
    records: BTreeMap<String, KeyRecord>,
    table: Arc<ArcSwap<KeyTable>>,
    records_tx: watch::Sender<Arc<Vec<KeyRecord>>>,
    used_written: BTreeMap<String, u64>,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut poll = tokio::time::interval(POLL);
        let mut used = tokio::time::interval(LAST_USED_EVERY);
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Merge(records)) => self.merge_remote(records).await,
                    Some(Command::Reload) => self.read_file(true).await,
                    None => break,
                },
                _ = poll.tick() => self.read_file(false).await,
                _ = used.tick() => self.write_last_used().await,
            }
        }
        self.write_last_used().await;
    }

    async fn read_file(&mut self, force: bool) {
        let stamp = self.file.stamp();
        if !force && stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        let file = self.file.clone();
        match tokio::task::spawn_blocking(move || file.read()).await {
            Ok(Ok(records)) => {
                if merge(&mut self.records, records) {
                    self.publish();
                }
            }
            Ok(Err(e)) => tracing::warn!("keeping the keys loaded before: {e}"),
            Err(e) => tracing::warn!("cannot read the key file: {e}"),
        }
    }

    async fn merge_remote(&mut self, incoming: Vec<KeyRecord>) {
        let newer: Vec<KeyRecord> = incoming
            .into_iter()
            .filter(|r| super::check_name(&r.name).is_ok())
            .filter(|r| {
                self.records
                    .get(&r.name)
                    .is_none_or(|have| r.newer_than(have))
            })
            .collect();
        if newer.is_empty() {
            return;
        }
        for r in &newer {
            let what = if r.revoked_ms.is_some() {
                "revoked"
            } else {
                "updated"
            };
            tracing::info!(key = %r.name, "key {what} by another node");
        }
        merge(&mut self.records, newer.clone());
        self.publish();
        let file = self.file.clone();
        let written = tokio::task::spawn_blocking(move || {
            file.update(|keys| {
                let mut map: BTreeMap<String, KeyRecord> =
                    keys.drain(..).map(|r| (r.name.clone(), r)).collect();
                let changed = merge(&mut map, newer);
                keys.extend(map.into_values());
                Ok((changed, ()))
            })
        })
        .await;
        if let Ok(Err(e)) | Err(e) = written.map_err(anyhow::Error::from) {
            tracing::warn!("cannot save keys learnt from another node: {e}");
        }
    }

    fn publish(&mut self) {
        let old = self.table.load();
        let table = build(&self.legacy, &self.records, &old.by_hash);
        self.table.store(Arc::new(table));
        let _ = self
            .records_tx
            .send(Arc::new(self.records.values().cloned().collect()));
    }

    async fn write_last_used(&mut self) {
        let table = self.table.load();
        let mut used = self.used_written.clone();
        for e in table.by_hash.values() {
            let t = e.last_used.load(Ordering::Relaxed);
            if t > used.get(e.name.as_ref()).copied().unwrap_or(0) {
                used.insert(e.name.to_string(), t);
            }
        }
        if used == self.used_written {
            return;
        }
        let (file, copy) = (self.file.clone(), used.clone());
        match tokio::task::spawn_blocking(move || file.write_last_used(&copy)).await {
            Ok(Ok(())) => self.used_written = used,
            Ok(Err(e)) => tracing::warn!("cannot record when keys were last used: {e}"),
            Err(e) => tracing::warn!("cannot record when keys were last used: {e}"),
        }
    }
}

/// The current time for lookups.
pub fn lookup_now() -> u64 {
    now_ms()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{new_key, KeySpec};

    #[test]
    fn merge_keeps_the_newest_record_per_name_and_revoked_keys_stop() {
        let spec = KeySpec::default();
        let a = new_key("alice", &spec, 10);
        let mut records = BTreeMap::new();
        assert!(merge(&mut records, vec![a.record.clone()]));
        assert!(!merge(&mut records, vec![a.record.clone()]));
        let table = build(&[], &records, &HashMap::new());
        assert!(table.required());
        assert!(table.lookup(a.secret.as_bytes(), 11).is_some());
        let mut revoked = a.record.clone();
        revoked.revoked_ms = Some(20);
        revoked.updated_ms = 20;
        let mut stale = a.record.clone();
        stale.updated_ms = 5;
        assert!(merge(&mut records, vec![revoked, stale]));
        let table = build(&[], &records, &table.by_hash);
        assert!(table.lookup(a.secret.as_bytes(), 21).is_none());
        // A revoked key still turns auth on.
        assert!(table.required());
    }

    #[test]
    fn expired_keys_stop_and_limiters_survive_rebuilds() {
        let spec = KeySpec {
            expires_in_ms: Some(100),
            limits: Limits {
                rpm: Some(5),
                ..Limits::default()
            },
            ..KeySpec::default()
        };
        let k = new_key("temp", &spec, 1_000);
        let records = BTreeMap::from([(k.record.name.clone(), k.record.clone())]);
        let table = build(&[], &records, &HashMap::new());
        let entry = table.lookup(k.secret.as_bytes(), 1_050).cloned();
        assert!(entry.is_some());
        assert!(table.lookup(k.secret.as_bytes(), 1_100).is_none());
        let again = build(&[], &records, &table.by_hash);
        let same = again.lookup(k.secret.as_bytes(), 1_050);
        assert!(matches!((entry, same), (Some(a), Some(b)) if Arc::ptr_eq(&a, b)));
    }
}
