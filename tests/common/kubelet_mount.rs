//! A Secret mounted as a directory, as kubelet lays it out, for consumers that run as local
//! processes (tests/consumers.rs).
//!
//! Kubelet projects a Secret volume with its `AtomicWriter` (kubernetes `pkg/volume/util/
//! atomic_writer.go`): the data lives in a timestamped directory `..<UTC timestamp>.<random>`,
//! `..data` is a symlink to it, and each key is a symlink `<key> -> ..data/<key>`. An update
//! writes a new timestamped directory, points a new symlink `..data_tmp` at it, renames that over
//! `..data` (atomic: a reader sees all old files or all new ones), adds the symlinks of new keys,
//! removes those of keys that are gone, and then the old directory. [`write_atomically`] follows
//! those steps one by one.
//!
//! [`KubeletMount`] keeps such a directory in step with one Secret, as kubelet does for a running
//! pod: it watches the Secret and writes the first version it sees at once (the pod starts once
//! the Secret exists), and every later change at the next sync of the pod, every `sync_period`
//! (kubelet's `syncFrequency`, one minute by default; with the Watch change-detection strategy
//! its Secret cache is current, so a change shows up at the next sync). A deleted Secret leaves
//! the last content in place, as it does in a running pod.
//!
//! It records every version of the Secret it saw (the credentials' access key ID and expiration,
//! for tests to attribute what reached AWS to a Secret) and when it was mounted. `Debug` of a
//! [`SecretVersion`] shows no access key ID; nothing here prints one. The directory holds
//! credentials: it is created readable by its owner only and removed when the mount is dropped.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};

/// kubelet's `..data` symlink and its temporary name during a swap.
const DATA_DIR: &str = "..data";
const NEW_DATA_DIR: &str = "..data_tmp";
/// The mode of each file in a Secret volume without `defaultMode` (0644).
pub const DEFAULT_MODE: u32 = 0o644;

/// Projects `payload` into `target_dir` as kubelet's `AtomicWriter.Write` does (the numbers are
/// its steps). Returns whether a new timestamped directory was written (`false`: the content was
/// already there; only missing user-visible symlinks were created).
pub fn write_atomically(
    target_dir: &Path,
    payload: &BTreeMap<String, Vec<u8>>,
    mode: u32,
) -> io::Result<bool> {
    // (1) Secret keys are plain file names; kubelet refuses paths that start with `..`.
    for key in payload.keys() {
        if key.is_empty() || key.contains('/') || key.starts_with("..") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid key {key:?} for a volume"),
            ));
        }
    }
    // (2) The current timestamped directory, from the data directory symlink.
    let data_dir = target_dir.join(DATA_DIR);
    let old_ts = match std::fs::read_link(&data_dir) {
        Ok(target) => Some(target),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut to_remove = BTreeSet::new();
    let mut should_write = true;
    let mut old_ts_to_delete = old_ts.clone();
    if let Some(old_ts) = &old_ts {
        let old_path = target_dir.join(old_ts);
        // (3) Keys of the old version that the payload no longer has.
        for entry in std::fs::read_dir(&old_path)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if !payload.contains_key(&name) {
                to_remove.insert(name);
            }
        }
        // (4) Whether the data differs from what is there.
        let same = payload.iter().all(|(key, content)| {
            std::fs::read(old_path.join(key)).is_ok_and(|old| old == *content)
        });
        if same && to_remove.is_empty() {
            should_write = false;
            old_ts_to_delete = None;
        }
    }
    if should_write {
        // (5) A new timestamped directory, 0755 whatever the umask.
        let ts_name = format!(
            "..{}.{}",
            Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S"),
            rand::random::<u32>()
        );
        let ts_dir = target_dir.join(&ts_name);
        std::fs::create_dir(&ts_dir)?;
        std::fs::set_permissions(&ts_dir, std::fs::Permissions::from_mode(0o755))?;
        // (6) The payload, each file with the volume's mode whatever the umask.
        for (key, content) in payload {
            let path = ts_dir.join(key);
            std::fs::write(&path, content)?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        }
        // (8) `..data_tmp` -> the new directory, then (9) renamed over `..data`: atomic.
        let new_data_dir = target_dir.join(NEW_DATA_DIR);
        if let Err(e) = symlink(&ts_name, &new_data_dir) {
            let _ = std::fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
        if let Err(e) = std::fs::rename(&new_data_dir, &data_dir) {
            let _ = std::fs::remove_file(&new_data_dir);
            let _ = std::fs::remove_dir_all(&ts_dir);
            return Err(e);
        }
    }
    // (10) The user-visible symlinks `<key> -> ..data/<key>`, where missing.
    for key in payload.keys() {
        let visible = target_dir.join(key);
        if std::fs::symlink_metadata(&visible).is_err() {
            symlink(Path::new(DATA_DIR).join(key), &visible)?;
        }
    }
    // (11) The user-visible symlinks of keys that are gone.
    for key in &to_remove {
        std::fs::remove_file(target_dir.join(key))?;
    }
    // (12) The previous timestamped directory.
    if let Some(old_ts) = old_ts_to_delete {
        std::fs::remove_dir_all(target_dir.join(old_ts))?;
    }
    Ok(should_write)
}

