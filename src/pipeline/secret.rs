//! Step 8: the Secret that holds the credentials (layout in the design's Secret contract). Building
//! and reading it is pure; writing is a server-side apply owned by the CrossAccountRole.

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, PostParams, Preconditions},
};
use serde_json::json;

use super::credentials::HeldCredentials;
use crate::{
    api::{
        CrossAccountRole,
        names::{
            EXPIRATION_ANNOTATION, FIELD_MANAGER, ISSUED_AT_ANNOTATION, MANAGED_BY_LABEL,
            MANAGED_BY_VALUE, REFRESH_AT_ANNOTATION, REQUEST_ANNOTATION,
        },
    },
    aws::IssuedCredentials,
    error::ReconcileError,
};

/// Keys of the Secret.
pub(crate) mod keys {
    pub const CREDENTIALS: &str = "credentials";
    pub const CREDENTIALS_JSON: &str = "credentials.json";
    pub const CONFIG: &str = "config";
    pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
    pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";
    pub const REGION: &str = "AWS_REGION";
    pub const EXPIRATION: &str = "expiration";
    pub const ROLE_ARN: &str = "role_arn";
    /// The token a client of the container credentials endpoint (`credentials-endpoint` mode of
    /// the operator binary, a sidecar) presents: `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.
    pub const CONTAINER_TOKEN: &str = "container-token";
}

/// Where the Secret is mounted in the pods that use it (`spec.credentials.mountPath`), for the
/// `credential_process` of its `config`, and the container-endpoint token it keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub mount_path: String,
    pub container_token: String,
}

impl Layout {
    /// The layout for `mount_path`, keeping the token an `existing` Secret has (a new one
    /// otherwise: 32 random bytes, hex).
    pub(crate) fn for_secret(mount_path: &str, existing: Option<&Secret>) -> Self {
        let kept = existing
            .and_then(|s| s.data.as_ref()?.get(keys::CONTAINER_TOKEN))
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()));
        let container_token = kept.unwrap_or_else(|| {
            use rand::Rng;
            let bytes: [u8; 32] = rand::rng().random();
            bytes.iter().map(|b| format!("{b:02x}")).collect()
        });
        Self {
            mount_path: mount_path.trim_end_matches('/').to_owned(),
            container_token,
        }
    }
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The `config` key: the region when set, and a `credential_process` that reads the mounted
/// `credentials.json`. SDKs re-run it when their cached credentials near the expiry it reports,
/// so a long-running process follows every refresh; a static credentials file is read once.
fn render_config(region: Option<&str>, layout: &Layout) -> String {
    let region = region
        .map(|r| format!("region = {r}\n"))
        .unwrap_or_default();
    format!(
        "[default]\n{region}credential_process = cat {}/{}\n",
        layout.mount_path,
        keys::CREDENTIALS_JSON
    )
}

/// The data keys that carry the credentials: what must be intact for them to be reused.
fn credential_data(content: &HeldCredentials) -> BTreeMap<String, String> {
    let c = &content.credentials;
    let expiration = rfc3339(c.expiration);
    let mut data = BTreeMap::from([
        (
            keys::CREDENTIALS.to_owned(),
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
                c.access_key_id, c.secret_access_key, c.session_token
            ),
        ),
        (
            keys::CREDENTIALS_JSON.to_owned(),
            json!({
                "Version": 1,
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "SessionToken": c.session_token,
                "Expiration": expiration,
            })
            .to_string(),
        ),
        (keys::ACCESS_KEY_ID.to_owned(), c.access_key_id.clone()),
        (
            keys::SECRET_ACCESS_KEY.to_owned(),
            c.secret_access_key.clone(),
        ),
        (keys::SESSION_TOKEN.to_owned(), c.session_token.clone()),
        (keys::EXPIRATION.to_owned(), expiration),
        (keys::ROLE_ARN.to_owned(), content.role_arn.clone()),
    ]);
    if let Some(region) = &content.region {
        data.insert(keys::REGION.to_owned(), region.clone());
    }
    data
}

