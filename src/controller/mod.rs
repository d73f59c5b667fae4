//! The kube-runtime wiring of the controllers.

pub(crate) mod watch;
