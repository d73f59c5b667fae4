//! The bad-input catalog: malformed CrossAccountRoles and AwsAccounts, each with the outcome it
//! must have. Schema and CEL cases are rejected by the apiserver with a message naming the field;
//! semantic cases pass the apiserver and are refused by the operator's validation with a status
//! condition. The whole catalog makes no IAM write and mints no credentials.
//!
//! What reached AWS is counted at the shared operator's AWS proxy (`common::shared_proxy()`),
//! every attempt whatever its outcome. The catalog test takes `common::serial()` (it compares
//! what reached AWS between two points) and assumes no other operator process works on the same
//! environment meanwhile.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{
    Operator, TestNamespace,
    tenant::{AwsActivity, guarded_account},
};
use cross_account_operator::api::{AwsAccount, CrossAccountRole};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// CrossAccountRoles that the apiserver must reject name an AwsAccount that does not exist, so a
/// wrongly accepted one still leaves AWS alone (the operator reports AccountNotReady).
const NO_ACCOUNT: &str = "bad-input-no-such-account";
const CONVERGE: Duration = Duration::from_secs(60);
const S3_READ: &str = "arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess";

/// Where the catalog entry is caught.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// OpenAPI schema: types, patterns, lengths, ranges, enums, required fields, list types.
    Schema,
    /// CEL rules of the CRD: immutability and cross-field rules.
    Cel,
    /// The operator's validation (src/reconcile/validate.rs, src/aws/policy.rs).
    Semantic,
}

/// The object under test.
enum Input {
    /// A CrossAccountRole with this spec.
    Role(Value),
    /// A CrossAccountRole created with the first spec, then merge-patched with the second.
    RoleUpdate(Value, Value),
    /// An AwsAccount with this spec.
    Account(Value),
    /// An AwsAccount created with the first spec, then merge-patched with the second.
    AccountUpdate(Value, Value),
    /// A CrossAccountRole whose spec names the catalog AwsAccount `.0` (see [`Guardrails`]); the
    /// `accountRef` is filled in.
    RoleIn(Guardrails, Value),
}

/// The AwsAccounts the semantic cases run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Guardrails {
    /// Policies `arn:aws:iam::aws:policy/*`, inline policies, source-account users as principals,
    /// role name prefix `cat-`, session cap 3600.
    Open,
    /// Like `Open` without inline policies and with only user devTest as principal.
    Strict,
    /// An allowedNamespaces selector the apiserver accepts but that cannot be evaluated.
    BrokenSelector,
}

enum Expect {
    /// The apiserver refuses with 422 and a message containing `field` and each of `also`.
    Rejected {
        field: &'static str,
        also: &'static [&'static str],
    },
    /// Accepted by the apiserver; the operator sets Ready=False and RoleSynced=False with this
    /// reason and a message containing each of `message_contains`.
    Refused {
        reason: &'static str,
        message_contains: Vec<String>,
    },
}

struct Case {
    name: &'static str,
    level: Level,
    input: Input,
    expect: Expect,
}

fn rejected(
    name: &'static str,
    level: Level,
    input: Input,
    field: &'static str,
    also: &'static [&'static str],
) -> Case {
    Case {
        name,
        level,
        input,
        expect: Expect::Rejected { field, also },
    }
}

fn refused(
    name: &'static str,
    guardrails: Guardrails,
    spec: Value,
    reason: &'static str,
    message_contains: &[&str],
) -> Case {
    Case {
        name,
        level: Level::Semantic,
        input: Input::RoleIn(guardrails, spec),
        expect: Expect::Refused {
            reason,
            message_contains: message_contains.iter().map(|s| s.to_string()).collect(),
        },
    }
}

/// A CrossAccountRole spec naming no existing account, with `fields` added.
fn role(fields: Value) -> Input {
    Input::Role(with(json!({"accountRef": NO_ACCOUNT}), fields))
}

fn with(mut base: Value, fields: Value) -> Value {
    for (k, v) in fields.as_object().expect("fields are an object") {
        base[k] = v.clone();
    }
    base
}

fn account(fields: Value) -> Input {
    Input::Account(with(json!({"accountId": "222222222222"}), fields))
}

/// An identity policy document with one statement, as text.
fn document(statement: Value) -> String {
    json!({"Version": "2012-10-17", "Statement": [statement]}).to_string()
}

fn inline(document: &str) -> Value {
    json!({"policies": {"inline": [{"name": "p", "document": document}]}})
}

