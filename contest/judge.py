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
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

from zeroshot.command import make_parser, parse_args
from zeroshot.limits import JUDGE_MEMORY_GB as MEMORY_GB
from zeroshot.limits import JUDGE_TIME_LIMIT_S as TIME_LIMIT_S
from zeroshot.limits import REPO_ROOT as REPO
from zeroshot.report import read_report

from . import docker_judge
from .judge_core import (DEPS_DIR, LOG_TAIL_LINES, PROBE_LIMITS, PROBE_VERSIONS, REPORT_NAME, Limits, Step,
                         expected_onnxruntime, finish, format_quota, limit_problems, step_problems, write_summary)
from .bundle import ALLOWED_TOP
from .cgroups import create_cpu_quota_cgroup, remove_cgroup

logger = logging.getLogger(__name__)

POLL_S = 0.1

# Each package is probed on its own: an archive without tokenizers (a sentencepiece-only model
# built before it was vendored) must still report its onnxruntime.


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


if __name__ == "__main__":
    sys.exit(main())
