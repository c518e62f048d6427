"""Markdown table and figure of :mod:`experiments.robustness` (split out to keep modules short)."""
from __future__ import annotations

import json
from typing import Any

from experiments.robustness import (ANCHOR_SPLIT, ANCHORS, TABLE_EPS, TARGET, TUNING_COMMAND,
                                    TUNING_LOG)


def _pct(v: Any) -> str:
    return "—" if v is None else f"{100 * v:.1f}"


def _cell(s: dict[str, Any], key: str, pct: bool = True) -> str:
    m, sd = s.get(key), s.get(key + "_std")
    if m is None:
        return "—"
    if pct:
        return _pct(m) + (f" ± {100 * sd:.1f}" if sd else "")
    return f"{m:.3g}" + (f" ± {sd:.2g}" if sd else "")


def _exact_cell(s: dict[str, Any], h: str) -> str:
    lo, hi = s.get("exact_lower" + h), s.get("exact_upper" + h)
    if lo is None or hi is None:
        return "—"
    rng = _pct(lo) if abs(hi - lo) < 1e-12 else f"{_pct(lo)}–{_pct(hi)}"
    und = s.get("undecided" + h)
    return (f"{rng} ({und:.0f} undecided, {s.get('verify_seconds' + h) or 0:.0f} s)"
            if und is not None else rng)


def attack_notes(payload: dict[str, Any]) -> str:
    """One sentence per model: AutoAttack settings and backend, best-of-PGD starts per loss."""
    parts = []
    for name, a in payload["config"]["attacks"].items():
        aa = ("standard (APGD-CE, APGD-T 9 targets, Square 5,000 queries)"
              if a["autoattack"] == "standard" else f"reduced {a['autoattack']}")
        parts.append(f"{name}: AutoAttack {aa}, backend {a['autoattack_backend']}; best-of-PGD "
                     f"{a['pgd_restarts']} starts per loss")
    return "Attacks — " + "; ".join(parts) + "."


