//! IAM policy documents: reading them as IAM returns them, comparing them by meaning, and
//! checking user-supplied ones before anything reaches AWS.
//!
//! IAM hands documents back URL-encoded and free to reorder keys or to turn `"Action": "x"` into
//! `["x"]`. The reconciler must not rewrite a document that only looks different, so comparison
//! goes through [`normalize`]. Tenants write inline and session policies by hand, so
//! [`validate_document`] explains mistakes in terms of the policy language rather than leaving it
//! to an opaque `MalformedPolicyDocument` from IAM.

use std::{cell::RefCell, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// The policy language version IAM assumes when a document has no `Version`.
const DEFAULT_VERSION: &str = "2008-10-17";
/// Policy language versions IAM accepts.
const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];
const TOP_LEVEL_KEYS: [&str; 3] = ["Version", "Id", "Statement"];
const STATEMENT_KEYS: [&str; 9] = [
    "Sid",
    "Effect",
    "Principal",
    "NotPrincipal",
    "Action",
    "NotAction",
    "Resource",
    "NotResource",
    "Condition",
];
const PRINCIPAL_TYPES: [&str; 4] = ["AWS", "Service", "Federated", "CanonicalUser"];
/// Longest user text quoted back in an error message.
const QUOTE_LIMIT: usize = 80;

/// Errors about a policy document supplied by a user; Display is a human message naming the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PolicyError {
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
pub enum PolicyKind {
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
    pub fn size_limit(self) -> usize {
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

/// Parses a document as IAM returns it: URL-encoded (e.g. `%7B%22Version%22...`) or plain JSON.
///
/// Text that is valid JSON is taken as it is, so a plain document containing `%` is never
/// decoded. Otherwise it is percent-decoded once (RFC 3986: `+` stays a `+`). The document must
/// be a JSON object.
pub fn parse_document(text: &str) -> Result<Value, PolicyError> {
    let plain_error = match serde_json::from_str::<Value>(text) {
        Ok(value) => return require_object(value),
        Err(e) => e,
    };
    let looks_like_json = text.trim_start().starts_with(['{', '[']);
    if looks_like_json || !text.contains('%') {
        return Err(not_json(text, &plain_error));
    }
    let decoded = percent_decode(text)?;
    let value = serde_json::from_str::<Value>(&decoded).map_err(|e| PolicyError::NotJson {
        detail: format!("after URL-decoding: {e}"),
    })?;
    require_object(value)
}

/// Canonical form for semantic comparison; for comparing only, send the original document.
///
/// Differences that IAM ignores or introduces itself disappear: statement order and duplicate
/// statements, scalar versus one-element list and order or repetition in Action, NotAction,
/// Resource, NotResource, principal lists and condition values, `true` versus `"true"` in
/// conditions, an empty `Condition`, a missing `Version` (IAM's default `2008-10-17`), and an
/// account given as `123456789012` versus `arn:aws:iam::123456789012:root` (IAM stores the
/// latter). Object keys come out sorted.
pub fn normalize(doc: &Value) -> Value {
    let Value::Object(map) = doc else {
        return canonical(doc);
    };
    let mut entries: Vec<(String, Value)> = map
        .iter()
        .map(|(key, value)| {
            let value = match key.as_str() {
                "Statement" => normalize_statements(value),
                _ => canonical(value),
            };
            (key.clone(), value)
        })
        .collect();
    if !map.contains_key("Version") {
        entries.push((
            "Version".to_string(),
            Value::String(DEFAULT_VERSION.to_string()),
        ));
    }
    Value::Object(sorted_object(entries))
}

/// True when the two documents mean the same to IAM (`normalize(a) == normalize(b)`).
pub fn equivalent(a: &Value, b: &Value) -> bool {
    normalize(a) == normalize(b)
}

/// Validates a user-supplied document for the given kind with IAM's grammar essentials and
/// returns the parsed value.
///
/// Catches what IAM would refuse with a bare `MalformedPolicyDocument`, plus repeated keys (which
/// a JSON parser would otherwise resolve silently). The text must be plain JSON, not URL-encoded.
/// The size is measured on [`to_text`] of the value, which is what IAM receives.
pub fn validate_document(text: &str, kind: PolicyKind) -> Result<Value, PolicyError> {
    let value: Value = serde_json::from_str(text).map_err(|e| not_json(text, &e))?;
    check_unique_keys(text)?;
    let Value::Object(doc) = &value else {
        return Err(PolicyError::NotAnObject {
            found: describe(&value),
        });
    };

    let size = size_without_whitespace(&to_text(&value));
    let limit = kind.size_limit();
    if size > limit {
        return Err(PolicyError::TooLarge { size, limit });
    }

    if let Some(key) = doc.keys().find(|k| !TOP_LEVEL_KEYS.contains(&k.as_str())) {
        return Err(PolicyError::BadTopLevel {
            problem: format!(
                "unknown top-level element {}; allowed are \"Version\", \"Id\" and \"Statement\"",
                quote(key)
            ),
        });
    }
    if let Some(version) = doc.get("Version")
        && !version.as_str().is_some_and(|v| VERSIONS.contains(&v))
    {
        return Err(PolicyError::BadVersion {
            found: describe(version),
        });
    }
    if let Some(id) = doc.get("Id")
        && !id.is_string()
    {
        return Err(PolicyError::BadTopLevel {
            problem: format!("\"Id\" must be a string, found {}", describe(id)),
        });
    }

    let statements: Vec<&Value> = match doc.get("Statement") {
        None => return Err(PolicyError::MissingStatement),
        Some(single @ Value::Object(_)) => vec![single],
        Some(Value::Array(list)) if !list.is_empty() => list.iter().collect(),
        Some(Value::Array(_)) => {
            return Err(PolicyError::BadStatementList {
                found: "an empty array".to_string(),
            });
        }
        Some(other) => {
            return Err(PolicyError::BadStatementList {
                found: describe(other),
            });
        }
    };

    let mut sids: Vec<(&str, usize)> = Vec::new();
    for (i, statement) in statements.into_iter().enumerate() {
        let index = i + 1;
        check_statement(statement, kind)
            .map_err(|problem| PolicyError::BadStatement { index, problem })?;
        if let Some(sid) = statement
            .get("Sid")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
        {
            if let Some((_, first)) = sids.iter().find(|(seen, _)| *seen == sid) {
                return Err(PolicyError::BadStatement {
                    index,
                    problem: format!(
                        "\"Sid\" {} is already used by statement {first}; statement IDs must be unique within a policy",
                        quote(sid)
                    ),
                });
            }
            sids.push((sid, index));
        }
    }
    Ok(value)
}

/// Number of characters that are not ASCII whitespace: IAM does not count whitespace against
/// its size limits.
pub fn size_without_whitespace(text: &str) -> usize {
    text.chars().filter(|c| !c.is_ascii_whitespace()).count()
}

/// Compact JSON text of a document as the operator sends it to IAM.
pub fn to_text(doc: &Value) -> String {
    doc.to_string()
}

// ----- parsing -----

fn require_object(value: Value) -> Result<Value, PolicyError> {
    if value.is_object() {
        Ok(value)
    } else {
        Err(PolicyError::NotAnObject {
            found: describe(&value),
        })
    }
}

fn not_json(text: &str, error: &serde_json::Error) -> PolicyError {
    let detail = if text.trim().is_empty() {
        "the text is empty".to_string()
    } else {
        error.to_string()
    };
    PolicyError::NotJson { detail }
}

/// Strict percent-decoding: a `%` must start a `%XX` escape and the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String, PolicyError> {
    let bytes = text.as_bytes();
    for (offset, _) in text.match_indices('%') {
        let escape = bytes.get(offset + 1..offset + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(PolicyError::BadUrlEncoding {
                detail: format!("\"%\" at byte {offset} is not followed by two hexadecimal digits"),
            });
        }
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| PolicyError::BadUrlEncoding {
            detail: "the decoded bytes are not UTF-8".to_string(),
        })
}

/// Finds keys that occur twice in one object, which `serde_json::Value` would silently collapse.
fn check_unique_keys(text: &str) -> Result<(), PolicyError> {
    let duplicate = RefCell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match (UniqueKeys {
        duplicate: &duplicate,
    })
    .deserialize(&mut deserializer)
    {
        Ok(()) => Ok(()),
        Err(e) => match duplicate.into_inner() {
            Some(key) => Err(PolicyError::DuplicateKey {
                key,
                line: e.line(),
                column: e.column(),
            }),
            None => Err(not_json(text, &e)),
        },
    }
}

/// Walks a JSON text recording the first key repeated within one object.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if seen.contains(&key) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            seen.insert(key);
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

// ----- normalisation -----

/// Builds a map with keys inserted in sorted order, so the result is sorted even if serde_json's
/// `preserve_order` feature gets enabled by some other crate.
fn sorted_object(entries: impl IntoIterator<Item = (String, Value)>) -> Map<String, Value> {
    let mut entries: Vec<(String, Value)> = entries.into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.into_iter().collect()
}

/// The value with every object's keys sorted; arrays keep their order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(sorted_object(
            map.iter().map(|(k, v)| (k.clone(), canonical(v))),
        )),
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Sorts by canonical JSON text and drops repeats: the order used for every set-like list.
fn sort_dedup(mut items: Vec<Value>) -> Vec<Value> {
    items.sort_by_cached_key(to_text);
    items.dedup();
    items
}