/// The data keys of the Secret, as strings.
pub(crate) fn render_data(content: &HeldCredentials, layout: &Layout) -> BTreeMap<String, String> {
    let mut data = credential_data(content);
    data.insert(
        keys::CONFIG.to_owned(),
        render_config(content.region.as_deref(), layout),
    );
    data.insert(
        keys::CONTAINER_TOKEN.to_owned(),
        layout.container_token.clone(),
    );
    data
}

/// The whole Secret for `cr`, owned by it.
pub(crate) fn render_secret(
    cr: &CrossAccountRole,
    name: &str,
    content: &HeldCredentials,
    layout: &Layout,
) -> Secret {
    let owner = OwnerReference {
        api_version: CrossAccountRole::api_version(&()).into_owned(),
        kind: CrossAccountRole::kind(&()).into_owned(),
        name: cr.name_any(),
        uid: cr.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    };
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: cr.namespace(),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_owned(),
                MANAGED_BY_VALUE.to_owned(),
            )])),
            annotations: Some(
                [
                    (
                        EXPIRATION_ANNOTATION,
                        Some(rfc3339(content.credentials.expiration)),
                    ),
                    (REFRESH_AT_ANNOTATION, Some(rfc3339(content.refresh_at))),
                    (REQUEST_ANNOTATION, content.request.clone()),
                    (ISSUED_AT_ANNOTATION, content.issued_at.map(rfc3339)),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                .collect(),
            ),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_owned()),
        data: Some(
            render_data(content, layout)
                .into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Whether `secret` belongs to `cr` (controller owner reference with its UID).
pub(crate) fn owned_by(secret: &Secret, cr: &CrossAccountRole) -> bool {
    let uid = cr.uid();
    secret
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// The content an existing Secret holds, if it is complete and consistent: every key as
/// [`render_data`] would write it. A Secret that was edited or lost keys reads as `None`.
pub(crate) fn read_held(secret: &Secret) -> Option<HeldCredentials> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let json: serde_json::Value = serde_json::from_str(&text(keys::CREDENTIALS_JSON)?).ok()?;
    let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let refresh_at = secret
        .annotations()
        .get(REFRESH_AT_ANNOTATION)?
        .parse()
        .ok()?;
    let content = HeldCredentials {
        credentials: IssuedCredentials {
            access_key_id: field("AccessKeyId")?,
            secret_access_key: field("SecretAccessKey")?,
            session_token: field("SessionToken")?,
            expiration: field("Expiration")?.parse().ok()?,
        },
        role_arn: text(keys::ROLE_ARN)?,
        region: text(keys::REGION),
        refresh_at,
        request: secret.annotations().get(REQUEST_ANNOTATION).cloned(),
        issued_at: secret
            .annotations()
            .get(ISSUED_AT_ANNOTATION)
            .and_then(|t| t.parse().ok()),
    };
    // Only the keys that carry the credentials count: another `config` (the mount path changed,
    // or an older version wrote it) or a key someone added does not spoil them (the Secret is
    // rewritten, without a mint).
    let intact = credential_data(&content)
        .iter()
        .all(|(k, v)| text(k).as_deref() == Some(v.as_str()))
        && secret.annotations().get(EXPIRATION_ANNOTATION)
            == Some(&rfc3339(content.credentials.expiration));
    intact.then_some(content)
}

/// The Secret `name` in the CR's namespace, if it exists.
pub(crate) async fn read(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, ReconcileError> {
    api.get_opt(name)
        .await
        .map_err(ReconcileError::kube("reading the credentials Secret"))
}

/// Writes `rendered` without racing anyone: created only if absent (a Secret that appeared
/// meanwhile fails the write, and the next reconcile checks whose it is), otherwise replaced over
/// `existing` (which must be ours) with the resourceVersion that was checked.
pub(crate) async fn write(
    api: &Api<Secret>,
    rendered: &Secret,
    existing: Option<&Secret>,
) -> Result<(), ReconcileError> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let result = match existing {
        None => api.create(&params, rendered).await,
        Some(existing) => {
            api.replace(&rendered.name_any(), &params, &over(existing, rendered))
                .await
        }
    };
    result
        .map(drop)
        .map_err(ReconcileError::kube("writing the credentials Secret"))
}

/// `rendered` as a replacement of `existing`: our data (every other key goes: the Secret is ours
/// and its content is the credentials), our labels, annotations and owner reference beside
/// whatever others put in the metadata, and the resourceVersion that was read.
pub(crate) fn over(existing: &Secret, rendered: &Secret) -> Secret {
    let mut next = existing.clone();
    next.data = rendered.data.clone();
    next.string_data = None;
    next.type_ = rendered.type_.clone();
    let meta = &mut next.metadata;
    let ours = &rendered.metadata;
    meta.labels
        .get_or_insert_with(Default::default)
        .extend(ours.labels.clone().unwrap_or_default());
    meta.annotations
        .get_or_insert_with(Default::default)
        .extend(ours.annotations.clone().unwrap_or_default());
    let mut owners: Vec<OwnerReference> = meta
        .owner_references
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| o.controller != Some(true))
        .collect();
    owners.extend(ours.owner_references.clone().unwrap_or_default());
    meta.owner_references = Some(owners);
    meta.managed_fields = None;
    next
}