def summary_markdown(payload: dict[str, Any]) -> str:
    c = payload["config"]
    h = f"@{c['headline_eps']:g}"
    head = ["model", "clean %", f"AutoAttack{h} %", f"best-of-PGD{h} %", f"exact (MILP){h} %",
            f"certified (interval){h} %", f"certified (Lipschitz){h} %",
            f"soundness_violations{h}", "ℓ∞ bound", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for s in payload["summary"]:
        sv = s.get("soundness_violations" + h)
        lines.append("| " + " | ".join([
            s["label"], _cell(s, "accuracy"), _cell(s, "autoattack_accuracy" + h),
            _cell(s, "pgd_accuracy" + h), _exact_cell(s, h), _cell(s, "certified_interval" + h),
            _cell(s, "certified_lipschitz" + h), "—" if sv is None else f"{sv:.0f}",
            _cell(s, "lipschitz_bound_inf", pct=False), _cell(s, "epoch_s", pct=False)]) + " |")
    for a in ANCHORS.values():
        lines.append("| " + " | ".join([
            f"*{a['label']}* †", _pct(a.get("accuracy")), "—",
            _pct(a.get("pgd_accuracy" + h)) + (" (PGD)" if a.get("pgd_accuracy" + h) else ""),
            "—", _pct(a.get("certified_interval" + h)), "—", "—", "—",
            f"{a['epoch_s']:.2g}" if "epoch_s" in a else "—"]) + " |")
    other = [e for e in TABLE_EPS if e in c["eps"] and e != c["headline_eps"]]
    head2 = ["model", f"robust (min over attacks){h} %"]
    for e in other:
        head2 += [f"PGD@{e:g} %", f"cert-IBP@{e:g} %", f"cert-Lip@{e:g} %"]
    lines2 = ["| " + " | ".join(head2) + " |", "|" + "|".join("---" for _ in head2) + "|"]
    for s in payload["summary"]:
        cells = [s["label"], _cell(s, "robust_accuracy" + h)]
        for e in other:
            cells += [_cell(s, f"pgd_accuracy@{e:g}"), _cell(s, f"certified_interval@{e:g}"),
                      _cell(s, f"certified_lipschitz@{e:g}")]
        lines2.append("| " + " | ".join(cells) + " |")
    n_eval = c["attack_limit"] or c["holdout"]
    limits = {n: v for n, v in c["verify_time_limit"].items() if v is not None}
    reused = sorted({r["model_name"] for r in payload["rows"] if r.get("reused")})
    text = [f"# Robustness on mnist-5k (quick={payload['quick']})\n",
            f"Every number of ours: held-out digits of mnist-5k (clean accuracy on all "
            f"{c['holdout']}, attacks, certificates and verification on the first {n_eval}), "
            f"touched only for this report (trained on {5000 - c['holdout'] - c['val']} digits; "
            f"the {c['val']}-digit validation split chose the presets: "
            f"`{TUNING_COMMAND}`, log `{TUNING_LOG}`); seeds: {c['seeds']}. "
            f"† Anchors (italic) are NOT on our split: {ANCHOR_SPLIT}.\n",
            f"{attack_notes(payload)} best-of-PGD: CE and margin loss, {c['pgd_steps']} steps. "
            + (f"exact (MILP): proven-robust lower – not-broken upper bound, per-example limit "
               f"{limits} s. " if limits else "")
            + f"Measured with {c.get('torch_threads', 1)} torch thread(s), load average at the "
            f"end {payload['rows'][-1]['load_avg'][0]:.1f}; s/epoch is from each run's training "
            f"log" + (f" (reused runs, trained earlier: {', '.join(reused)})" if reused else "")
            + ".\n",
            "\n".join(lines) + "\n", "\n".join(lines2) + "\n"]
    problems = {s["model_name"]: s["chain_problems"] for s in payload["summary"]
                if s.get("chain_problems")}
    text.append("Consistency (soundness_violations = 0; certified ≤ exact lower ≤ every attack, "
                "and exact upper ≤ every attack where no digit is undecided: an attack may "
                "break an undecided digit): " + ("**violated** — " + json.dumps(problems, ensure_ascii=False)
                                     if problems else "holds for every model") + ".\n")
    t = payload.get("target")
    if t:
        parts = [f"{k} {t[k]['value'] if t[k]['value'] is None else round(t[k]['value'], 4)} "
                 f"(target {t[k]['target']}, gap "
                 f"{'n/a' if t[k]['gap'] is None else format(t[k]['gap'], '+.3f')})"
                 for k in TARGET]
        text.append(f"Goal (robust preset, held-out digits: clean ≥ 0.91, AutoAttack ≥ 0.74, certified ≥ 0.73): "
                    f"**{'met' if t['met'] else 'not met'}** — " + "; ".join(parts) + ".\n")
    text.append(f"Runtime {payload['runtime_s']:.0f} s (CPU {payload['cpu_s']:.0f} s).\n")
    return "\n".join(text)


def make_figure(payload: dict[str, Any]):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot state

    eps = [0.0] + list(payload["config"]["eps"])
    fig = Figure(figsize=(14, 4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    titles = ["PGD accuracy (best-of at 0.1; ★ anchor: official test set)",
              "certified accuracy (interval)", "clean vs certified (interval) @0.1"]
    for s in payload["summary"]:
        pgd = [s["accuracy"]] + [s.get(f"pgd_accuracy@{e:g}") for e in eps[1:]]
        cert = [s["accuracy"]] + [s.get(f"certified_interval@{e:g}") for e in eps[1:]]
        line, = axes[0].plot(eps, pgd, "o-", label=s["label"])
        axes[1].plot(eps, cert, "s-", color=line.get_color(), label=s["label"])
        axes[2].scatter([s["accuracy"]], [s.get("certified_interval@0.1")], color=line.get_color(),
                        label=s["label"])
    a = ANCHORS["nemon_interval"]
    axes[0].plot([0.1], [a["pgd_accuracy@0.1"]], "k*", ms=10, label="anchor (interval NEMON)")
    axes[1].plot([0.05, 0.1], [a["certified_interval@0.05"], a["certified_interval@0.1"]], "k*",
                 ms=10, label="anchor (interval NEMON)")
    axes[2].plot([a["accuracy"]], [a["certified_interval@0.1"]], "k*", ms=10, label="anchor")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=6)
    for ax in axes[:2]:
        ax.set_xlabel("ε (ℓ∞, pixels in [0, 1])")
        ax.set_ylabel("held-out accuracy")
    axes[2].set_xlabel("clean accuracy")
    axes[2].set_ylabel("certified accuracy (interval) at ε = 0.1")
    fig.suptitle(f"Implicit networks on mnist-5k (quick={payload['quick']})", fontsize=10)
    return fig


