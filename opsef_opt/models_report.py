"""``python -m opsef_opt models``: every registered model, whether it can run here, and its parameters."""
from __future__ import annotations

import sys
from typing import Any, TextIO

from opsef_opt.config import Settings

__all__ = ["model_rows", "models_text", "print_models"]


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


def print_models(settings: Settings | None = None, out: TextIO | None = None) -> None:
    """A table on a terminal; plain text with whole lines in a file or pipe (no URL or key broken mid-word)."""
    out = out or sys.stdout
    rows = model_rows(settings)
    if not out.isatty():
        out.write(models_text(rows))
        out.write(f"Device for device=auto: {_gpu()}\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="segmentation models", show_lines=True)
    for col in ("model", "available here", "settings (init)", "tunable parameters"):
        table.add_column(col, overflow="fold")
    for r in rows:
        status = ("yes: " if r["available"] else "NO: ") + r["reason"]
        table.add_row(f"{r['model']}\n[{r['family']}]", status, f"{r['init']}\n{r['init_params']}",
                      r["params"].replace("; ", "\n"))
    console = Console(file=out, width=max(140, Console(file=out).width))
    console.print(table)
    console.print(f"Device for device=auto: {_gpu()}")


def models_text(rows: list[dict[str, Any]]) -> str:
    """The models as plain text: one block per model, one line per item, nothing wrapped.

    Long lines stay whole, so paths, URLs and config keys (``study.search.models.<label>.init.model``)
    can be copied from a file; a viewer may wrap them, the file does not.
    """
    lines = ["segmentation models", ""]
    for r in rows:
        lines.append(f"{r['model']}  [{r['family']}]")
        lines.append(f"  available here: {'yes' if r['available'] else 'NO'}: {r['reason']}")
        lines.append(f"  settings (init): {r['init']}")
        for label, key in (("init parameters", "init_params"), ("tunable parameters", "params")):
            items = [p for p in r[key].split("; ") if p]
            if items:
                lines.append(f"  {label}:")
                lines += [f"    {p}" for p in items]
        lines.append("")
    return "\n".join(lines) + "\n"