fn catalog() -> Vec<Case> {
    use Level::*;
    let arns = |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>();
    let many_tags: BTreeMap<String, String> =
        (0..48).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let long_principal = |i: usize| {
        format!(
            "arn:aws:iam::123456789012:user/{}u{i:02}",
            "a-long-path/".repeat(8)
        )
    };
    // Three documents of about 4000 characters each: every one fits, together they exceed IAM's
    // 10240 per role.
    let big_document = |tag: usize| {
        document(json!({
            "Effect": "Allow",
            "Action": arns(250, &|i| format!("s3:Get{tag}{i:04}")),
            "Resource": "*",
        }))
    };
    vec![
        // ----- CrossAccountRole: schema -----
        rejected(
            "missing accountRef",
            Schema,
            Input::Role(json!({"roleName": "x"})),
            "spec.accountRef",
            &["Required value"],
        ),
        rejected(
            "empty accountRef",
            Schema,
            Input::Role(json!({"accountRef": ""})),
            "spec.accountRef",
            &[],
        ),
        rejected(
            "accountRef of the wrong type",
            Schema,
            Input::Role(json!({"accountRef": 42})),
            "spec.accountRef",
            &["string"],
        ),
        rejected(
            "role name too long",
            Schema,
            role(json!({"roleName": "r".repeat(65)})),
            "spec.roleName",
            &[],
        ),
        rejected(
            "role name with bad characters",
            Schema,
            role(json!({"roleName": "my role!"})),
            "spec.roleName",
            &[],
        ),
        rejected(
            "empty role name",
            Schema,
            role(json!({"roleName": ""})),
            "spec.roleName",
            &[],
        ),
        rejected(
            "role name with non-ASCII letters",
            Schema,
            role(json!({"roleName": "rôle"})),
            "spec.roleName",
            &[],
        ),
        rejected(
            "description with characters IAM refuses",
            Schema,
            role(json!({"description": "reads 🚀 buckets"})),
            "spec.description",
            &[],
        ),
        rejected(
            "description with CJK characters",
            Schema,
            role(json!({"description": "読み取り専用"})),
            "spec.description",
            &[],
        ),
        rejected(
            "description too long",
            Schema,
            role(json!({"description": "d".repeat(1001)})),
            "spec.description",
            &["Too long"],
        ),
        rejected(
            "durationSeconds below 900",
            Schema,
            role(json!({"credentials": {"durationSeconds": 899}})),
            "spec.credentials.durationSeconds",
            &[],
        ),
        rejected(
            "durationSeconds above 43200",
            Schema,
            role(json!({"credentials": {"durationSeconds": 43201}})),
            "spec.credentials.durationSeconds",
            &[],
        ),
        rejected(
            "durationSeconds as a string",
            Schema,
            role(json!({"credentials": {"durationSeconds": "3600"}})),
            "spec.credentials.durationSeconds",
            &["integer"],
        ),
        rejected(
            "refreshPercent 0",
            Schema,
            role(json!({"credentials": {"refreshPercent": 0}})),
            "spec.credentials.refreshPercent",
            &[],
        ),
        rejected(
            "refreshPercent 95",
            Schema,
            role(json!({"credentials": {"refreshPercent": 95}})),
            "spec.credentials.refreshPercent",
            &[],
        ),
        rejected(
            "unknown deletionPolicy",
            Schema,
            role(json!({"deletionPolicy": "Sometimes"})),
            "spec.deletionPolicy",
            &["Delete", "Retain"],
        ),
        rejected(
            "role max session below IAM minimum",
            Schema,
            role(json!({"maxSessionDurationSeconds": 100})),
            "spec.maxSessionDurationSeconds",
            &[],
        ),
        rejected(
            "managed policy that is not an ARN",
            Schema,
            role(json!({"policies": {"managed": ["AmazonS3ReadOnlyAccess"]}})),
            "spec.policies.managed[0]",
            &[],
        ),
        rejected(
            "managed policy that is a role ARN",
            Schema,
            role(json!({"policies": {"managed": ["arn:aws:iam::111111111111:role/admin"]}})),
            "spec.policies.managed[0]",
            &[],
        ),
        rejected(
            "managed policies as a string",
            Schema,
            role(json!({"policies": {"managed": S3_READ}})),
            "spec.policies.managed",
            &["array"],
        ),
        rejected(
            "more than 10 managed policies",
            Schema,
            role(
                json!({"policies": {"managed": arns(11, &|i| format!("arn:aws:iam::aws:policy/P{i}"))}}),
            ),
            "spec.policies.managed",
            &["Too many"],
        ),
        rejected(
            "duplicate managed policies",
            Schema,
            role(json!({"policies": {"managed": [S3_READ, S3_READ]}})),
            "spec.policies.managed[1]",
            &["Duplicate"],
        ),
        rejected(
            "duplicate inline policy names",
            Schema,
            role(
                json!({"policies": {"inline": [{"name": "p", "document": "{}"}, {"name": "p", "document": "{}"}]}}),
            ),
            "spec.policies.inline[1]",
            &["Duplicate"],
        ),
        rejected(
            "inline policy without a document",
            Schema,
            role(json!({"policies": {"inline": [{"name": "p"}]}})),
            "spec.policies.inline[0].document",
            &["Required value"],
        ),
        rejected(
            "inline policy with an empty document",
            Schema,
            role(inline("")),
            "spec.policies.inline[0].document",
            &[],
        ),
        rejected(
            "inline policy document over 10240 characters",
            Schema,
            role(inline(&format!(
                "{{\"Statement\": [], \"Id\": \"{}\"}}",
                "x".repeat(10240)
            ))),
            "spec.policies.inline[0].document",
            &["Too long"],
        ),
        rejected(
            "inline policy name with a space",
            Schema,
            role(json!({"policies": {"inline": [{"name": "my policy", "document": "{}"}]}})),
            "spec.policies.inline[0].name",
            &[],
        ),
        rejected(
            "more than 10 inline policies",
            Schema,
            role(
                json!({"policies": {"inline": arns(11, &|i| format!("p{i}")).into_iter().map(|n| json!({"name": n, "document": "{}"})).collect::<Vec<_>>()}}),
            ),
            "spec.policies.inline",
            &["Too many"],
        ),
        rejected(
            "trust principal that is a wildcard",
            Schema,
            role(json!({"trust": {"principals": ["*"]}})),
            "spec.trust.principals[0]",
            &[],
        ),
        rejected(
            "trust principal with a wildcard user",
            Schema,
            role(json!({"trust": {"principals": ["arn:aws:iam::123456789012:user/*"]}})),
            "spec.trust.principals[0]",
            &[],
        ),
        rejected(
            "trust principal in odd casing",
            Schema,
            role(json!({"trust": {"principals": ["ARN:AWS:IAM::123456789012:USER/devTest"]}})),
            "spec.trust.principals[0]",
            &[],
        ),
        rejected(
            "trust principal that is an assumed-role session",
            Schema,
            role(
                json!({"trust": {"principals": ["arn:aws:sts::123456789012:assumed-role/admin/me"]}}),
            ),
            "spec.trust.principals[0]",
            &[],
        ),
        rejected(
            "trust principal with a short account ID",
            Schema,
            role(json!({"trust": {"principals": ["arn:aws:iam::12345:root"]}})),
            "spec.trust.principals[0]",
            &[],
        ),
        rejected(
            "duplicate trust principals",
            Schema,
            role(
                json!({"trust": {"principals": ["arn:aws:iam::123456789012:user/devTest", "arn:aws:iam::123456789012:user/devTest"]}}),
            ),
            "spec.trust.principals[1]",
            &["Duplicate"],
        ),
        rejected(
            "more than 20 trust principals",
            Schema,
            role(
                json!({"trust": {"principals": arns(21, &|i| format!("arn:aws:iam::123456789012:user/u{i}"))}}),
            ),
            "spec.trust.principals",
            &["Too many"],
        ),
        rejected(
            "more than 20 grants",
            Schema,
            role(
                json!({"grants": arns(21, &|i| format!("u{i}")).into_iter().map(|u| json!({"user": u})).collect::<Vec<_>>()}),
            ),
            "spec.grants",
            &["Too many"],
        ),
        rejected(
            "grant of a user name with a space",
            Schema,
            role(json!({"grants": [{"user": "dev Test"}]})),
            "spec.grants[0].user",
            &[],
        ),
        rejected(
            "grant of a group name with a slash",
            Schema,
            role(json!({"grants": [{"group": "team/devs"}]})),
            "spec.grants[0].group",
            &[],
        ),
        rejected(
            "grant of a group name longer than 64",
            Schema,
            role(json!({"grants": [{"group": "g".repeat(65)}]})),
            "spec.grants[0].group",
            &[],
        ),
        rejected(
            "more than 47 tags",
            Schema,
            role(json!({"tags": many_tags})),
            "spec.tags",
            &["Too many"],
        ),
        rejected(
            "tag value longer than 256 characters",
            Schema,
            role(json!({"tags": {"team": "v".repeat(257)}})),
            "spec.tags",
            &["Too long"],
        ),
        rejected(
            "bad region",
            Schema,
            role(json!({"credentials": {"region": "Mars"}})),
            "spec.credentials.region",
            &[],
        ),
        rejected(
            "session policy over 2048 characters",
            Schema,
            role(
                json!({"credentials": {"sessionPolicy": format!("{{\"Id\": \"{}\"}}", "x".repeat(2048))}}),
            ),
            "spec.credentials.sessionPolicy",
            &["Too long"],
        ),
        rejected(
            "empty session policy",
            Schema,
            role(json!({"credentials": {"sessionPolicy": ""}})),
            "spec.credentials.sessionPolicy",
            &[],
        ),
        rejected(
            "rollout target of an unsupported kind",
            Schema,
            role(json!({"credentials": {"rolloutRestartTargets": [{"kind": "Pod", "name": "p"}]}})),
            "spec.credentials.rolloutRestartTargets[0].kind",
            &[],
        ),
        rejected(
            "duplicate rollout targets",
            Cel,
            role(
                json!({"credentials": {"rolloutRestartTargets": [{"kind": "Deployment", "name": "d"}, {"kind": "Deployment", "name": "d"}]}}),
            ),
            "spec.credentials.rolloutRestartTargets",
            &["must not repeat a target"],
        ),
        rejected(
            "secret name that is not a DNS name",
            Schema,
            role(json!({"credentials": {"secretName": "My_Secret"}})),
            "spec.credentials.secretName",
            &[],
        ),
        // ----- CrossAccountRole: CEL -----
        rejected(
            "grant with both user and role",
            Cel,
            role(json!({"grants": [{"user": "u", "role": "r"}]})),
            "spec.grants[0]",
            &["exactly one of user, role or group"],
        ),
        rejected(
            "grant with both user and group",
            Cel,
            role(json!({"grants": [{"user": "u", "group": "g"}]})),
            "spec.grants[0]",
            &["exactly one of user, role or group"],
        ),
        rejected(
            "grant with user, role and group",
            Cel,
            role(json!({"grants": [{"user": "u", "role": "r", "group": "g"}]})),
            "spec.grants[0]",
            &["exactly one of user, role or group"],
        ),
        rejected(
            "grant with neither user, role nor group",
            Cel,
            role(json!({"grants": [{}]})),
            "spec.grants[0]",
            &["exactly one of user, role or group"],
        ),
        rejected(
            "the same grant twice",
            Cel,
            role(json!({"grants": [{"user": "devTest"}, {"user": "devTest"}]})),
            "spec.grants",
            &["must not repeat"],
        ),
        rejected(
            "reserved tag key crossaccount.io/",
            Cel,
            role(json!({"tags": {"crossaccount.io/name": "x"}})),
            "spec.tags",
            &["reserved"],
        ),
        rejected(
            "reserved tag key in another case",
            Cel,
            role(json!({"tags": {"CrossAccount.IO/Name": "x"}})),
            "spec.tags",
            &["reserved"],
        ),
        rejected(
            "reserved tag key aws:",
            Cel,
            role(json!({"tags": {"aws:cloudformation:stack-name": "x"}})),
            "spec.tags",
            &["reserved"],
        ),
        rejected(
            "empty tag key",
            Cel,
            role(json!({"tags": {"": "x"}})),
            "spec.tags",
            &["1-128"],
        ),
        rejected(
            "tag key with a character IAM refuses",
            Cel,
            role(json!({"tags": {"team!": "a"}})),
            "spec.tags",
            &["only letters"],
        ),
        rejected(
            "tag value with an emoji",
            Cel,
            role(json!({"tags": {"team": "🚀"}})),
            "spec.tags",
            &["only letters"],
        ),
        rejected(
            "changing accountRef",
            Cel,
            Input::RoleUpdate(
                json!({"accountRef": NO_ACCOUNT, "roleName": "Fixed"}),
                json!({"accountRef": "other"}),
            ),
            "spec.accountRef",
            &["accountRef is immutable"],
        ),
        rejected(
            "changing roleName",
            Cel,
            Input::RoleUpdate(
                json!({"accountRef": NO_ACCOUNT, "roleName": "Fixed"}),
                json!({"roleName": "Other"}),
            ),
            "spec.roleName",
            &["roleName is immutable"],
        ),
        rejected(
            "adding roleName to a derived name",
            Cel,
            Input::RoleUpdate(
                json!({"accountRef": NO_ACCOUNT}),
                json!({"roleName": "Added"}),
            ),
            "spec.roleName",
            &["roleName is immutable"],
        ),
        rejected(
            "removing roleName",
            Cel,
            Input::RoleUpdate(
                json!({"accountRef": NO_ACCOUNT, "roleName": "Fixed"}),
                json!({"roleName": null}),
            ),
            "spec.roleName",
            &["roleName is immutable"],
        ),
        // ----- AwsAccount: schema -----
        rejected(
            "missing account ID",
            Schema,
            Input::Account(json!({"allowInlinePolicies": true})),
            "spec.accountId",
            &["Required value"],
        ),
        rejected(
            "short account ID",
            Schema,
            account(json!({"accountId": "12345"})),
            "spec.accountId",
            &[],
        ),
        rejected(
            "account ID with letters",
            Schema,
            account(json!({"accountId": "12345678901a"})),
            "spec.accountId",
            &[],
        ),
        rejected(
            "account ID as a number",
            Schema,
            account(json!({"accountId": 111111111111u64})),
            "spec.accountId",
            &["string"],
        ),
        rejected(
            "management role that is not a role ARN",
            Schema,
            account(json!({"managementRoleArn": "not-an-arn"})),
            "spec.managementRoleArn",
            &[],
        ),
        rejected(
            "external ID too short",
            Schema,
            account(json!({"managementExternalId": "x"})),
            "spec.managementExternalId",
            &[],
        ),
        rejected(
            "external ID with a space",
            Schema,
            account(json!({"managementExternalId": "my id"})),
            "spec.managementExternalId",
            &[],
        ),
        rejected(
            "session cap out of range",
            Schema,
            account(json!({"maxSessionDurationSeconds": 60})),
            "spec.maxSessionDurationSeconds",
            &[],
        ),
        rejected(
            "role path without slashes",
            Schema,
            account(json!({"rolePath": "tenants"})),
            "spec.rolePath",
            &[],
        ),
        rejected(
            "role name prefix too long",
            Schema,
            account(json!({"roleNamePrefix": "p".repeat(33)})),
            "spec.roleNamePrefix",
            &[],
        ),
        rejected(
            "permissions boundary that is not a policy ARN",
            Schema,
            account(json!({"permissionsBoundaryArn": "arn:aws:iam::aws:role/Boundary"})),
            "spec.permissionsBoundaryArn",
            &[],
        ),
        rejected(
            "allowInlinePolicies as a string",
            Schema,
            account(json!({"allowInlinePolicies": "yes"})),
            "spec.allowInlinePolicies",
            &["boolean"],
        ),
        rejected(
            "more than 100 allowed policy patterns",
            Schema,
            account(
                json!({"allowedPolicyArns": arns(101, &|i| format!("arn:aws:iam::aws:policy/P{i}"))}),
            ),
            "spec.allowedPolicyArns",
            &["Too many"],
        ),
        // ----- AwsAccount: CEL -----
        rejected(
            "management role in another account",
            Cel,
            account(json!({"managementRoleArn": "arn:aws:iam::333333333333:role/manager"})),
            "spec.managementRoleArn",
            &["account of spec.accountId"],
        ),
        rejected(
            "permissions boundary in another account",
            Cel,
            account(json!({"permissionsBoundaryArn": "arn:aws:iam::333333333333:policy/Boundary"})),
            "spec.permissionsBoundaryArn",
            &["account of spec.accountId"],
        ),
        rejected(
            "inline policies without a boundary",
            Cel,
            account(json!({"allowInlinePolicies": true})),
            "spec.allowInlinePolicies",
            &[
                "permissionsBoundaryArn",
                "allowInlinePoliciesWithoutBoundary",
            ],
        ),
        rejected(
            "a trusted principal pattern with a wildcard account",
            Cel,
            account(json!({"allowedTrustPrincipals": ["arn:aws:iam::*:role/ci"]})),
            "spec.allowedTrustPrincipals",
            &["12 digits", "allowWildcardAccounts"],
        ),
        rejected(
            "a trusted principal pattern longer than 512 characters",
            Schema,
            account(
                json!({"allowedTrustPrincipals": [format!("arn:aws:iam::123456789012:role/{}", "r".repeat(500))]}),
            ),
            "spec.allowedTrustPrincipals",
            &[],
        ),
        rejected(
            "changing accountId",
            Cel,
            Input::AccountUpdate(
                json!({"accountId": "222222222222"}),
                json!({"accountId": "333333333333"}),
            ),
            "spec.accountId",
            &["accountId is immutable"],
        ),
        // ----- Semantic: the operator's validation -----
        refused(
            "Statement is a number",
            Guardrails::Open,
            inline(r#"{"Version": "2012-10-17", "Statement": 7}"#),
            "InvalidSpec",
            &["spec.policies.inline[p].document", "\"Statement\" must be"],
        ),
        refused(
            "Effect Maybe",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Maybe", "Action": "s3:GetObject", "Resource": "*"}),
            )),
            "InvalidSpec",
            &["spec.policies.inline[p].document", "\"Effect\""],
        ),
        refused(
            "Action is an object",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Action": {"s3": "GetObject"}, "Resource": "*"}),
            )),
            "InvalidSpec",
            &[
                "spec.policies.inline[p].document",
                "\"Action\" must be a string or an array",
            ],
        ),
        refused(
            "no Statement and no Version",
            Guardrails::Open,
            inline(r#"{"Id": "empty"}"#),
            "InvalidSpec",
            &["spec.policies.inline[p].document", "no \"Statement\""],
        ),
        refused(
            "unknown Version",
            Guardrails::Open,
            inline(
                r#"{"Version": "2024-01-01", "Statement": {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}}"#,
            ),
            "InvalidSpec",
            &["spec.policies.inline[p].document", "\"Version\""],
        ),
        refused(
            "repeated JSON key",
            Guardrails::Open,
            inline(
                r#"{"Version": "2012-10-17", "Statement": {"Effect": "Allow", "Effect": "Deny", "Action": "s3:GetObject", "Resource": "*"}}"#,
            ),
            "InvalidSpec",
            &[
                "spec.policies.inline[p].document",
                "repeats the key \"Effect\"",
            ],
        ),
        refused(
            "Principal in an identity policy",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": "*"}),
            )),
            "InvalidSpec",
            &[
                "spec.policies.inline[p].document",
                "only trust policies name principals",
            ],
        ),
        refused(
            "Resource that is not an ARN",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "my-bucket"}),
            )),
            "InvalidSpec",
            &["spec.policies.inline[p].document", "\"Resource\""],
        ),
        refused(
            "empty Action list",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Action": [], "Resource": "*"}),
            )),
            "InvalidSpec",
            &[
                "spec.policies.inline[p].document",
                "must not be an empty list",
            ],
        ),
        refused(
            "inline documents larger than 10240 together",
            Guardrails::Open,
            json!({"policies": {"inline": [{"name": "a", "document": big_document(1)}, {"name": "b", "document": big_document(2)}, {"name": "c", "document": big_document(3)}]}}),
            "InvalidSpec",
            &["spec.policies.inline", "IAM allows 10240"],
        ),
        refused(
            "session policy of the wrong shape",
            Guardrails::Open,
            json!({"credentials": {"sessionPolicy": r#"{"Version": "2012-10-17", "Statement": "allow everything"}"#}}),
            "InvalidSpec",
            &["spec.credentials.sessionPolicy", "\"Statement\" must be"],
        ),
        refused(
            "trust policy larger than IAM allows",
            Guardrails::Open,
            json!({"trust": {"principals": arns(20, &long_principal)}}),
            "InvalidSpec",
            &["generated trust policy", "IAM allows 2048"],
        ),
        refused(
            "managed policy of another partition",
            Guardrails::Open,
            json!({"policies": {"managed": ["arn:aws-cn:iam::aws:policy/AmazonS3ReadOnlyAccess"]}}),
            "NotPermitted",
            &["spec.policies.managed[0]", "allowedPolicyArns"],
        ),
        refused(
            "customer managed policy",
            Guardrails::Open,
            json!({"policies": {"managed": [S3_READ, "arn:aws:iam::111111111111:policy/Escalate"]}}),
            "NotPermitted",
            &["spec.policies.managed[1]", "allowedPolicyArns"],
        ),
        refused(
            "trust principal that is an account root",
            Guardrails::Open,
            json!({"trust": {"principals": ["arn:aws:iam::123456789012:root"]}}),
            "NotPermitted",
            &["spec.trust.principals[0]", "allowedTrustPrincipals"],
        ),
        refused(
            "inline policy allowing iam:PassRole",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}),
            )),
            "NotPermitted",
            &["spec.policies.inline[p]", "iam:PassRole", "deniedActions"],
        ),
        refused(
            "inline policy whose wildcard covers sts:AssumeRole",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "Action": "s*:*", "Resource": "*"}),
            )),
            "NotPermitted",
            &["spec.policies.inline[p]", "deniedActions"],
        ),
        refused(
            "inline policy with NotAction",
            Guardrails::Open,
            inline(&document(
                json!({"Effect": "Allow", "NotAction": "s3:DeleteObject", "Resource": "*"}),
            )),
            "NotPermitted",
            &["spec.policies.inline[p]", "allowNotActions"],
        ),
        refused(
            "trust principal that is the operator itself",
            Guardrails::Open,
            json!({"trust": {"principals": ["arn:aws:iam::123456789012:user/cross-account-operator"]}}),
            "NotPermitted",
            &["spec.trust.principals[0]"],
        ),
        refused(
            "grant of a role when only a user is allowed",
            Guardrails::Strict,
            json!({"grants": [{"role": "devTest"}]}),
            "NotPermitted",
            &["spec.grants[0]", "role/devTest"],
        ),
        refused(
            "grant of a group when only users are allowed",
            Guardrails::Open,
            json!({"grants": [{"group": "devTest"}]}),
            "NotPermitted",
            &["spec.grants[0]", "group/devTest", "allowedTrustPrincipals"],
        ),
        refused(
            "grant of a user differing only in case",
            Guardrails::Strict,
            json!({"grants": [{"user": "DEVTEST"}]}),
            "NotPermitted",
            &["spec.grants[0]", "user/DEVTEST"],
        ),
        refused(
            "role name without the account's prefix",
            Guardrails::Open,
            json!({"roleName": "escape-prefix"}),
            "NotPermitted",
            &["spec.roleName", "\"cat-\""],
        ),
        refused(
            "role session cap above the account's",
            Guardrails::Open,
            json!({"maxSessionDurationSeconds": 7200}),
            "NotPermitted",
            &["spec.maxSessionDurationSeconds", "3600"],
        ),
        refused(
            "credential lifetime above the account's cap",
            Guardrails::Open,
            json!({"credentials": {"durationSeconds": 7200}}),
            "NotPermitted",
            &["spec.credentials.durationSeconds", "3600"],
        ),
        refused(
            "account with an unusable namespace selector",
            Guardrails::BrokenSelector,
            json!({}),
            "NotPermitted",
            &["invalid spec.allowedNamespaces.selector"],
        ),
    ]
}

