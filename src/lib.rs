//! cross-account-operator: manages cross-account IAM roles and temporary STS credentials from
//! Kubernetes custom resources.

pub mod api;
pub mod aws;
pub mod config;
pub mod controller;
pub mod crds;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod startup;
pub mod telemetry;
