//! Step 6 (AWS writes): carries out a plan in order, in the target account or (grants) the source
//! account. Removing something already gone counts as done.

use std::collections::BTreeSet;

use super::observe::PrincipalReads;
use crate::aws::{AccountApi, AwsError, Change, Principal, grants};

/// [`apply_changes`] for a role's sync, with `principals` kept in step: one reconcile at a time
/// attaches a principal's grant policy (a reconcile that waited drops the attach when the one
/// before it made it), and each attach's outcome is recorded.
pub(crate) async fn apply_granting<A: AccountApi>(
    target: &A,
    source: &A,
    principals: &PrincipalReads,
    mut changes: Vec<Change>,
) -> (Vec<Change>, Result<(), AwsError>) {
    let attaching: BTreeSet<Principal> = changes
        .iter()
        .filter_map(|change| match change {
            Change::AttachGrantPolicy { principal, .. } => Some(principal.clone()),
            _ => None,
        })
        .collect();
    let _held = principals.attaching(&attaching).await;
    principals.drop_known_attached(&mut changes);
    let (applied, result) = apply_changes(target, source, &changes).await;
    for change in &changes {
        if let Change::AttachGrantPolicy { principal, scope } = change {
            principals.attached(principal, scope, result.is_ok());
        }
    }
    (applied, result)
}

/// Applies `changes` in order. A failure does not stop the changes that do not depend on it: the
/// ones after it are still made, except removals (new access is in place before old access goes,
/// so nothing is taken away while something failed) and everything after a failed CreateRole.
/// Returns the changes that were made (for events) and the first failure, if any. Attaching a
/// grant policy counts as made when it wrote something.
pub(crate) async fn apply_changes<A: AccountApi>(
    target: &A,
    source: &A,
    changes: &[Change],
) -> (Vec<Change>, Result<(), AwsError>) {
    let mut applied = Vec::new();
    let mut failure: Option<AwsError> = None;
    for change in changes {
        if failure.is_some() && change.is_removal() {
            continue;
        }
        let result = match change {
            Change::AttachGrantPolicy { principal, scope } => {
                let (writes, result) = grants::attach(source, principal, scope).await;
                result.map(|()| !writes.is_empty())
            }
            _ => {
                let account = if change.in_source_account() {
                    source
                } else {
                    target
                };
                account.apply(change).await.map(|()| true)
            }
        };
        match result {
            Ok(true) => applied.push(change.clone()),
            Ok(false) => {}
            Err(e) if e.is_not_found() && change.is_removal() => {}
            Err(e) => {
                let fatal = matches!(change, Change::CreateRole { .. });
                failure.get_or_insert(e);
                if fatal {
                    break;
                }
            }
        }
    }
    (applied, failure.map_or(Ok(()), Err))
}
