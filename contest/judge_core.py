"""What both judges share: contest/judge.py runs an archive locally, contest/docker_judge.py in a container.

The limits and a step's record, the probes run inside the judge's environment
(limits and package versions as the submission sees them), and the summary: the
checks of each step, the score and the reference comparison from the written
predictions, the table on stdout and ``summary.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from zeroshot.evaluate import evaluate, format_report, report_dict
from zeroshot.limits import JUDGE_IMAGES as PROJECT_IMAGES
from zeroshot.outputs import Predictions, read_predictions, write_json_atomic
from zeroshot.report import format_report_lines

from .cgroups import CpuQuotaCgroup
from .vendor import REQUIREMENTS_NAME, read_requirements

logger = logging.getLogger(__name__)


DEPS_DIR = ".deps/py{}"  # where setup.sh installs and predict.sh looks, per Python version


LOG_TAIL_LINES = 25


PROBE_LIMITS = """
import json, os, resource, socket, sys
sys.path.insert(0, sys.argv[1])
try:
    from zeroshot.resources import cgroup_cpus, effective_cpus
    limit, quota = effective_cpus(), cgroup_cpus()
    effective = {"cpus": limit.cpus, "source": limit.source, "detail": limit.detail,
                 "cgroup_quota": None if quota is None else {"cpus": quota[0], "source": quota[1], "path": quota[2]}}
except Exception as exc:
    effective = {"error": "%s: %s" % (type(exc).__name__, exc)}
print(json.dumps({"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable,
                  "interfaces": sorted(n for _, n in socket.if_nameindex()),
                  "cpus": sorted(os.sched_getaffinity(0)), "effective_cpus": effective,
                  "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
                  "rlimit_data": resource.getrlimit(resource.RLIMIT_DATA)[0]}))
"""


REPORT_NAME = "report.json"


PROBE_VERSIONS = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
found = {}
for name in ("numpy", "onnxruntime", "PIL", "sentencepiece", "tokenizers"):
    try:
        found[name] = importlib.import_module(name)
    except ImportError:
        found[name] = None
def version(name):
    return getattr(found[name], "__version__", None)
print(json.dumps({"numpy": version("numpy"), "onnxruntime": version("onnxruntime"),
                  "onnxruntime_path": getattr(found["onnxruntime"], "__file__", None), "Pillow": version("PIL"),
                  "sentencepiece": version("sentencepiece"), "tokenizers": version("tokenizers")}))
"""


@dataclass
class Limits:
    """The sandbox: network prefix (None: open), CPU, CPU quota cgroup, memory limit and its kind, seconds."""

    network: Optional[List[str]]
    cpu: Optional[int]
    memory_bytes: Optional[int]
    memory_kind: str
    time_limit: float
    quota: Optional[CpuQuotaCgroup] = None
    quota_note: str = "not asked for (--no-cpu-quota)"

    def prefix(self) -> List[str]:
        """The command prefix that applies the limits (inherited across exec)."""
        cmd: List[str] = self.quota.prefix() if self.quota is not None else []
        cmd += list(self.network or [])
        if self.cpu is not None:
            cmd += ["taskset", "-c", str(self.cpu)]
        if self.memory_bytes is not None and self.memory_kind != "none":
            cmd += ["prlimit", f"--{self.memory_kind}={self.memory_bytes}", "--"]
        return cmd

    def describe(self) -> Dict[str, Any]:
        return {"network": " ".join(self.network) if self.network else "OPEN (not enforced)",
                "cpus": None if self.cpu is None else [self.cpu],
                "cpu_quota": self.quota.describe() if self.quota is not None else {"not applied": self.quota_note},
                "memory": {"bytes": self.memory_bytes,
                           "kind": "not enforced while running" if self.memory_kind == "none" else
                           f"RLIMIT_{self.memory_kind.upper()} (prlimit --{self.memory_kind})",
                           "checked_after": "peak resident memory of each step (wait4)"},
                "time_limit_s": self.time_limit}


