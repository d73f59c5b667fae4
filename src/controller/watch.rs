//! How every watch of the controllers recovers when the apiserver goes away and comes back (an
//! upgrade of a managed control plane restarts it routinely).
//!
//! kube's `default_backoff` (client-go's: 0.8 s doubling to 30 s, plus as much jitter, reset only
//! after two quiet minutes) is kind to a struggling apiserver but slow for an operator: after a
//! restart of a few seconds every watch first fails to reconnect, then gets "too old resource
//! version" (410) and must relist, and each step waited for the grown backoff, so a new object
//! waited about two minutes. And a `Controller` backs off its merged trigger stream once more on
//! every error of any of its watches, so one watch's failures paused all of them.
//!
//! The policy here:
//! - a 410 is not a failure of the server's health but the end of a watch's window: relist at
//!   once (only a second 410 in a row, with no success between, backs off);
//! - other errors (connection refused, 5xx, 429, timeouts) back off exponentially from
//!   [`BASE`] to [`CAP`], each delay drawn in its upper half so that replicas spread out;
//! - any event that arrives resets it.
//!
//! Each watch stream is wrapped in [`recovering`]; the controllers' own trigger backoff is
//! switched off with [`NoTriggerBackoff`], so a failing watch never pauses the others.
//!
//! With `--watch-namespaces`, a namespaced kind is watched with one watch per namespace
//! ([`scoped_watch`]), each recovering on its own as above, merged into one stream that a single
//! reflector can take ([`NamespaceMerge`]).

use std::{collections::BTreeMap, fmt::Debug, pin::Pin, time::Duration};

use futures::{Stream, StreamExt, stream};
use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{utils::Backoff, watcher},
};
use rand::Rng;
use serde::de::DeserializeOwned;

use super::scope::WatchScope;

/// First delay after a failed connection.
pub(crate) const BASE: Duration = Duration::from_millis(250);
/// Longest delay between two attempts while the apiserver cannot be reached.
pub(crate) const CAP: Duration = Duration::from_secs(4);

/// What a watch error says about the apiserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WatchFailure {
    /// HTTP 410: the resource version the watch resumed from is gone (e.g. the apiserver
    /// restarted with a fresh watch cache); the watcher relists.
    Expired,
    /// Anything else: the apiserver is unreachable, overloaded or refusing.
    Unavailable,
}

impl WatchFailure {
    pub(crate) fn of(error: &watcher::Error) -> Self {
        let code = match error {
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => match e {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            },
            watcher::Error::NoResourceVersion => None,
        };
        if code == Some(410) {
            WatchFailure::Expired
        } else {
            WatchFailure::Unavailable
        }
    }
}

/// The retry state of one watch: failures since the last event that arrived.
#[derive(Debug, Default)]
pub(crate) struct WatchRetry {
    failures: u32,
    expired_since_success: bool,
}

impl WatchRetry {
    /// The delay before the next attempt after `failure`; `jitter` in [0, 1) picks where in the
    /// upper half of the exponential delay it falls.
    pub(crate) fn after(&mut self, failure: WatchFailure, jitter: f64) -> Duration {
        if failure == WatchFailure::Expired && !self.expired_since_success {
            self.expired_since_success = true;
            return Duration::ZERO;
        }
        self.failures = self.failures.saturating_add(1);
        let exponent = (self.failures - 1).min(16);
        let full = BASE.saturating_mul(2u32.pow(exponent)).min(CAP);
        full.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }

    /// An event arrived: the watch works again.
    pub(crate) fn succeeded(&mut self) {
        *self = Self::default();
    }
}

