"""Pictures of one benchmark run: reads results.json (bench/convergence.rs) and writes, next to
it, ready.png (objects Ready over time: the operator, the floor and ACK) and rss.png (resident
memory of each controller process over its run).

    python bench/plot/plot.py target/bench/results.json
"""

import json
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def ready_curve(times):
    """(x, y) of a step curve: y objects ready at x seconds after the first create."""
    xs, ys = [0.0], [0]
    for i, t in enumerate(sorted(times), start=1):
        xs.append(t)
        ys.append(i)
    return xs, ys


def phases(results):
    """(label, phase) of every controller phase that ran."""
    found = [
        ("cross-account-operator, credentials", results["operator_credentials"]),
        ("cross-account-operator, roles only", results["operator_roles"]),
    ]
    peer = results.get("peer", {})
    if "Ok" in peer:
        version, phase = peer["Ok"]
        found.append((f"ACK iam-controller {version}, roles only", phase))
    return found


def plot_ready(results, n, out):
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for label, phase in phases(results):
        xs, ys = ready_curve(phase["convergence"]["ready_at_seconds"])
        ax.step(xs, ys, where="post", label=label)
    for label, floor in [
        ("floor, credentials", results["floor_credentials"]),
        ("floor, roles only", results["floor_roles"]),
    ]:
        xs, ys = ready_curve(floor["ready_at_seconds"])
        ax.step(xs, ys, where="post", linestyle="--", label=label)
    ax.set_xlabel("seconds since the first create request")
    ax.set_ylabel("objects Ready")
    ax.set_title(f"Objects Ready over time, N = {n}")
    ax.set_ylim(0, n * 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_rss(results, n, out):
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    for label, phase in phases(results):
        series = phase.get("rss_mib_over_time") or []
        if series:
            ax.plot([t for t, _ in series], [m for _, m in series], label=label)
    ax.axhline(64, color="grey", linestyle=":", label="64 MiB")
    ax.set_xlabel("seconds since the process started")
    ax.set_ylabel("resident memory, MiB")
    ax.set_title(
        f"Resident memory over a phase (start, N creates until Ready, then the rest), N = {n}"
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: plot.py <results.json>")
    path = pathlib.Path(sys.argv[1])
    results = json.loads(path.read_text())
    n = results["settings"]["n"]
    plot_ready(results, n, path.with_name("ready.png"))
    plot_rss(results, n, path.with_name("rss.png"))
    print(f"wrote {path.with_name('ready.png')} and {path.with_name('rss.png')}")


if __name__ == "__main__":
    main()