@dataclass
class Step:
    """How one command ended: exit code (None if killed at the deadline), time, memory, log."""

    name: str
    returncode: Optional[int]
    seconds: float
    timed_out: bool
    peak_rss_bytes: int
    peak_vm_bytes: Optional[int]
    log: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def compare(reference: Predictions, pred: Predictions) -> Dict[str, Any]:
    """How many (dataset, image id) labels of ``reference`` the predictions do not repeat."""
    keys = [(ds, key) for ds in sorted(reference) for key in sorted(reference[ds])]
    differ = [f"{ds}/{key}: {reference[ds][key]} -> {pred.get(ds, {}).get(key)}" for ds, key in keys
              if pred.get(ds, {}).get(key) != reference[ds][key]]
    extra = sum(len(set(pred.get(ds, {})) - set(reference.get(ds, {}))) for ds in pred)
    return {"compared": len(keys), "differ": len(differ), "extra": extra, "examples": differ[:10]}


def limit_problems(inside: Dict[str, Any], limits: Limits) -> List[str]:
    """What the probe saw that contradicts the limits asked for."""
    if "error" in inside:
        return [f"the limits probe failed: {inside['error']}"]
    problems = []
    if limits.network and [n for n in inside["interfaces"] if n != "lo"]:
        problems.append(f"network interfaces visible inside the sandbox: {inside['interfaces']}")
    if limits.cpu is not None and inside["cpus"] != [limits.cpu]:
        problems.append(f"CPUs inside the sandbox: {inside['cpus']}, expected [{limits.cpu}]")
    effective = inside.get("effective_cpus") or {}
    quota_inside = (effective.get("cgroup_quota") or {}).get("cpus")
    if limits.quota is not None and (effective.get("cpus") != 1 or quota_inside != 1):
        problems.append(f"the runtime sees {effective} inside the 1-CPU quota, expected 1 CPU and a 1-CPU quota")
    if limits.memory_kind != "none" and inside[f"rlimit_{limits.memory_kind}"] != limits.memory_bytes:
        problems.append(f"RLIMIT_{limits.memory_kind.upper()} inside is {inside[f'rlimit_{limits.memory_kind}']}")
    return problems


def step_problems(step: Step, limits: Limits) -> List[str]:
    """A failed step, or one whose resident memory passed the limit."""
    problems = []
    if step.timed_out:
        problems.append(f"{step.name} was killed at the time limit ({limits.time_limit:.0f} s for both steps)")
    elif step.returncode != 0:
        problems.append(f"{step.name} exited with {step.returncode} (log: {step.log})")
    if limits.memory_bytes is not None and step.peak_rss_bytes > limits.memory_bytes:
        problems.append(f"{step.name} peaked at {step.peak_rss_bytes / 1e9:.2f} GB resident, "
                        f"over {limits.memory_bytes / 1e9:.2f} GB")
    return problems


def expected_onnxruntime(root: Path, python: str) -> Optional[str]:
    """The onnxruntime version the archive's vendor/ pins for Python ``python`` ("3.8"), if any."""
    req = root / "vendor" / REQUIREMENTS_NAME.format(python)
    if not req.is_file():
        return None
    pins = {p.name: p.version for p in read_requirements(req)}
    return pins.get("onnxruntime")


def count_predictions(pred: Predictions) -> int:
    return sum(len(v) for v in pred.values())


def projection(seconds: float, images: int, target: int = PROJECT_IMAGES) -> Optional[float]:
    """Seconds for ``target`` images at the measured rate (start-up cost scaled too: pessimistic)."""
    return seconds * target / images if images else None


