"""The Docker judge: run a submission archive in a container the way the organisers do.

Usage: ``python -m contest.judge --docker ARCHIVE DATASETS_DIR [--gt GT] [--reference PRED]``
(``make judge-docker``). The local judge's options for scoring and the summary
apply; the sandbox is a real container instead of unshare/taskset/prlimit.

1. The engine: ``docker version`` must answer; if not, and this is root with a
   ``dockerd`` installed (Debian: ``apt-get install docker.io``), dockerd is
   started in the background and left running for the next run: the judge says
   so, with its pid and how to stop it (``kill PID``). Otherwise the judge stops
   with the reason (exit 2). :func:`engine_for` is the engine for a block (the
   tests' session): a dockerd it started is stopped at the end.
2. The image: the Dockerfile built on ``python:3.8-slim`` when that image is here
   or can be pulled, else on the offline base: a Debian minbase root filesystem
   with a CPython 3.8 copied in (contest/judge_base.sh, ``docker import``ed as
   ``zeroshot-judge-base:<hash of the recipe and the Python>``). Both images
   are tagged by what they are built from and reused while that is unchanged.
3. The run: ``docker run --cpus=1 --memory=8g --memory-swap=8g --network=none``
   with the archive and the datasets folder mounted read-only; the archive is
   unzipped in /submission, ``./setup.sh`` and ``./predict.sh /data OUT`` run by
   ``docker exec`` with 23 minutes for both (the container is killed at the
   deadline). A probe inside reads the limits back (interfaces, CPU quota, memory
   limit); the peak memory of each step is the container cgroup's
   (``memory.max_usage_in_bytes`` on cgroup v1, reset between steps;
   ``memory.peak`` on v2). predict.sh gets ``--report FILE`` when the archive's
   predict.py accepts it, and that run report goes into the summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from zeroshot.limits import REPO_ROOT
from zeroshot.report import read_report

from . import judge_core
from .bundle import ALLOWED_TOP
from .vendor import REQUIREMENTS_NAME

logger = logging.getLogger(__name__)

DOCKERFILE = REPO_ROOT / "Dockerfile"
BASE_RECIPE = REPO_ROOT / "contest" / "judge_base.sh"
REGISTRY_BASE = "python:3.8-slim"
LOCAL_BASE = "zeroshot-judge-base"
JUDGE_IMAGE = "zeroshot-judge"
BASE_PYTHON = Path("/root/.pyenv/versions/3.8.18")
DOCKERD_LOG = Path(tempfile.gettempdir()) / "zeroshot-dockerd.log"
ENGINE_START_S = 60.0
ENGINE_STOP_S = 30.0
PULL_TIMEOUT_S = 300.0
TAG_CHARS = 16
GIB = 1 << 30  # docker's "8g" (--memory-gb 8 becomes --memory=8g, 8 GiB, as the organisers' flags read)
SUBMISSION = "/submission"
DATA = "/data"
ARCHIVE = "/in/submission.zip"
OUT = "/judge-out"
REPORT_OPTION = "--report"
HELP_TIMEOUT_S = 60.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
INSIDE_PEAK = ("cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes 2>/dev/null"
               " || cat /sys/fs/cgroup/memory.peak")
THREADS_LOGGED = re.compile(r"(\d+) threads")
_STARTED: Dict[int, subprocess.Popen] = {}  # the dockerd processes started here, by pid

PROBE = """
import json
try:
    from importlib.metadata import version, PackageNotFoundError
except ImportError:
    version = None
def read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return None
def installed(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
quota, period = read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), read("/sys/fs/cgroup/cpu/cpu.cfs_period_us")
cgroup = "v1"
if read("/sys/fs/cgroup/cpu.max"):
    (quota, period), cgroup = read("/sys/fs/cgroup/cpu.max").split(), "v2"
