//! Step 6 (AWS writes): carries out a plan in order, in the target account or (grants) the source
//! account. Removing something already gone counts as done.

use crate::aws::{AccountApi, AwsError, Change};

/// Applies `changes` in order and stops at the first failure. Returns the changes that were made
/// (for events) and the failure, if any.
pub(crate) async fn apply_changes<A: AccountApi>(
    target: &A,
    source: &A,
    changes: &[Change],
) -> (Vec<Change>, Result<(), AwsError>) {
    let mut applied = Vec::new();
    for change in changes {
        let account = if change.in_source_account() {
            source
        } else {
            target
        };
        match account.apply(change).await {
            Ok(()) => applied.push(change.clone()),
            Err(e) if e.is_not_found() && change.is_removal() => {}
            Err(e) => return (applied, Err(e)),
        }
    }
    (applied, Ok(()))
}
