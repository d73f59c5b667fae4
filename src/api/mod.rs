//! The `crossaccount.io/v1alpha1` API: custom resource types and the well-known names the operator
//! writes (finalizer, field manager, labels, annotations, condition types and reasons).

// The derive's `printcolumn(...)` lists repeat `type_ = ...`, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
pub mod aws_account;
#[allow(clippy::duplicated_attributes)]
pub mod cross_account_role;
pub mod names;

pub use aws_account::{
    AllowedNamespaces, AwsAccount, AwsAccountSpec, AwsAccountStatus, DEFAULT_DENIED_ACTIONS,
    GrantRule,
};
pub use cross_account_role::{
    CredentialsSpec, CredentialsStatus, CrossAccountRole, CrossAccountRoleSpec,
    CrossAccountRoleStatus, DEFAULT_MOUNT_PATH, DeletionPolicy, Grant, InlinePolicy, Policies,
    RestartKind, RestartTarget, Trust,
};