fn count_by<K: Ord>(cases: &[Case], key: impl Fn(&Case) -> K) -> BTreeMap<K, usize> {
    let mut counts = BTreeMap::new();
    for case in cases {
        *counts.entry(key(case)).or_default() += 1;
    }
    counts
}

fn outcome(case: &Case) -> String {
    match &case.expect {
        Expect::Rejected { .. } => "rejected by the apiserver".into(),
        Expect::Refused { reason, .. } => format!("refused: {reason}"),
    }
}

#[test]
fn the_catalog_covers_every_level_with_distinct_cases() {
    let cases = catalog();
    let by_level = count_by(&cases, |c| c.level);
    println!("{} cases by level: {by_level:?}", cases.len());
    println!("by outcome: {:?}", count_by(&cases, outcome));
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    assert!(by_level.values().all(|n| *n >= 5), "{by_level:?}");
    let mut names: Vec<&str> = cases.iter().map(|c| c.name).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "case names repeat");
    // Semantic cases must be objects the apiserver accepts, refused by the operator, and schema
    // or CEL cases must be rejected by the apiserver.
    for case in &cases {
        let semantic = matches!(case.input, Input::RoleIn(..));
        assert_eq!(
            semantic,
            case.level == Level::Semantic,
            "{}: level and input disagree",
            case.name
        );
        assert_eq!(
            semantic,
            matches!(case.expect, Expect::Refused { .. }),
            "{}: level and outcome disagree",
            case.name
        );
    }
}

