//! The guardrails checked at admission: a ValidatingAdmissionPolicy whose parameters are the
//! AwsAccounts, and its binding, rendered as the `kind: List` in `crds/admission-policy.yaml`
//! (and the chart's copy). The apiserver then refuses a CrossAccountRole that its account's
//! namespace, managed-policy, trust-principal or role-name-prefix guardrails forbid, with the
//! message the operator writes for the same violation (`pipeline::validate`).
//!
//! It is defence in depth: the operator validates every object anyway, including what CEL here
//! cannot know (grants, whose ARNs need the operator's source account; the operator's own
//! principal; quotas and policy contents). So the policy fails open (`failurePolicy: Ignore`):
//! an expression error never blocks a write, and the operator still refuses.
//!
//! Only writes of the spec are checked (`matchConditions`): the operator's own updates (the
//! finalizer) and deletions go through even after an admin narrows the guardrails.

use serde_json::{Value, json};

/// The name of the policy and of its binding.
pub const POLICY_NAME: &str = "guardrails.crossaccount.io";

/// The file the policy is stored as, in `crds/` and in the chart's `files/`.
pub const FILE: &str = "admission-policy.yaml";

/// The CEL expression of the RE2 pattern that matches what the glob `text` (a CEL expression of
/// a string) matches: `*` any run of characters, every other character itself, as
/// `validate::glob_match` does.
fn glob_regex(text: &str) -> String {
    let mut expr = text.to_owned();
    for c in [
        '\\', '.', '+', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$',
    ] {
        let c = if c == '\\' {
            "\\\\".to_owned()
        } else {
            c.to_string()
        };
        expr = format!("{expr}.replace('{c}', '\\\\{c}')");
    }
    format!("'^' + {expr}.replace('*', '.*') + '$'")
}

/// `list` (a CEL list of strings) joined as the operator lists patterns, `none` when empty.
fn list_or_none(list: &str) -> String {
    format!("(size({list}) == 0 ? 'none' : {list}.join(', '))")
}

