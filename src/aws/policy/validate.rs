//! Checking user-supplied documents with IAM's grammar essentials, so a mistake is explained in
//! terms of the policy language before anything reaches IAM.

use serde_json::{Map, Value};

use super::{
    PolicyError, PolicyKind, describe,
    parse::{check_unique_keys, not_json},
    quote, scalar_text, size_without_whitespace, to_text,
};

/// Policy language versions IAM accepts.
pub(super) const VERSIONS: [&str; 2] = ["2012-10-17", "2008-10-17"];
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

/// Validates a user-supplied document for the given kind with IAM's grammar essentials and
/// returns the parsed value.
///
/// Catches what IAM would refuse with a bare `MalformedPolicyDocument`, plus repeated keys (which
/// a JSON parser would otherwise resolve silently). The text must be plain JSON, not URL-encoded.
/// The size is measured on [`to_text`] of the value, which is what IAM receives.
pub(crate) fn validate_document(text: &str, kind: PolicyKind) -> Result<Value, PolicyError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::aws::policy::testing::{
        PLAIN_TRUST, Rng, identity_document, reshape, scrambled_text,
    };

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

    proptest! {
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
    }
}
