//! Workers for CrossAccountRole reconciles, given in the order objects asked for one.
//!
//! kube-runtime caps concurrency by holding the objects that are due in a hash set and taking
//! any one of them when a worker frees (`Scheduler::pending`, kube-runtime 5). While due objects
//! keep arriving faster than they are reconciled (resyncs outpacing AWS), the same ones keep
//! being taken and others, a new object among them, can wait indefinitely. The role controller
//! therefore runs without kube-runtime's cap, and each reconcile first waits here, in a fair
//! (first come, first served) queue: an object waits at most for those that were due before it.

use std::time::Instant;

use tokio::sync::{Semaphore, SemaphorePermit};

pub(crate) struct Turns {
    workers: Semaphore,
}

impl Turns {
    /// `concurrency` workers (at least one).
    pub(crate) fn new(concurrency: u16) -> Self {
        Self {
            workers: Semaphore::new(usize::from(concurrency.max(1))),
        }
    }

    /// A worker, once those who asked before have theirs, with how long that took; `None` once
    /// the controllers stop (what waits then is left for the next leader).
    pub(crate) async fn take(&self) -> Option<(SemaphorePermit<'_>, std::time::Duration)> {
        let asked = Instant::now();
        let permit = self.workers.acquire().await.ok()?;
        Some((permit, asked.elapsed()))
    }

    /// No more turns: every reconcile still waiting returns at once.
    pub(crate) fn close(&self) {
        self.workers.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn turns_are_given_in_the_order_they_were_asked_for() {
        let turns = Arc::new(Turns::new(1));
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (first, _) = turns.take().await.unwrap();
        let mut waiting = Vec::new();
        for i in 0..20 {
            let (turns, order) = (turns.clone(), order.clone());
            waiting.push(tokio::spawn(async move {
                let _turn = turns.take().await.unwrap();
                order.lock().unwrap().push(i);
            }));
            // (One thread: the task runs, and queues, before the next one is spawned.)
            tokio::task::yield_now().await;
        }
        assert!(order.lock().unwrap().is_empty(), "the worker is held");
        drop(first);
        for task in waiting {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn closing_releases_those_waiting() {
        let turns = Arc::new(Turns::new(1));
        let held = turns.take().await.unwrap();
        let waiter = tokio::spawn({
            let turns = turns.clone();
            async move { turns.take().await.is_none() }
        });
        tokio::task::yield_now().await;
        turns.close();
        assert!(waiter.await.unwrap(), "a waiting reconcile gives up");
        drop(held);
        assert!(turns.take().await.is_none());
    }
}
