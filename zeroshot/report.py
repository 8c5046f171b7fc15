"""The run report (``predict.py --report FILE``): what ran, with which resources, and what happened.

One JSON object (schema version ``REPORT_VERSION``)::

    {"version": 1, "status": "running" | "done" | "stopped",
     "threads": 1, "decode": "inline", "cpu_source": "cgroup-v1", "cpu_detail": "...",
     "python": "3.8.10", "packages": {"numpy": ..., "onnxruntime": ..., ...},
     "model": {"name": ..., "dir": ..., "variant": ...},
     "budget": {"seconds": ..., "total_images": ..., "seconds_per_image": {...}, "tiers": {...}},
     "seconds": 12.3, "images": 570, "images_per_s": 46.3,
     "datasets": {"<name>": {"images", "classes", "seconds", "images_per_s",
                            "tiers": {"full", "fast", "prior"}, "fallback": {"fast": [ids], "prior": [ids]},
                            "problems": [...]}},
     "problems": [...]}

``fallback`` names the images below the full tier (the first
``pipeline.FALLBACK_IDS`` of each; ``tiers`` counts them all), for
``zeroshot.evaluate --run-report``.
It is written before any work (an unwritable path is said in one line, and
the run goes on without a report), then rewritten after each dataset like the
predictions (zeroshot.outputs.OutputFile: atomically where it can be); a write
that fails later is a warning, never the end of the run. The local judges
(contest/judge.py, and its Docker variant) pass ``--report`` and read it back
with :func:`read_report` and :func:`format_report_lines`.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .outputs import OutputFile, json_bytes, os_error_text

logger = logging.getLogger(__name__)

REPORT_VERSION = 1
PACKAGES = ("numpy", "onnxruntime", "PIL", "sentencepiece", "tokenizers")


def package_versions() -> Dict[str, str]:
    """Versions of the runtime's packages that import here ("missing" for the others)."""
    versions: Dict[str, str] = {}
    for name in PACKAGES:
        try:
            module = __import__(name)
            versions["Pillow" if name == "PIL" else name] = str(getattr(module, "__version__", "?"))
        except ImportError:
            versions[name] = "missing"
    return versions


def dataset_entry(result: Any) -> Dict[str, Any]:
    """One dataset's part of the report, from a pipeline.DatasetResult."""
    n = len(result.predictions)
    return {"images": n, "classes": result.classes, "seconds": round(result.seconds, 3),
            "images_per_s": round(n / result.seconds, 2) if result.seconds > 0 else None,
            "tiers": dict(result.tiers), "fallback": {tier: list(ids) for tier, ids in result.fallback.items()},
            "problems": list(result.problems)}


class RunReport:
    """Collects the run report and writes it to ``path`` when there is one (and while it can be written)."""

    def __init__(self, path: Optional[Path], header: Optional[Dict[str, Any]] = None) -> None:
        self.path = path
        self.file = OutputFile(path, "the run report") if path is not None else None
        self.failing = False  # the last write failed (warned once until one succeeds again)
        self.data: Dict[str, Any] = {"version": REPORT_VERSION, "status": "running", **(header or {}),
                                     "python": "%d.%d.%d" % sys.version_info[:3], "packages": package_versions(),
                                     "datasets": {}, "problems": []}

    def start(self) -> bool:
        """The first write, before any work; if it fails, one line says so and the run goes on without a report."""
        if self.file is None:
            return True
        try:
            self.file.write(json_bytes(self.data), durable=False)
        except (OSError, ValueError) as exc:
            reason = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
            logger.error("--report %s: cannot write it (%s): predicting without a run report", self.path, reason)
            self.file = None
            return False
        return True

    def describe(self, header: Dict[str, Any]) -> None:
        """Add what is known once the model is loaded (threads, CPU source, decoding, model)."""
        self.data.update(header)

    def add_dataset(self, result: Any) -> None:
        self.data["datasets"][result.name] = dataset_entry(result)

    def finish(self, status: str, seconds: float, budget: Dict[str, Any], problems: List[str]) -> None:
        images = sum(d["images"] for d in self.data["datasets"].values())
        self.data.update(status=status, seconds=round(seconds, 3), images=images, budget=budget,
                         images_per_s=round(images / seconds, 2) if seconds > 0 else None, problems=list(problems))

    def write(self, final: bool = False) -> None:
        """Rewrite the report (``final``: synced, and the one write a stream gets); a failure is a warning."""
        if self.file is None:
            return
        try:
            self.file.write(json_bytes(self.data), durable=final, final=final)
        except OSError as exc:
            if not self.failing:
                logger.warning("--report %s: cannot write it (%s); trying again after the next dataset",
                               self.path, os_error_text(exc))
            self.failing = True
            return
        self.failing = False


def read_report(path: Path) -> Dict[str, Any]:
    """A run report written by :class:`RunReport`; ValueError naming the file if it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON run report: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != REPORT_VERSION:
        raise ValueError(f"{path}: not a version-{REPORT_VERSION} run report")
    return data


def format_report_lines(report: Dict[str, Any]) -> List[str]:
    """Human lines: threads and where the CPU count came from, then images per tier per dataset."""
    lines = [f"runtime      {report.get('threads')} threads ({report.get('cpu_source')}: {report.get('cpu_detail')}), "
             f"decoding {report.get('decode')}; status {report.get('status')}"]
    for name, ds in sorted(report.get("datasets", {}).items()):
        tiers = ", ".join(f"{k} {v}" for k, v in ds["tiers"].items() if v) or "no images"
        lines.append(f"  {name:<20} {ds['images']} images, {ds['classes']} classes, {ds['seconds']:.1f} s; "
                     f"tiers: {tiers}; {len(ds['problems'])} problems")
    return lines
