"""A long-running service on boto3, as a consumer of the operator's Secret (tests/consumers.rs).

It makes one session and one STS client for the life of the process (as a service does) and calls
sts:GetCallerIdentity every CONSUMER_INTERVAL_MS, leaving the refresh of its credentials entirely
to botocore: AWS_CONFIG_FILE with the Secret's credential_process, the credentials-endpoint
sidecar (AWS_CONTAINER_CREDENTIALS_FULL_URI), or, as the negative control, the static
`credentials` file (AWS_SHARED_CREDENTIALS_FILE), which botocore reads once. It stops by itself
after CONSUMER_DURATION_S.

One line per call on stdout: `<unix ms> ok` or `<unix ms> error <code>`; nothing secret.
"""

import os
import sys
import time

import boto3
from botocore.exceptions import BotoCoreError, ClientError


def positive(name, fallback):
    try:
        value = int(os.environ.get(name, ""))
    except ValueError:
        return fallback
    return value if value > 0 else fallback


def main():
    interval = positive("CONSUMER_INTERVAL_MS", 3000) / 1000
    deadline = time.monotonic() + positive("CONSUMER_DURATION_S", 1500)
    sts = boto3.session.Session().client("sts")
    print("boto3 consumer started", file=sys.stderr, flush=True)
    while time.monotonic() < deadline:
        try:
            sts.get_caller_identity()
            print(f"{int(time.time() * 1000)} ok", flush=True)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "Unknown")
            print(f"{int(time.time() * 1000)} error {code}", flush=True)
            print(f"{int(time.time() * 1000)} {e}", file=sys.stderr, flush=True)
        except BotoCoreError as e:
            print(f"{int(time.time() * 1000)} error {type(e).__name__}", flush=True)
            print(f"{int(time.time() * 1000)} {e}", file=sys.stderr, flush=True)
        time.sleep(interval)


if __name__ == "__main__":
    main()
