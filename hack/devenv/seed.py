#!/usr/bin/env python3
"""Seeds a moto server with the dev environment's two AWS accounts, then turns on IAM enforcement.

  seed.py seed  --endpoint URL --out seed.json   # fresh moto: create everything, enforce, verify
  seed.py check --endpoint URL --seed seed.json  # running moto: verify the saved keys still work

SOURCE (moto's default account 123456789012) holds the operator's IAM user; TARGET (111111111111)
holds the management role the operator assumes. moto keeps all state in memory, so every freshly
started moto needs seeding; seeding also works again on a moto that is already seeded/enforced.
Secrets go only to the --out file (mode 600), never to stdout.
"""

import argparse
import json
import os
import sys
import urllib.request

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

SOURCE_ACCOUNT_ID = "123456789012"
TARGET_ACCOUNT_ID = "111111111111"
REGION = "us-east-1"
OPERATOR_USER = "cross-account-operator"
DEVELOPER_USER = "devTest"
# The test bed's own administrator of the source account (tests create users and keys with it to
# act as principals that are granted roles); never the operator's identity.
ADMIN_USER = "devenv-admin"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
MANAGEMENT_ROLE = "cross-account-operator-management"
MANAGEMENT_ROLE_ARN = f"arn:aws:iam::{TARGET_ACCOUNT_ID}:role/{MANAGEMENT_ROLE}"
OPERATOR_ARN = f"arn:aws:iam::{SOURCE_ACCOUNT_ID}:user/{OPERATOR_USER}"
TARGET_BUCKET = f"target-data-{TARGET_ACCOUNT_ID}"

OPERATOR_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Sid": "AssumeManagementRoles",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity", "sts:GetCallerIdentity"],
            "Resource": "*",
        },
        {
            # Grants: each granted principal of the operator's own account gets the operator's
            # grant policy (one per principal, under /crossaccount/, allowing sts:AssumeRole on
            # the roles tagged for it; src/aws/model.rs GrantScope).
            "Sid": "GrantPolicies",
            "Effect": "Allow",
            "Action": ["iam:CreatePolicy"],
            # The README scopes this to policy/crossaccount/*; moto matches Resource only for
            # role operations (any other IAM request is authorized against "*").
            "Resource": "*",
        },
        {
            "Sid": "GrantAttachments",
            "Effect": "Allow",
            "Action": ["iam:AttachUserPolicy", "iam:AttachRolePolicy", "iam:AttachGroupPolicy"],
            "Resource": "*",
            # Only the grant policies (moto does not evaluate conditions; AWS does).
            "Condition": {"ArnLike": {"iam:PolicyARN": f"arn:aws:iam::{SOURCE_ACCOUNT_ID}:policy/crossaccount/*"}},
        },
        {
            "Sid": "ReadGrants",
            "Effect": "Allow",
            "Action": [
                # Principals are looked up for their real ARN (a path) before they are trusted.
                "iam:GetUser",
                "iam:GetRole",
                # A granted group is looked up (its existence; its members are not read).
                "iam:GetGroup",
                "iam:ListAttachedUserPolicies",
                "iam:ListAttachedRolePolicies",
                "iam:ListAttachedGroupPolicies",
                "iam:GetAccountSummary",
                # The one inline grant policy per object of earlier versions, removed on sight.
                "iam:GetUserPolicy",
                "iam:DeleteUserPolicy",
                "iam:GetRolePolicy",
                "iam:DeleteRolePolicy",
                "iam:GetGroupPolicy",
                "iam:DeleteGroupPolicy",
                # Not the operator's: the AWS proxy's own tests (tests/aws_proxy.rs) read it.
                "iam:ListUserPolicies",
            ],
            "Resource": "*",
        },
    ],
}

MANAGEMENT_TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"AWS": OPERATOR_ARN},
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
        }
    ],
}

MANAGEMENT_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["iam:*", "sts:GetCallerIdentity"], "Resource": "*"}],
}

# Before enforcement moto accepts any credentials; these only have to look like keys.
SEED_CREDENTIALS = {"aws_access_key_id": "AKIADEVENVSEED000000", "aws_secret_access_key": "seed"}


def client(endpoint, service, account_id=None, **credentials):
    c = boto3.client(
        service,
        endpoint_url=endpoint,
        region_name=REGION,
        config=Config(retries={"max_attempts": 2}),
        **(credentials or SEED_CREDENTIALS),
    )
    if account_id:
        # moto routes a request to the account named in this header (ahead of the access key).
        def add_account_header(request, **_):
            request.headers["x-moto-account-id"] = account_id

        c.meta.events.register("before-sign.*.*", add_account_header)
    return c


