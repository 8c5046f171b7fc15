"""A local judge: play the organisers with a submission archive on a datasets folder.

Usage: ``python -m contest.judge ARCHIVE DATASETS_DIR [--gt GT_JSON] [--reference PRED_JSON] [--python PY]``.
With ``--docker`` the same run happens in a real container instead (contest/docker_judge.py).

Unzips ARCHIVE into an empty temp folder, runs ``./setup.sh`` and then
``./predict.sh DATASETS_DIR OUT_JSON`` there under the judge's limits, scores
OUT_JSON with the contest metric (zeroshot.evaluate), compares it with a
reference predictions file, prints a summary table to stdout and writes it as
``summary.json`` (with the predictions, the runtime's ``report.json`` -- passed as
``predict.sh ... --report`` -- and both logs) into ``--out-dir``.

What is enforced, and how (each limit is also read back from inside by a probe):
- no network: ``unshare -n`` (a new network namespace holding only a downed
  loopback; ``unshare -r -n`` when not root). If neither works the judge stops,
  unless ``--allow-network`` (then the summary says the network was open).
- one CPU: ``taskset -c CPU`` and, when the judge may create one (root, cgroup v1
  or v2), a cgroup with a 1-CPU CFS quota -- what ``docker run --cpus=1`` sets,
  which leaves every host CPU in the affinity mask. The probe reports the
  effective CPUs the runtime computes inside (zeroshot.resources); it must be 1.
- memory: ``prlimit --as`` (address space, default 8 GB), stricter than the
  judge's container limit, which counts resident memory only; ``--memory-kind
  data`` limits RLIMIT_DATA instead. The peak resident memory (wait4) and peak
  address space (/proc) of each step are measured and reported; a step whose peak
  resident memory passes the limit fails the run (the address space is capped by
  the rlimit itself).
- time: setup.sh and predict.sh together get ``--time-limit`` seconds (23 min);
  at the deadline the step's process group is killed.
- the Python: ``--python`` is the only ``python3`` on the scripts' PATH (a shim),
  with PYTHONPATH, PYTHONHOME and PIP_* removed and HOME set to an empty folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from zeroshot.command import make_parser, parse_args
from zeroshot.evaluate import evaluate, format_report, report_dict
from zeroshot.limits import JUDGE_IMAGES as PROJECT_IMAGES
from zeroshot.limits import JUDGE_MEMORY_GB as MEMORY_GB
from zeroshot.limits import JUDGE_TIME_LIMIT_S as TIME_LIMIT_S
from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.outputs import Predictions, read_predictions, write_json_atomic
from zeroshot.report import format_report_lines, read_report

from . import docker_judge
from .bundle import ALLOWED_TOP
from .cgroups import CpuQuotaCgroup, create_cpu_quota_cgroup, remove_cgroup
from .vendor import REQUIREMENTS_NAME, read_requirements

logger = logging.getLogger(__name__)

DEPS_DIR = ".deps/py{}"  # where setup.sh installs and predict.sh looks, per Python version
POLL_S = 0.1
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
# Each package is probed on its own: an archive without tokenizers (a sentencepiece-only model
# built before it was vendored) must still report its onnxruntime.


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


def find_network_isolation() -> Optional[List[str]]:
    """``unshare -n`` (or ``unshare -r -n`` without root) if it works here, else None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-n", "--"], ["unshare", "-r", "-n", "--"]):
        result = subprocess.run(prefix + ["true"], capture_output=True, text=True)
        if result.returncode == 0:
            return prefix
        logger.debug("%s failed: %s", " ".join(prefix), result.stderr.strip())
    return None