/// `watch` (a `watcher()` stream) with the recovery policy of this module: after an error is
/// passed on, the next attempt waits for [`WatchRetry::after`].
pub(crate) fn recovering<T, S>(
    what: &'static str,
    watch: S,
) -> impl Stream<Item = Result<T, watcher::Error>> + Send + 'static
where
    T: Send + 'static,
    S: Stream<Item = Result<T, watcher::Error>> + Send + 'static,
{
    type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, watcher::Error>> + Send>>;
    let state: (Boxed<T>, WatchRetry, Duration) =
        (Box::pin(watch), WatchRetry::default(), Duration::ZERO);
    stream::unfold(state, move |(mut watch, mut retry, wait)| async move {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let item = watch.next().await?;
        let wait = match &item {
            Ok(_) => {
                if retry.failures > 0 {
                    tracing::info!(watch = what, "watch resumed");
                }
                retry.succeeded();
                Duration::ZERO
            }
            Err(error) => {
                let failure = WatchFailure::of(error);
                let wait = retry.after(failure, rand::rng().random());
                match failure {
                    WatchFailure::Expired => {
                        tracing::debug!(watch = what, %error, retry_in = ?wait, "watch expired; relisting")
                    }
                    WatchFailure::Unavailable => {
                        tracing::warn!(watch = what, %error, retry_in = ?wait, "watch failed")
                    }
                }
                wait
            }
        };
        Some((item, (watch, retry, wait)))
    })
}

/// A boxed stream of watch events.
pub(crate) type EventStream<K> =
    Pin<Box<dyn Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send>>;

/// The events of `K` in `scope`, for a reflector: one cluster-wide watch for every namespace, or
/// one watch per listed namespace merged by [`NamespaceMerge`]. Each watch recovers on its own
/// ([`recovering`]).
pub(crate) fn scoped_watch<K>(
    what: &'static str,
    scope: &WatchScope,
    client: &Client,
    config: watcher::Config,
) -> EventStream<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    let Some(namespaces) = scope.namespaces() else {
        return Box::pin(recovering(
            what,
            watcher::watcher(Api::<K>::all(client.clone()), config),
        ));
    };
    let watches = namespaces.iter().enumerate().map(|(index, namespace)| {
        let api = Api::<K>::namespaced(client.clone(), namespace);
        Box::pin(recovering(what, watcher::watcher(api, config.clone())).map(move |e| (index, e)))
    });
    let mut merge = NamespaceMerge::new(namespaces.len());
    Box::pin(
        stream::select_all(watches)
            .flat_map(move |(index, event)| stream::iter(merge.event(index, event))),
    )
}

/// Turns the events of one watch per namespace into the events of one watch over all of them,
/// as a reflector needs them: a reflector's store is replaced by each (re)list (`Init` ..
/// `InitDone`), so a relist of one namespace (after a 410, say) must not look like the whole
/// list, or the other namespaces' objects would vanish from the store. Each namespace's objects
/// are remembered; once every namespace has listed, each (re)list of one is passed on as a list
/// of all of them (unchanged objects are then dropped by the controllers' predicates), and single
/// changes pass as they are. Before that, nothing passes: the store becomes ready only when
/// every namespace has been listed. Errors pass at once.
pub(crate) struct NamespaceMerge<K> {
    /// Per namespace: its objects by name, once it has been listed.
    listed: Vec<Option<BTreeMap<String, K>>>,
    /// Per namespace: the list under way.
    listing: Vec<Option<BTreeMap<String, K>>>,
}

impl<K: Resource + Clone> NamespaceMerge<K> {
    pub(crate) fn new(namespaces: usize) -> Self {
        Self {
            listed: (0..namespaces).map(|_| None).collect(),
            listing: (0..namespaces).map(|_| None).collect(),
        }
    }

    fn all_listed(&self) -> bool {
        self.listed.iter().all(Option::is_some)
    }