/// The apiserver's message for a refused write, or the reason it is not a proper rejection.
fn rejection<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Result<String, String> {
    match result {
        Ok(_) => Err("the apiserver accepted it".into()),
        Err(kube::Error::Api(status)) if status.code == 422 => Ok(status.message.clone()),
        Err(other) => Err(format!("unexpected error {other}")),
    }
}

fn dynamic(kind: &str, name: &str, spec: &Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "crossaccount.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// Runs a schema or CEL case: the message of the apiserver's rejection, or what went wrong.
async fn run_rejected(
    roles: &Api<DynamicObject>,
    accounts: &Api<DynamicObject>,
    index: usize,
    input: &Input,
) -> Result<String, String> {
    let pp = PostParams::default();
    let name = format!("bad-{index}");
    match input {
        Input::Role(spec) => {
            let result = roles
                .create(&pp, &dynamic("CrossAccountRole", &name, spec))
                .await;
            if result.is_ok() {
                let _ = roles.delete(&name, &DeleteParams::default()).await;
            }
            rejection(result)
        }
        Input::RoleUpdate(create, patch) => {
            roles
                .create(&pp, &dynamic("CrossAccountRole", &name, create))
                .await
                .map_err(|e| format!("the valid original was not created: {e}"))?;
            let result = roles
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": patch})),
                )
                .await;
            let _ = roles.delete(&name, &DeleteParams::default()).await;
            rejection(result)
        }
        Input::Account(spec) => {
            let name = common::unique("bad");
            let result = accounts
                .create(&pp, &dynamic("AwsAccount", &name, spec))
                .await;
            if result.is_ok() {
                let _ = accounts.delete(&name, &DeleteParams::default()).await;
            }
            rejection(result)
        }
        Input::AccountUpdate(create, patch) => {
            let name = common::unique("bad");
            accounts
                .create(&pp, &dynamic("AwsAccount", &name, create))
                .await
                .map_err(|e| format!("the valid original was not created: {e}"))?;
            let result = accounts
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": patch})),
                )
                .await;
            let _ = accounts.delete(&name, &DeleteParams::default()).await;
            rejection(result)
        }
        Input::RoleIn(..) => unreachable!("semantic cases are run by the operator"),
    }
}

