"""Compares the chart linters' reports (hack/chart-lint/run.sh) with the reviewed baseline.

Usage: compare.py REPORTS_DIR BASELINE_YAML

Each finding is (tool, check, object): the object is Kind/name with the release prefix taken off
(`Deployment/cross-account-operator`), `Dockerfile`, or the kind a schema is missing for. Exits 1
when a finding is not in the baseline, or a baseline entry matches no finding (remove it), or a
linter did not run.
"""

import json
import re
import sys
from pathlib import Path

import yaml

RELEASE_PREFIX = "cao-"


def object_name(name):
    return name[len(RELEASE_PREFIX):] if name.startswith(RELEASE_PREFIX) else name


def load_json(path):
    text = path.read_text()
    if not text.strip():
        err = path.with_suffix(".err")
        detail = err.read_text()[-2000:] if err.exists() else ""
        sys.exit(f"chart-lint: {path.name} is empty: the linter did not run\n{detail}")
    return json.loads(text)


def checkov(path):
    data = load_json(path)
    for report in data if isinstance(data, list) else [data]:
        if "results" not in report:
            continue
        for failed in report["results"]["failed_checks"]:
            resource = failed["resource"]
            if resource.rstrip(".").endswith("Dockerfile"):
                obj = "Dockerfile"
            else:
                kind, *rest = resource.split(".")
                obj = f"{kind}/{object_name(rest[-1])}"
            yield ("checkov", failed["check_id"], obj, failed["check_name"])


def kube_score(path):
    for scored in load_json(path):
        kind = scored["type_meta"]["kind"]
        name = object_name(scored["object_meta"]["name"])
        for check in scored["checks"]:
            if check["skipped"] or check["grade"] >= 10:
                continue
            summary = "; ".join(c["summary"] for c in check.get("comments") or [])
            yield ("kube-score", check["check"]["id"], f"{kind}/{name}", summary)


MISSING = re.compile(r"^WARN \S+ Couldn't find schema for kind (\S+) with api version (\S+)")


def kubernetes_validate(path):
    minor = path.stem.removeprefix("kubernetes-validate-")
    for line in path.read_text().splitlines():
        if m := MISSING.match(line):
            yield ("kubernetes-validate", "no-schema", f"{m.group(2)}/{m.group(1)}", line)
        elif line.startswith("ERROR") or line.startswith("Traceback"):
            yield ("kubernetes-validate", f"invalid-on-{minor}", line, line)
        elif line.strip() and not line.startswith("WARN"):
            yield ("kubernetes-validate", f"output-on-{minor}", line, line)


def hadolint(path):
    for finding in load_json(path):
        yield ("hadolint", finding["code"], "Dockerfile", finding["message"])


def main():
    reports, baseline_path = Path(sys.argv[1]), Path(sys.argv[2])
    findings = {}
    readers = {
        "checkov-": checkov,
        "kube-score-": kube_score,
        "kubernetes-validate-": kubernetes_validate,
        "hadolint": hadolint,
    }
    ran = set()
    for path in sorted(reports.iterdir()):
        if path.suffix == ".err":
            continue
        for prefix, reader in readers.items():
            if path.name.startswith(prefix):
                ran.add(prefix)
                for tool, check, obj, detail in reader(path):
                    findings.setdefault((tool, check, obj), set()).add(f"{path.stem}: {detail}")
    missing_tools = set(readers) - ran
    if missing_tools:
        sys.exit(f"chart-lint: no report of {sorted(missing_tools)}")

    baseline = yaml.safe_load(baseline_path.read_text()) or []
    accepted = {}
    for entry in baseline:
        key = (entry["tool"], entry["check"], entry["object"])
        if not str(entry.get("reason", "")).strip():
            sys.exit(f"chart-lint: baseline entry {key} has no reason")
        accepted[key] = entry["reason"]

    new = sorted(set(findings) - set(accepted))
    stale = sorted(set(accepted) - set(findings))
    by_tool = {}
    for tool, _, _ in findings:
        by_tool[tool] = by_tool.get(tool, 0) + 1
    print(f"chart-lint: {len(findings)} distinct findings ({by_tool}), "
          f"{len(findings) - len(new)} accepted in {baseline_path.name}")
    for key in new:
        print(f"NEW {key[0]} {key[1]} on {key[2]}:")
        for where in sorted(findings[key]):
            print(f"    {where}")
    for key in stale:
        print(f"STALE baseline entry {key[0]} {key[1]} on {key[2]}: nothing reports it any more; remove it")
    if new or stale:
        print(f"chart-lint: fix the chart, or add each accepted finding to {baseline_path} with its reason")
        sys.exit(1)


if __name__ == "__main__":
    main()
