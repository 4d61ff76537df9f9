"""Command line: ``python -m opsef_opt [study=NAME] [mode=MODE] [key=value ...]`` (Hydra overrides).

``python -m opsef_opt --help`` lists the modes with an example each;
``python -m opsef_opt models`` lists the segmentation models and whether they can run here.
Mistyped study names and keys are reported in one line with a suggestion
("did you mean ...") and exit code 2, before anything is created.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from opsef_opt.resolvers import register_resolvers

log = logging.getLogger("opsef_opt")

#: exit code of a config error (as opsef_opt.app.EXIT_CONFIG; not imported here to keep --help fast)
EXIT_CONFIG = 2

_MODES = (
    ("search", "(default) run the study's stages; print the leaderboard and the MLflow link",
     "python -m opsef_opt study=demo n_trials=20"),
    ("ui", "serve the MLflow UI for the study; print the link to its trials, best first",
     "python -m opsef_opt study=demo mode=ui"),
    ("tag", "tag finished trials correct/over/under/failed (or import tags_csv=FILE)",
     "python -m opsef_opt study=demo mode=tag"),
    ("apply", "run the best pipeline (best.yaml) on all images, or on input=FOLDER",
     "python -m opsef_opt study=demo mode=apply input=/data/plate1"),
    ("reimport", "re-run the analysis on edited label images / ImageJ ROI zips",
     "python -m opsef_opt study=demo mode=reimport edited=/data/edited"),
    ("models", "list the segmentation models and whether they can run here",
     "python -m opsef_opt models"),
)


def _studies() -> list[str]:
    """The study files shipped with the tool (conf/study/*.yaml)."""
    from importlib.resources import files

    return sorted(p.name[:-5] for p in files("opsef_opt.conf").joinpath("study").iterdir()
                  if p.name.endswith(".yaml"))


def _readme() -> str:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    return str(readme) if readme.is_file() else "README.md of the opsef-opt source"


def help_text() -> str:
    """What ``--help`` prints: the modes with an example each, the common keys, exit codes and the README."""
    width = max(len(m) for m, _, _ in _MODES)
    modes = "\n".join(f"  {m:<{width}}  {what}\n  {'':<{width}}    {example}" for m, what, example in _MODES)
    return f"""opsef-opt: find which preprocessing + segmentation pipeline segments your microscopy images well.

usage: python -m opsef_opt [study=NAME] [mode=MODE] [key=value ...]

modes (mode=MODE):
{modes}

studies: {', '.join(_studies())}  (your own: hydra.searchpath=[file:///path/to/conf], with study/NAME.yaml)
common keys: n_trials=N  seed=N  n_workers=N  stage=NAME  restart_stage=NAME  studies_dir=DIR
             storage=URL (Optuna)  tracking_uri=URI (MLflow)  log_artifacts=false
every key and its value: python -m opsef_opt study=NAME --cfg job      Hydra's own options: --hydra-help
exit codes: 0 done; 2 config error (nothing created); 3 waiting for your tags; 4 some images failed (apply);
            5 every trial of a stage failed; 130 interrupted (run the same command again to continue)
documentation: {_readme()}"""


def _suggest(word: str, options: list[str]) -> str:
    from opsef_opt.checks import did_you_mean

    return did_you_mean(word, options)


def _choices(overrides: list[str]) -> list[str]:
    """The overrides that pick config files or the search path (study=..., hydra.searchpath=...)."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in ("study", "hydra.searchpath")
            or "/" in o.split("=", 1)[0]]


def _keys_at(overrides: list[str], path: list[str]) -> list[str]:
    """Config keys under ``path`` (e.g. ``['study', 'images']``) for these config-file choices."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    try:
        with initialize_config_module("opsef_opt.conf", version_base="1.3"):
            node = compose("config", overrides=_choices(overrides))
        for part in path:
            node = node[part]
        return [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
    except Exception:
        return []


def config_error(overrides: list[str]) -> str | None:
    """The config error Hydra would report for ``overrides``, in the tool's words; None when they compose.

    Unknown study names and keys get "did you mean ...". Composing only reads
    config files: nothing is created.
    """
    import re

    from hydra import compose, initialize_config_module
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    try:
        with initialize_config_module("opsef_opt.conf", version_base="1.3"):
            compose("config", overrides=overrides)
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        options = sorted(e.options or [])
        if group and options:
            what = "study" if group == "study" else f"{group} option"
            return f"{group}={name}: no such {what}{_suggest(name, options)} (choices: {', '.join(options)})"
        return str(e).strip().splitlines()[0]
    except OverrideParseException as e:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        def readable(override: str) -> bool:
            try:
                OverridesParser.create().parse_overrides([override])
                return True
            except Exception:
                return False

        bad = next((o for o in overrides if not readable(o)), None)
        reason = str(e).strip().splitlines()[0]
        return f"cannot read the override{f' {bad!r}' if bad else ''}: {reason} (write key=value)"
    except ConfigCompositionException as e:
        m = re.match(r"Could not override '([^']+)'", str(e))
        if m:
            key = m.group(1)
            value = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), "")
            parts = key.split(".")
            depth = 0  # the first part of the key that the config does not have
            while depth < len(parts) - 1 and parts[depth] in _keys_at(overrides, parts[:depth]):
                depth += 1
            parent, leaf = parts[:depth], parts[depth]
            known = _keys_at(overrides, parent)
            where = ".".join(parent)
            if depth < len(parts) - 1:
                return (f"{key}={value}: {'.'.join(parts[:depth + 1])} is not a key{_suggest(leaf, known)}"
                        + (f" (keys{f' of {where}' if where else ''}: {', '.join(known)})" if known else ""))
            allowed = f" (keys{f' of {where}' if where else ''}: {', '.join(known)})" if known else ""
            return f"{key}={value}: unknown key{_suggest(leaf, known)}{allowed}"
        return " ".join(str(e).strip().split("\n")[:2])
    except Exception as e:  # anything else Hydra refuses: let it report it itself
        log.debug("config pre-check: %s", e)
    return None


@hydra.main(version_base="1.3", config_path="pkg://opsef_opt.conf", config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:
    from opsef_opt.app import run

    sys.exit(run(cfg))


def main() -> None:
    """Console entry point (``opsef-opt`` / ``python -m opsef_opt``)."""
    args = sys.argv[1:]
    if any(a in ("-h", "--help", "help") for a in args[:1]) or "--help" in args or "-h" in args:
        print(help_text())
        sys.exit(0)
    register_resolvers()
    if args[:1] == ["models"]:  # `python -m opsef_opt models` = mode=models
        sys.argv[1] = "mode=models"
        args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # Hydra's own flags (--cfg, -m, ...) go to Hydra untouched
        error = config_error(args)
        if error:
            print(f"opsef-opt: config error: {error}", file=sys.stderr)
            sys.exit(EXIT_CONFIG)
    _hydra_entry()


if __name__ == "__main__":
    main()