/// Deletes the Secret `name` if `cr` owns it (credentials switched off, renamed, or the CR is
/// being deleted). Someone else's Secret of that name is left alone.
pub(crate) async fn remove(
    api: &Api<Secret>,
    cr: &CrossAccountRole,
    name: &str,
) -> Result<(), ReconcileError> {
    let Some(existing) = read(api, name).await?.filter(|s| owned_by(s, cr)) else {
        return Ok(());
    };
    // Only the Secret that was checked: not one someone recreated under the name meanwhile.
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: existing.uid(),
            resource_version: existing.resource_version(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(ReconcileError::kube("deleting the credentials Secret")(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CrossAccountRoleSpec;

    fn content(region: Option<&str>) -> HeldCredentials {
        HeldCredentials {
            credentials: IssuedCredentials {
                access_key_id: "ASIAKEY".into(),
                secret_access_key: "secret/with+chars".into(),
                session_token: "token==".into(),
                expiration: "2026-11-28T12:00:00Z".parse().unwrap(),
            },
            role_arn: "arn:aws:iam::111111111111:role/CrossAccountSignin".into(),
            region: region.map(str::to_owned),
            refresh_at: "2026-11-28T11:40:00Z".parse().unwrap(),
            request: Some("0123456789".into()),
            issued_at: Some("2026-11-28T11:00:00Z".parse().unwrap()),
        }
    }

    fn cr() -> CrossAccountRole {
        let spec: CrossAccountRoleSpec =
            serde_json::from_value(json!({"accountRef": "target"})).unwrap();
        let mut cr = CrossAccountRole::new("signin", spec);
        cr.metadata.namespace = Some("team-a".into());
        cr.metadata.uid = Some("uid-1".into());
        cr
    }

    fn layout() -> Layout {
        Layout {
            mount_path: "/var/run/secrets/crossaccount".into(),
            container_token: "ab".repeat(32),
        }
    }

    #[test]
    fn files_are_rendered_exactly() {
        let data = render_data(&content(Some("eu-west-1")), &layout());
        assert_eq!(
            data["credentials"],
            "[default]\naws_access_key_id = ASIAKEY\naws_secret_access_key = secret/with+chars\naws_session_token = token==\n"
        );
        assert_eq!(
            data["config"],
            "[default]\nregion = eu-west-1\ncredential_process = cat /var/run/secrets/crossaccount/credentials.json\n"
        );
        assert_eq!(data["container-token"], "ab".repeat(32));
        let json: serde_json::Value = serde_json::from_str(&data["credentials.json"]).unwrap();
        assert_eq!(
            json,
            json!({"Version": 1, "AccessKeyId": "ASIAKEY", "SecretAccessKey": "secret/with+chars", "SessionToken": "token==", "Expiration": "2026-11-28T12:00:00Z"})
        );
        assert_eq!(data["AWS_REGION"], "eu-west-1");
        assert_eq!(data["expiration"], "2026-11-28T12:00:00Z");
        assert_eq!(
            data["role_arn"],
            "arn:aws:iam::111111111111:role/CrossAccountSignin"
        );
        let without_region = render_data(&content(None), &layout());
        assert!(!without_region.contains_key("AWS_REGION"));
        assert_eq!(
            without_region["config"],
            "[default]\ncredential_process = cat /var/run/secrets/crossaccount/credentials.json\n"
        );
    }

    #[test]
    fn secret_is_owned_labelled_and_annotated() {
        let secret = render_secret(&cr(), "signin-aws", &content(None), &layout());
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert!(owned_by(&secret, &cr()));
        assert_eq!(secret.labels()[MANAGED_BY_LABEL], MANAGED_BY_VALUE);
        assert_eq!(
            secret.annotations()[EXPIRATION_ANNOTATION],
            "2026-11-28T12:00:00Z"
        );
        let other = CrossAccountRole {
            metadata: ObjectMeta {
                uid: Some("uid-2".into()),
                ..cr().metadata
            },
            ..cr()
        };
        assert!(!owned_by(&secret, &other));
    }

    #[test]
    fn an_intact_secret_reads_back_and_a_tampered_one_does_not() {
        for region in [None, Some("us-east-1")] {
            let secret = render_secret(&cr(), "signin-aws", &content(region), &layout());
            assert_eq!(read_held(&secret), Some(content(region)));
        }
        let mut tampered = render_secret(&cr(), "signin-aws", &content(None), &layout());
        tampered
            .data
            .as_mut()
            .unwrap()
            .insert("AWS_ACCESS_KEY_ID".into(), ByteString(b"other".to_vec()));
        assert_eq!(read_held(&tampered), None);
        // A key added by someone else does not spoil the credentials (and cannot be removed by
        // server-side apply, so it must not cause a re-issue loop).
        let mut extra = render_secret(&cr(), "signin-aws", &content(None), &layout());
        extra
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        assert_eq!(read_held(&extra), Some(content(None)));
        let mut missing = render_secret(&cr(), "signin-aws", &content(None), &layout());
        missing.data.as_mut().unwrap().remove("credentials");
        assert_eq!(read_held(&missing), None);
        // Another config (an older version's, or another mount path) keeps the credentials.
        let mut other_config = render_secret(&cr(), "signin-aws", &content(None), &layout());
        other_config
            .data
            .as_mut()
            .unwrap()
            .insert("config".into(), ByteString(b"[default]\n".to_vec()));
        assert_eq!(read_held(&other_config), Some(content(None)));
    }

    #[test]
    fn the_container_token_is_kept_across_refreshes() {
        let first = Layout::for_secret("/mnt/aws/", None);
        assert_eq!(first.mount_path, "/mnt/aws");
        assert_eq!(first.container_token.len(), 64);
        let secret = render_secret(&cr(), "signin-aws", &content(None), &first);
        let again = Layout::for_secret("/mnt/aws", Some(&secret));
        assert_eq!(again, first);
        assert_ne!(
            Layout::for_secret("/mnt/aws", None).container_token,
            first.container_token
        );
    }

    #[test]
    fn a_replacement_keeps_what_others_put_in_the_metadata_and_only_our_data() {
        let mut existing =
            render_secret(&cr(), "signin-aws", &content(Some("eu-west-1")), &layout());
        existing.metadata.resource_version = Some("41".into());
        existing
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "a".into());
        existing
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("reflector/allowed".into(), "true".into());
        existing
            .data
            .as_mut()
            .unwrap()
            .insert("extra".into(), ByteString(b"x".to_vec()));
        let rendered = render_secret(&cr(), "signin-aws", &content(None), &layout());
        let next = over(&existing, &rendered);
        assert_eq!(
            next.metadata.resource_version.as_deref(),
            Some("41"),
            "the checked version"
        );
        assert_eq!(next.labels()["team"], "a");
        assert_eq!(next.annotations()["reflector/allowed"], "true");
        assert_eq!(
            next.data, rendered.data,
            "only our keys: AWS_REGION and extra are gone"
        );
        assert_eq!(read_held(&next), Some(content(None)));
        assert_eq!(next.owner_references().len(), 1);
    }
}
