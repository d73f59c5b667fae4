//! Generators and reshaping helpers shared by the tests of the policy module: valid identity
//! policies, and the transformations IAM may apply to a document without changing its meaning.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::validate::VERSIONS;

/// A trust policy as a person writes it.
pub(crate) const PLAIN_TRUST: &str = r#"{
    "Version": "2012-10-17",
    "Statement": [{
        "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::111122223333:role/ci-deployer"},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": "tenant a+b"}}
    }]
}"#;

// The alphabets of the generated documents. Wildcards (`*`, `?`) appear in actions, resources
// and condition values so that the oracle of the normalisation property test has something to
// match.

const ACTIONS: &[&str] = &[
    "s3:GetObject",
    "s3:Get?bject",
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
    "arn:aws:s3:::bucket-?",
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
    "192.168.0.1",
    "a*",
    "é/?",
];

/// Lists are always arrays here (possibly with repeats); the transformations vary the form.
fn set_of(alphabet: &'static [&'static str]) -> impl Strategy<Value = Value> {
    prop::collection::vec(prop::sample::select(alphabet), 1..=3)
        .prop_map(|items| Value::Array(items.into_iter().map(|s| json!(s)).collect()))
}

/// A `Condition` block: 1-2 operators, each with 1-2 keys.
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

/// An identity statement: Allow or Deny, Action or NotAction, Resource or NotResource, and
/// sometimes a condition.
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
pub(crate) fn identity_document() -> impl Strategy<Value = Value> {
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
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }

    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Shuffles a set-valued list, sometimes repeats an element, and turns a one-element list
/// into a scalar half of the time; with `retype`, `"true"`/`"10"` may become `true`/`10`.
pub(crate) fn reshape_set(value: &mut Value, rng: &mut Rng, retype: bool) {
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
pub(crate) fn reshape(doc: &Value, rng: &mut Rng) -> Value {
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

pub(crate) fn scrambled_text(value: &Value, rng: &mut Rng) -> String {
    let mut out = String::new();
    write_scrambled(value, rng, &mut out);
    out
}