/// One version of the Secret as the mount saw it.
#[derive(Clone, PartialEq)]
pub struct SecretVersion {
    pub resource_version: String,
    /// When the watch delivered it.
    pub seen: Timestamp,
    /// When it was written to the directory; `None` while pending, or when a later version
    /// replaced it before the next sync.
    pub mounted: Option<Timestamp>,
    /// `AccessKeyId` of its `credentials.json` (never print it).
    pub access_key_id: Option<String>,
    /// `Expiration` of its `credentials.json`.
    pub expiration: Option<Timestamp>,
}

impl std::fmt::Debug for SecretVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretVersion")
            .field("resource_version", &self.resource_version)
            .field("seen", &self.seen)
            .field("mounted", &self.mounted)
            .field(
                "access_key_id",
                &self.access_key_id.as_ref().map(|_| "(redacted)"),
            )
            .field("expiration", &self.expiration)
            .finish()
    }
}

#[derive(Default)]
struct MountState {
    versions: Vec<SecretVersion>,
    /// The data of the newest version, and whether it is what the directory holds.
    latest: Option<BTreeMap<String, Vec<u8>>>,
    latest_mounted: bool,
    errors: Vec<String>,
}

/// A directory kept in step with one Secret as kubelet keeps a pod's Secret volume (module docs).
pub struct KubeletMount {
    dir: PathBuf,
    state: Arc<Mutex<MountState>>,
    task: tokio::task::JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The data of `secret` as files, and its credentials' access key ID and expiration.
fn files_of(secret: &Secret) -> BTreeMap<String, Vec<u8>> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect()
}

fn credentials_of(files: &BTreeMap<String, Vec<u8>>) -> (Option<String>, Option<Timestamp>) {
    let json: Option<serde_json::Value> = files
        .get("credentials.json")
        .and_then(|bytes| serde_json::from_slice(bytes).ok());
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(|v| v.as_str())
            .map(str::to_owned)
    };
    (
        field("AccessKeyId"),
        field("Expiration").and_then(|t| t.parse().ok()),
    )
}

impl KubeletMount {
    /// Starts mounting Secret `namespace/name` into `dir` (created, mode 0700, if missing),
    /// applying changes every `sync_period` (`Duration::ZERO`: as soon as they are seen).
    pub fn start(
        client: &Client,
        namespace: &str,
        name: &str,
        dir: &Path,
        sync_period: Duration,
    ) -> Self {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", dir.display()));
        let state = Arc::new(Mutex::new(MountState::default()));
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let task = tokio::spawn(run(
            watcher(api, config).default_backoff().boxed(),
            dir.to_owned(),
            sync_period,
            state.clone(),
        ));
        Self {
            dir: dir.to_owned(),
            state,
            task,
        }
    }

    /// The mounted directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every version of the Secret seen so far, in order.
    pub fn versions(&self) -> Vec<SecretVersion> {
        lock(&self.state).versions.clone()
    }

    /// Errors writing the directory so far.
    pub fn errors(&self) -> Vec<String> {
        lock(&self.state).errors.clone()
    }

    /// Waits until the first version is mounted (the pod could start).
    pub async fn wait_mounted(&self, timeout: Duration) {
        let what = format!("the Secret to be mounted in {}", self.dir.display());
        super::poll(&what, timeout, || {
            let state = lock(&self.state);
            let result = if state.versions.iter().any(|v| v.mounted.is_some()) {
                Ok(())
            } else {
                Err(format!(
                    "versions {:?}, errors {:?}",
                    state.versions, state.errors
                ))
            };
            async move { result }
        })
        .await
    }
}

impl Drop for KubeletMount {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run(
    mut events: futures::stream::BoxStream<'static, Result<watcher::Event<Secret>, watcher::Error>>,
    dir: PathBuf,
    sync_period: Duration,
    state: Arc<Mutex<MountState>>,
) {
    let mut sync = tokio::time::interval(sync_period.max(Duration::from_millis(100)));
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => {
                let secret = match event {
                    Some(Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s))) => s,
                    Some(_) => continue,
                    None => return,
                };
                let files = files_of(&secret);
                let mut state = lock(&state);
                if state.latest.as_ref() == Some(&files) {
                    continue;
                }
                let (access_key_id, expiration) = credentials_of(&files);
                state.versions.push(SecretVersion {
                    resource_version: secret.metadata.resource_version.clone().unwrap_or_default(),
                    seen: Timestamp::now(),
                    mounted: None,
                    access_key_id,
                    expiration,
                });
                let first = state.latest.is_none();
                state.latest = Some(files);
                state.latest_mounted = false;
                // The pod starts once the Secret exists; later changes wait for a sync.
                if first || sync_period.is_zero() {
                    mount_latest(&dir, &mut state);
                }
            }
            _ = sync.tick() => mount_latest(&dir, &mut lock(&state)),
        }
    }
}

fn mount_latest(dir: &Path, state: &mut MountState) {
    if state.latest_mounted {
        return;
    }
    let Some(files) = state.latest.clone() else {
        return;
    };
    match write_atomically(dir, &files, DEFAULT_MODE) {
        Ok(_) => {
            state.latest_mounted = true;
            if let Some(version) = state.versions.last_mut() {
                version.mounted = Some(Timestamp::now());
            }
        }
        Err(e) => state.errors.push(format!("writing {}: {e}", dir.display())),
    }
}