    /// What the merged watch says after `event` of the watch of namespace number `index`.
    pub(crate) fn event(
        &mut self,
        index: usize,
        event: Result<watcher::Event<K>, watcher::Error>,
    ) -> Vec<Result<watcher::Event<K>, watcher::Error>> {
        let event = match event {
            Err(error) => return vec![Err(error)],
            Ok(event) => event,
        };
        match event {
            watcher::Event::Init => {
                self.listing[index] = Some(BTreeMap::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                self.listing[index]
                    .get_or_insert_default()
                    .insert(object.name_any(), object);
                Vec::new()
            }
            watcher::Event::InitDone => {
                self.listed[index] = Some(self.listing[index].take().unwrap_or_default());
                if !self.all_listed() {
                    return Vec::new();
                }
                let objects = self.listed.iter().flatten().flat_map(|m| m.values());
                std::iter::once(watcher::Event::Init)
                    .chain(objects.cloned().map(watcher::Event::InitApply))
                    .chain(std::iter::once(watcher::Event::InitDone))
                    .map(Ok)
                    .collect()
            }
            watcher::Event::Apply(object) => {
                if let Some(objects) = &mut self.listed[index] {
                    objects.insert(object.name_any(), object.clone());
                }
                if self.all_listed() {
                    vec![Ok(watcher::Event::Apply(object))]
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Delete(object) => {
                if let Some(objects) = &mut self.listed[index] {
                    objects.remove(&object.name_any());
                }
                if self.all_listed() {
                    vec![Ok(watcher::Event::Delete(object))]
                } else {
                    Vec::new()
                }
            }
        }
    }
}

/// A `Controller`'s trigger backoff that never waits: each watch paces itself ([`recovering`]),
/// so one failing watch does not hold up the triggers of the others.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct NoTriggerBackoff;

impl Iterator for NoTriggerBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoTriggerBackoff {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use kube::core::Status;

    fn gone() -> watcher::Error {
        let mut status = Status::failure("too old resource version: 10 (20)", "Expired");
        status.code = 410;
        watcher::Error::WatchError(Box::new(status))
    }

    fn refused() -> watcher::Error {
        let mut status = Status::failure("service unavailable", "ServiceUnavailable");
        status.code = 503;
        watcher::Error::WatchStartFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn errors_are_told_apart_by_status_code() {
        assert_eq!(WatchFailure::of(&gone()), WatchFailure::Expired);
        let mut status = Status::failure("continue token expired", "Expired");
        status.code = 410;
        assert_eq!(
            WatchFailure::of(&watcher::Error::InitialListFailed(kube::Error::Api(
                Box::new(status)
            ))),
            WatchFailure::Expired
        );
        assert_eq!(WatchFailure::of(&refused()), WatchFailure::Unavailable);
        assert_eq!(
            WatchFailure::of(&watcher::Error::NoResourceVersion),
            WatchFailure::Unavailable
        );
    }

    #[test]
    fn an_expired_watch_relists_at_once_but_not_in_a_loop() {
        let mut retry = WatchRetry::default();
        assert_eq!(retry.after(WatchFailure::Expired, 0.9), Duration::ZERO);
        assert_eq!(
            retry.after(WatchFailure::Expired, 0.0),
            BASE / 2,
            "a second 410 without a success between backs off"
        );
        retry.succeeded();
        assert_eq!(retry.after(WatchFailure::Expired, 0.9), Duration::ZERO);
    }

    #[test]
    fn failures_back_off_exponentially_up_to_the_cap_and_reset_on_success() {
        let mut retry = WatchRetry::default();
        let delays: Vec<Duration> = (0..8)
            .map(|_| retry.after(WatchFailure::Unavailable, 0.999_999))
            .collect();
        let millis: Vec<u128> = delays.iter().map(|d| d.as_millis()).collect();
        assert_eq!(millis, [249, 499, 999, 1999, 3999, 3999, 3999, 3999]);
        retry.succeeded();
        assert_eq!(retry.after(WatchFailure::Unavailable, 0.0), BASE / 2);
    }

    #[test]
    fn delays_fall_in_the_upper_half_of_the_exponential_step() {
        for failures in 1..10u32 {
            for jitter in [0.0, 0.25, 0.5, 0.999] {
                let mut retry = WatchRetry {
                    failures: failures - 1,
                    expired_since_success: false,
                };
                let full = BASE.saturating_mul(2u32.pow(failures - 1)).min(CAP);
                let delay = retry.after(WatchFailure::Unavailable, jitter);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "{failures} {jitter}: {delay:?}"
                );
            }
        }
    }

    fn config_map(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ConfigMap {
        let mut object = k8s_openapi::api::core::v1::ConfigMap::default();
        object.metadata.namespace = Some(namespace.to_owned());
        object.metadata.name = Some(name.to_owned());
        object
    }

    /// The merged events applied to a reflector's store: what it holds (`namespace/name`), and
    /// whether it became ready.
    fn store_after(
        merge: &mut NamespaceMerge<k8s_openapi::api::core::v1::ConfigMap>,
        writer: &mut kube::runtime::reflector::store::Writer<k8s_openapi::api::core::v1::ConfigMap>,
        index: usize,
        event: watcher::Event<k8s_openapi::api::core::v1::ConfigMap>,
    ) -> Vec<String> {
        for merged in merge.event(index, Ok(event)) {
            writer.apply_watcher_event(&merged.unwrap());
        }
        let mut held: Vec<String> = writer
            .as_reader()
            .state()
            .iter()
            .map(|o| format!("{}/{}", o.namespace().unwrap(), o.name_any()))
            .collect();
        held.sort();
        held
    }

    #[test]
    fn a_relist_of_one_namespace_keeps_the_others_in_the_store() {
        use watcher::Event::*;
        let mut merge = NamespaceMerge::new(2);
        let mut writer = kube::runtime::reflector::store::Writer::default();
        let reader = writer.as_reader();
        let mut step = |i, e| store_after(&mut merge, &mut writer, i, e);
        step(0, Init);
        step(0, InitApply(config_map("a", "one")));
        assert!(
            step(0, InitDone).is_empty(),
            "b not listed yet: nothing passes"
        );
        assert!(step(0, Apply(config_map("a", "two"))).is_empty());
        step(1, Init);
        step(1, InitApply(config_map("b", "three")));
        assert_eq!(step(1, InitDone), ["a/one", "a/two", "b/three"]);
        assert!(reader.wait_until_ready().now_or_never().is_some(), "ready");
        assert_eq!(
            step(1, Apply(config_map("b", "four"))),
            ["a/one", "a/two", "b/four", "b/three"]
        );
        // a relists (its watch expired) and "two" was deleted meanwhile: b's objects stay.
        step(0, Init);
        step(0, InitApply(config_map("a", "one")));
        assert_eq!(step(0, InitDone), ["a/one", "b/four", "b/three"]);
        assert_eq!(
            step(1, Delete(config_map("b", "three"))),
            ["a/one", "b/four"]
        );
        // Errors pass at once.
        let error = merge.event(0, Err(watcher::Error::NoResourceVersion));
        assert!(matches!(error[..], [Err(_)]));
    }

    #[tokio::test(start_paused = true)]
    async fn the_stream_waits_after_errors_and_not_after_events() {
        let items = vec![Err(refused()), Err(refused()), Ok(1), Err(gone()), Ok(2)];
        let watch = recovering("test", stream::iter(items));
        tokio::pin!(watch);
        let start = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while let Some(item) = watch.next().await {
            seen.push((item.is_ok(), start.elapsed()));
        }
        let at: Vec<(bool, u128)> = seen.iter().map(|(ok, t)| (*ok, t.as_millis())).collect();
        // Two failures wait 125-250 ms and 250-500 ms; the event resets; the 410 relists at once.
        assert_eq!(at[0], (false, 0));
        assert!((125..=250).contains(&at[1].1), "{at:?}");
        assert!(at[2].0 && (375..=750).contains(&at[2].1), "{at:?}");
        assert_eq!(at[3].1, at[2].1, "{at:?}");
        assert_eq!(at[4], (true, at[3].1), "{at:?}");
    }
}
