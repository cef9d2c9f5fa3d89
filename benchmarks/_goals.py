"""The project's speed goals, checked against a throughput run, and the run as a markdown report."""

from __future__ import annotations

from benchmarks._env import describe

GPU_TRAIN_BF16 = {"device": "cuda", "mode": "train", "precision": "bf16"}
GPU_TRAIN_FAST = dict(GPU_TRAIN_BF16, channels_last=True, compile=True)
# Either stride convention answers the SE-over-plain goals; timm's needs the same as timm's.
SE_RESNET50_PAIRS = [("se_resnet50", "resnet50"),
                     ("se_resnet50[stride_in_1x1=False]", "resnet50[stride_in_1x1=False]")]
GOALS = [
    {"goal": "se_resnet50 / resnet50 training images/s", "pairs": SE_RESNET50_PAIRS,
     "metric": "throughput_ratio", "at_least": 0.90, "settings": GPU_TRAIN_FAST},
    {"goal": "se_resnet50 / timm seresnet50 training images/s, same stride convention",
     "pairs": [("se_resnet50[stride_in_1x1=False]", "timm:seresnet50")],
     "metric": "throughput_ratio", "at_least": 1.0, "stretch": 1.1, "settings": GPU_TRAIN_FAST},
    {"goal": "se_preact_resnet110 / preact_resnet110 training images/s",
     "pairs": [("se_preact_resnet110", "preact_resnet110")], "metric": "throughput_ratio",
     "at_least": 0.85, "settings": GPU_TRAIN_BF16},
    {"goal": "MFU of se_resnet50 training", "models": ["se_resnet50", SE_RESNET50_PAIRS[1][0]],
     "metric": "mfu", "at_least": 0.25, "settings": GPU_TRAIN_BF16},
    {"goal": "CPU inference time se_resnet50 / resnet50, batch 1", "pairs": SE_RESNET50_PAIRS,
     "metric": "time_ratio", "at_most": 1.03,
     "settings": {"device": "cpu", "mode": "infer", "precision": "fp32", "batch_size": 1,
                  "input_size": 224}},
]


def _goal_values(goal: dict, result: dict) -> list[tuple[str, str, float]]:
    """(what was measured, its subject model, value) for the goal's models found in the run."""
    if "models" in goal:
        return [(label, label, result["models"][label]["mfu"])
                for label in goal["models"] if label in result["models"]]
    found = []
    for subject, baseline in goal["pairs"]:
        pair = result["pairs"].get(f"{subject} / {baseline}")
        if pair is not None and pair.get("conventions", "same") == "same":
            found.append((f"{subject} / {baseline}", subject, pair[goal["metric"]]["median"]))
    return found


def _settings_differ(goal: dict, result: dict, subject: str | None) -> list[str]:
    run = dict(result["settings"])
    if subject is not None:
        run["input_size"] = result["models"][subject]["input_size"][-1]
    return [f"{key}={run.get(key)} (goal: {wanted})" for key, wanted in goal["settings"].items()
            if run.get(key) != wanted]


def evaluate_goals(result: dict) -> list[dict]:
    """Each goal: met / not met / not measured, with the value and why."""
    rows = []
    for goal in GOALS:
        bound = goal.get("at_least", goal.get("at_most"))
        sign = ">=" if "at_least" in goal else "<="
        row = {"goal": goal["goal"], "target": f"{sign} {bound}", "settings": goal["settings"]}
        if "stretch" in goal:
            row["target"] += f" (stretch {goal['stretch']})"
        values = _goal_values(goal, result)
        wrong = _settings_differ(goal, result, values[0][1] if values else None)
        if wrong:
            row.update(status="not measured", why="run settings differ: " + ", ".join(wrong))
        elif not values:
            row.update(status="not measured", why="its models (same conventions) not in this run")
        else:
            measured, _, value = values[0]
            met = value >= bound if sign == ">=" else value <= bound
            row.update(status="met" if met else "not met", measured=measured, value=value,
                       also=[{"measured": m, "value": v} for m, _, v in values[1:]])
            if met and "stretch" in goal:
                row["stretch_met"] = value >= goal["stretch"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def to_markdown(result: dict) -> str:
    s, env, peak = result["settings"], result["environment"], result["peak"]
    lines = [
        (f"{s['mode']} throughput, {s['device']}, "
         f"{s['precision']}, batch {s['batch_size']}, channels_last={s['channels_last']}, "
         f"compile={s['compile']}, {s['repeats']} repeats x {s['steps']} steps after "
         f"{s['warmup']} warm-up steps; {describe(env)}."),
        f"Matmul peak: {peak['tflops']:.2f} TFLOP/s ({peak['dtype']}, {peak['size']}^2).",
        "",
        "| model | input | GMACs | images/s median (min-max) | ms/batch | MFU |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in result["models"].items():
        ips = m["images_per_s"]
        lines.append(f"| `{label}` | {m['input_size'][-1]} | {m['gmacs']:.2f} | "
                     f"{ips['median']:,.1f} "
                     f"({ips['min']:,.1f}-{ips['max']:,.1f}) | {m['ms_per_batch']:.2f} | "
                     f"{100 * m['mfu']:.1f}% |")
    lines += ["", ("| subject | baseline | kind | images/s ratio median (min-max) | time ratio |"
              " conventions |"), "|---|---|---|---|---|---|"]
    for p in result["pairs"].values():
        r = p["throughput_ratio"]
        lines.append(f"| `{p['subject']}` | `{p['baseline']}` | {p['kind']} | "
                     f"**{r['median']:.3f}** "
                     f"({r['min']:.3f}-{r['max']:.3f}) | {p['time_ratio']['median']:.3f} | "
                     f"{p.get('conventions', '-')} |")
    lines += ["", "| goal | target | status | measured |", "|---|---|---|---|"]
    for g in result["goals"]:
        measured = (f"{g['value']:.3f} (`{g['measured']}`)" if "value" in g else g.get("why", ""))
        status = g["status"] + (" (stretch met)" if g.get("stretch_met") else "")
        lines.append(f"| {g['goal']} | {g['target']} | {status} | {measured} |")
    return "\n".join(lines) + "\n"
