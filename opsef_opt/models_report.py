"""``python -m opsef_opt models``: every registered model, whether it can run here, and its parameters."""
from __future__ import annotations

from typing import Any

from opsef_opt.config import Settings

__all__ = ["model_rows", "print_models"]


def _gpu() -> str:
    """What a model set to device=auto would use on this machine."""
    try:
        import torch
    except ImportError:
        return "cpu (torch not installed)"
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_rows(settings: Settings | None = None) -> list[dict[str, Any]]:
    """One row per registered family (default settings) and per model entry of the study."""
    from opsef_opt.segment import SEGMENTERS

    entries = [(name, name, {}) for name in SEGMENTERS.names()]
    if settings is not None:
        entries += [(f"{m.label} (study)", m.family, dict(m.init)) for m in settings.study.search.models]
        entries += [(f"{m.label} (stage {st.name})", m.family, dict(m.init)) for st in settings.study.stages
                    if st.search is not None for m in st.search.models if m not in settings.study.search.models]
    rows = []
    for label, family, init in entries:
        cls = SEGMENTERS.get(family)
        ok, reason = cls.availability(**init)
        rows.append({
            "model": label,
            "family": family,
            "init": ", ".join(f"{k}={v}" for k, v in init.items()) or "defaults",
            "available": ok,
            "reason": reason,
            "params": "; ".join(f"{p.name}: {p.describe()} (default {p.default})" for p in cls.params),
            "init_params": "; ".join(f"{p.name}: {p.describe()} (default {p.default})" for p in cls.init_params),
        })
    return rows


def print_models(settings: Settings | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="segmentation models", show_lines=True)
    for col in ("model", "available here", "settings (init)", "tunable parameters"):
        table.add_column(col, overflow="fold")
    for r in model_rows(settings):
        status = ("yes: " if r["available"] else "NO: ") + r["reason"]
        table.add_row(f"{r['model']}\n[{r['family']}]", status, f"{r['init']}\n{r['init_params']}", r["params"])
    console = Console(width=max(140, Console().width))
    console.print(table)
    console.print(f"Device for device=auto: {_gpu()}")