fn normalize_statements(value: &Value) -> Value {
    match value {
        Value::Object(_) => Value::Array(vec![normalize_statement(value)]),
        Value::Array(items) => {
            Value::Array(sort_dedup(items.iter().map(normalize_statement).collect()))
        }
        other => canonical(other),
    }
}

fn normalize_statement(statement: &Value) -> Value {
    let Value::Object(map) = statement else {
        return canonical(statement);
    };
    let entries = map.iter().filter_map(|(key, value)| {
        let value = match key.as_str() {
            "Action" | "NotAction" | "Resource" | "NotResource" => {
                string_set(value, |s| s.to_string())
            }
            "Principal" | "NotPrincipal" => normalize_principal(value),
            "Condition" => normalize_condition(value)?,
            _ => canonical(value),
        };
        Some((key.clone(), value))
    });
    Value::Object(sorted_object(entries))
}

/// A scalar or list of scalars as a sorted, duplicate-free list of strings; `map` rewrites each
/// string to its canonical spelling. Anything else (invalid here) is kept in canonical form.
fn string_set(value: &Value, map: impl Fn(&str) -> String) -> Value {
    let item = |v: &Value| match scalar_text(v) {
        Some(text) => Value::String(map(&text)),
        None => canonical(v),
    };
    match value {
        Value::Array(items) => Value::Array(sort_dedup(items.iter().map(item).collect())),
        scalar if scalar_text(scalar).is_some() => Value::Array(vec![item(scalar)]),
        other => canonical(other),
    }
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

fn normalize_principal(value: &Value) -> Value {
    let Value::Object(map) = value else {
        // "*" (or something invalid) stays as it is.
        return canonical(value);
    };
    let entries = map.iter().map(|(kind, ids)| {
        let ids = if kind == "AWS" {
            string_set(ids, account_root_to_id)
        } else {
            string_set(ids, |s| s.to_string())
        };
        (kind.clone(), ids)
    });
    Value::Object(sorted_object(entries))
}

/// IAM stores an account principal `123456789012` as `arn:aws:iam::123456789012:root`; both
/// become the bare account ID.
fn account_root_to_id(id: &str) -> String {
    let parts: Vec<&str> = id.split(':').collect();
    match parts.as_slice() {
        ["arn", partition, "iam", "", account, "root"]
            if !partition.is_empty()
                && account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit()) =>
        {
            (*account).to_string()
        }
        _ => id.to_string(),
    }
}

/// `None` when the condition constrains nothing (an empty object), which IAM treats as absent.
fn normalize_condition(value: &Value) -> Option<Value> {
    let Value::Object(operators) = value else {
        return Some(canonical(value));
    };
    let entries: Vec<(String, Value)> = operators
        .iter()
        .filter_map(|(operator, keys)| {
            let normalized = match keys {
                Value::Object(keys) if keys.is_empty() => return None,
                Value::Object(keys) => {
                    Value::Object(sorted_object(keys.iter().map(|(key, values)| {
                        (key.clone(), string_set(values, |s| s.to_string()))
                    })))
                }
                other => canonical(other),
            };
            Some((operator.clone(), normalized))
        })
        .collect();
    if entries.is_empty() {
        None
    } else {
        Some(Value::Object(sorted_object(entries)))
    }
}

// ----- validation -----

/// Checks one statement; the error is the problem without the statement number.
fn check_statement(statement: &Value, kind: PolicyKind) -> Result<(), String> {
    let Value::Object(map) = statement else {
        return Err(format!(
            "must be a JSON object, found {}",
            describe(statement)
        ));
    };
    if let Some(key) = map.keys().find(|k| !STATEMENT_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown element {}; allowed are \"Sid\", \"Effect\", \"Principal\", \"NotPrincipal\", \"Action\", \"NotAction\", \"Resource\", \"NotResource\" and \"Condition\"",
            quote(key)
        ));
    }

    if let Some(sid) = map.get("Sid") {
        match sid {
            Value::String(s) if s.chars().all(|c| c.is_ascii_alphanumeric()) => {}
            Value::String(s) => {
                return Err(format!(
                    "\"Sid\" may contain only letters A-Z, a-z and digits 0-9, found {}",
                    quote(s)
                ));
            }
            other => {
                return Err(format!(
                    "\"Sid\" must be a string, found {}",
                    describe(other)
                ));
            }
        }
    }

    match map.get("Effect") {
        Some(Value::String(e)) if e == "Allow" || e == "Deny" => {}
        Some(other) => {
            return Err(format!(
                "\"Effect\" must be \"Allow\" or \"Deny\", found {}",
                describe(other)
            ));
        }
        None => return Err("\"Effect\" is missing; it must be \"Allow\" or \"Deny\"".to_string()),
    }

    let action = exactly_one(map, "Action", "NotAction")?
        .ok_or_else(|| "needs an \"Action\" or a \"NotAction\"".to_string())?;
    check_string_list(action.0, action.1, check_action)?;

    let resource = exactly_one(map, "Resource", "NotResource")?;
    let principal = exactly_one(map, "Principal", "NotPrincipal")?;
    match kind {
        PolicyKind::Identity | PolicyKind::Session => {
            if let Some((name, _)) = principal {
                return Err(format!(
                    "\"{name}\" is not allowed in {}; only trust policies name principals",
                    kind.with_article()
                ));
            }
            let (name, value) = resource.ok_or_else(|| {
                format!(
                    "needs a \"Resource\" or a \"NotResource\" in {}",
                    kind.with_article()
                )
            })?;
            check_string_list(name, value, check_resource)?;
        }
        PolicyKind::Trust => {
            if let Some((name, _)) = resource {
                return Err(format!(
                    "\"{name}\" is not allowed in a trust policy; the role itself is the resource"
                ));
            }
            let (name, value) = principal.ok_or_else(|| {
                "needs a \"Principal\" or a \"NotPrincipal\" in a trust policy".to_string()
            })?;
            check_principal(name, value)?;
        }
    }

    if let Some(condition) = map.get("Condition") {
        check_condition(condition)?;
    }
    Ok(())
}