def set_auth(endpoint, initial_no_auth_action_count):
    """POST /moto-api/reset-auth: "0" enforces IAM from the next request on, "inf" switches it off.
    The body must be raw text: a form-encoded body reads as empty on the server."""
    req = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=str(initial_no_auth_action_count).encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def ignore_exists(fn, **kwargs):
    try:
        return fn(**kwargs)
    except ClientError as e:
        if e.response["Error"]["Code"] not in ("EntityAlreadyExists", "BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise


def seed(endpoint):
    # Also lets a re-run seed an already enforced moto.
    set_auth(endpoint, "inf")

    # SOURCE account: the operator's user and keys, and the developer user of the seed scenario.
    iam = client(endpoint, "iam")
    ignore_exists(iam.create_user, UserName=OPERATOR_USER)
    iam.put_user_policy(
        UserName=OPERATOR_USER, PolicyName="cross-account-operator", PolicyDocument=json.dumps(OPERATOR_POLICY)
    )
    for key in iam.list_access_keys(UserName=OPERATOR_USER)["AccessKeyMetadata"]:
        iam.delete_access_key(UserName=OPERATOR_USER, AccessKeyId=key["AccessKeyId"])
    key = iam.create_access_key(UserName=OPERATOR_USER)["AccessKey"]
    ignore_exists(iam.create_user, UserName=DEVELOPER_USER)
    ignore_exists(iam.create_user, UserName=ADMIN_USER)
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="devenv-admin", PolicyDocument=json.dumps(ADMIN_POLICY))
    for old in iam.list_access_keys(UserName=ADMIN_USER)["AccessKeyMetadata"]:
        iam.delete_access_key(UserName=ADMIN_USER, AccessKeyId=old["AccessKeyId"])
    admin_key = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]

    # TARGET account: the role the operator assumes, and a bucket with data to grant access to.
    target_iam = client(endpoint, "iam", TARGET_ACCOUNT_ID)
    ignore_exists(
        target_iam.create_role,
        RoleName=MANAGEMENT_ROLE,
        Path="/",
        AssumeRolePolicyDocument=json.dumps(MANAGEMENT_TRUST_POLICY),
    )
    target_iam.update_assume_role_policy(RoleName=MANAGEMENT_ROLE, PolicyDocument=json.dumps(MANAGEMENT_TRUST_POLICY))
    target_iam.put_role_policy(
        RoleName=MANAGEMENT_ROLE, PolicyName="management", PolicyDocument=json.dumps(MANAGEMENT_POLICY)
    )
    target_s3 = client(endpoint, "s3", TARGET_ACCOUNT_ID)
    ignore_exists(target_s3.create_bucket, Bucket=TARGET_BUCKET)
    target_s3.put_object(Bucket=TARGET_BUCKET, Key="hello.txt", Body=b"hello from the target account\n")
    owner = target_iam.get_role(RoleName=MANAGEMENT_ROLE)["Role"]["Arn"]
    if owner != MANAGEMENT_ROLE_ARN:
        fail(f"management role landed at {owner}, expected {MANAGEMENT_ROLE_ARN}")

    set_auth(endpoint, 0)
    return {
        "endpoint": endpoint,
        "region": REGION,
        "source_account_id": SOURCE_ACCOUNT_ID,
        "target_account_id": TARGET_ACCOUNT_ID,
        "operator_user_arn": OPERATOR_ARN,
        "developer_user_arn": f"arn:aws:iam::{SOURCE_ACCOUNT_ID}:user/{DEVELOPER_USER}",
        "management_role_arn": MANAGEMENT_ROLE_ARN,
        "target_bucket": TARGET_BUCKET,
        "access_key_id": key["AccessKeyId"],
        "secret_access_key": key["SecretAccessKey"],
        "admin_access_key_id": admin_key["AccessKeyId"],
        "admin_secret_access_key": admin_key["SecretAccessKey"],
    }


def fail(message):
    print(f"seed.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def expect_denied(what, fn, **kwargs):
    try:
        fn(**kwargs)
    except ClientError as e:
        return e.response["Error"]["Code"]
    fail(f"{what} succeeded, but IAM enforcement should have denied it")


def verify(endpoint, values):
    """Proves enforcement is on and the operator's path into TARGET works."""
    bogus = {"aws_access_key_id": "AKIABOGUSBOGUSBOGUS0", "aws_secret_access_key": "bogus"}
    expect_denied("get-caller-identity with bogus keys", client(endpoint, "sts", **bogus).get_caller_identity)

    operator = {"aws_access_key_id": values["access_key_id"], "aws_secret_access_key": values["secret_access_key"]}
    sts = client(endpoint, "sts", **operator)
    try:
        arn = sts.get_caller_identity()["Arn"]
    except ClientError as e:
        fail(f"the operator's keys are rejected: {e}")
    if arn != values["operator_user_arn"]:
        fail(f"the operator's keys identify as {arn}, expected {values['operator_user_arn']}")
    # The operator's policy allows no iam:CreateUser: a denial shows policies are evaluated.
    expect_denied("iam:CreateUser by the operator", client(endpoint, "iam", **operator).create_user, UserName="x")

    creds = sts.assume_role(RoleArn=values["management_role_arn"], RoleSessionName="devenv-verify")["Credentials"]
    assumed = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    account = client(endpoint, "sts", **assumed).get_caller_identity()["Account"]
    if account != values["target_account_id"]:
        fail(f"the management role's session is in account {account}, expected {values['target_account_id']}")
    client(endpoint, "iam", **assumed).get_role(RoleName=MANAGEMENT_ROLE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["seed", "check"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--out", help="seed: where to write the seeded values (mode 600)")
    parser.add_argument("--seed", help="check: the seed.json written by `seed`")
    args = parser.parse_args()
    endpoint = args.endpoint.rstrip("/")
    # The caller's own AWS settings (profiles, session tokens) must not leak into these clients.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        os.environ.pop(name, None)

    if args.mode == "seed":
        if not args.out:
            parser.error("seed needs --out")
        values = seed(endpoint)
        verify(endpoint, values)
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(values, f, indent=2)
            f.write("\n")
        print(f"seeded {endpoint}: operator {values['operator_user_arn']}, role {values['management_role_arn']}")
    else:
        if not args.seed:
            parser.error("check needs --seed")
        with open(args.seed) as f:
            values = json.load(f)
        if "admin_access_key_id" not in values:
            fail("seed.json is from an older seed (no test-bed admin keys): start a fresh environment")
        verify(endpoint, values)
        print(f"{endpoint} is seeded and enforcing IAM")


if __name__ == "__main__":
    main()