#[tokio::test]
async fn every_bad_input_is_refused_naming_the_field_without_touching_aws() {
    let _serial = common::serial().await;
    let started = std::time::Instant::now();
    Operator::shared().await;
    let client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "bad-input").await;
    let target = common::target_iam().await;

    let open = json!({
        "allowedNamespaces": {"names": [ns.name]},
        "allowedPolicyArns": ["arn:aws:iam::aws:policy/*"],
        "allowInlinePolicies": true,
        "allowInlinePoliciesWithoutBoundary": true,
        "allowedTrustPrincipals": [format!("arn:aws:iam::{}:user/*", common::env("SOURCE_ACCOUNT_ID"))],
        "roleNamePrefix": "cat-",
        "maxSessionDurationSeconds": 3600,
    });
    let strict = with(
        open.clone(),
        json!({
            "allowInlinePolicies": false,
            "allowedTrustPrincipals": [format!("arn:aws:iam::{}:user/devTest", common::env("SOURCE_ACCOUNT_ID"))],
        }),
    );
    let broken = with(
        open.clone(),
        json!({"allowedNamespaces": {"selector": {"matchExpressions": [{"key": "tenant", "operator": "Sometimes", "values": ["x"]}]}}}),
    );
    let before = common::shared_proxy().mark();
    let accounts_by_guardrails = BTreeMap::from([
        (
            Guardrails::Open,
            guarded_account(&client, "catalog-open", open).await,
        ),
        (
            Guardrails::Strict,
            guarded_account(&client, "catalog-strict", strict).await,
        ),
        (
            Guardrails::BrokenSelector,
            guarded_account(&client, "catalog-broken", broken).await,
        ),
    ]);

    let roles: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    let accounts: Api<DynamicObject> =
        Api::all_with(client.clone(), &ApiResource::erase::<AwsAccount>(&()));
    let cases = catalog();
    let mut failures = Vec::new();

    // Schema and CEL: the apiserver answers at once.
    for (index, case) in cases.iter().enumerate() {
        let Expect::Rejected { field, also } = &case.expect else {
            continue;
        };
        match run_rejected(&roles, &accounts, index, &case.input).await {
            Ok(message) => {
                for needle in std::iter::once(field).chain(also.iter()) {
                    if !message.contains(needle) {
                        failures.push(format!(
                            "{} ({:?}): the message {message:?} does not mention {needle:?}",
                            case.name, case.level
                        ));
                    }
                }
            }
            Err(why) => failures.push(format!("{} ({:?}): {why}", case.name, case.level)),
        }
    }

    // Semantic: created together, then each must settle on its refusal.
    let mut created = Vec::new();
    for (index, case) in cases.iter().enumerate() {
        let Input::RoleIn(guardrails, spec) = &case.input else {
            continue;
        };
        let name = format!("semantic-{index}");
        let mut spec = with(
            json!({"accountRef": accounts_by_guardrails[guardrails].name, "credentials": {}}),
            spec.clone(),
        );
        // Every semantic case asks for credentials, so a wrongly accepted one would mint.
        if spec["credentials"].is_null() {
            spec["credentials"] = json!({});
        }
        match roles
            .create(
                &PostParams::default(),
                &dynamic("CrossAccountRole", &name, &spec),
            )
            .await
        {
            Ok(_) => created.push((case, name)),
            Err(e) => failures.push(format!(
                "{}: the apiserver should accept it (the operator refuses it), but: {e}",
                case.name
            )),
        }
    }
    let typed = common::roles_api(&client, &ns.name);
    for (case, name) in &created {
        let Expect::Refused {
            reason,
            message_contains,
        } = &case.expect
        else {
            unreachable!()
        };
        let outcome = common::try_poll(CONVERGE, || {
            let typed = typed.clone();
            async move {
                let cr = typed.get(name).await.map_err(|e| e.to_string())?;
                let settled = ["Ready", "RoleSynced"].iter().all(|t| {
                    common::role_condition(&cr, t).is_some_and(|c| {
                        c.status == "False"
                            && c.reason != "AccountNotReady"
                            && c.observed_generation == cr.metadata.generation
                    })
                });
                if settled {
                    Ok(cr)
                } else {
                    Err(common::describe_role(&cr))
                }
            }
        })
        .await;
        let cr = match outcome {
            Ok(cr) => cr,
            Err(last) => {
                failures.push(format!("{}: never refused; last state {last}", case.name));
                continue;
            }
        };
        for type_ in ["Ready", "RoleSynced"] {
            let condition = common::role_condition(&cr, type_).unwrap();
            if condition.reason != *reason {
                failures.push(format!(
                    "{} {type_}: reason {} ({:?}), expected {reason}",
                    case.name, condition.reason, condition.message
                ));
            }
            for needle in message_contains {
                if !condition.message.contains(needle.as_str()) {
                    failures.push(format!(
                        "{} {type_}: message {:?} does not mention {needle:?}",
                        case.name, condition.message
                    ));
                }
            }
        }
        if cr.finalizers().iter().next().is_some() {
            failures.push(format!(
                "{}: a refused object got a finalizer {:?}",
                case.name,
                cr.finalizers()
            ));
        }
    }
    // No role of any semantic case exists (default names: prefix, namespace, object name).
    for (_, name) in &created {
        let role_name = cross_account_operator::naming::default_role_name("cat-", &ns.name, name);
        if common::get_iam_role(&target, &role_name).await.is_some() {
            failures.push(format!("{name}: role {role_name} was created"));
        }
    }
    let activity = AwsActivity::since(&before);
    for (_, name) in &created {
        common::delete_role_and_wait(&client, &ns.name, name, CONVERGE).await;
    }
    drop(accounts_by_guardrails);

    println!(
        "{} catalog cases ({:?}) in {:.1?}",
        cases.len(),
        count_by(&cases, |c| c.level),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failures: {failures:#?}",
        failures.len()
    );
    assert_eq!(
        activity.counts(),
        (0, 0),
        "the bad-input catalog reached AWS (IAM write attempts, credential mints):\n{activity}"
    );
}

