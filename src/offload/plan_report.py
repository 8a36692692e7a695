"""``offload plan --report DIR``: the plan as a Markdown report with two plots.

``report.md`` holds the demand per service, the chosen pools, the monolith and the saving;
``demand.png`` the cores and the memory in flight per service; ``cost.png`` the monthly
cost of the monolith, the current topology (when given) and the plan. matplotlib comes
with the ``plan`` extra and is imported only here, when a report is asked for.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .planner import HOURS_PER_MONTH, PlanError

if TYPE_CHECKING:
    from .planner import Plan

__all__ = ["write_report"]

_GIB = 1024**3


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise PlanError(
            "--report draws its plots with matplotlib, which is not installed: "
            "pip install 'offload[plan]'"
        ) from None
    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def write_report(plan: Plan, directory: str, *, app_name: str, catalog: str) -> str:
    """Write ``report.md``, ``demand.png`` and ``cost.png`` into ``directory`` (made if
    missing); returns the report's path. Raises PlanError when matplotlib is missing."""
    plt = _pyplot()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise PlanError(f"--report {directory}: cannot make the directory ({exc})") from None
    demands = list(plan.demands.values())
    names = [d.service for d in demands]

    fig, (ax_cpu, ax_mem) = plt.subplots(1, 2, figsize=(10, 4))
    ax_cpu.bar(names, [d.cores for d in demands], color="#4C72B0")
    ax_cpu.set_title("cores (rate x CPU p90)")
    ax_cpu.set_ylabel("cores")
    ax_mem.bar(names, [d.memory / _GIB for d in demands], color="#DD8452")
    ax_mem.set_title("memory in flight (Little's law x RSS p90)")
    ax_mem.set_ylabel("GiB")
    for ax in (ax_cpu, ax_mem):
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"{app_name}: demand per service at traffic x{plan.traffic:g}")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "demand.png"), dpi=100)
    plt.close(fig)

    bars = [("monolith", plan.monolith.monthly_cost)]
    if plan.current is not None:
        bars.append(("current", sum(p.monthly_cost for p in plan.current)))
    bars.append(("plan", plan.monthly_cost))
    fig, ax = plt.subplots(figsize=(6, 4))
    drawn = ax.bar([b[0] for b in bars], [b[1] for b in bars], color="#55A868")
    ax.bar_label(drawn, labels=[f"${b[1]:,.0f}" for b in bars])
    ax.set_ylabel(f"USD per month ({HOURS_PER_MONTH} h)")
    ax.set_title(f"monthly cost: saving {plan.saving:.1f}%")
    fig.tight_layout()
    fig.savefig(os.path.join(directory, "cost.png"), dpi=100)
    plt.close(fig)

    lines = [
        f"# Cost plan for {app_name}",
        "",
        f"Catalog `{catalog}`, traffic x{plan.traffic:g}, margin {plan.margin:.0%}, "
        f"{HOURS_PER_MONTH} hours a month. Method: docs/operations.md.",
        "",
        "## Demand per service",
        "",
        "![demand per service](demand.png)",
        "",
        "| service | executor | runs/s | cores | in flight | per task (GiB) | memory (GiB) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for d in demands:
        flag = " (unmeasured)" if d.service in plan.unmeasured else ""
        lines.append(
            f"| {d.service}{flag} | {d.executor} | {d.rate:.3g} | {d.cores:.3g} | "
            f"{d.slots:.3g} | {d.slot_memory / _GIB:.3g} | {d.memory / _GIB:.3g} |"
        )
    lines += [
        "",
        "## Pools",
        "",
        "| pool | services | machine | replicas | concurrency | monthly |",
        "|---|---|---|---:|---:|---:|",
    ]
    for p in (*plan.pools, plan.monolith):
        label = "monolith" if p is plan.monolith else p.name
        lines.append(
            f"| {label} | {', '.join(p.services)} | {p.machine.name} | {p.replicas} | "
            f"{p.concurrency} | ${p.monthly_cost:,.2f} |"
        )
    lines += [
        "",
        "## Cost before and after",
        "",
        "![monthly cost](cost.png)",
        "",
        f"Plan ${plan.monthly_cost:,.2f} a month against ${plan.monolith.monthly_cost:,.2f} "
        f"for the monolith: a saving of {plan.saving:.1f}%.",
    ]
    lines += [f"\nNote: {n}" for n in plan.notes]
    path = os.path.join(directory, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path
