"""The run report (``predict.py --report FILE``): what ran, with which resources, and what happened.

One JSON object (schema version ``REPORT_VERSION``)::

    {"version": 1, "status": "running" | "done" | "stopped",
     "threads": 1, "decode": "inline", "cpu_source": "cgroup-v1", "cpu_detail": "...",
     "python": "3.8.10", "packages": {"numpy": ..., "onnxruntime": ..., ...},
     "model": {"name": ..., "dir": ..., "variant": ...},
     "budget": {"seconds": ..., "total_images": ..., "seconds_per_image": {...}, "tiers": {...}},
     "seconds": 12.3, "images": 570, "images_per_s": 46.3,
     "datasets": {"<name>": {"images", "classes", "seconds", "images_per_s",
                            "tiers": {"full", "fast", "prior"}, "problems": [...]}},
     "problems": [...]}

It is rewritten after each dataset like the predictions. The local judges
(contest/judge.py, and its Docker variant) pass ``--report`` and read it back
with :func:`read_report` and :func:`format_report_lines`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .outputs import write_json_atomic

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
            "tiers": dict(result.tiers), "problems": list(result.problems)}


class RunReport:
    """Collects the run report and writes it (atomically) to ``path`` when there is one."""

    def __init__(self, path: Optional[Path], header: Dict[str, Any]) -> None:
        self.path = path
        self.data: Dict[str, Any] = {"version": REPORT_VERSION, "status": "running", **header,
                                     "python": "%d.%d.%d" % sys.version_info[:3], "packages": package_versions(),
                                     "datasets": {}, "problems": []}

    def add_dataset(self, result: Any) -> None:
        self.data["datasets"][result.name] = dataset_entry(result)

    def finish(self, status: str, seconds: float, budget: Dict[str, Any], problems: List[str]) -> None:
        images = sum(d["images"] for d in self.data["datasets"].values())
        self.data.update(status=status, seconds=round(seconds, 3), images=images, budget=budget,
                         images_per_s=round(images / seconds, 2) if seconds > 0 else None, problems=list(problems))

    def write(self, durable: bool = False) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.data, durable)


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