def extract(archive: Path, dest: Path) -> List[str]:
    """Unzip ``archive`` into the empty folder ``dest`` keeping unix modes; returns the top-level names."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise ValueError(f"{dest}: not empty")
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = Path(info.filename)
            if name.is_absolute() or ".." in name.parts:
                raise ValueError(f"{archive}: unsafe path {info.filename!r}")
            target = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode and not info.is_dir():
                target.chmod(mode)
        return sorted({Path(i.filename).parts[0] for i in zf.infolist()})


def python_shim(python: Path, folder: Path) -> Path:
    """A folder whose ``python3`` and ``python`` run ``python`` (a script, so venvs stay venvs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        shim = folder / name
        shim.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n', encoding="utf-8")
        shim.chmod(0o755)
    return folder


def clean_env(shim_dir: Path, home: Path) -> Dict[str, str]:
    """The steps' environment: ours without Python/pip settings, the shim first on PATH, an empty HOME."""
    drop = ("PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k != "OMP_NUM_THREADS"}
    env["PATH"] = f"{shim_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    return env


def _vm_peak(pid: int) -> Optional[int]:
    """VmPeak of a live process in bytes, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _group_vm_peak(pgid: int) -> Optional[int]:
    """The largest VmPeak among the live processes of process group ``pgid`` (what RLIMIT_AS caps)."""
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[2]) == pgid:
                peaks.append(_vm_peak(int(entry.name)))
        except (OSError, ValueError, IndexError):
            continue
    return max((p for p in peaks if p is not None), default=None)


def run_step(name: str, cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float, log: Path) -> Step:
    """Run ``cmd`` in its own process group with output to ``log``; kill the group after ``timeout`` s."""
    logger.info("%s: %s (log: %s)", name, " ".join(cmd), log)
    start = time.monotonic()
    peak_vm: Optional[int] = None
    timed_out = False
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak_vm = max((v for v in (peak_vm, _group_vm_peak(proc.pid)) if v is not None), default=None)
            if time.monotonic() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(POLL_S)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - start
    code = None if timed_out else proc.returncode
    step = Step(name, code, seconds, timed_out, usage.ru_maxrss * 1024, peak_vm, str(log))
    logger.info("%s: %s in %.1f s", name, "timed out" if timed_out else f"exit {code}", seconds)
    if not step.ok:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL_LINES:]
        logger.error("%s failed; last lines of %s:\n%s", name, log, "\n".join(tail))
    return step


def probe(limits: Limits, env: Dict[str, str], script: str, *args: str) -> Dict[str, Any]:
    """Run a probe script with ``python3`` inside the sandbox; its JSON answer, or {"error": ...}."""
    result = subprocess.run(limits.prefix() + ["python3", "-c", script, *args], env=env,
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]}
    return json.loads(result.stdout)


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


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("python -m contest.judge", __doc__.split("\n")[0])
    parser.add_argument("archive", type=Path, help="the submission zip (make bundle)")
    parser.add_argument("datasets_dir", type=Path, help="datasets folder as the judge lays it out")
    parser.add_argument("--gt", type=Path, default=None,
                        help="ground truth JSON (default: DATASETS_DIR/gt.json if there is one)")
    parser.add_argument("--reference", type=Path, default=None,
                        help="predictions JSON the archive must reproduce (e.g. from the plain run)")
    parser.add_argument("--max-differ", type=int, default=0, help="predictions allowed to differ (default: 0)")
    parser.add_argument("--python", type=Path, default=Path(sys.executable),
                        help="the Python that runs setup.sh and predict.sh (default: %(default)s)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S, help="seconds (default: %(default)s)")
    parser.add_argument("--memory-gb", type=float, default=MEMORY_GB, help="GB = 10^9 bytes (default: %(default)s)")
    parser.add_argument("--memory-kind", choices=["as", "data", "none"], default="as",
                        help="the rlimit that enforces --memory-gb (default: %(default)s)")
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)),
                        help="the one CPU to run on (default: %(default)s)")
    parser.add_argument("--all-cpus", action="store_true", help="do not pin to one CPU")
    parser.add_argument("--no-cpu-quota", action="store_true",
                        help="do not run inside a 1-CPU cgroup quota (by default one is created when possible)")
    parser.add_argument("--allow-network", action="store_true",
                        help="run even if the network cannot be cut (the summary says so)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "dist" / "judge",
                        help="predictions.json, summary.json and the logs go here (default: %(default)s)")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked archive (its path is logged)")
    docker_judge.add_arguments(parser)
    return parser


def make_limits(args: argparse.Namespace) -> Limits:
    """The limits asked for; ValueError if the network cannot be cut and that is not allowed."""
    network = find_network_isolation()
    if network is None:
        msg = "cannot cut the network: 'unshare -n' and 'unshare -r -n' both fail here (need root or user namespaces)"
        if not args.allow_network:
            raise ValueError(msg + "; pass --allow-network to run with the network open")
        logger.warning("%s; running with the network OPEN (--allow-network)", msg)
    for tool, needed in (("taskset", not args.all_cpus), ("prlimit", args.memory_kind != "none")):
        if needed and shutil.which(tool) is None:
            raise ValueError(f"'{tool}' not found on PATH (util-linux); it enforces a judge limit")
    limits = Limits(network, None if args.all_cpus else args.cpu, int(args.memory_gb * 1e9), args.memory_kind,
                    args.time_limit)
    if not args.no_cpu_quota and not args.all_cpus:
        try:
            limits.quota = create_cpu_quota_cgroup(f"zeroshot-judge-{os.getpid()}", 1.0)
            logger.info("1-CPU quota: %s", format_quota(limits.quota.describe()))
        except (OSError, ValueError) as exc:
            limits.quota_note = f"cannot create a cgroup with a CPU quota here ({exc}); only the affinity pin applies"
            logger.warning("%s", limits.quota_note)
    return limits


def judge(args: argparse.Namespace, limits: Limits, work: Path) -> Dict[str, Any]:
    """Unpack, set up, predict, evaluate; returns the summary (see format_summary)."""
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    pred_path, report_path = out_dir / "predictions.json", out_dir / REPORT_NAME
    for stale in (pred_path, report_path):
        if stale.exists():
            stale.unlink()
    root = work / "submission"
    summary: Dict[str, Any] = {"archive": str(args.archive), "datasets": str(args.datasets_dir),
                               "limits": limits.describe(), "steps": {}, "problems": [], "warnings": []}
    summary["top_level"] = extract(args.archive, root)
    unexpected = sorted(set(summary["top_level"]) - ALLOWED_TOP)
    if unexpected:
        summary["warnings"].append(f"unexpected entries at the archive's root: {unexpected}")
    env = clean_env(python_shim(args.python.absolute(), work / "bin"), work / "home")
    inside = summary["inside"] = probe(limits, env, PROBE_LIMITS, str(root))
    summary["problems"] += limit_problems(inside, limits)
    if summary["problems"]:
        return summary
    deadline = time.monotonic() + limits.time_limit
    steps = [("setup.sh", [str(root / "setup.sh")]),
             ("predict.sh", [str(root / "predict.sh"), str(args.datasets_dir.resolve()), str(pred_path),
                             "--report", str(report_path)])]
    for name, cmd in steps:
        step = run_step(name, limits.prefix() + cmd, root, env, deadline - time.monotonic(),
                        out_dir / f"{name.split('.')[0]}.log")
        summary["steps"][name] = asdict(step)
        summary["problems"] += step_problems(step, limits)
        if not step.ok and name == "predict.sh":
            summary["warnings"].append("scoring what predict.sh left on disk (the best answer so far)")
            break
        if not step.ok:
            return summary
        if name == "setup.sh":
            check_versions(summary, limits, env, root)
    finish(summary, args, pred_path)
    if report_path.is_file():
        try:
            summary["run_report"] = read_report(report_path)
        except ValueError as exc:
            summary["warnings"].append(str(exc))
    return summary


def check_versions(summary: Dict[str, Any], limits: Limits, env: Dict[str, str], root: Path) -> None:
    """Record the packages predict.sh will import; a problem if onnxruntime is not the vendored one."""
    pyver = ".".join(summary["inside"]["python"].split(".")[:2])
    versions = summary["versions"] = probe(limits, env, PROBE_VERSIONS, str(root / DEPS_DIR.format(pyver)))
    expected = expected_onnxruntime(root, pyver)
    if expected and versions.get("onnxruntime") != expected:
        summary["problems"].append(f"predict.sh would import onnxruntime {versions.get('onnxruntime')} "
                                   f"({versions.get('onnxruntime_path')}), not the vendored {expected}")


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


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    for path, what in ((args.archive, "archive"), (args.datasets_dir, "datasets folder")):
        if not path.exists():
            logger.error("%s: %s not found", path, what)
            return 2
    if args.docker:
        return docker_judge.run_docker(args)
    try:
        limits = make_limits(args)
    except ValueError as exc:
        logger.error("%s", exc)
        return 2
    work = Path(tempfile.mkdtemp(prefix="judge-"))
    try:
        summary = judge(args, limits, work)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        if limits.quota is not None:
            remove_cgroup(limits.quota)
        if args.keep:
            logger.info("kept the unpacked archive in %s", work / "submission")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return write_summary(summary, args.out_dir)


def write_summary(summary: Dict[str, Any], out_dir: Path) -> int:
    """Decide the verdict, print the table to stdout, write ``out_dir/summary.json``; 0 if passed, else 1."""
    summary["passed"] = not summary["problems"]
    sys.stdout.write(format_summary(summary) + "\n")
    summary.pop("report_table", None)
    summary.pop("run_report", None)
    write_json_atomic(out_dir / "summary.json", summary)
    logger.info("wrote %s", out_dir / "summary.json")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
