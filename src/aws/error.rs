//! AWS errors: what kind of failure a call had, in one vocabulary. [`AwsError::category`] is the
//! metric label, the event reason and the condition reason of a failure; never the payload.

use thiserror::Error;

/// What kind of failure an AWS call had; decides between retrying, waiting and giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AwsErrorKind {
    /// The entity does not exist (IAM `NoSuchEntity`).
    NotFound,
    /// The caller may not do this (or its credentials are not accepted).
    AccessDenied,
    /// AWS asked us to slow down.
    Throttled,
    /// The entity exists already (IAM `EntityAlreadyExists`).
    AlreadyExists,
    /// AWS rejected the input (malformed policy, validation error).
    Invalid,
    /// A quota was hit (e.g. too many attached policies).
    LimitExceeded,
    /// The entity is in use and cannot be deleted (IAM `DeleteConflict`, e.g. a role still in an
    /// instance profile).
    Conflict,
    /// A server error, timeout or network failure: worth retrying.
    Transient,
    /// Anything else.
    Other,
}

/// A failed AWS API call. The message is AWS's own (it names ARNs, never credentials).
#[derive(Error, Debug)]
#[error("AWS {service} {operation} failed: {message}{}", request_id.as_ref().map(|id| format!(" (request ID {id})")).unwrap_or_default())]
pub struct AwsError {
    pub service: &'static str,
    pub operation: &'static str,
    pub kind: AwsErrorKind,
    // Boxed strings keep the error small: it travels in every Result of the reconcile path.
    pub code: Option<Box<str>>,
    pub message: Box<str>,
    pub request_id: Option<Box<str>>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl AwsErrorKind {
    /// The failure's name in the operator's one vocabulary of error categories.
    pub fn category(self) -> &'static str {
        match self {
            AwsErrorKind::NotFound => "AwsNotFound",
            AwsErrorKind::AccessDenied => "AwsAccessDenied",
            AwsErrorKind::Throttled => "AwsThrottled",
            AwsErrorKind::AlreadyExists => "AwsAlreadyExists",
            AwsErrorKind::Invalid => "AwsInvalidInput",
            AwsErrorKind::LimitExceeded => "AwsLimitExceeded",
            AwsErrorKind::Conflict => "AwsDeleteConflict",
            AwsErrorKind::Transient => "AwsUnavailable",
            AwsErrorKind::Other => "AwsError",
        }
    }
}

impl AwsError {
    pub fn category(&self) -> &'static str {
        self.kind.category()
    }

    /// IAM refused a policy naming a principal it does not know (`MalformedPolicyDocument`:
    /// "Invalid principal in policy").
    pub fn is_invalid_principal(&self) -> bool {
        self.kind == AwsErrorKind::Invalid
            && self
                .message
                .to_ascii_lowercase()
                .contains("invalid principal")
    }

    /// What failed, without the request ID: stable across attempts, so a condition that carries
    /// it does not change (and trigger a status write) on every retry. Logs and events carry
    /// the full error.
    pub fn summary(&self) -> String {
        format!(
            "AWS {} {} failed: {}",
            self.service, self.operation, self.message
        )
    }

    pub fn is_not_found(&self) -> bool {
        self.kind == AwsErrorKind::NotFound
    }

    /// Classifies an AWS error from its code and HTTP status.
    pub fn classify(code: Option<&str>, status: Option<u16>) -> AwsErrorKind {
        match code {
            Some("NoSuchEntity" | "NoSuchEntityException" | "NotFound") => AwsErrorKind::NotFound,
            Some(
                "AccessDenied"
                | "AccessDeniedException"
                | "InvalidClientTokenId"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "UnrecognizedClientException",
            ) => AwsErrorKind::AccessDenied,
            Some(
                "Throttling"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "TooManyRequestsException"
                | "RequestThrottled",
            ) => AwsErrorKind::Throttled,
            Some("EntityAlreadyExists") => AwsErrorKind::AlreadyExists,
            Some(
                "MalformedPolicyDocument"
                | "ValidationError"
                | "InvalidInput"
                | "InvalidParameterValue"
                | "PackedPolicyTooLarge",
            ) => AwsErrorKind::Invalid,
            Some("LimitExceeded") => AwsErrorKind::LimitExceeded,
            Some("DeleteConflict") => AwsErrorKind::Conflict,
            Some(
                "ServiceFailure"
                | "InternalFailure"
                | "ServiceUnavailable"
                | "ConcurrentModification",
            ) => AwsErrorKind::Transient,
            _ => match status {
                Some(403) => AwsErrorKind::AccessDenied,
                Some(404) => AwsErrorKind::NotFound,
                Some(429) => AwsErrorKind::Throttled,
                Some(500..) | None => AwsErrorKind::Transient,
                Some(_) => AwsErrorKind::Other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code_then_status() {
        let kind = AwsError::classify;
        assert_eq!(
            kind(Some("NoSuchEntity"), Some(404)),
            AwsErrorKind::NotFound
        );
        assert_eq!(kind(Some("Throttling"), Some(400)), AwsErrorKind::Throttled);
        assert_eq!(
            kind(Some("EntityAlreadyExists"), Some(409)),
            AwsErrorKind::AlreadyExists
        );
        assert_eq!(
            kind(Some("MalformedPolicyDocument"), Some(400)),
            AwsErrorKind::Invalid
        );
        assert_eq!(
            kind(Some("AccessDenied"), Some(403)),
            AwsErrorKind::AccessDenied
        );
        // moto's authorization errors do not decode into a code: the status decides.
        assert_eq!(kind(None, Some(403)), AwsErrorKind::AccessDenied);
        assert_eq!(kind(None, Some(503)), AwsErrorKind::Transient);
        assert_eq!(
            kind(None, None),
            AwsErrorKind::Transient,
            "no response at all is a network error"
        );
        assert_eq!(kind(Some("SomethingNew"), Some(400)), AwsErrorKind::Other);
    }
}