/// The one of two mutually exclusive elements that is present, if any.
fn exactly_one<'a>(
    map: &'a Map<String, Value>,
    first: &'static str,
    second: &'static str,
) -> Result<Option<(&'static str, &'a Value)>, String> {
    match (map.get(first), map.get(second)) {
        (Some(_), Some(_)) => Err(format!(
            "has both \"{first}\" and \"{second}\"; use only one of them"
        )),
        (Some(v), None) => Ok(Some((first, v))),
        (None, Some(v)) => Ok(Some((second, v))),
        (None, None) => Ok(None),
    }
}

/// A string or a non-empty array of strings, each accepted by `check`.
fn check_string_list(
    name: &str,
    value: &Value,
    check: fn(&str, &str) -> Result<(), String>,
) -> Result<(), String> {
    match value {
        Value::String(s) => check(name, s),
        Value::Array(items) if items.is_empty() => {
            Err(format!("\"{name}\" must not be an empty list"))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| match item {
                Value::String(s) => check(name, s),
                other => Err(format!(
                    "\"{name}\" item {} must be a string, found {}",
                    i + 1,
                    describe(other)
                )),
            }),
        other => Err(format!(
            "\"{name}\" must be a string or an array of strings, found {}",
            describe(other)
        )),
    }
}

fn check_non_empty(name: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("\"{name}\" must not contain an empty string"))
    } else {
        Ok(())
    }
}

fn check_action(name: &str, action: &str) -> Result<(), String> {
    check_non_empty(name, action)?;
    let well_formed = action == "*"
        || action
            .split_once(':')
            .is_some_and(|(service, operation)| !service.is_empty() && !operation.is_empty());
    if well_formed {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" value {} must be \"*\" or \"service:action\" such as \"s3:GetObject\"",
            quote(action)
        ))
    }
}

fn check_resource(name: &str, resource: &str) -> Result<(), String> {
    check_non_empty(name, resource)?;
    if resource == "*" || resource.starts_with("arn:") {
        Ok(())
    } else {
        Err(format!(
            "\"{name}\" value {} must be \"*\" or an ARN starting with \"arn:\"",
            quote(resource)
        ))
    }
}

fn check_principal(name: &str, value: &Value) -> Result<(), String> {
    match value {
        Value::String(s) if s == "*" => Ok(()),
        Value::Object(map) if map.is_empty() => Err(format!("\"{name}\" must name at least one principal")),
        Value::Object(map) => map.iter().try_for_each(|(kind, ids)| {
            if !PRINCIPAL_TYPES.contains(&kind.as_str()) {
                return Err(format!(
                    "\"{name}\" has unknown principal type {}; allowed are \"AWS\", \"Service\", \"Federated\" and \"CanonicalUser\"",
                    quote(kind)
                ));
            }
            check_string_list(&format!("{name}.{kind}"), ids, check_non_empty)
        }),
        other => Err(format!(
            "\"{name}\" must be \"*\" or an object such as {{\"AWS\": \"arn:aws:iam::111122223333:root\"}}, found {}",
            describe(other)
        )),
    }
}

