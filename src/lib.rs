//! cross-account-operator: manages cross-account IAM roles and temporary STS credentials from
//! Kubernetes custom resources.
//!
//! Imports run one way: the binaries -> [`controller`] -> `pipeline` -> `aws` / [`api`]; the AWS
//! seam imports nothing of Kubernetes, and no pipeline step imports a later one.

pub mod admission;
pub mod api;
pub mod aws;
pub mod config;
pub mod controller;
pub mod crds;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod naming;
pub(crate) mod pipeline;
pub use pipeline::{guardrail_refusals, planned_writes_for_new_role};
pub mod startup;
pub mod telemetry;
