//! In-memory object storage with one global resourceVersion counter and a bounded
//! event history for watches (like etcd with compaction).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::resources::{self, ResourceInfo};

/// One change, as delivered to watchers.
#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    /// Storage key (`group/plural`) of the resource.
    pub key: String,
    pub namespace: String,
    pub type_: &'static str,
    pub object: Value,
}

/// Settings fixed when the server starts.
#[derive(Debug, Clone)]
pub struct Config {
    pub validate_schemas: bool,
    pub emulate_workloads: bool,
    pub history_limit: usize,
    pub bookmark_interval: std::time::Duration,
    pub default_watch_timeout: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            validate_schemas: true,
            emulate_workloads: true,
            history_limit: 10_000,
            bookmark_interval: std::time::Duration::from_secs(30),
            default_watch_timeout: std::time::Duration::from_secs(290),
        }
    }
}

type ObjKey = (String, String);

pub struct Store {
    pub config: Config,
    resources: Vec<ResourceInfo>,
    objects: BTreeMap<String, BTreeMap<ObjKey, Value>>,
    rv: u64,
    history: VecDeque<Arc<Event>>,
    /// Events at or below this resourceVersion are no longer retained.
    compacted: u64,
    tx: broadcast::Sender<Arc<Event>>,
    seed: u64,
    /// Requests to refuse (tests of error handling), first match wins.
    pub failures: Vec<Failure>,
}

/// Refuse the next `times` requests with this method whose path ends with `path_suffix`,
/// answering `code`.
#[derive(Clone, Debug)]
pub struct Failure {
    pub method: String,
    pub path_suffix: String,
    pub code: u16,
    pub times: u32,
}

impl Store {
    pub fn new(config: Config) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let seed = jiff::Timestamp::now().as_nanosecond() as u64 | 1;
        Self {
            config,
            resources: resources::builtins(),
            objects: BTreeMap::new(),
            rv: 1,
            history: VecDeque::new(),
            compacted: 0,
            tx,
            seed,
            failures: Vec::new(),
        }
    }

    /// The code to refuse this request with, if a failure rule matches (and counts it).
    pub fn take_failure(&mut self, method: &str, path: &str) -> Option<u16> {
        let i = self.failures.iter().position(|f| {
            f.times > 0 && f.method.eq_ignore_ascii_case(method) && path.ends_with(&f.path_suffix)
        })?;
        let f = &mut self.failures[i];
        f.times -= 1;
        let code = f.code;
        if f.times == 0 {
            self.failures.remove(i);
        }
        Some(code)
    }

    pub fn resources(&self) -> &[ResourceInfo] {
        &self.resources
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceInfo> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    pub fn group_served(&self, group: &str, version: &str) -> bool {
        self.resources
            .iter()
            .any(|r| r.group == group && r.version == version)
    }

    /// Replace the resources registered by the CRD `crd_name`.
    pub fn set_crd_resources(&mut self, crd_name: &str, infos: Vec<ResourceInfo>) {
        self.resources
            .retain(|r| r.crd.as_deref() != Some(crd_name));
        self.resources.extend(infos);
    }

    pub fn current_rv(&self) -> u64 {
        self.rv
    }

    pub fn compacted_rv(&self) -> u64 {
        self.compacted
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }

    /// Retained events after `rv`, in order.
    pub fn events_after(&self, rv: u64) -> Vec<Arc<Event>> {
        self.history.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    /// A pseudo-random number (xorshift), enough for uids and generated names.
    pub fn random(&mut self) -> u64 {
        let mut x = self.seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.seed = x;
        x
    }

    pub fn new_uid(&mut self) -> String {
        let a = self.random();
        let b = self.random();
        format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            b >> 52,
            b & 0xffff_ffff_ffff
        )
    }

    pub fn get(&self, info: &ResourceInfo, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&info.storage_key())?
            .get(&(ns.to_string(), name.to_string()))
    }

    /// All objects of a resource, optionally in one namespace.
    pub fn list(&self, info: &ResourceInfo, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .get(&info.storage_key())
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn record(&mut self, key: String, namespace: String, type_: &'static str, object: Value) {
        let ev = Arc::new(Event {
            rv: self.rv,
            key,
            namespace,
            type_,
            object,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.config.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Store `obj` under a new resourceVersion and tell watchers.
    pub fn put(&mut self, info: &ResourceInfo, ns: &str, name: &str, mut obj: Value) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let created = self
            .objects
            .entry(info.storage_key())
            .or_default()
            .insert((ns.to_string(), name.to_string()), obj.clone())
            .is_none();
        let type_ = if created { "ADDED" } else { "MODIFIED" };
        self.record(info.storage_key(), ns.to_string(), type_, obj.clone());
        obj
    }

    /// Remove an object under a new resourceVersion and tell watchers.
    pub fn remove(&mut self, info: &ResourceInfo, ns: &str, name: &str) -> Option<Value> {
        let mut obj = self
            .objects
            .get_mut(&info.storage_key())?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(info.storage_key(), ns.to_string(), "DELETED", obj.clone());
        Some(obj)
    }

    /// Remove every object of a storage key (optionally in one namespace).
    pub fn remove_all(&mut self, key: &str, ns: Option<&str>) {
        let keys: Vec<ObjKey> = self
            .objects
            .get(key)
            .map(|m| {
                m.keys()
                    .filter(|(n, _)| ns.is_none_or(|want| want == n))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for k in keys {
            if let Some(mut obj) = self.objects.get_mut(key).and_then(|m| m.remove(&k)) {
                self.rv += 1;
                obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.record(key.to_string(), k.0.clone(), "DELETED", obj);
            }
        }
    }

    /// Every storage key that holds namespaced objects.
    pub fn namespaced_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .resources
            .iter()
            .filter(|r| r.namespaced)
            .map(ResourceInfo::storage_key)
            .collect();
        keys.dedup();
        keys
    }
}