fn check_condition(condition: &Value) -> Result<(), String> {
    let Value::Object(operators) = condition else {
        return Err(format!(
            "\"Condition\" must be an object mapping condition operators to objects, found {}",
            describe(condition)
        ));
    };
    for (operator, keys) in operators {
        let Value::Object(keys) = keys else {
            return Err(format!(
                "\"Condition\" operator {} must map to an object of condition keys, found {}",
                quote(operator),
                describe(keys)
            ));
        };
        for (key, values) in keys {
            let valid = match values {
                Value::Array(items) => {
                    !items.is_empty() && items.iter().all(|v| scalar_text(v).is_some())
                }
                other => scalar_text(other).is_some(),
            };
            if !valid {
                let found = match values {
                    Value::Array(items) if items.is_empty() => "an empty array".to_string(),
                    Value::Array(items) => {
                        items.iter().find(|v| scalar_text(v).is_none()).map_or_else(
                            || "an array".to_string(),
                            |v| format!("an array containing {}", describe(v)),
                        )
                    }
                    other => describe(other),
                };
                return Err(format!(
                    "\"Condition\" value of {} under {} must be a string, number, boolean or a non-empty array of them, found {found}",
                    quote(key),
                    quote(operator)
                ));
            }
        }
    }
    Ok(())
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
    use proptest::prelude::*;
    use serde_json::json;

    // ----- parse_document -----

    /// A trust policy as GetRole returns it: compact JSON, percent-encoded.
    const ENCODED_TRUST: &str = "%7B%22Version%22%3A%222012-10-17%22%2C%22Statement%22%3A%5B%7B%22Effect%22%3A%22Allow%22%2C%22Principal%22%3A%7B%22AWS%22%3A%22arn%3Aaws%3Aiam%3A%3A111122223333%3Arole%2Fci-deployer%22%7D%2C%22Action%22%3A%22sts%3AAssumeRole%22%2C%22Condition%22%3A%7B%22StringEquals%22%3A%7B%22sts%3AExternalId%22%3A%22tenant%20a%2Bb%22%7D%7D%7D%5D%7D";

    const PLAIN_TRUST: &str = r#"{
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::111122223333:role/ci-deployer"},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "tenant a+b"}}
        }]
    }"#;

    #[test]
    fn url_encoded_document_parses_like_plain_json() {
        let encoded = parse_document(ENCODED_TRUST).unwrap();
        let plain = parse_document(PLAIN_TRUST).unwrap();
        assert_eq!(encoded, plain);
        assert!(equivalent(&encoded, &plain));
        // '+' is literal in IAM's encoding, %20 is the space.
        assert_eq!(
            encoded["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
            json!("tenant a+b")
        );
    }

    #[test]
    fn url_encoded_document_with_encoded_whitespace() {
        let encoded = "%7B%0A%20%20%22Version%22%3A%20%222012-10-17%22%2C%0A%20%20%22Statement%22%3A%20%7B%22Effect%22%3A%20%22Allow%22%2C%20%22Action%22%3A%20%22s3%3AGetObject%22%2C%20%22Resource%22%3A%20%22arn%3Aaws%3As3%3A%3A%3Ab%2F%2A%22%7D%0A%7D";
        let doc = parse_document(encoded).unwrap();
        assert_eq!(
            doc,
            json!({"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}})
        );
    }

    #[test]
    fn plain_json_with_percent_is_not_decoded() {
        let text = r#"{"Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"arn:aws:s3:::b/100%25"}]}"#;
        let doc = parse_document(text).unwrap();
        assert_eq!(
            doc["Statement"][0]["Resource"],
            json!("arn:aws:s3:::b/100%25")
        );
    }

    #[test]
    fn parse_document_errors() {
        assert!(matches!(
            parse_document("not json"),
            Err(PolicyError::NotJson { .. })
        ));
        assert_eq!(
            parse_document("   "),
            Err(PolicyError::NotJson {
                detail: "the text is empty".to_string()
            })
        );
        // Malformed plain JSON is reported as JSON even when it contains '%'.
        assert!(matches!(
            parse_document(r#"{"a": "50%"#),
            Err(PolicyError::NotJson { .. })
        ));
        let bad_escape = parse_document("%7B%2").unwrap_err();
        assert!(
            matches!(bad_escape, PolicyError::BadUrlEncoding { .. }),
            "{bad_escape}"
        );
        assert!(bad_escape.to_string().contains("byte 3"), "{bad_escape}");
        let not_utf8 = parse_document("%7B%FF%7D").unwrap_err();
        assert!(
            matches!(not_utf8, PolicyError::BadUrlEncoding { .. }),
            "{not_utf8}"
        );
        let decoded_not_json = parse_document("%7B%22a%22").unwrap_err();
        assert!(
            decoded_not_json.to_string().contains("after URL-decoding"),
            "{decoded_not_json}"
        );
        assert_eq!(
            parse_document("%5B%5D"),
            Err(PolicyError::NotAnObject {
                found: "an array".to_string()
            })
        );
    }

    // ----- normalize / equivalent -----

    fn identity(statements: Value) -> Value {
        json!({"Version": "2012-10-17", "Statement": statements})
    }

    #[test]
    fn key_order_is_irrelevant() {
        let a: Value = serde_json::from_str(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"Statement":[{"Resource":"*","Action":"s3:GetObject","Effect":"Allow"}],"Version":"2012-10-17"}"#,
        )
        .unwrap();
        assert!(equivalent(&a, &b));
        // Keys come out sorted, whatever serde_json's map implementation.
        assert_eq!(
            to_text(&normalize(&b)),
            r#"{"Statement":[{"Action":["s3:GetObject"],"Effect":"Allow","Resource":["*"]}],"Version":"2012-10-17"}"#
        );
    }

    #[test]
    fn scalar_equals_one_element_list() {
        let a = identity(
            json!([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b"}]),
        );
        let b = identity(
            json!([{"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": ["arn:aws:s3:::b"]}]),
        );
        assert!(equivalent(&a, &b));

        let trust_a = json!({"Statement": {"Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": "arn:aws:iam::111122223333:role/x"},
            "Condition": {"StringEquals": {"sts:ExternalId": "abc"}}}});
        let trust_b = json!({"Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole"],
            "Principal": {"AWS": ["arn:aws:iam::111122223333:role/x"]},
            "Condition": {"StringEquals": {"sts:ExternalId": ["abc"]}}}]});
        assert!(equivalent(&trust_a, &trust_b));
    }

    #[test]
    fn lists_are_sets() {
        let a = identity(
            json!([{"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": "*"}]),
        );
        let b = identity(
            json!([{"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:GetObject"], "Resource": "*"}]),
        );
        assert!(equivalent(&a, &b));
    }

    #[test]
    fn statement_order_is_irrelevant() {
        let s1 = json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"});
        let s2 = json!({"Effect": "Deny", "Action": "s3:DeleteObject", "Resource": "*"});
        let a = identity(json!([s1.clone(), s2.clone()]));
        let b = identity(json!([s2, s1]));
        assert!(equivalent(&a, &b));
    }

    #[test]
    fn condition_values_compare_as_text() {
        let a = identity(json!([{"Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": false}, "NumericLessThan": {"s3:max-keys": 10}}}]));
        let b = identity(json!([{"Effect": "Deny", "Action": "*", "Resource": "*",
            "Condition": {"Bool": {"aws:SecureTransport": ["false"]}, "NumericLessThan": {"s3:max-keys": "10"}}}]));
        assert!(equivalent(&a, &b));
    }

    #[test]
    fn empty_condition_is_no_condition() {
        let a =
            identity(json!([{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]));
        let b = identity(json!([{"Effect": "Allow", "Action": "*", "Resource": "*"}]));
        assert!(equivalent(&a, &b));
    }

    #[test]
    fn missing_version_is_the_iam_default() {
        let stmt = json!([{"Effect": "Allow", "Action": "*", "Resource": "*"}]);
        assert!(equivalent(
            &json!({"Statement": stmt}),
            &json!({"Version": "2008-10-17", "Statement": stmt})
        ));
        assert!(!equivalent(
            &json!({"Statement": stmt}),
            &json!({"Version": "2012-10-17", "Statement": stmt})
        ));
    }

    #[test]
    fn account_id_principal_equals_root_arn() {
        let a = json!({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": ["111122223333", "arn:aws:iam::444455556666:role/r"]}}]});
        let b = json!({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
            "Principal": {"AWS": ["arn:aws:iam::444455556666:role/r", "arn:aws:iam::111122223333:root"]}}]});
        assert!(equivalent(&a, &b));
        assert_eq!(
            account_root_to_id("arn:aws-cn:iam::111122223333:root"),
            "111122223333"
        );
        assert_eq!(
            account_root_to_id("arn:aws:iam::1111:root"),
            "arn:aws:iam::1111:root"
        );
        assert_eq!(
            account_root_to_id("arn:aws:iam::111122223333:role/root"),
            "arn:aws:iam::111122223333:role/root"
        );
    }

    #[test]
    fn star_principal_stays_a_string() {
        let doc = json!({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": "*"}]});
        assert_eq!(normalize(&doc)["Statement"][0]["Principal"], json!("*"));
        let aws_star = json!({"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "*"}}]});
        assert_eq!(
            normalize(&aws_star)["Statement"][0]["Principal"],
            json!({"AWS": ["*"]})
        );
    }

    #[test]
    fn different_documents_are_not_equivalent() {
        let base = identity(
            json!([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]),
        );
        let other_action = identity(
            json!([{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]),
        );
        let deny = identity(
            json!([{"Effect": "Deny", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]),
        );
        let extra = identity(json!([
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
             "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}},
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "*"}
        ]));
        let other_condition = identity(
            json!([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "b"}}}]),
        );
        let other_resource = identity(
            json!([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]),
        );
        let not_action = identity(
            json!([{"Effect": "Allow", "NotAction": "s3:GetObject", "Resource": "*",
            "Condition": {"StringEquals": {"aws:PrincipalTag/team": "a"}}}]),
        );
        for other in [
            &other_action,
            &deny,
            &extra,
            &other_condition,
            &other_resource,
            &not_action,
        ] {
            assert!(
                !equivalent(&base, other),
                "{other} should differ from {base}"
            );
        }
    }

    #[test]
    fn normalize_tolerates_malformed_documents() {
        for doc in [
            json!(null),
            json!([1, 2]),
            json!({"Statement": 5}),
            json!({"Statement": [1, {"Action": {"x": 1}, "Condition": [1]}]}),
            json!({"Statement": {"Principal": ["a"], "Condition": {"StringEquals": "x"}}}),
        ] {
            let once = normalize(&doc);
            assert_eq!(normalize(&once), once, "not idempotent for {doc}");
        }
    }

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

    // ----- validate_document -----

    const GOOD_IDENTITY: &str = r#"{
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "Read", "Effect": "Allow", "Action": ["s3:GetObject", "s3:List*"], "Resource": "arn:aws:s3:::b/*"},
            {"Effect": "Deny", "NotAction": "s3:*", "NotResource": ["arn:aws:s3:::b", "*"],
             "Condition": {"Bool": {"aws:SecureTransport": false}, "IpAddress": {"aws:SourceIp": ["10.0.0.0/8"]}}}
        ]
    }"#;

    #[test]
    fn accepts_valid_documents() {
        let doc = validate_document(GOOD_IDENTITY, PolicyKind::Identity).unwrap();
        assert_eq!(doc, serde_json::from_str::<Value>(GOOD_IDENTITY).unwrap());
        validate_document(GOOD_IDENTITY, PolicyKind::Session).unwrap();
        validate_document(PLAIN_TRUST, PolicyKind::Trust).unwrap();
        validate_document(
            r#"{"Statement": {"Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
                "Principal": {"Federated": "arn:aws:iam::111122223333:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/X"}}}"#,
            PolicyKind::Trust,
        )
        .unwrap();
        validate_document(
            r#"{"Version": "2008-10-17", "Id": "any id", "Statement": [{"Effect": "Deny", "Action": "*", "NotPrincipal": "*"}]}"#,
            PolicyKind::Trust,
        )
        .unwrap();
    }

    /// Validates `text` and returns the error message, which must mention every `needle`.
    #[track_caller]
    fn rejected(text: &str, kind: PolicyKind, needles: &[&str]) -> PolicyError {
        let err = validate_document(text, kind).expect_err("document should be rejected");
        let message = err.to_string();
        for needle in needles {
            assert!(
                message.contains(needle),
                "message {message:?} should mention {needle:?}"
            );
        }
        err
    }

    fn one_statement(statement: &str) -> String {
        format!(r#"{{"Version": "2012-10-17", "Statement": [{statement}]}}"#)
    }

    #[test]
    fn rejects_non_json_and_non_objects() {
        let err = rejected(
            r#"{"Statement": ["#,
            PolicyKind::Identity,
            &["not valid JSON", "line 1"],
        );
        assert!(matches!(err, PolicyError::NotJson { .. }));
        rejected("", PolicyKind::Identity, &["empty"]);
        // URL-encoded text is for IAM's answers, not for users.
        rejected("%7B%7D", PolicyKind::Identity, &["not valid JSON"]);
        let err = rejected(
            r#"[{"Effect": "Allow"}]"#,
            PolicyKind::Identity,
            &["JSON object", "an array"],
        );
        assert_eq!(
            err,
            PolicyError::NotAnObject {
                found: "an array".to_string()
            }
        );
    }

    #[test]
    fn rejects_duplicate_keys() {
        let text = r#"{"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "111122223333"},
            "Condition": {"StringEquals": {"sts:ExternalId": "x"}, "StringEquals": {"aws:SourceIp": "y"}}}]}"#;
        let err = rejected(text, PolicyKind::Trust, &["\"StringEquals\"", "line 2"]);
        assert!(
            matches!(err, PolicyError::DuplicateKey { line: 2, .. }),
            "{err:?}"
        );
        // Same key in different objects is fine.
        validate_document(
            r#"{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}, {"Effect": "Allow", "Action": "*", "Resource": "*"}]}"#,
            PolicyKind::Identity,
        )
        .unwrap();
    }

    #[test]
    fn rejects_bad_top_level() {
        let err = rejected(
            r#"{"Version": "2012-10-17"}"#,
            PolicyKind::Identity,
            &["\"Statement\""],
        );
        assert_eq!(err, PolicyError::MissingStatement);
        rejected(
            r#"{"Version": "2012-10-17", "Statements": []}"#,
            PolicyKind::Identity,
            &["unknown top-level element \"Statements\""],
        );
        let err = rejected(
            r#"{"Version": "2012-10-18", "Statement": []}"#,
            PolicyKind::Identity,
            &["\"Version\"", "\"2012-10-18\""],
        );
        assert!(matches!(err, PolicyError::BadVersion { .. }));
        rejected(
            r#"{"Version": 2012, "Statement": []}"#,
            PolicyKind::Identity,
            &["\"Version\"", "the number 2012"],
        );
        rejected(
            r#"{"Statement": []}"#,
            PolicyKind::Identity,
            &["\"Statement\"", "an empty array"],
        );
        rejected(
            r#"{"Statement": "x"}"#,
            PolicyKind::Identity,
            &["\"Statement\"", "\"x\""],
        );
        rejected(
            r#"{"Id": 1, "Statement": {"Effect": "Allow", "Action": "*", "Resource": "*"}}"#,
            PolicyKind::Identity,
            &["\"Id\""],
        );
        rejected(
            r#"{"Statement": [7]}"#,
            PolicyKind::Identity,
            &["statement 1", "JSON object", "the number 7"],
        );
    }

    #[test]
    fn rejects_bad_effect() {
        let text = r#"{"Statement": [
            {"Effect": "Allow", "Action": "*", "Resource": "*"},
            {"Effect": "Permit", "Action": "*", "Resource": "*"}]}"#;
        let err = rejected(text, PolicyKind::Identity, &[]);
        assert_eq!(
            err.to_string(),
            r#"statement 2: "Effect" must be "Allow" or "Deny", found "Permit""#
        );
        assert!(matches!(err, PolicyError::BadStatement { index: 2, .. }));
        rejected(
            &one_statement(r#"{"Action": "*", "Resource": "*"}"#),
            PolicyKind::Identity,
            &["statement 1", "\"Effect\" is missing"],
        );
        rejected(
            &one_statement(r#"{"Effect": "allow", "Action": "*", "Resource": "*"}"#),
            PolicyKind::Identity,
            &["\"Effect\"", "\"allow\""],
        );
    }

    #[test]
    fn rejects_bad_actions() {
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "NotAction": "s3:*", "Resource": "*"}"#,
            ),
            PolicyKind::Identity,
            &["statement 1", "both \"Action\" and \"NotAction\""],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Resource": "*"}"#),
            PolicyKind::Identity,
            &["statement 1", "\"Action\"", "\"NotAction\""],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": [], "Resource": "*"}"#),
            PolicyKind::Identity,
            &["statement 1", "\"Action\" must not be an empty list"],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": 5, "Resource": "*"}"#),
            PolicyKind::Identity,
            &["statement 1", "\"Action\"", "the number 5"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": ["s3:GetObject", true], "Resource": "*"}"#,
            ),
            PolicyKind::Identity,
            &["\"Action\" item 2", "the boolean true"],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "NotAction": [""], "Resource": "*"}"#),
            PolicyKind::Identity,
            &["\"NotAction\"", "empty string"],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "GetObject", "Resource": "*"}"#),
            PolicyKind::Identity,
            &["\"Action\"", "\"GetObject\"", "service:action"],
        );
    }

    #[test]
    fn rejects_bad_resources() {
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "s3:*"}"#),
            PolicyKind::Identity,
            &["statement 1", "\"Resource\"", "identity policy"],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "s3:*"}"#),
            PolicyKind::Session,
            &["\"Resource\"", "session policy"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "s3:*", "Resource": "*", "NotResource": "*"}"#,
            ),
            PolicyKind::Identity,
            &["both \"Resource\" and \"NotResource\""],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "s3:*", "Resource": "my-bucket"}"#),
            PolicyKind::Identity,
            &["\"Resource\"", "\"my-bucket\"", "arn:"],
        );
    }

    #[test]
    fn rejects_principals_where_they_do_not_belong() {
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "s3:*", "Resource": "*", "Principal": "*"}"#,
            ),
            PolicyKind::Identity,
            &[
                "statement 1",
                "\"Principal\" is not allowed",
                "identity policy",
            ],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "s3:*", "Resource": "*", "NotPrincipal": {"AWS": "x"}}"#,
            ),
            PolicyKind::Session,
            &["\"NotPrincipal\" is not allowed", "session policy"],
        );
    }

    #[test]
    fn rejects_bad_trust_statements() {
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "sts:AssumeRole"}"#),
            PolicyKind::Trust,
            &["statement 1", "\"Principal\"", "trust policy"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": "111122223333"}, "Resource": "*"}"#,
            ),
            PolicyKind::Trust,
            &["\"Resource\" is not allowed in a trust policy"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"Aws": "111122223333"}}"#,
            ),
            PolicyKind::Trust,
            &["unknown principal type \"Aws\""],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": []}}"#,
            ),
            PolicyKind::Trust,
            &["\"Principal.AWS\" must not be an empty list"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": "111122223333"}"#,
            ),
            PolicyKind::Trust,
            &[
                "\"Principal\" must be \"*\" or an object",
                "\"111122223333\"",
            ],
        );
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {}}"#),
            PolicyKind::Trust,
            &["at least one principal"],
        );
    }

    #[test]
    fn rejects_bad_conditions() {
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": []}"#,
            ),
            PolicyKind::Identity,
            &["statement 1", "\"Condition\"", "an array"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": "x"}}"#,
            ),
            PolicyKind::Identity,
            &["\"Condition\" operator \"StringEquals\"", "\"x\""],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"aws:SourceVpc": {"a": 1}}}}"#,
            ),
            PolicyKind::Identity,
            &["\"aws:SourceVpc\"", "\"StringEquals\"", "an object"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {"aws:SourceVpc": []}}}"#,
            ),
            PolicyKind::Identity,
            &["\"aws:SourceVpc\"", "an empty array"],
        );
        rejected(
            &one_statement(
                r#"{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"Null": {"aws:TokenIssueTime": null}}}"#,
            ),
            PolicyKind::Identity,
            &["\"aws:TokenIssueTime\"", "null"],
        );
    }

    #[test]
    fn rejects_bad_statement_elements() {
        rejected(
            &one_statement(r#"{"Effect": "Allow", "Actions": "*", "Resource": "*"}"#),
            PolicyKind::Identity,
            &["statement 1", "unknown element \"Actions\""],
        );
        rejected(
            &one_statement(
                r#"{"Sid": "read-all", "Effect": "Allow", "Action": "*", "Resource": "*"}"#,
            ),
            PolicyKind::Identity,
            &["\"Sid\"", "\"read-all\"", "A-Z"],
        );
        let err = rejected(
            r#"{"Statement": [
                {"Sid": "One", "Effect": "Allow", "Action": "*", "Resource": "*"},
                {"Sid": "Two", "Effect": "Allow", "Action": "s3:*", "Resource": "*"},
                {"Sid": "One", "Effect": "Deny", "Action": "*", "Resource": "*"}]}"#,
            PolicyKind::Identity,
            &["statement 3", "\"One\"", "statement 1", "unique"],
        );
        assert!(matches!(err, PolicyError::BadStatement { index: 3, .. }));
    }

    #[test]
    fn rejects_too_large_documents() {
        let resources: Vec<String> = (0..60)
            .map(|i| format!("arn:aws:s3:::bucket-with-a-long-name-{i:03}/*"))
            .collect();
        let statement = json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": resources});
        let text = json!({"Version": "2012-10-17", "Statement": [statement]}).to_string();
        let size = size_without_whitespace(&text);
        assert!(
            size > 2048 && size <= 10_240,
            "test document has {size} characters"
        );
        validate_document(&text, PolicyKind::Identity).unwrap();
        let err = rejected(&text, PolicyKind::Session, &["2048", &size.to_string()]);
        assert_eq!(err, PolicyError::TooLarge { size, limit: 2048 });

        // Whitespace does not count: the same document pretty-printed is just as acceptable.
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<Value>(&text).unwrap()).unwrap();
        validate_document(&pretty, PolicyKind::Identity).unwrap();
        assert_eq!(
            validate_document(&pretty, PolicyKind::Session),
            Err(PolicyError::TooLarge { size, limit: 2048 })
        );
    }

    #[test]
    fn long_values_are_shortened_in_messages() {
        let long = "x".repeat(500);
        let err = rejected(
            &one_statement(&format!(
                r#"{{"Effect": "{long}", "Action": "*", "Resource": "*"}}"#
            )),
            PolicyKind::Identity,
            &["..."],
        );
        assert!(err.to_string().len() < 200, "{err}");
    }

    // ----- property tests -----

    const ACTIONS: &[&str] = &[
        "s3:GetObject",
        "s3:PutObject",
        "s3:List*",
        "ec2:Describe*",
        "sqs:SendMessage",
        "iam:PassRole",
        "*",
    ];
    const RESOURCES: &[&str] = &[
        "*",
        "arn:aws:s3:::bucket-a",
        "arn:aws:s3:::bucket-a/*",
        "arn:aws:s3:::bucket b/key+1",
        "arn:aws:iam::111122223333:role/app",
        "arn:aws:sqs:eu-west-1:111122223333:queue-é",
    ];
    const OPERATORS: &[&str] = &[
        "StringEquals",
        "StringLike",
        "Bool",
        "NumericLessThan",
        "IpAddress",
    ];
    const CONDITION_KEYS: &[&str] = &[
        "aws:SourceIp",
        "aws:SecureTransport",
        "s3:prefix",
        "aws:PrincipalTag/team",
        "sts:ExternalId",
    ];
    const CONDITION_VALUES: &[&str] = &[
        "true",
        "false",
        "10",
        "a b",
        "x+y",
        "100%",
        "q\"uote",
        "é/ü",
        "10.0.0.0/8",
    ];

    /// Lists are always arrays here (possibly with repeats); the transformations vary the form.
    fn set_of(alphabet: &'static [&'static str]) -> impl Strategy<Value = Value> {
        prop::collection::vec(prop::sample::select(alphabet), 1..=3)
            .prop_map(|items| Value::Array(items.into_iter().map(|s| json!(s)).collect()))
    }

    fn condition() -> impl Strategy<Value = Value> {
        let keys = prop::collection::btree_map(
            prop::sample::select(CONDITION_KEYS),
            set_of(CONDITION_VALUES),
            1..=2,
        );
        prop::collection::btree_map(prop::sample::select(OPERATORS), keys, 1..=2).prop_map(
            |operators| {
                Value::Object(
                    operators
                        .into_iter()
                        .map(|(op, keys)| {
                            let keys = keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                            (op.to_string(), Value::Object(keys))
                        })
                        .collect(),
                )
            },
        )
    }

    fn statement() -> impl Strategy<Value = Value> {
        (
            any::<bool>(),
            any::<bool>(),
            set_of(ACTIONS),
            any::<bool>(),
            set_of(RESOURCES),
            prop::option::of(condition()),
        )
            .prop_map(
                |(allow, not_action, actions, not_resource, resources, condition)| {
                    let mut map = Map::new();
                    map.insert("Effect".into(), json!(if allow { "Allow" } else { "Deny" }));
                    map.insert(
                        if not_action { "NotAction" } else { "Action" }.into(),
                        actions,
                    );
                    map.insert(
                        if not_resource {
                            "NotResource"
                        } else {
                            "Resource"
                        }
                        .into(),
                        resources,
                    );
                    if let Some(condition) = condition {
                        map.insert("Condition".into(), condition);
                    }
                    Value::Object(map)
                },
            )
    }

    /// A valid identity policy: 1-4 statements, some with a (unique) Sid.
    fn identity_document() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop::sample::select(&VERSIONS[..])),
            prop::collection::vec((statement(), any::<bool>()), 1..=4),
        )
            .prop_map(|(version, statements)| {
                let statements: Vec<Value> = statements
                    .into_iter()
                    .enumerate()
                    .map(|(i, (mut statement, with_sid))| {
                        if with_sid {
                            statement["Sid"] = json!(format!("Stmt{i}"));
                        }
                        statement
                    })
                    .collect();
                let mut doc = json!({"Statement": statements});
                if let Some(version) = version {
                    doc["Version"] = json!(version);
                }
                doc
            })
    }

    /// Small deterministic generator driving the shape-preserving transformations.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // splitmix64
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn coin(&mut self) -> bool {
            self.next() & 1 == 1
        }

        fn shuffle<T>(&mut self, items: &mut [T]) {
            for i in (1..items.len()).rev() {
                let j = self.below(i + 1);
                items.swap(i, j);
            }
        }
    }

    /// Shuffles a set-valued list, sometimes repeats an element, and turns a one-element list
    /// into a scalar half of the time; with `retype`, `"true"`/`"10"` may become `true`/`10`.
    fn reshape_set(value: &mut Value, rng: &mut Rng, retype: bool) {
        let Value::Array(items) = value else { return };
        rng.shuffle(items);
        if rng.below(4) == 0 {
            let repeat = items[rng.below(items.len())].clone();
            items.push(repeat);
        }
        if retype {
            for item in items.iter_mut() {
                let replacement = match item.as_str() {
                    Some("true") => Some(json!(true)),
                    Some("false") => Some(json!(false)),
                    Some("10") => Some(json!(10)),
                    _ => None,
                };
                if let Some(replacement) = replacement.filter(|_| rng.coin()) {
                    *item = replacement;
                }
            }
        }
        if items.len() == 1 && rng.coin() {
            *value = items.pop().unwrap();
        }
    }

    /// Everything IAM may do to a document without changing its meaning.
    fn reshape(doc: &Value, rng: &mut Rng) -> Value {
        let mut doc = doc.clone();
        let statements = doc["Statement"].as_array_mut().unwrap();
        rng.shuffle(statements);
        for statement in statements.iter_mut() {
            for key in ["Action", "NotAction", "Resource", "NotResource"] {
                if let Some(value) = statement.get_mut(key) {
                    reshape_set(value, rng, false);
                }
            }
            if let Some(Value::Object(operators)) = statement.get_mut("Condition") {
                for keys in operators.values_mut() {
                    for values in keys.as_object_mut().unwrap().values_mut() {
                        reshape_set(values, rng, true);
                    }
                }
            }
        }
        if statements.len() == 1 && rng.coin() {
            doc["Statement"] = statements.pop().unwrap();
        }
        doc
    }

    /// JSON text with object keys in random order and random whitespace between tokens.
    fn write_scrambled(value: &Value, rng: &mut Rng, out: &mut String) {
        const SPACES: [&str; 6] = ["", "", " ", "\n  ", "\t", "\r\n"];
        let space = |rng: &mut Rng, out: &mut String| out.push_str(SPACES[rng.below(SPACES.len())]);
        match value {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                rng.shuffle(&mut entries);
                out.push('{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    out.push_str(&Value::String(key.clone()).to_string());
                    space(rng, out);
                    out.push(':');
                    space(rng, out);
                    write_scrambled(value, rng, out);
                    space(rng, out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    space(rng, out);
                    write_scrambled(item, rng, out);
                    space(rng, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }

    fn scrambled_text(value: &Value, rng: &mut Rng) -> String {
        let mut out = String::new();
        write_scrambled(value, rng, &mut out);
        out
    }

    proptest! {
        #[test]
        fn normalize_is_idempotent(doc in identity_document(), seed in any::<u64>()) {
            let once = normalize(&doc);
            prop_assert_eq!(&normalize(&once), &once);
            let reshaped = reshape(&doc, &mut Rng(seed));
            let once = normalize(&reshaped);
            prop_assert_eq!(&normalize(&once), &once);
        }

        #[test]
        fn reshaped_documents_are_equivalent(doc in identity_document(), seed in any::<u64>()) {
            let mut rng = Rng(seed);
            let reshaped = reshape(&doc, &mut rng);
            prop_assert!(equivalent(&doc, &reshaped), "{} vs {}", doc, reshaped);

            let text = scrambled_text(&reshaped, &mut rng);
            let reparsed = parse_document(&text).unwrap();
            prop_assert!(equivalent(&doc, &reparsed), "{} vs {}", doc, text);

            let pretty = parse_document(&serde_json::to_string_pretty(&reshaped).unwrap()).unwrap();
            prop_assert!(equivalent(&doc, &pretty));
            prop_assert_eq!(normalize(&doc), normalize(&parse_document(&to_text(&doc)).unwrap()));
        }

        #[test]
        fn percent_encoded_documents_parse_the_same(doc in identity_document(), seed in any::<u64>()) {
            let text = scrambled_text(&reshape(&doc, &mut Rng(seed)), &mut Rng(seed ^ 1));
            let encoded = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC).to_string();
            prop_assert!(encoded.starts_with("%7B"));
            let decoded = parse_document(&encoded).unwrap();
            prop_assert_eq!(&decoded, &parse_document(&text).unwrap());
            prop_assert!(equivalent(&doc, &decoded));
        }

        #[test]
        fn generated_documents_are_valid(doc in identity_document(), seed in any::<u64>()) {
            let mut rng = Rng(seed);
            let text = to_text(&doc);
            prop_assert_eq!(validate_document(&text, PolicyKind::Identity).unwrap(), doc.clone());
            prop_assert!(validate_document(&text, PolicyKind::Session).is_ok());
            // The shapes IAM may hand back are valid too.
            let reshaped_text = scrambled_text(&reshape(&doc, &mut rng), &mut rng);
            prop_assert!(validate_document(&reshaped_text, PolicyKind::Identity).is_ok(), "{}", reshaped_text);
            // Identity statements are never valid in a trust policy.
            prop_assert!(validate_document(&text, PolicyKind::Trust).is_err());
        }

        #[test]
        fn a_new_action_makes_documents_differ(doc in identity_document(), seed in any::<u64>()) {
            let mut rng = Rng(seed);
            let mut changed = doc.clone();
            let statements = changed["Statement"].as_array_mut().unwrap();
            let index = rng.below(statements.len());
            let statement = statements[index].as_object_mut().unwrap();
            let key = if statement.contains_key("Action") { "Action" } else { "NotAction" };
            statement[key].as_array_mut().unwrap().push(json!("kms:Decrypt"));
            prop_assert!(!equivalent(&doc, &changed));
            prop_assert!(!equivalent(&doc, &reshape(&changed, &mut rng)));
        }
    }

    // ----- trust documents, meaning, arbitrary input -----

    const ACCOUNTS: &[&str] = &["111122223333", "444455556666"];
    const ROLE_PRINCIPALS: &[&str] = &[
        "arn:aws:iam::111122223333:user/dev",
        "arn:aws:iam::111122223333:role/ci/deployer",
        "arn:aws:iam::444455556666:role/admin",
    ];
    const SERVICES: &[&str] = &["ec2.amazonaws.com", "lambda.amazonaws.com"];

    /// An AWS principal list with account roots written either way (`123456789012` or its root
    /// ARN), as the `bool` of each account chooses.
    fn aws_principals() -> impl Strategy<Value = (Vec<String>, Vec<(String, bool)>)> {
        (
            prop::collection::vec(prop::sample::select(ROLE_PRINCIPALS), 0..=2),
            prop::collection::vec((prop::sample::select(ACCOUNTS), any::<bool>()), 0..=2),
        )
            .prop_filter("at least one principal", |(arns, accounts)| {
                !arns.is_empty() || !accounts.is_empty()
            })
            .prop_map(|(arns, accounts)| {
                (
                    arns.into_iter().map(str::to_owned).collect(),
                    accounts
                        .into_iter()
                        .map(|(a, arn)| (a.to_owned(), arn))
                        .collect(),
                )
            })
    }

    fn account_spelling(account: &str, as_arn: bool) -> Value {
        if as_arn {
            json!(format!("arn:aws:iam::{account}:root"))
        } else {
            json!(account)
        }
    }

    /// A valid trust statement; `flip` rewrites every account root in the other spelling.
    fn trust_statement(
        (arns, accounts): &(Vec<String>, Vec<(String, bool)>),
        services: &[&str],
        external_id: &Option<&str>,
        flip: bool,
    ) -> Value {
        let mut aws: Vec<Value> = arns.iter().map(|a| json!(a)).collect();
        aws.extend(
            accounts
                .iter()
                .map(|(account, as_arn)| account_spelling(account, *as_arn != flip)),
        );
        let mut principal = Map::new();
        principal.insert("AWS".into(), Value::Array(aws));
        if !services.is_empty() {
            principal.insert("Service".into(), json!(services));
        }
        let mut statement = json!({
            "Effect": "Allow",
            "Principal": Value::Object(principal),
            "Action": ["sts:AssumeRole"],
        });
        if let Some(id) = external_id {
            statement["Condition"] = json!({"StringEquals": {"sts:ExternalId": id}});
        }
        statement
    }

    type TrustParts = Vec<(
        (Vec<String>, Vec<(String, bool)>),
        Vec<&'static str>,
        Option<&'static str>,
    )>;

    fn trust_parts() -> impl Strategy<Value = TrustParts> {
        prop::collection::vec(
            (
                aws_principals(),
                prop::collection::vec(prop::sample::select(SERVICES), 0..=2),
                prop::option::of(prop::sample::select(&["crossaccount:it:a:b", "x y+z"][..])),
            ),
            1..=3,
        )
    }

    fn trust_document(parts: &TrustParts, flip: bool) -> Value {
        let statements: Vec<Value> = parts
            .iter()
            .map(|(aws, services, id)| trust_statement(aws, services, id, flip))
            .collect();
        json!({"Version": "2012-10-17", "Statement": statements})
    }

    /// Shuffles and reshapes every principal list of a trust document like [`reshape`] does for
    /// actions and resources.
    fn reshape_trust(doc: &Value, rng: &mut Rng) -> Value {
        let mut doc = doc.clone();
        let statements = doc["Statement"].as_array_mut().unwrap();
        rng.shuffle(statements);
        for statement in statements.iter_mut() {
            for ids in statement["Principal"].as_object_mut().unwrap().values_mut() {
                reshape_set(ids, rng, false);
            }
            reshape_set(&mut statement["Action"], rng, false);
        }
        doc
    }

    /// What IAM decides for a request (action, resource) under the unconditional statements of a
    /// document: an explicit Deny wins over an Allow; neither is the implicit deny. Wildcards in
    /// the document match any run of characters.
    fn decide(doc: &Value, action: &str, resource: &str) -> &'static str {
        let statements = match &doc["Statement"] {
            Value::Array(list) => list.clone(),
            single => vec![single.clone()],
        };
        let matches = |list: &Value, text: &str| match list {
            Value::Array(items) => items.iter().any(|p| {
                p.as_str()
                    .is_some_and(|p| crate::reconcile::validate::glob_match(p, text))
            }),
            Value::String(p) => crate::reconcile::validate::glob_match(p, text),
            _ => false,
        };
        let applies = |s: &Value| {
            let action_ok = match (s.get("Action"), s.get("NotAction")) {
                (Some(list), _) => matches(list, action),
                (_, Some(list)) => !matches(list, action),
                _ => false,
            };
            let resource_ok = match (s.get("Resource"), s.get("NotResource")) {
                (Some(list), _) => matches(list, resource),
                (_, Some(list)) => !matches(list, resource),
                _ => false,
            };
            action_ok && resource_ok
        };
        let effects: Vec<&str> = statements
            .iter()
            .filter(|s| applies(s))
            .filter_map(|s| s["Effect"].as_str())
            .collect();
        if effects.contains(&"Deny") {
            "Deny"
        } else if effects.contains(&"Allow") {
            "Allow"
        } else {
            "ImplicitDeny"
        }
    }

    const REQUEST_ACTIONS: &[&str] = &[
        "s3:GetObject",
        "s3:PutObject",
        "s3:ListBucket",
        "ec2:DescribeInstances",
        "sqs:SendMessage",
        "iam:PassRole",
        "kms:Decrypt",
    ];
    const REQUEST_RESOURCES: &[&str] = &[
        "arn:aws:s3:::bucket-a",
        "arn:aws:s3:::bucket-a/key",
        "arn:aws:s3:::bucket b/key+1",
        "arn:aws:iam::111122223333:role/app",
        "arn:aws:sqs:eu-west-1:111122223333:queue-é",
        "arn:aws:s3:::other",
    ];

    fn without_conditions(doc: &Value) -> Value {
        let mut doc = doc.clone();
        for statement in doc["Statement"].as_array_mut().unwrap() {
            statement.as_object_mut().unwrap().remove("Condition");
        }
        doc
    }

    /// Any JSON value, nested a few levels, with the keys IAM documents use so the special
    /// cases of [`normalize`] are reached.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-3i64..100).prop_map(|n| json!(n)),
            prop::sample::select(
                &[
                    "",
                    "*",
                    "x",
                    "true",
                    "10",
                    "111122223333",
                    "arn:aws:iam::111122223333:root",
                    "arn:aws:iam::111122223333:user/u",
                    "2012-10-17",
                ][..]
            )
            .prop_map(|s| json!(s)),
        ];
        const KEYS: &[&str] = &[
            "Version",
            "Statement",
            "Effect",
            "Action",
            "NotAction",
            "Resource",
            "NotResource",
            "Principal",
            "NotPrincipal",
            "AWS",
            "Service",
            "Condition",
            "StringEquals",
            "Sid",
            "k",
        ];
        leaf.prop_recursive(4, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..5).prop_map(
                    |entries| Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_owned(), v))
                            .collect()
                    )
                ),
            ]
        })
    }

    proptest! {
        #[test]
        fn trust_principal_spellings_and_order_are_equivalent(parts in trust_parts(), seed in any::<u64>()) {
            let doc = trust_document(&parts, false);
            prop_assert!(validate_document(&to_text(&doc), PolicyKind::Trust).is_ok(), "{}", doc);
            // Account roots in the other spelling, principal lists reordered, repeated, scalar.
            let flipped = reshape_trust(&trust_document(&parts, true), &mut Rng(seed));
            prop_assert!(equivalent(&doc, &flipped), "{} vs {}", doc, flipped);
            let once = normalize(&flipped);
            prop_assert_eq!(&normalize(&once), &once);
            // Percent-encoded as GetRole returns it.
            let encoded = percent_encoding::utf8_percent_encode(&to_text(&flipped), percent_encoding::NON_ALPHANUMERIC).to_string();
            prop_assert!(equivalent(&doc, &parse_document(&encoded).unwrap()));
        }

        #[test]
        fn a_new_trusted_principal_makes_trust_documents_differ(parts in trust_parts(), seed in any::<u64>()) {
            let doc = trust_document(&parts, false);
            let mut changed = doc.clone();
            let statements = changed["Statement"].as_array_mut().unwrap();
            let index = Rng(seed).below(statements.len());
            statements[index]["Principal"]["AWS"]
                .as_array_mut()
                .unwrap()
                .push(json!("arn:aws:iam::999999999999:root"));
            prop_assert!(!equivalent(&doc, &changed));
            prop_assert!(!equivalent(&doc, &reshape_trust(&changed, &mut Rng(seed))));
        }

        #[test]
        fn normalizing_keeps_what_a_document_allows_and_denies(doc in identity_document(), seed in any::<u64>()) {
            let doc = without_conditions(&doc);
            let normalized = normalize(&doc);
            let reshaped = reshape(&doc, &mut Rng(seed));
            for action in REQUEST_ACTIONS {
                for resource in REQUEST_RESOURCES {
                    let want = decide(&doc, action, resource);
                    prop_assert_eq!(decide(&normalized, action, resource), want, "{} on {} under {}", action, resource, doc);
                    prop_assert_eq!(decide(&reshaped, action, resource), want, "{} on {} under {}", action, resource, reshaped);
                }
            }
        }

        #[test]
        fn flipping_an_effect_makes_documents_differ(doc in identity_document(), seed in any::<u64>()) {
            let mut changed = doc.clone();
            let statements = changed["Statement"].as_array_mut().unwrap();
            let index = Rng(seed).below(statements.len());
            let flipped = if statements[index]["Effect"] == "Allow" { "Deny" } else { "Allow" };
            statements[index]["Effect"] = json!(flipped);
            prop_assert!(!equivalent(&doc, &changed), "{} vs {}", doc, changed);
        }

        #[test]
        fn normalize_is_idempotent_on_any_json(value in any_json()) {
            let once = normalize(&value);
            prop_assert_eq!(&normalize(&once), &once, "input {}", value);
            // And comparing a value with its normal form agrees.
            prop_assert!(equivalent(&value, &once), "input {}", value);
        }
    }
}