memory = read("/sys/fs/cgroup/memory/memory.limit_in_bytes") or read("/sys/fs/cgroup/memory.max")
print(json.dumps({
    "cgroup": cgroup, "cpu_quota": None if quota in (None, "-1", "max") else int(quota) / int(period),
    "memory_limit": None if memory in (None, "max") else int(memory),
    "image_packages": {n: installed(n) for n in ("torch", "numpy", "Pillow", "sentencepiece",
                                                 "opencv-python-headless", "onnxruntime")}}))
"""


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none can be started here."""


class DockerError(RuntimeError):
    """A docker command failed (the message holds its last stderr lines)."""


def docker(*args: str, timeout: Optional[float] = None, check: bool = True,
           stdin: Any = None) -> subprocess.CompletedProcess:
    """Run ``docker ARGS`` capturing text output; DockerError on a non-zero exit when ``check``."""
    env = dict(os.environ, DOCKER_BUILDKIT="0")  # the classic builder: no buildx plugin needed
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, stdin=stdin,
                            env=env)
    if check and result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise DockerError(f"docker {args[0]} failed (exit {result.returncode}): {tail}")
    return result


def engine_version(timeout: float = 20.0) -> Optional[str]:
    """The engine's version if ``docker version`` reaches one, else None."""
    try:
        result = docker("version", "--format", "{{.Server.Version}}", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    return result.stdout.strip() if result.returncode == 0 and result.stdout.strip() else None


def find_dockerd() -> Optional[str]:
    """The dockerd binary (PATH, then the sbin folders a non-root PATH lacks), or None."""
    found = shutil.which("dockerd")
    if found:
        return found
    return next((p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd") if os.access(p, os.X_OK)), None)


def ensure_engine(start: bool = True, log_path: Path = DOCKERD_LOG) -> Dict[str, Any]:
    """A Docker engine that answers: the running one, or a dockerd started here (root only).

    Returns {"server": version, "started": bool, ...}; EngineUnavailable says why none can be had.
    """
    if shutil.which("docker") is None:
        raise EngineUnavailable("no 'docker' client on PATH (Debian: apt-get install docker.io)")
    version = engine_version()
    if version:
        return {"server": version, "started": False}
    why = "no Docker engine answers ('docker version' fails)"
    dockerd = find_dockerd()
    if not start:
        raise EngineUnavailable(f"{why}, and starting one was not allowed (--no-engine-start)")
    if os.environ.get("DOCKER_HOST"):
        raise EngineUnavailable(f"{why} at DOCKER_HOST={os.environ['DOCKER_HOST']}; not starting a local dockerd "
                                "for a remote engine")
    if dockerd is None:
        raise EngineUnavailable(f"{why}, and there is no dockerd to start (Debian: apt-get install docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable(f"{why}, and starting {dockerd} needs root (or start the engine, or join the "
                                "docker group, and run again)")
    return start_dockerd(dockerd, log_path)


def start_dockerd(dockerd: str, log_path: Path) -> Dict[str, Any]:
    """Start ``dockerd`` in its own session (it outlives the judge) and wait until it answers."""
    logger.info("starting %s in the background (log: %s)", dockerd, log_path)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd="/", start_new_session=True)
    deadline = time.monotonic() + ENGINE_START_S
    while time.monotonic() < deadline:
        version = engine_version()
        if version:
            _STARTED[proc.pid] = proc
            logger.info("dockerd %s answers (pid %d); it keeps running after this run: stop it with 'kill %d'",
                        version, proc.pid, proc.pid)
            return {"server": version, "started": True, "pid": proc.pid, "log": str(log_path)}
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            raise EngineUnavailable(f"{dockerd} exited with {proc.returncode}; last lines of {log_path}:\n"
                                    + "\n".join(tail))
        time.sleep(1.0)
    raise EngineUnavailable(f"{dockerd} (pid {proc.pid}) did not answer within {ENGINE_START_S:.0f} s; "
                            f"see {log_path}")


def stop_engine(engine: Dict[str, Any]) -> None:
    """Stop the dockerd that :func:`ensure_engine` started for ``engine`` (nothing for an engine found running):
    SIGTERM, then SIGKILL after ENGINE_STOP_S seconds."""
    proc = _STARTED.pop(engine.get("pid", -1), None) if engine.get("started") else None
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=ENGINE_STOP_S)
    except subprocess.TimeoutExpired:
        logger.warning("dockerd (pid %d) did not stop within %.0f s of SIGTERM: killing it", proc.pid, ENGINE_STOP_S)
        proc.kill()
        proc.wait()
    logger.info("stopped the dockerd started here (pid %d, exit %s)", proc.pid, proc.returncode)


@contextmanager
def engine_for(start: bool = True, log_path: Path = DOCKERD_LOG) -> Iterator[Dict[str, Any]]:
    """An engine for the block: the running one, or a dockerd started here (root only) and stopped at the end."""
    engine = ensure_engine(start, log_path)
    try:
        yield engine
    finally:
        stop_engine(engine)


def image_id(tag: str) -> Optional[str]:
    """The id of image ``tag`` if the engine has it, else None."""
    result = docker("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    return result.stdout.strip() if result.returncode == 0 else None


def short_hash(*parts: bytes) -> str:
    """The first TAG_CHARS hex digits of the sha256 of ``parts`` (an image tag)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:TAG_CHARS]


def base_tag(python_home: Path, recipe: Path = BASE_RECIPE) -> str:
    """``zeroshot-judge-base:<hash>`` of the recipe, the Python's path and its full ``sys.version``."""
    pythons = sorted(python_home.glob("bin/python3.[0-9]*"))
    pythons = [p for p in pythons if not p.name.endswith("-config")]
    if not pythons:
        raise FileNotFoundError(f"{python_home}: no bin/python3.X; the offline base needs a CPython 3.8 "
                                "installation (e.g. pyenv install 3.8.18), given by --base-python DIR")
    version = subprocess.run([str(pythons[0]), "-c", "import sys; print(sys.version)"], capture_output=True,
                             text=True, check=True).stdout
    return f"{LOCAL_BASE}:{short_hash(recipe.read_bytes(), str(python_home).encode(), version.encode())}"


def build_local_base(tag: str, python_home: Path, log_path: Path) -> None:
    """Run contest/judge_base.sh into a scratch root filesystem and ``docker import`` it as ``tag``."""
    scratch = Path(tempfile.mkdtemp(prefix="judge-base-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
    rootfs = scratch / "rootfs"
    logger.info("building the offline base %s: debootstrap bookworm + %s (log: %s)", tag, python_home, log_path)
    try:
        with open(log_path, "wb") as log:
            result = subprocess.run(["bash", str(BASE_RECIPE), str(rootfs), str(python_home)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            tail = log_path.read_text(errors="replace").splitlines()[-5:]
            raise DockerError(f"{BASE_RECIPE.name} failed (exit {result.returncode}); last lines of {log_path}:\n"
                              + "\n".join(tail))
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        docker("import", "--change", "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
               "--change", "ENV LANG=C.UTF-8", "--change", 'CMD ["python3"]', "-", tag, stdin=tar.stdout)
        if tar.wait() != 0:
            raise DockerError(f"tar of {rootfs} failed (exit {tar.returncode})")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def choose_base(mode: str, python_home: Path, log_dir: Path) -> str:
    """The image to build FROM: ``python:3.8-slim`` if here or pullable ("auto", "registry"), else the offline base."""
    if mode in ("auto", "registry"):
        if image_id(REGISTRY_BASE):
            return REGISTRY_BASE
        try:
            pulled = docker("pull", REGISTRY_BASE, timeout=PULL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            pulled = None
        if pulled is not None and pulled.returncode == 0:
            return REGISTRY_BASE
        why = pulled.stderr.strip().splitlines()[-1] if pulled is not None and pulled.stderr.strip() else "timeout"
        if mode == "registry":
            raise DockerError(f"cannot pull {REGISTRY_BASE}: {why}")
        logger.info("cannot pull %s (%s): using the offline base", REGISTRY_BASE, why)
    tag = base_tag(python_home)
    if image_id(tag):
        logger.info("offline base %s is cached", tag)
    else:
        build_local_base(tag, python_home, log_dir / "base-build.log")
    return tag


def build_judge_image(base: str, torch_spec: str, log_path: Path) -> str:
    """The Dockerfile built on ``base``, tagged by the Dockerfile, the base's id and TORCH; reused when cached."""
    base_id = image_id(base) or base
    tag = f"{JUDGE_IMAGE}:{short_hash(DOCKERFILE.read_bytes(), base_id.encode(), torch_spec.encode())}"
    if image_id(tag):
        logger.info("judge image %s is cached", tag)
        return tag
    logger.info("building the judge image %s FROM %s (log: %s)", tag, base, log_path)
    with open(DOCKERFILE, "rb") as dockerfile:
        result = docker("build", "--build-arg", f"BASE={base}", "--build-arg", f"TORCH={torch_spec}",
                        "-t", tag, "-t", JUDGE_IMAGE, "-", stdin=dockerfile, check=False)
    log_path.write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise DockerError(f"docker build failed (exit {result.returncode}); log {log_path}:\n" + "\n".join(tail))
    return tag


def docker_run_args(args: argparse.Namespace) -> List[str]:
    """The organisers' limits as ``docker run`` options: CPUs, memory without swap, no network."""
    memory = f"{args.memory_gb:g}g"
    return [f"--cpus={args.cpus:g}", f"--memory={memory}", f"--memory-swap={memory}", "--network=none"]


def start_container(image: str, args: argparse.Namespace) -> str:
    """A running container of ``image`` (``sleep infinity`` under docker's init) with the archive and data mounted."""
    name = f"zeroshot-judge-{uuid.uuid4().hex[:12]}"
    mounts = [f"type=bind,source={args.archive.resolve()},target={ARCHIVE},readonly",
              f"type=bind,source={args.datasets_dir.resolve()},target={DATA},readonly"]
    docker("run", "--detach", "--name", name, "--init", *docker_run_args(args),
           *[opt for m in mounts for opt in ("--mount", m)], "--workdir", SUBMISSION, "--entrypoint", "sleep",
           image, "infinity")
    return name


def parse_proc_cgroup(text: str, root: Path = CGROUP_ROOT) -> Optional[Path]:
    """The host file with the peak memory of the cgroup in ``/proc/PID/cgroup`` text (v1 memory, else v2)."""
    entries = [line.split(":", 2) for line in text.splitlines() if line.count(":") >= 2]
    for _, controllers, path in entries:
        if "memory" in controllers.split(","):
            return root / "memory" / path.lstrip("/") / "memory.max_usage_in_bytes"
    for hierarchy, controllers, path in entries:
        if hierarchy == "0" and controllers == "":
            return root / path.lstrip("/") / "memory.peak"
    return None


def host_peak_file(container: str) -> Optional[Path]:
    """The container's peak-memory file as this host sees it, or None (a remote or VM engine)."""
    pid = docker("inspect", "--format", "{{.State.Pid}}", container, check=False).stdout.strip()
    try:
        path = parse_proc_cgroup(Path(f"/proc/{pid}/cgroup").read_text())
    except (OSError, ValueError):
        return None
    return path if path is not None and path.is_file() else None


def memory_peak(container: str, host_file: Optional[Path]) -> Optional[int]:
    """The container cgroup's peak memory in bytes (host file, else read inside), or None."""
    try:
        if host_file is not None:
            return int(host_file.read_text().strip())
        return int(docker("exec", container, "sh", "-c", INSIDE_PEAK, check=False).stdout.strip())
    except (OSError, ValueError):
        return None


def reset_peak(host_file: Optional[Path]) -> bool:
    """Zero a cgroup v1 peak (memory.max_usage_in_bytes, root on the host); False where that cannot be done."""
    if host_file is None or host_file.name != "memory.max_usage_in_bytes":
        return False
    try:
        host_file.write_text("0")
    except OSError:
        return False
    return True


def exec_step(container: str, name: str, cmd: List[str], timeout: float, log: Path,
              host_file: Optional[Path]) -> judge_core.Step:
    """``docker exec`` ``cmd`` in /submission with output to ``log``; kill the container after ``timeout`` s."""
    logger.info("%s: %s (log: %s)", name, " ".join(cmd), log)
    start = time.monotonic()
    timed_out = False
    with open(log, "wb") as out:
        proc = subprocess.Popen(["docker", "exec", "--workdir", SUBMISSION, container, *cmd], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            proc.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
    seconds = time.monotonic() - start
    peak = memory_peak(container, host_file)
    if timed_out:
        docker("kill", container, check=False)
        proc.wait()
    code = None if timed_out else proc.returncode
    step = judge_core.Step(name, code, seconds, timed_out, peak or 0, None, str(log))
    logger.info("%s: %s in %.1f s, cgroup peak %.2f GB", name, "timed out" if timed_out else f"exit {code}",
                seconds, (peak or 0) / 1e9)
    if not step.ok:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-judge_core.LOG_TAIL_LINES:]
        logger.error("%s failed; last lines of %s:\n%s", name, log, "\n".join(tail))
    return step


def exec_json(container: str, script: str, *args: str) -> Dict[str, Any]:
    """Run a probe script with the container's ``python3``; its JSON answer, or {"error": ...}."""
    result = docker("exec", container, "python3", "-c", script, *args, check=False, timeout=120)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]}
    return json.loads(result.stdout)


def limit_problems(inside: Dict[str, Any], args: argparse.Namespace) -> List[str]:
    """What the probe saw in the container that contradicts the limits asked for."""
    if "error" in inside:
        return [f"the limits probe failed: {inside['error']}"]
    problems = []
    if [n for n in inside["interfaces"] if n != "lo"]:
        problems.append(f"network interfaces visible inside the container: {inside['interfaces']}")
    if inside["cpu_quota"] is None or abs(inside["cpu_quota"] - args.cpus) > 1e-6:
        problems.append(f"CPU quota inside the container is {inside['cpu_quota']}, expected {args.cpus:g}")
    if inside["memory_limit"] != int(args.memory_gb * GIB):
        problems.append(f"memory limit inside the container is {inside['memory_limit']}, "
                        f"expected {int(args.memory_gb * GIB)}")
    return problems


def archive_top_level(archive: Path) -> List[str]:
    """The sorted top-level names of the zip ``archive``."""
    with zipfile.ZipFile(archive) as zf:
        return sorted({Path(i.filename).parts[0] for i in zf.infolist()})


def vendored_onnxruntime(archive: Path, python: str, scratch: Path) -> Optional[str]:
    """The onnxruntime version the archive's vendor/ pins for Python ``python`` ("3.8"), if any."""
    member = f"vendor/{REQUIREMENTS_NAME.format(python)}"
    with zipfile.ZipFile(archive) as zf:
        if member not in zf.namelist():
            return None
        zf.extract(member, scratch)
    return judge_core.expected_onnxruntime(scratch, python)


def accepts_report(container: str) -> bool:
    """Whether the unpacked archive's ``./predict.sh --help`` lists ``--report`` (False if it does not answer)."""
    try:
        helped = docker("exec", "--workdir", SUBMISSION, container, "./predict.sh", "--help", check=False,
                        timeout=HELP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        logger.warning("./predict.sh --help did not answer within %.0f s: running it without %s",
                       HELP_TIMEOUT_S, REPORT_OPTION)
        return False
    return REPORT_OPTION in helped.stdout


def runtime_threads(report: Optional[Dict[str, Any]], predict_log: Path) -> Optional[int]:
    """The thread count the runtime chose: its run report's "threads", else its log line "N threads"."""
    if report and isinstance(report.get("threads"), int):
        return report["threads"]
    try:
        found = THREADS_LOGGED.search(predict_log.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return int(found.group(1)) if found else None


def describe_limits(args: argparse.Namespace) -> Dict[str, Any]:
    """The limits in the local judge's summary layout (judge_core.Limits.describe)."""
    return {"network": "docker --network=none",
            "cpus": f"--cpus={args.cpus:g} (CFS quota; the affinity mask keeps every host CPU)",
            "cpu_quota": {"quota": f"{args.cpus:g} CPU (docker --cpus)", "version": "?", "cgroup": "of the container"},
            "memory": {"bytes": int(args.memory_gb * GIB),
                       "kind": f"docker --memory={args.memory_gb:g}g --memory-swap={args.memory_gb:g}g",
                       "checked_after": "the container cgroup's peak (resident memory + page cache)"},
            "time_limit_s": args.time_limit}


def run_in_container(container: str, args: argparse.Namespace, summary: Dict[str, Any], out_dir: Path,
                     scratch: Path) -> None:
    """Unpack, probe, setup.sh, predict.sh in ``container``; fills ``summary`` (steps, problems, versions)."""
    docker("exec", container, "sh", "-c", f"mkdir -p {OUT} && unzip -q {ARCHIVE}")
    inside = summary["inside"] = {**exec_json(container, judge_core.PROBE_LIMITS, SUBMISSION),
                                  **exec_json(container, PROBE)}
    summary["limits"]["cpu_quota"]["version"] = inside.get("cgroup", "?")
    summary["problems"] += limit_problems(inside, args)
    seen = (inside.get("effective_cpus") or {}).get("cpus")
    if seen is not None and seen != args.cpus:
        summary["warnings"].append(f"the runtime sees {seen} CPUs in a container limited to {args.cpus:g}")
    if summary["problems"]:
        return
    limits = judge_core.Limits(None, None, int(args.memory_gb * GIB), "cgroup", args.time_limit)
    host_file = host_peak_file(container)
    summary["memory_peak_source"] = str(host_file) if host_file else "read inside the container"
    deadline = time.monotonic() + args.time_limit
    setup = exec_step(container, "setup.sh", ["./setup.sh"], deadline - time.monotonic(), out_dir / "setup.log",
                      host_file)
    summary["steps"]["setup.sh"] = asdict(setup)
    summary["problems"] += judge_core.step_problems(setup, limits)
    if not setup.ok:
        return
    pyver = ".".join(inside["python"].split(".")[:2])
    versions = summary["versions"] = exec_json(container, judge_core.PROBE_VERSIONS,
                                               f"{SUBMISSION}/{judge_core.DEPS_DIR.format(pyver)}")
    expected = vendored_onnxruntime(args.archive, pyver, scratch)
    if expected and versions.get("onnxruntime") != expected:
        summary["problems"].append(f"predict.sh would import onnxruntime {versions.get('onnxruntime')} "
                                   f"({versions.get('onnxruntime_path')}), not the vendored {expected}")
    report = summary["report_option"] = accepts_report(container)
    cmd = ["./predict.sh", DATA, f"{OUT}/predictions.json"]
    cmd += [REPORT_OPTION, f"{OUT}/{judge_core.REPORT_NAME}"] if report else []
    summary["memory_peak_reset"] = reset_peak(host_file)
    predict = exec_step(container, "predict.sh", cmd, deadline - time.monotonic(), out_dir / "predict.log",
                        host_file)
    summary["steps"]["predict.sh"] = asdict(predict)
    summary["problems"] += judge_core.step_problems(predict, limits)
    if not predict.ok:
        summary["warnings"].append("scoring what predict.sh left on disk (the best answer so far)")
    # also after a kill at the deadline: what the runtime had written by then is what the organisers would score
    docker("cp", f"{container}:{OUT}/.", str(out_dir), check=False)


def judge_in_docker(args: argparse.Namespace, out_dir: Path, scratch: Path) -> Dict[str, Any]:
    """Engine, image, container run, scoring: the summary (judge_core.format_summary's layout plus "docker")."""
    summary: Dict[str, Any] = {"archive": str(args.archive), "datasets": str(args.datasets_dir),
                               "limits": describe_limits(args), "steps": {}, "problems": [], "warnings": []}
    summary["top_level"] = archive_top_level(args.archive)
    unexpected = sorted(set(summary["top_level"]) - ALLOWED_TOP)
    if unexpected:
        summary["warnings"].append(f"unexpected entries at the archive's root: {unexpected}")
    engine = ensure_engine(start=not args.no_engine_start)
    base = choose_base(args.base, args.base_python, out_dir)
    image = build_judge_image(base, args.torch, out_dir / "image-build.log")
    summary["docker"] = {"engine": engine, "base": base, "image": image, "run": docker_run_args(args)}
    container = start_container(image, args)
    try:
        run_in_container(container, args, summary, out_dir, scratch)
    finally:
        docker("rm", "--force", container, check=False)
    if "predict.sh" in summary["steps"]:
        judge_core.finish(summary, args, out_dir / "predictions.json")
    report_path = out_dir / judge_core.REPORT_NAME
    if report_path.is_file():
        try:
            summary["run_report"] = read_report(report_path)
        except ValueError as exc:
            summary["warnings"].append(str(exc))
    summary["docker"]["threads"] = runtime_threads(summary.get("run_report"), out_dir / "predict.log")
    return summary


def format_docker(summary: Dict[str, Any]) -> str:
    """The container lines printed above judge_core.format_summary's table."""
    info = summary.get("docker") or {}
    engine = info.get("engine", {})
    started = f" (started here, pid {engine['pid']}, still running: stop it with 'kill {engine['pid']}')" \
        if engine.get("started") else ""
    lines = [f"docker       engine {engine.get('server', '?')}{started}; "
             f"image {info.get('image', '?')} FROM {info.get('base', '?')}; {' '.join(info.get('run', []))}"]
    packages = (summary.get("inside") or {}).get("image_packages") or {}
    if packages:
        lines.append("image has    " + ", ".join(f"{k} {v or '-'}" for k, v in packages.items()))
    if info.get("threads") is not None and not summary.get("run_report"):
        lines.append(f"runtime      {info['threads']} threads")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--docker`` switch of contest.judge and the options only it uses."""
    group = parser.add_argument_group("Docker judge (contest/docker_judge.py)")
    group.add_argument("--docker", action="store_true",
                       help="run in a Docker container (docker run --cpus=1 --memory=8g --network=none) instead of "
                            "the local sandbox; starts dockerd if needed and builds the judge image")
    group.add_argument("--base", choices=["auto", "registry", "local"], default="auto",
                       help=f"image to build the Dockerfile on: {REGISTRY_BASE} (registry), the offline Debian "
                            "base (local), or the first that can be had (auto, default)")
    group.add_argument("--base-python", type=Path, default=BASE_PYTHON,
                       help="CPython 3.8 installation copied into the offline base (default: %(default)s)")
    group.add_argument("--torch", default="torch==1.9.0",
                       help="the torch requirement installed in the image (default: %(default)s, PyPI)")
    group.add_argument("--cpus", type=float, default=1.0, help="docker run --cpus (default: %(default)s)")
    group.add_argument("--no-engine-start", action="store_true",
                       help="fail instead of starting dockerd when no engine answers")


def run_docker(args: argparse.Namespace) -> int:
    """contest.judge --docker: exit 0 if the archive passed, 1 if it failed, 2 if it could not be judged."""
    out_dir = args.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("predictions.json", judge_core.REPORT_NAME):
        (out_dir / name).unlink(missing_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="judge-docker-"))
    try:
        summary = judge_in_docker(args, out_dir, scratch)
    except EngineUnavailable as exc:
        logger.error("no Docker engine: %s", exc)
        return 2
    except (DockerError, OSError, ValueError, zipfile.BadZipFile, subprocess.SubprocessError) as exc:
        logger.error("%s", exc)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.stdout.write(format_docker(summary) + "\n")
    return judge_core.write_summary(summary, out_dir)
