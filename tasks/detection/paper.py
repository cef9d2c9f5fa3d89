"""The paper's COCO figures (final version, Table 7): Faster R-CNN on COCO minival (2017 val),
ImageNet-initialised trunk, Detectron "2x" schedule. Box AP in percent."""

from __future__ import annotations

PAPER_TABLE7: dict[str, dict[str, float]] = {
    "resnet50": {"AP": 38.0, "AP50": 57.9},
    "se_resnet50": {"AP": 40.4, "AP50": 61.0},
    "resnet101": {"AP": 39.9, "AP50": 60.1},
    "se_resnet101": {"AP": 41.9, "AP50": 62.7},
}


def paper_line(
    model_name: str, ap: dict[str, float], *, label: str = "", compare: bool = True
) -> str:
    """One markdown table row: our AP / AP50 beside the paper's, or "-" where it has none (or
    ``compare`` is False: the figures are Faster R-CNN's)."""
    paper = PAPER_TABLE7.get(model_name) if compare else None
    ours = f"{ap.get('AP', float('nan')):.1f} | {ap.get('AP50', float('nan')):.1f}"
    if paper is None:
        theirs, delta = "- | -", "-"
    else:
        theirs = f"{paper['AP']:.1f} | {paper['AP50']:.1f}"
        delta = f"{ap.get('AP', float('nan')) - paper['AP']:+.1f}"
    return f"| {model_name}{label} | {ours} | {theirs} | {delta} |"


PAPER_LINE_HEADER = (
    "| trunk | AP | AP50 | paper AP | paper AP50 | AP - paper |\n|---|---|---|---|---|---|"
)
