//! ARNs: the one place they are built and parsed. An ARN carries its partition (`aws`, `aws-cn`,
//! `aws-us-gov`, ...), so nothing assumes the commercial partition.

use std::fmt;

/// `arn:<partition>:<service>:<region>:<account>:<resource>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Arn {
    partition: String,
    service: String,
    region: String,
    account: String,
    resource: String,
}

impl Arn {
    /// Parses an ARN; `None` when `text` does not have the six parts (a unique ID such as
    /// `AROA...` that IAM shows for a deleted principal, an account ID, `*`).
    pub(crate) fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(6, ':');
        let (
            Some("arn"),
            Some(partition),
            Some(service),
            Some(region),
            Some(account),
            Some(resource),
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return None;
        };
        if partition.is_empty() || service.is_empty() || resource.is_empty() {
            return None;
        }
        Some(Self {
            partition: partition.to_owned(),
            service: service.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            resource: resource.to_owned(),
        })
    }

    /// An IAM ARN (IAM is global: no region).
    pub(crate) fn iam(partition: &str, account: &str, resource: &str) -> Self {
        Self {
            partition: partition.to_owned(),
            service: "iam".to_owned(),
            region: String::new(),
            account: account.to_owned(),
            resource: resource.to_owned(),
        }
    }

    /// `arn:<partition>:iam::<account>:role<path><name>`; `path` starts and ends with `/`.
    pub(crate) fn role(partition: &str, account: &str, path: &str, name: &str) -> Self {
        Self::iam(partition, account, &format!("role{path}{name}"))
    }

    /// `arn:<partition>:iam::<account>:user<path><name>`.
    pub(crate) fn user(partition: &str, account: &str, path: &str, name: &str) -> Self {
        Self::iam(partition, account, &format!("user{path}{name}"))
    }

    /// `arn:<partition>:iam::<account>:group<path><name>`.
    pub(crate) fn group(partition: &str, account: &str, path: &str, name: &str) -> Self {
        Self::iam(partition, account, &format!("group{path}{name}"))
    }

    /// `arn:<partition>:iam::<account>:root`: the account as a principal.
    pub(crate) fn root(partition: &str, account: &str) -> Self {
        Self::iam(partition, account, "root")
    }

    pub(crate) fn partition(&self) -> &str {
        &self.partition
    }

    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    pub(crate) fn account(&self) -> &str {
        &self.account
    }

    pub(crate) fn resource(&self) -> &str {
        &self.resource
    }

    /// The last segment of the resource: the name of a role, user or policy.
    pub(crate) fn name(&self) -> &str {
        self.resource.rsplit('/').next().unwrap_or(&self.resource)
    }

    /// The principal to trust for a caller ARN from GetCallerIdentity: an IAM user as it is; for
    /// an assumed-role session (`arn:<p>:sts::<account>:assumed-role/<role>/<session>`) the role.
    /// An assumed-role ARN does not carry the role's path, hence `--operator-role-arn`.
    pub(crate) fn principal_of_caller(&self) -> Self {
        match (
            self.service.as_str(),
            self.resource.strip_prefix("assumed-role/"),
        ) {
            ("sts", Some(rest)) => {
                let role = rest.split('/').next().unwrap_or(rest);
                Self::role(&self.partition, &self.account, "/", role)
            }
            _ => self.clone(),
        }
    }

    /// Whether this is an assumed-role session (the operator itself runs on a role, so the
    /// sessions it mints are role chaining).
    pub(crate) fn is_assumed_role(&self) -> bool {
        self.service == "sts" && self.resource.starts_with("assumed-role/")
    }
}

impl fmt::Display for Arn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:{}:{}:{}:{}",
            self.partition, self.service, self.region, self.account, self.resource
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTITIONS: [&str; 3] = ["aws", "aws-cn", "aws-us-gov"];

    #[test]
    fn arns_of_every_partition_round_trip() {
        for p in PARTITIONS {
            for text in [
                format!("arn:{p}:iam::123456789012:role/team/reader"),
                format!("arn:{p}:iam::123456789012:user/devTest"),
                format!("arn:{p}:iam::aws:policy/AmazonS3ReadOnlyAccess"),
                format!("arn:{p}:sts::123456789012:assumed-role/op/session"),
                format!("arn:{p}:s3:::bucket/key:with:colons"),
            ] {
                let arn = Arn::parse(&text).unwrap_or_else(|| panic!("{text}"));
                assert_eq!(arn.to_string(), text);
                assert_eq!(arn.partition(), p);
            }
        }
    }

    #[test]
    fn builders_give_iam_arns_in_the_partition() {
        for p in PARTITIONS {
            assert_eq!(
                Arn::role(p, "111111111111", "/team/", "reader").to_string(),
                format!("arn:{p}:iam::111111111111:role/team/reader")
            );
            assert_eq!(
                Arn::user(p, "123456789012", "/", "devTest").to_string(),
                format!("arn:{p}:iam::123456789012:user/devTest")
            );
            assert_eq!(
                Arn::root(p, "123456789012").to_string(),
                format!("arn:{p}:iam::123456789012:root")
            );
        }
    }

    #[test]
    fn what_is_not_an_arn_does_not_parse() {
        for text in [
            "AROAEXAMPLEID",
            "123456789012",
            "*",
            "arn:aws:iam::123456789012",
            "arn::iam::1:role/x",
            "arn:aws:iam::1:",
        ] {
            assert_eq!(Arn::parse(text), None, "{text}");
        }
    }

    #[test]
    fn caller_arns_become_trustable_principals() {
        for p in PARTITIONS {
            let user = Arn::parse(&format!("arn:{p}:iam::123456789012:user/ops/operator")).unwrap();
            assert_eq!(user.principal_of_caller(), user);
            assert!(!user.is_assumed_role());
            let session = Arn::parse(&format!(
                "arn:{p}:sts::123456789012:assumed-role/operator/i-0abc"
            ))
            .unwrap();
            assert!(session.is_assumed_role());
            assert_eq!(
                session.principal_of_caller().to_string(),
                format!("arn:{p}:iam::123456789012:role/operator")
            );
        }
    }

    #[test]
    fn names_are_the_last_path_segment() {
        let arn = Arn::parse("arn:aws:iam::111111111111:role/team/a/reader").unwrap();
        assert_eq!(arn.name(), "reader");
        assert_eq!(arn.account(), "111111111111");
        assert_eq!(arn.service(), "iam");
        assert_eq!(arn.resource(), "role/team/a/reader");
    }
}
