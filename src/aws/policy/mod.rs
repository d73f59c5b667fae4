//! IAM policy documents: reading them as IAM returns them, comparing them by meaning, and
//! checking user-supplied ones before anything reaches AWS.
//!
//! IAM hands documents back URL-encoded and free to reorder keys or to turn `"Action": "x"` into
//! `["x"]`. The reconciler must not rewrite a document that only looks different, so comparison
//! goes through [`normalize()`]. Tenants write inline and session policies by hand, so
//! [`validate_document`] explains mistakes in terms of the policy language rather than leaving it
//! to an opaque `MalformedPolicyDocument` from IAM.
//!
//! Each job has its own file, with its tests beside it: `parse.rs` reads documents (plain or
//! URL-encoded JSON, refusing repeated keys a JSON parser would silently collapse),
//! `normalize.rs` computes the canonical form that comparison uses, and `validate.rs` checks the
//! grammar of user-supplied documents. This file holds what they share: the error and kind
//! types, the text and size of a document as IAM sees it, and the helpers that word messages.
//! Nothing here knows the reconciler, the Kubernetes API or the AWS SDK: documents are plain
//! `serde_json` values, so all of it is tested on its own.

mod normalize;
mod parse;
#[cfg(test)]
pub(crate) mod testing;
mod validate;

use std::fmt;

use serde_json::Value;

pub(crate) use normalize::equivalent;
pub(crate) use parse::parse_observed;
pub(crate) use validate::validate_document;
// No code outside this module calls these two at the moment (the reconciler compares with
// `equivalent`, the SDK reads IAM's answers with `parse_observed`); they stay importable under
// the paths callers have always used.
#[allow(
    unused_imports,
    reason = "part of the module's interface without a caller outside it today"
)]
pub(crate) use {normalize::normalize, parse::parse_document};

/// Longest user text quoted back in an error message.
const QUOTE_LIMIT: usize = 80;

/// Errors about a policy document supplied by a user; Display is a human message naming the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum PolicyError {
    #[error("policy document is not valid JSON: {detail}")]
    NotJson { detail: String },

    #[error("policy document is neither JSON nor URL-encoded JSON: {detail}")]
    BadUrlEncoding { detail: String },

    #[error("policy document must be a JSON object, found {found}")]
    NotAnObject { found: String },

    /// JSON parsers keep only the last of repeated keys; IAM rejects the document instead. Sending
    /// the parsed value would silently drop, say, one of two `"StringEquals"` conditions.
    #[error(
        "policy document repeats the key \"{key}\" (line {line}, column {column}); IAM rejects repeated keys and only one of them would be kept"
    )]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },

    #[error("\"Version\" must be \"2012-10-17\" or \"2008-10-17\", found {found}")]
    BadVersion { found: String },

    #[error("policy document has no \"Statement\" element")]
    MissingStatement,

    #[error("\"Statement\" must be an object or a non-empty array of objects, found {found}")]
    BadStatementList { found: String },

    /// A problem outside the statements (unknown top-level element, `Id` not a string).
    #[error("{problem}")]
    BadTopLevel { problem: String },

    /// `index` counts from 1, as a person reading the document would.
    #[error("statement {index}: {problem}")]
    BadStatement { index: usize, problem: String },

    #[error(
        "policy document is {size} characters long not counting whitespace; the limit is {limit}"
    )]
    TooLarge { size: usize, limit: usize },
}

/// Which kind of policy a document is, for validation rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyKind {
    /// Permissions of a role (inline policy).
    Identity,
    /// A role's trust policy (who may assume it).
    Trust,
    /// A session policy passed to AssumeRole.
    Session,
}

impl PolicyKind {
    /// IAM's size limit for one document of this kind, in characters not counting whitespace.
    /// (The aggregate limit of all inline policies of a role is the caller's business.)
    pub(crate) fn size_limit(self) -> usize {
        match self {
            PolicyKind::Identity => 10_240,
            PolicyKind::Trust | PolicyKind::Session => 2_048,
        }
    }

    /// "an identity policy" etc., for messages.
    fn with_article(self) -> &'static str {
        match self {
            PolicyKind::Identity => "an identity policy",
            PolicyKind::Trust => "a trust policy",
            PolicyKind::Session => "a session policy",
        }
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::Identity => "identity",
            PolicyKind::Trust => "trust",
            PolicyKind::Session => "session",
        })
    }
}

/// Number of characters that are not ASCII whitespace: IAM does not count whitespace against
/// its size limits.
pub(crate) fn size_without_whitespace(text: &str) -> usize {
    text.chars().filter(|c| !c.is_ascii_whitespace()).count()
}

/// Compact JSON text of a document as the operator sends it to IAM.
pub(crate) fn to_text(doc: &Value) -> String {
    doc.to_string()
}

/// IAM compares strings, numbers and booleans in conditions by their text (`true` is `"true"`).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

// ----- messages -----

/// A user string as a JSON string literal, shortened when long.
fn quote(text: &str) -> String {
    if text.chars().count() > QUOTE_LIMIT {
        let short: String = text.chars().take(QUOTE_LIMIT).collect();
        format!("{}...", Value::String(short))
    } else {
        Value::String(text.to_string()).to_string()
    }
}

/// A JSON value as a message names it: strings quoted, containers by kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => quote(s),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn to_text_is_compact() {
        let doc = json!({"Statement": [{"Effect": "Allow"}], "Version": "2012-10-17"});
        assert_eq!(
            to_text(&doc),
            r#"{"Statement":[{"Effect":"Allow"}],"Version":"2012-10-17"}"#
        );
    }

    #[test]
    fn size_ignores_whitespace() {
        assert_eq!(size_without_whitespace(" {\n\t\"a\" : \"b c\"\r\n} "), 10);
        assert_eq!(size_without_whitespace("é€"), 2);
        assert_eq!(size_without_whitespace(""), 0);
    }
}
