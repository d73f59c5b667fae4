#!/usr/bin/env python3
"""Checks that imports inside the crate run one way (run by `make lint`).

Reads every `use` tree and every inline `crate::`/`super::`/`self::` path of src/ (tests
excluded), maps each to the module it names, and fails when:
  - the module import graph has a cycle (a module reaching itself through imports);
  - a layer imports a layer above it: the AWS seam (`aws`) imports nothing of the operator's
    Kubernetes side (`api`, `naming`, `pipeline`, `controller`, `metrics`), and the pipeline
    imports nothing of the controllers;
  - a pipeline step imports a later step (order below).
Prints the module graph with --graph.
"""
import re
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
# The pipeline's steps in data-flow order; `mod` (the orchestrator) may import all of them.
STEPS = ["validate", "desired", "observe", "ownership", "plan", "apply", "credentials",
         "secret", "rollout", "status", "cleanup"]
FORBIDDEN = {
    "aws": ["api", "naming", "pipeline", "controller", "metrics", "leader", "startup", "http"],
    "api": ["pipeline", "controller", "aws", "naming"],
    "naming": ["pipeline", "controller"],
    "pipeline": ["controller", "leader", "startup", "http"],
}


def modules():
    """Module path (tuple) -> file."""
    found = {}
    for path in SRC.rglob("*.rs"):
        rel = path.relative_to(SRC)
        # The binaries, and test-only modules (`tests.rs`, `testing.rs`).
        if rel.parts[0] == "bin" or rel.name in ("main.rs", "tests.rs", "testing.rs"):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] in ("mod", "lib"):
            parts = parts[:-1]
        found[tuple(parts)] = path
    return found


def strip_tests(text):
    """Drops `#[cfg(test)]` items (test modules and test-only functions)."""
    out, i = [], 0
    while True:
        j = text.find("#[cfg(test)]", i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        # Skip the item: to the end of its first balanced {...} block, or to the next `;`.
        k = j + len("#[cfg(test)]")
        brace = text.find("{", k)
        semi = text.find(";", k)
        if semi != -1 and (brace == -1 or semi < brace):
            i = semi + 1
            continue
        depth = 0
        for m in range(brace, len(text)):
            if text[m] == "{":
                depth += 1
            elif text[m] == "}":
                depth -= 1
                if depth == 0:
                    i = m + 1
                    break
        else:
            i = len(text)
    return "".join(out)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def expand(tree):
    """A use tree (without `use` and `;`) -> list of paths."""
    tree = tree.strip()
    depth, brace = 0, -1
    for i, c in enumerate(tree):
        if c == "{":
            if depth == 0:
                brace = i
            depth += 1
        elif c == "}":
            depth -= 1
    if brace < 0:
        return [tree.split(" as ")[0].strip()]
    prefix = tree[:brace].rstrip(":")
    inner = tree[brace + 1: tree.rindex("}")]
    items, depth, start = [], 0, 0
    for i, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(inner[start:i])
            start = i + 1
    items.append(inner[start:])
    paths = []
    for item in items:
        if item.strip():
            for sub in expand(item):
                paths.append(prefix if sub == "self" else f"{prefix}::{sub}" if prefix else sub)
    return paths


def resolve(path, here, mods):
    """The module a path points into, seen from module `here`; None when outside the crate."""
    parts = path.split("::")
    if parts[0] == "crate":
        base, rest = [], parts[1:]
    elif parts[0] == "super":
        base, rest = list(here), parts
        while rest and rest[0] == "super":
            base, rest = base[:-1], rest[1:]
    elif parts[0] == "self":
        base, rest = list(here), parts[1:]
    else:
        # A child module named directly (`use watch::x` inside its parent).
        base, rest = list(here), parts
        if tuple(base + rest[:1]) not in mods:
            return None
    target = tuple(base)
    for part in rest:
        if tuple(list(target) + [part]) in mods:
            target = tuple(list(target) + [part])
        else:
            break
    return target


def graph():
    mods = modules()
    edges = {m: set() for m in mods}
    for module, path in mods.items():
        text = strip_comments(strip_tests(path.read_text()))
        paths = []
        for stmt in re.findall(r"\buse\s+([^;]+);", text):
            paths.extend(expand(stmt))
        paths.extend(re.findall(r"\b(?:crate|super|self)(?:::\w+)+", text))
        for p in paths:
            target = resolve(p, module, mods)
            if target is None or target == module:
                continue
            # A module's own children are its business (a parent re-exporting or orchestrating
            # them); an import of an ancestor is an edge like any other.
            edges[module].add(target)
    return mods, edges


def main():
    mods, edges = graph()
    problems = []
    # Layers.
    for module, targets in edges.items():
        top = module[0] if module else ""
        for target in targets:
            if target and top in FORBIDDEN and target[0] in FORBIDDEN[top] and target[0] != top:
                problems.append(f"{'::'.join(module)} imports {'::'.join(target)} (a layer above it)")
    # Step order.
    for module, targets in edges.items():
        if len(module) == 2 and module[0] == "pipeline" and module[1] in STEPS:
            mine = STEPS.index(module[1])
            for target in targets:
                if len(target) >= 2 and target[0] == "pipeline" and target[1] in STEPS:
                    if STEPS.index(target[1]) > mine:
                        problems.append(f"pipeline step {module[1]} imports the later step {target[1]}")
                elif target == ("pipeline",):
                    problems.append(f"pipeline step {module[1]} imports the orchestrator (pipeline/mod.rs)")
    # Cycles: a module that reaches itself; ancestor edges count, descendant edges do not.
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            for t in edges.get(m, ()):
                if t[: len(m)] == m and len(t) > len(m):
                    continue  # into its own child
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
        return seen
    for module in mods:
        if module in reach(module):
            problems.append(f"{'::'.join(module) or 'crate'} is part of an import cycle")
    if "--graph" in sys.argv:
        for module in sorted(edges):
            print(f"{'::'.join(module) or 'crate'} -> {', '.join(sorted('::'.join(t) or 'crate' for t in edges[module]))}")
    if problems:
        print("imports that do not run one way:", *sorted(set(problems)), sep="\n  ")
        sys.exit(1)
    print(f"imports run one way: {len(mods)} modules, {sum(len(t) for t in edges.values())} edges, no cycle")


if __name__ == "__main__":
    main()