def format_summary(summary: Dict[str, Any]) -> str:
    """The human table printed to stdout."""
    lim, steps = summary["limits"], summary["steps"]
    mem = lim["memory"]
    lines = [f"archive      {summary['archive']}",
             f"datasets     {summary['datasets']}",
             f"limits       network: {lim['network']}; cpus: {lim['cpus'] or 'all'}; memory: "
             f"{mem['bytes'] / 1e9:.3g} GB, {mem['kind']}; time: {lim['time_limit_s']:.0f} s",
             f"cpu quota    {format_quota(lim.get('cpu_quota') or {})}"]
    effective = summary.get("inside", {}).get("effective_cpus")
    if effective:
        quota = effective.get("cgroup_quota")
        lines.append(f"runtime sees {effective.get('cpus', '?')} CPU(s) ({effective.get('source', effective)}: "
                     f"{effective.get('detail', '')}); cgroup quota inside: "
                     + (f"{quota['cpus']} CPU ({quota['source']}, {quota['path']})" if quota else "none"))
    versions = summary.get("versions") or {}
    packages = ", ".join(f"{k} {v}" for k, v in versions.items() if not k.endswith("_path"))
    lines.append(f"python       {summary.get('inside', {}).get('python', '?')}" + (f"; {packages}" if packages else ""))
    peak = "peak memory (cgroup)" if lim["memory"]["kind"].startswith("docker") else "peak resident"
    for step in steps.values():
        vm = f", peak address space {step['peak_vm_bytes'] / 1e9:.2f} GB" if step["peak_vm_bytes"] else ""
        state = "timed out" if step["timed_out"] else ("ok" if step["returncode"] == 0 else
                                                      f"exit {step['returncode']}")
        lines.append(f"{step['name']:<12} {state} in {step['seconds']:.1f} s, {peak} "
                     f"{step['peak_rss_bytes'] / 1e9:.2f} GB{vm}")
    if summary.get("images_per_s"):
        proj = summary["projected"]
        lines.append(f"speed        {summary['images']} images in {steps['predict.sh']['seconds']:.1f} s = "
                     f"{summary['images_per_s']:.2f} images/s; {proj['images']} images: ~{proj['seconds']:.0f} s "
                     f"(limit {lim['time_limit_s']:.0f} s)")
    if summary.get("run_report"):
        lines += format_report_lines(summary["run_report"])
    if summary.get("report_table"):
        lines.append(summary["report_table"])
    ref = summary.get("reference")
    if ref:
        lines.append(f"reference    {ref['path']}: {ref['differ']} of {ref['compared']} predictions differ"
                     + (f", {ref['extra']} extra ids" if ref["extra"] else ""))
    lines += [f"problem      {p}" for p in summary["problems"]]
    lines += [f"warning      {w}" for w in summary["warnings"]]
    lines.append(f"verdict      {'PASS' if summary['passed'] else 'FAIL'}")
    return "\n".join(lines)


def format_quota(quota: Dict[str, str]) -> str:
    """One line for the CPU quota part of Limits.describe()."""
    if "not applied" in quota:
        return f"not applied: {quota['not applied']}"
    return f"{quota['quota']} in {quota['version']} cgroup {quota['cgroup']}"


def finish(summary: Dict[str, Any], args: argparse.Namespace, pred_path: Path) -> None:
    """Speed, projection, score and the reference comparison, from the written predictions."""
    try:
        pred = read_predictions(pred_path)
    except (FileNotFoundError, ValueError) as exc:
        summary["problems"].append(f"no usable predictions: {exc}")
        return
    summary["predictions"] = str(pred_path)
    images = summary["images"] = count_predictions(pred)
    seconds = summary["steps"]["predict.sh"]["seconds"]
    summary["images_per_s"] = images / seconds if seconds else None
    projected = projection(seconds, images)
    summary["projected"] = {"images": PROJECT_IMAGES, "seconds": projected}
    if projected is not None and projected > args.time_limit:
        summary["warnings"].append(f"{PROJECT_IMAGES} images projected at {projected:.0f} s, over the "
                                   f"{args.time_limit:.0f} s limit (the runtime's budget would cut corners)")
    gt = args.gt or (args.datasets_dir / "gt.json" if (args.datasets_dir / "gt.json").is_file() else None)
    try:
        if gt is not None:
            report = evaluate(read_predictions(gt), pred)
            summary["score"] = report.score
            summary["report"] = report_dict(report)
            summary["report_table"] = format_report(report)
        if args.reference is not None:
            ref = compare(read_predictions(args.reference), pred)
            summary["reference"] = dict(ref, path=str(args.reference))
            if ref["differ"] > args.max_differ:
                summary["problems"].append(f"{ref['differ']} predictions differ from {args.reference} "
                                           f"(allowed {args.max_differ}), e.g. {ref['examples'][:3]}")
    except (FileNotFoundError, ValueError) as exc:
        summary["problems"].append(f"cannot score: {exc}")


def write_summary(summary: Dict[str, Any], out_dir: Path) -> int:
    """Decide the verdict, print the table to stdout, write ``out_dir/summary.json``; 0 if passed, else 1."""
    summary["passed"] = not summary["problems"]
    sys.stdout.write(format_summary(summary) + "\n")
    summary.pop("report_table", None)
    summary.pop("run_report", None)
    write_json_atomic(out_dir / "summary.json", summary)
    logger.info("wrote %s", out_dir / "summary.json")
    return 0 if summary["passed"] else 1
