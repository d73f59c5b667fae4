//! The canonical form of a document, so that documents are compared by what they mean to IAM
//! rather than by how they are written.

use crate::aws::Arn;
use serde_json::{Map, Value};

use super::{scalar_text, to_text};

/// The policy language version IAM assumes when a document has no `Version`.
const DEFAULT_VERSION: &str = "2008-10-17";

/// Canonical form for semantic comparison; for comparing only, send the original document.
///
/// Differences that IAM ignores or introduces itself disappear: statement order and duplicate
/// statements, scalar versus one-element list and order or repetition in Action, NotAction,
/// Resource, NotResource, principal lists and condition values, `true` versus `"true"` in
/// conditions, an empty `Condition`, a missing `Version` (IAM's default `2008-10-17`), and an
/// account given as `123456789012` versus `arn:aws:iam::123456789012:root` (IAM stores the
/// latter). Object keys come out sorted.
pub(crate) fn normalize(doc: &Value) -> Value {
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
pub(crate) fn equivalent(a: &Value, b: &Value) -> bool {
    normalize(a) == normalize(b)
}

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
    match Arn::parse(id) {
        Some(arn)
            if arn.service() == "iam"
                && arn.resource() == "root"
                && arn.account().len() == 12
                && arn.account().bytes().all(|b| b.is_ascii_digit()) =>
        {
            arn.account().to_owned()
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

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, net::Ipv4Addr};

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::aws::policy::{
        PolicyKind, parse_document,
        testing::{Rng, identity_document, reshape, reshape_set, scrambled_text},
        validate_document,
    };

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

    // ----- property tests -----

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

    // ----- an independent model of IAM's decision -----
    //
    // The oracle below knows nothing of `normalize` or of the reconciler: its own wildcard
    // matcher, its own reading of condition values, its own condition operators. It models only
    // what the generators produce and panics on anything else, so a generator that grows a new
    // operator cannot slip past it.

    /// What IAM decides for a request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Decision {
        Allow,
        ExplicitDeny,
        ImplicitDeny,
    }

    /// Condition key -> the values the request carries for it; a key not in the map is absent.
    type Context = BTreeMap<String, Vec<String>>;

    fn context(pairs: &[(&str, &[&str])]) -> Context {
        pairs
            .iter()
            .map(|(key, values)| {
                (
                    (*key).to_owned(),
                    values.iter().map(|v| (*v).to_owned()).collect(),
                )
            })
            .collect()
    }

    /// Whether `pattern` matches the whole of `text` under IAM's wildcards: `*` is any run of
    /// characters (none too), `?` exactly one character, anything else must be `same` as the
    /// character it meets.
    fn wildcard_match(pattern: &str, text: &str, same: fn(char, char) -> bool) -> bool {
        let pattern: Vec<char> = pattern.chars().collect();
        let text: Vec<char> = text.chars().collect();
        matches_from(&pattern, &text, same)
    }

    /// The recursive definition itself rather than the greedy backtracking of a glob: a `*` tries
    /// every length of text it could stand for, anything else consumes one character.
    fn matches_from(pattern: &[char], text: &[char], same: fn(char, char) -> bool) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => {
                (0..=text.len()).any(|taken| matches_from(rest, &text[taken..], same))
            }
            Some((&p, rest)) => text.split_first().is_some_and(|(&t, text)| {
                (p == '?' || same(p, t)) && matches_from(rest, text, same)
            }),
        }
    }

    fn same_char(a: char, b: char) -> bool {
        a == b
    }

    fn same_char_ignoring_case(a: char, b: char) -> bool {
        a.to_lowercase().eq(b.to_lowercase())
    }

    /// IAM matches action names case-insensitively.
    fn action_matches(pattern: &str, action: &str) -> bool {
        wildcard_match(pattern, action, same_char_ignoring_case)
    }

    /// IAM matches resource ARNs case-sensitively.
    fn resource_matches(pattern: &str, resource: &str) -> bool {
        wildcard_match(pattern, resource, same_char)
    }

    /// A policy value or list of them as the texts IAM compares: strings as they are, numbers
    /// and booleans as written (`true` is `"true"`).
    fn texts(value: &Value) -> Vec<String> {
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => panic!("the oracle does not model the policy value {other}"),
        };
        match value {
            Value::Array(items) => items.iter().map(text).collect(),
            scalar => vec![text(scalar)],
        }
    }

    fn as_bool(text: &str) -> Option<bool> {
        if text.eq_ignore_ascii_case("true") {
            Some(true)
        } else if text.eq_ignore_ascii_case("false") {
            Some(false)
        } else {
            None
        }
    }

    fn as_number(text: &str) -> Option<f64> {
        text.parse::<f64>().ok().filter(|n| n.is_finite())
    }

    /// An IPv4 address or CIDR block as (network bits, prefix length); an address is a /32.
    fn as_ipv4_block(text: &str) -> Option<(u32, u32)> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, prefix.parse::<u32>().ok().filter(|p| *p <= 32)?),
            None => (text, 32),
        };
        Some((u32::from(address.parse::<Ipv4Addr>().ok()?), prefix))
    }

    /// Whether one request value satisfies one policy value under `operator`.
    fn operator_holds(operator: &str, policy: &str, request: &str) -> bool {
        match operator {
            "StringEquals" => request == policy,
            "StringLike" => wildcard_match(policy, request, same_char),
            "Bool" => as_bool(policy).is_some_and(|p| as_bool(request) == Some(p)),
            "NumericLessThan" => match (as_number(request), as_number(policy)) {
                (Some(request), Some(policy)) => request < policy,
                _ => false,
            },
            "IpAddress" => {
                let Some((network, prefix)) = as_ipv4_block(policy) else {
                    return false;
                };
                let Ok(address) = request.parse::<Ipv4Addr>() else {
                    return false;
                };
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                u32::from(address) & mask == network & mask
            }
            other => panic!("the oracle does not model the condition operator {other}"),
        }
    }

    /// A `Condition` block holds when every operator holds for every key under it; one key holds
    /// when any of the policy's values matches any of the request's values, and never when the
    /// request lacks the key.
    fn condition_holds(condition: &Value, context: &Context) -> bool {
        let Value::Object(operators) = condition else {
            panic!("the oracle does not model the condition {condition}");
        };
        operators.iter().all(|(operator, keys)| {
            let Value::Object(keys) = keys else {
                panic!("the oracle does not model the condition {condition}");
            };
            keys.iter().all(|(key, values)| {
                context.get(key).is_some_and(|present| {
                    texts(values).iter().any(|policy| {
                        present
                            .iter()
                            .any(|request| operator_holds(operator, policy, request))
                    })
                })
            })
        })
    }

    /// Whether a statement's `name`/`Not<name>` element covers `subject`.
    fn element_covers(
        statement: &Value,
        name: &str,
        subject: &str,
        matches: fn(&str, &str) -> bool,
    ) -> bool {
        let hit = |list: &Value| texts(list).iter().any(|pattern| matches(pattern, subject));
        match (statement.get(name), statement.get(format!("Not{name}"))) {
            (Some(list), None) => hit(list),
            (None, Some(list)) => !hit(list),
            _ => panic!("statement needs exactly one of {name} and Not{name}: {statement}"),
        }
    }

    /// IAM's decision for a request under one identity policy: an explicit Deny of an applicable
    /// statement wins, otherwise an applicable Allow allows, otherwise it is the implicit deny.
    fn decide(doc: &Value, action: &str, resource: &str, context: &Context) -> Decision {
        let statements: Vec<&Value> = match &doc["Statement"] {
            Value::Array(list) => list.iter().collect(),
            single => vec![single],
        };
        let mut allowed = false;
        for statement in statements {
            let applies = element_covers(statement, "Action", action, action_matches)
                && element_covers(statement, "Resource", resource, resource_matches)
                && statement
                    .get("Condition")
                    .is_none_or(|condition| condition_holds(condition, context));
            if !applies {
                continue;
            }
            match statement["Effect"].as_str() {
                Some("Deny") => return Decision::ExplicitDeny,
                Some("Allow") => allowed = true,
                _ => panic!("statement without a valid Effect: {statement}"),
            }
        }
        if allowed {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }

    const REQUEST_ACTIONS: &[&str] = &[
        "s3:GetObject",
        "s3:getobject",
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
        "arn:aws:s3:::bucket-b",
        "arn:aws:s3:::bucket b/key+1",
        "arn:aws:iam::111122223333:role/app",
        "arn:aws:sqs:eu-west-1:111122223333:queue-é",
        "arn:aws:s3:::other",
    ];
    /// Request contexts for the generated conditions (keys from `testing::CONDITION_KEYS`, values
    /// like `testing::CONDITION_VALUES`): ones that satisfy many of them, ones that fail them, several values
    /// for one key, values the operator cannot read, and keys absent.
    const REQUEST_CONTEXTS: &[&[(&str, &[&str])]] = &[
        &[],
        &[
            ("aws:SourceIp", &["10.1.2.3"]),
            ("aws:SecureTransport", &["true"]),
            ("s3:prefix", &["a b"]),
            ("aws:PrincipalTag/team", &["x+y"]),
            ("sts:ExternalId", &["9"]),
        ],
        &[
            ("aws:SourceIp", &["192.168.0.1"]),
            ("aws:SecureTransport", &["FALSE"]),
            ("s3:prefix", &["10"]),
            ("aws:PrincipalTag/team", &["é/ü"]),
            ("sts:ExternalId", &["q\"uote"]),
        ],
        &[
            ("aws:SourceIp", &["10.0.0.0/8", "172.16.0.1"]),
            ("aws:SecureTransport", &["false", "true"]),
            ("s3:prefix", &["100%", "ab", "true"]),
            ("aws:PrincipalTag/team", &["-1", "a b"]),
            ("sts:ExternalId", &["x+y", "10"]),
        ],
        &[("aws:SecureTransport", &["true"]), ("s3:prefix", &["é/ü"])],
        &[
            ("aws:SourceIp", &["10.0.0.1"]),
            ("sts:ExternalId", &["true"]),
        ],
    ];

    #[test]
    fn oracle_wildcards_follow_iam() {
        for (pattern, text) in [
            ("*", ""),
            ("*", "anything"),
            ("s3:*", "s3:"),
            ("s3:Get*", "s3:GetObject"),
            ("s3:*Object", "s3:GetObject"),
            ("*a*b*", "xxaxxbxx"),
            ("a*a*a", "aaa"),
            ("s3:?etObject", "s3:GetObject"),
            ("??", "éü"),
            ("arn:aws:s3:::b/*", "arn:aws:s3:::b/"),
            ("x*", "x*"),
        ] {
            assert!(
                resource_matches(pattern, text),
                "{pattern} should match {text}"
            );
        }
        for (pattern, text) in [
            ("", "x"),
            ("?", ""),
            ("?", "ab"),
            ("s3:Get*", "s3:PutObject"),
            ("s3:Get", "s3:GetObject"),
            ("*b", "bba"),
            ("a*a*a", "aa"),
            ("???", "éü"),
            ("arn:aws:s3:::b/*", "arn:aws:s3:::b"),
        ] {
            assert!(
                !resource_matches(pattern, text),
                "{pattern} should not match {text}"
            );
        }
        // Actions ignore case, resources do not.
        assert!(action_matches("s3:GetObject", "S3:GETOBJECT"));
        assert!(action_matches("S3:get*", "s3:GetObject"));
        assert!(!resource_matches(
            "arn:aws:s3:::Bucket",
            "arn:aws:s3:::bucket"
        ));
        // Literal text in a pattern is literal, also characters a regex would treat specially.
        assert!(!resource_matches("a.c", "abc"));
    }

    #[test]
    fn oracle_condition_operators() {
        let holds = |operator: &str, policy: Value, present: &[&str]| {
            let condition = json!({ operator: {"k": policy} });
            condition_holds(&condition, &context(&[("k", present)]))
        };
        assert!(holds("StringEquals", json!("a b"), &["a b"]));
        assert!(!holds("StringEquals", json!("a b"), &["A B"]));
        assert!(!holds("StringEquals", json!("a*"), &["ab"]));
        assert!(holds("StringLike", json!("a*"), &["ab"]));
        assert!(holds("StringLike", json!("é/?"), &["é/ü"]));
        assert!(!holds("StringLike", json!("a?"), &["a"]));
        assert!(holds("Bool", json!(true), &["true"]));
        assert!(holds("Bool", json!("TRUE"), &["true"]));
        assert!(holds("Bool", json!("false"), &["False"]));
        assert!(!holds("Bool", json!("true"), &["false"]));
        assert!(!holds("Bool", json!("yes"), &["yes"]));
        assert!(holds("NumericLessThan", json!(10), &["9"]));
        assert!(holds("NumericLessThan", json!("10"), &["-1"]));
        assert!(!holds("NumericLessThan", json!("10"), &["10"]));
        assert!(!holds("NumericLessThan", json!("ten"), &["9"]));
        assert!(!holds("NumericLessThan", json!("10"), &["nine"]));
        assert!(holds("IpAddress", json!("10.0.0.0/8"), &["10.1.2.3"]));
        assert!(!holds("IpAddress", json!("10.0.0.0/8"), &["11.0.0.1"]));
        assert!(holds("IpAddress", json!("192.168.0.1"), &["192.168.0.1"]));
        assert!(holds("IpAddress", json!("0.0.0.0/0"), &["8.8.8.8"]));
        assert!(!holds("IpAddress", json!("10.0.0.0/33"), &["10.0.0.1"]));
        assert!(!holds("IpAddress", json!("true"), &["10.0.0.1"]));
        assert!(!holds("IpAddress", json!("10.0.0.0/8"), &["10.0.0.0/8"]));
        // One key: any policy value against any request value.
        assert!(holds("StringEquals", json!(["a", "b"]), &["c", "b"]));
        assert!(!holds("StringEquals", json!(["a", "b"]), &["c", "d"]));
        assert!(!holds("StringEquals", json!("a"), &[]));
    }

    #[test]
    fn oracle_conditions_need_every_operator_and_key() {
        let condition = json!({
            "StringEquals": {"sts:ExternalId": "x+y", "s3:prefix": ["a b", "10"]},
            "Bool": {"aws:SecureTransport": true},
        });
        let all = context(&[
            ("sts:ExternalId", &["x+y"]),
            ("s3:prefix", &["10"]),
            ("aws:SecureTransport", &["true"]),
        ]);
        assert!(condition_holds(&condition, &all));
        let wrong_key = context(&[
            ("sts:ExternalId", &["x+y"]),
            ("s3:prefix", &["11"]),
            ("aws:SecureTransport", &["true"]),
        ]);
        assert!(!condition_holds(&condition, &wrong_key));
        let wrong_operator = context(&[
            ("sts:ExternalId", &["x+y"]),
            ("s3:prefix", &["10"]),
            ("aws:SecureTransport", &["false"]),
        ]);
        assert!(!condition_holds(&condition, &wrong_operator));
        let absent = context(&[("sts:ExternalId", &["x+y"]), ("s3:prefix", &["10"])]);
        assert!(!condition_holds(&condition, &absent));
    }

    #[test]
    fn oracle_explicit_deny_wins() {
        let doc = identity(json!([
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:PutObject", "NotResource": "arn:aws:s3:::bucket-a"},
        ]));
        let none = Context::new();
        let ask = |action, resource| decide(&doc, action, resource, &none);
        assert_eq!(ask("s3:GetObject", "arn:aws:s3:::other"), Decision::Allow);
        assert_eq!(
            ask("s3:PutObject", "arn:aws:s3:::other"),
            Decision::ExplicitDeny
        );
        assert_eq!(
            ask("s3:PutObject", "arn:aws:s3:::bucket-a"),
            Decision::Allow
        );
        assert_eq!(
            ask("sqs:SendMessage", "arn:aws:s3:::other"),
            Decision::ImplicitDeny
        );
        let not_action = identity(
            json!({"Effect": "Allow", "NotAction": "iam:*", "Resource": "arn:aws:s3:::b*"}),
        );
        assert_eq!(
            decide(&not_action, "s3:GetObject", "arn:aws:s3:::bucket-a", &none),
            Decision::Allow
        );
        assert_eq!(
            decide(&not_action, "IAM:PassRole", "arn:aws:s3:::bucket-a", &none),
            Decision::ImplicitDeny
        );
    }

    /// The property test below is only as strong as the oracle's sensitivity: changing one
    /// condition value, or dropping one of several (as a broken normaliser might), must change
    /// some decision.
    #[test]
    fn oracle_notices_a_changed_condition_value() {
        let with_values = |values: Value| {
            identity(
                json!([{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*",
                "Condition": {"StringEquals": {"aws:PrincipalTag/team": values}}}]),
            )
        };
        let team = |name: &str| context(&[("aws:PrincipalTag/team", &[name])]);
        let request = |doc: &Value, name: &str| {
            decide(doc, "s3:GetObject", "arn:aws:s3:::bucket-a", &team(name))
        };
        let original = with_values(json!(["a b", "x+y"]));
        assert_eq!(request(&original, "x+y"), Decision::Allow);
        assert_eq!(request(&original, "a b"), Decision::Allow);
        assert_eq!(request(&original, "é/ü"), Decision::ImplicitDeny);
        let changed = with_values(json!(["a b", "é/ü"]));
        assert_eq!(request(&changed, "x+y"), Decision::ImplicitDeny);
        assert_eq!(request(&changed, "é/ü"), Decision::Allow);
        let dropped = with_values(json!(["a b"]));
        assert_eq!(request(&dropped, "x+y"), Decision::ImplicitDeny);
        // A numeric bound moved by one changes the answer at the edge.
        let below = |bound: Value| {
            let doc = identity(json!([{"Effect": "Deny", "Action": "*", "Resource": "*",
                "Condition": {"NumericLessThan": {"s3:prefix": bound}}}]));
            decide(
                &doc,
                "s3:GetObject",
                "arn:aws:s3:::bucket-a",
                &context(&[("s3:prefix", &["10"])]),
            )
        };
        assert_eq!(below(json!(10)), Decision::ImplicitDeny);
        assert_eq!(below(json!("11")), Decision::ExplicitDeny);
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

        /// Normalising never changes what a document decides: the original, its normal form, a
        /// reshaped copy and that copy's normal form give the same decision, by the oracle
        /// above, for every request of the fixed sets (conditions included).
        #[test]
        fn normalizing_keeps_what_a_document_allows_and_denies(doc in identity_document(), seed in any::<u64>()) {
            // The reshaped document carries `true` and `10` where the original has strings, so its
            // normal form is the one that exercises how `normalize` reads condition values.
            let reshaped = reshape(&doc, &mut Rng(seed));
            let variants = [("normalised", normalize(&doc)), ("reshaped", reshaped.clone()), ("normalised reshaped", normalize(&reshaped))];
            let contexts: Vec<Context> = REQUEST_CONTEXTS.iter().map(|pairs| context(pairs)).collect();
            for action in REQUEST_ACTIONS {
                for resource in REQUEST_RESOURCES {
                    for context in &contexts {
                        let want = decide(&doc, action, resource, context);
                        for (name, variant) in &variants {
                            prop_assert_eq!(decide(variant, action, resource, context), want, "{} on {} with {:?}: {} {} of {}", action, resource, context, name, variant, doc);
                        }
                    }
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