/// A positive control: the shapes the catalog breaks are accepted when well-formed, so the
/// rejections above are about the broken part and not the whole object.
#[tokio::test]
async fn well_formed_objects_of_the_same_shapes_are_accepted() {
    let client: Client = common::kube_client().await;
    let ns = TestNamespace::new(&client, "bad-input-control").await;
    let roles: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns.name,
        &ApiResource::erase::<CrossAccountRole>(&()),
    );
    let spec = json!({
        "accountRef": NO_ACCOUNT,
        "roleName": "Schema.Valid+1=@_-",
        "description": "reads S3 buckets of team café (Latin-1 is fine)\n",
        "policies": {
            "managed": [S3_READ],
            "inline": [{"name": "p", "document": document(json!({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}))}],
        },
        "trust": {"principals": ["arn:aws:iam::123456789012:user/devTest", "arn:aws:iam::123456789012:root"]},
        "grants": [{"user": "devTest"}, {"role": "devTest"}, {"group": "devTest"}],
        "tags": {"team": "Ünïcode letters and spaces 1", "path/key:x=y+z@w-v_u.": ""},
        "credentials": {"durationSeconds": 900, "refreshPercent": 50, "region": "eu-west-1",
                        "rolloutRestartTargets": [{"kind": "Deployment", "name": "d"}, {"kind": "StatefulSet", "name": "d"}]},
    });
    roles
        .create(
            &PostParams::default(),
            &dynamic("CrossAccountRole", "valid", &spec),
        )
        .await
        .expect("a well-formed CrossAccountRole is accepted");
    roles
        .delete("valid", &DeleteParams::default())
        .await
        .expect("delete the control object");

    let accounts: Api<DynamicObject> =
        Api::all_with(client, &ApiResource::erase::<AwsAccount>(&()));
    let name = common::unique("control");
    accounts
        .create(
            &PostParams::default(),
            &dynamic(
                "AwsAccount",
                &name,
                &json!({
                    "accountId": "222222222222",
                    "managementRoleArn": "arn:aws:iam::222222222222:role/path/manager",
                    "permissionsBoundaryArn": "arn:aws:iam::aws:policy/PowerUserAccess",
                    "roleNamePrefix": "k8s-",
                    "rolePath": "/tenants/",
                }),
            ),
        )
        .await
        .expect("a well-formed AwsAccount is accepted");
    accounts
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"permissionsBoundaryArn": "arn:aws:iam::222222222222:policy/Boundary"}})),
        )
        .await
        .expect("a boundary of the account itself is accepted");
    accounts
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the control AwsAccount");
}