/// The ValidatingAdmissionPolicy and its binding, as a `kind: List`.
pub fn objects() -> Value {
    let spec_list = |path: &str, field: &str| {
        format!(
            "has(object.spec.{path}) && has(object.spec.{path}.{field}) ? object.spec.{path}.{field} : []"
        )
    };
    let guard_list = |field: &str| format!("has(params.spec.{field}) ? params.spec.{field} : []");
    let labels = "namespaceObject.metadata.labels";
    let has_label = |key: &str| format!("(has({labels}) && {key} in {labels})");
    let sel = "params.spec.allowedNamespaces.selector";
    let selector_matches = format!(
        "has({sel}) && \
         ((has({sel}.matchLabels) && size({sel}.matchLabels) > 0) || \
          (has({sel}.matchExpressions) && size({sel}.matchExpressions) > 0)) && \
         (!has({sel}.matchLabels) || {sel}.matchLabels.all(k, {has_k} && {labels}[k] == {sel}.matchLabels[k])) && \
         (!has({sel}.matchExpressions) || {sel}.matchExpressions.all(e, \
            e.operator == 'In' ? (has(e.values) && {has_e} && {labels}[e.key] in e.values) : \
            e.operator == 'NotIn' ? !(has(e.values) && {has_e} && {labels}[e.key] in e.values) : \
            e.operator == 'Exists' ? {has_e} : \
            e.operator == 'DoesNotExist' ? !{has_e} : false))",
        has_k = has_label("k"),
        has_e = has_label("e.key"),
    );
    let account_literal = "!(size(p.split(':')) > 4 && p.split(':')[4].contains('*'))";
    let policy = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "failurePolicy": "Ignore",
            "paramKind": {"apiVersion": "crossaccount.io/v1alpha1", "kind": "AwsAccount"},
            "matchConstraints": {
                "resourceRules": [{
                    "apiGroups": ["crossaccount.io"],
                    "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["crossaccountroles"],
                }],
            },
            "matchConditions": [{
                "name": "spec-written",
                "expression": "request.operation == 'CREATE' || object.spec != oldObject.spec",
            }],
            "variables": [
                {"name": "mine", "expression": "params.metadata.name == object.spec.accountRef"},
                {"name": "namespaceAllowed", "expression": format!(
                    "has(params.spec.allowedNamespaces) && \
                     ((has(params.spec.allowedNamespaces.names) && namespaceObject.metadata.name in params.spec.allowedNamespaces.names) || \
                      ({selector_matches}))"
                )},
                {"name": "prefix", "expression": "has(params.spec.roleNamePrefix) ? params.spec.roleNamePrefix : ''"},
                {"name": "policyArns", "expression": guard_list("allowedPolicyArns")},
                {"name": "managed", "expression": spec_list("policies", "managed")},
                {"name": "deniedPolicies", "expression": format!(
                    "variables.managed.filter(a, !variables.policyArns.exists(p, a.matches({})))",
                    glob_regex("p")
                )},
                {"name": "inline", "expression": spec_list("policies", "inline")},
                {"name": "trustPatterns", "expression": guard_list("allowedTrustPrincipals")},
                {"name": "wildcardAccounts", "expression": "has(params.spec.allowWildcardAccounts) && params.spec.allowWildcardAccounts"},
                {"name": "trusted", "expression": spec_list("trust", "principals")},
                {"name": "deniedPrincipals", "expression": format!(
                    "variables.trusted.filter(a, !variables.trustPatterns.exists(p, \
                        (variables.wildcardAccounts || {account_literal}) && \
                        (!a.endsWith(':root') || p.endsWith(':root')) && a.matches({})))",
                    glob_regex("p")
                )},
            ],
            "validations": [
                {
                    "expression": "!variables.mine || variables.namespaceAllowed",
                    "messageExpression": "'namespace ' + namespaceObject.metadata.name + ' is not allowed to use AwsAccount ' + params.metadata.name + ' (see its spec.allowedNamespaces)'",
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.mine || !has(object.spec.roleName) || object.spec.roleName.startsWith(variables.prefix)",
                    "messageExpression": "'spec.roleName \"' + object.spec.roleName + '\" must start with \"' + variables.prefix + '\", the roleNamePrefix of AwsAccount ' + params.metadata.name",
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.mine || size(variables.deniedPolicies) == 0",
                    "messageExpression": format!(
                        "'spec.policies.managed[' + string(variables.managed.indexOf(variables.deniedPolicies[0])) + ']: ' + variables.deniedPolicies[0] + ' is not allowed by AwsAccount ' + params.metadata.name + ' (allowedPolicyArns: ' + {} + ')'",
                        list_or_none("variables.policyArns")
                    ),
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.mine || size(variables.inline) == 0 || (has(params.spec.allowInlinePolicies) && params.spec.allowInlinePolicies)",
                    "messageExpression": "'spec.policies.inline: AwsAccount ' + params.metadata.name + ' does not allow inline policies (allowInlinePolicies is false)'",
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.mine || size(variables.deniedPrincipals) == 0",
                    "messageExpression": format!(
                        "'spec.trust.principals[' + string(variables.trusted.indexOf(variables.deniedPrincipals[0])) + ']: ' + variables.deniedPrincipals[0] + ' is not allowed by AwsAccount ' + params.metadata.name + ' (allowedTrustPrincipals: ' + {} + ')'",
                        list_or_none("variables.trustPatterns")
                    ),
                    "reason": "Forbidden",
                },
            ],
        },
    });
    let binding = json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": POLICY_NAME},
        "spec": {
            "policyName": POLICY_NAME,
            "validationActions": ["Deny"],
            // Every AwsAccount is a parameter; each checks only the objects that name it. An
            // object naming no AwsAccount that exists is left to the operator (AccountNotFound).
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
        },
    });
    json!({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})
}

const HEADER: &str = "# Generated by `make crds` (cargo run --bin crdgen). Do not edit by hand.\n\
# The guardrails of each AwsAccount, checked by the apiserver when a CrossAccountRole's spec is\n\
# written (Kubernetes 1.30+, where ValidatingAdmissionPolicy is GA); the operator checks them too.\n";

/// The policy and binding as the YAML stored in `crds/` and the chart's `files/`.
pub fn render() -> Result<String, serde_yaml::Error> {
    Ok(format!("{HEADER}{}", serde_yaml::to_string(&objects())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn checked_in_copies_are_current() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for dir in ["crds", "charts/cross-account-operator/files"] {
            let path = root.join(dir).join(FILE);
            let on_disk = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{dir}/{FILE}: {e}; run `make crds`"));
            assert!(
                on_disk == render().unwrap(),
                "{dir}/{FILE} is stale: run `make crds` and commit the result"
            );
        }
    }
}
