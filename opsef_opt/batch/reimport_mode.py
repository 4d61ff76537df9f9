"""mode=reimport: edited label images or ImageJ ROI zips back in, and the analysis again on them.

Analysts correct a segmentation in Fiji/AnnotatorJ (ROI zips) or napari
(label images); ``python -m opsef_opt study=NAME mode=reimport edited=FOLDER``
matches each file to its image (by name, see
:func:`opsef_opt.export.reimport.import_edited`), measures the objects on
the raw image and writes the same outputs as the apply mode under
``studies/NAME/apply/<run>/`` (default run name ``edited-<folder>``).
Archives are untrusted input: see :mod:`opsef_opt.export.reimport`. A matched file that is
refused (unsafe, over a limit, malformed) fails its image with a message naming the file and
the reason; when no file could be read back the run stops with those messages, and only when no
file matched any image name with "no label image or ROI zip matches an image of the study".
"""
from __future__ import annotations

import logging
import time

from opsef_opt.batch.analyse import analyse_image, image_dir, mark_done
from opsef_opt.batch.naming import safe_name
from opsef_opt.batch.run import ApplyError, ApplyReport, finish_dataset, input_files
from opsef_opt.batch.source import list_sources
from opsef_opt.batch.worker import raw_intensity
from opsef_opt.config import ReshapeSpec, Settings

__all__ = ["run_reimport"]

log = logging.getLogger("opsef_opt")


def _reshape(settings: Settings) -> ReshapeSpec:
    """The reshaping the labels were made on: the best pipeline's, else the study's (without tiles)."""
    from opsef_opt.batch.run import resolve_pipeline

    try:
        _, reshape, _, _ = resolve_pipeline(settings)
        return reshape
    except ApplyError:
        r = settings.study.reshape
        return ReshapeSpec(bin=r.bin, scale=r.scale, substack=r.substack)


def run_reimport(settings: Settings) -> ApplyReport:
    from opsef_opt.export.reimport import import_edited
    from opsef_opt.post.props import region_properties

    sources, problems = list_sources(settings.study.images, _reshape(settings), input_files(settings))
    folder = settings.edited
    run_dir = settings.study_dir / "apply" / (settings.apply_run or f"edited-{safe_name(folder.name)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    report = ApplyReport(run_dir, failed={p.split(":")[0]: p for p in problems})
    by_name = {s.name: s for s in sources}
    refused: dict[str, str] = {}  # image name -> why its matched file was not read back
    labels, notes = import_edited(folder, list(by_name), {n: s.shape_yx for n, s in by_name.items()},
                                  refused=refused)
    reasons = set(refused.values())
    for note in notes:  # one line per file (a ROI zip's findings are summarised in one line)
        if note not in reasons:
            log.warning("%s", note)
    if not labels and refused:  # files did match: say what is wrong with each of them
        raise ApplyError(f"edited={folder}: no edited file could be read back; "
                         + "; ".join(refused[n] for n in sorted(refused)))
    if not labels:
        raise ApplyError(f"edited={folder}: no label image or ROI zip matches an image of the study "
                         f"(expected <image name>.tif, <image name>_labels.tif or <image name>.zip)"
                         + "".join(f"; {note}" for note in notes))
    for name in sorted(refused):  # an image whose edits could not be read back failed
        report.failed[name] = refused[name]
        log.error("%s", refused[name])
    spec = settings.study.apply
    t0 = time.perf_counter()
    for name, lab in labels.items():
        source = by_name[name]
        try:
            data = source.read()
            channels = {f"ch{c}": raw_intensity(source.with_channel(c).read(), source.with_channel(c).axes)
                        for c in spec.quantify}
            table = region_properties(lab, raw=raw_intensity(data, source.axes), channels=channels or None,
                                      pixel_size=source.pixel_size_um)
            provenance = {"image": name, "source": source.path, "edited": str(folder), "study": settings.study.name,
                          "tool": "opsef-opt", "pixel_size_um": source.pixel_size_um}
            out = image_dir(run_dir, name)
            mark_done(out, analyse_image(source, lab, table, spec, out, provenance))
            report.done.append(name)
            report.megapixels += lab.size / 1e6
        except Exception as e:  # one bad file does not stop the others
            report.failed[name] = f"{name}: {type(e).__name__}: {e}"
            log.error("%s", report.failed[name])
    report.seconds = time.perf_counter() - t0
    finish_dataset(settings, run_dir, report, {"mode": "reimport", "edited": str(folder)})
    return report
