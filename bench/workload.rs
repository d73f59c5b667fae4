//! Applying N objects at once and timing, per object, the way from create to ready; deleting
//! them and timing the way to gone. Works on any kind through `DynamicObject`, so our
//! CrossAccountRoles and a peer's Roles are measured by the same code.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;

/// Whether an object counts as converged.
pub type ReadyCheck = fn(&DynamicObject) -> bool;

/// How long N objects took to converge.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Convergence {
    pub objects: usize,
    /// From the first create request to the last object seen ready, seconds.
    pub all_ready_seconds: f64,
    /// Per object, create request to first seen ready: percentiles, seconds.
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
    /// How long sending the N create requests took, seconds.
    pub create_requests_seconds: f64,
    /// When each object was first seen ready, seconds after the first create request, in
    /// order (the curve of objects Ready over time that `bench/plot/plot.py` draws).
    pub ready_at_seconds: Vec<f64>,
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Creates `objects` (at most `parallel` requests in flight) and waits until every one is ready
/// by `ready`, or `timeout` passes (then panics, naming how many are missing).
pub async fn converge(
    api: &Api<DynamicObject>,
    objects: Vec<DynamicObject>,
    ready: ReadyCheck,
    parallel: usize,
    timeout: Duration,
) -> Convergence {
    let seen_ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let progress = Arc::new(tokio::sync::Notify::new());
    // The watch is established (initial list done) before the first create, so no transition
    // can be missed.
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel::<()>();
    let watch = {
        let (seen, progress, api) = (seen_ready.clone(), progress.clone(), api.clone());
        tokio::spawn(async move {
            let mut synced = Some(synced_tx);
            let mut events = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        if let Some(tx) = synced.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj))
                        if ready(&obj) =>
                    {
                        let now = Instant::now();
                        seen.lock().unwrap().entry(obj.name_any()).or_insert(now);
                        progress.notify_one();
                    }
                    _ => {}
                }
            }
        })
    };
    synced_rx
        .await
        .expect("watch ended before its initial list");

    let names: Vec<String> = objects.iter().map(|o| o.name_any()).collect();
    let start = Instant::now();
    let created: HashMap<String, Instant> = stream::iter(objects)
        .map(|obj| async move {
            let name = obj.name_any();
            let at = Instant::now();
            api.create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            (name, at)
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let create_requests = start.elapsed();

    let deadline = start + timeout;
    loop {
        let done = seen_ready.lock().unwrap().len();
        if done >= names.len() {
            break;
        }
        if Instant::now() >= deadline {
            watch.abort();
            panic!(
                "{} of {} objects were not ready within {timeout:?}",
                names.len() - done,
                names.len()
            );
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), progress.notified()).await;
    }
    watch.abort();

    let seen = seen_ready.lock().unwrap();
    let mut latencies: Vec<f64> = names
        .iter()
        .map(|n| seen[n].saturating_duration_since(created[n]).as_secs_f64())
        .collect();
    latencies.sort_by(f64::total_cmp);
    let last = names.iter().map(|n| seen[n]).max().unwrap_or(start);
    let mut ready_at_seconds: Vec<f64> = names
        .iter()
        .map(|n| seen[n].saturating_duration_since(start).as_secs_f64())
        .collect();
    ready_at_seconds.sort_by(f64::total_cmp);
    Convergence {
        objects: names.len(),
        all_ready_seconds: last.duration_since(start).as_secs_f64(),
        p50_seconds: percentile(&latencies, 50.0),
        p90_seconds: percentile(&latencies, 90.0),
        p99_seconds: percentile(&latencies, 99.0),
        max_seconds: latencies.last().copied().unwrap_or(0.0),
        create_requests_seconds: create_requests.as_secs_f64(),
        ready_at_seconds,
    }
}

/// Deletes every object of the namespace and waits until none is left (finalizers done).
/// Returns the seconds that took.
pub async fn delete_all(api: &Api<DynamicObject>, parallel: usize, timeout: Duration) -> f64 {
    let start = Instant::now();
    let names: Vec<String> = api
        .list(&ListParams::default())
        .await
        .expect("list objects to delete")
        .items
        .iter()
        .map(|o| o.name_any())
        .collect();
    stream::iter(names)
        .map(|name| async move {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => panic!("delete {name}: {e}"),
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<()>>()
        .await;
    loop {
        let left = api
            .list(&ListParams::default().limit(1))
            .await
            .expect("list objects")
            .items
            .len();
        if left == 0 {
            return start.elapsed().as_secs_f64();
        }
        if start.elapsed() > timeout {
            panic!("objects still present {timeout:?} after deleting them");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The status of condition `type_` of an object, if it has one.
pub fn condition_status<'a>(obj: &'a DynamicObject, type_: &str) -> Option<&'a str> {
    obj.data
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(type_))?
        .get("status")?
        .as_str()
}
