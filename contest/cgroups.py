"""A 1-CPU cgroup quota for the local judge, as ``docker run --cpus=1`` sets one.

:func:`create_cpu_quota_cgroup` makes a cgroup with a CFS quota (cgroup v1
``cpu.cfs_quota_us``/``cpu.cfs_period_us``, else cgroup v2 ``cpu.max``) under
the root of the CPU hierarchy, which needs root. Its :meth:`CpuQuotaCgroup.prefix`
is a command prefix that moves the command into the cgroup before ``exec``, so
the limit is inherited by everything the command starts. :func:`remove_cgroup`
removes it once its processes are gone.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from zeroshot.resources import CGROUP_V1, CGROUP_V2, parse_mountinfo

logger = logging.getLogger(__name__)

PERIOD_US = 100000
JOIN = 'echo $$ > "$0" && exec "$@"'  # sh -c JOIN PROCS_FILE CMD...: join the cgroup, then become CMD


@dataclass
class CpuQuotaCgroup:
    """A cgroup with a CPU quota: its folder, the file that takes pids, and the limit."""

    path: Path
    version: str  # cgroup-v1 / cgroup-v2
    procs: Path
    cpus: float

    def prefix(self) -> List[str]:
        """``sh -c`` that writes its own pid into the cgroup and execs the rest of the command line."""
        return ["sh", "-c", JOIN, str(self.procs)]

    def describe(self) -> Dict[str, str]:
        return {"cgroup": str(self.path), "version": self.version,
                "quota": f"{int(self.cpus * PERIOD_US)}/{PERIOD_US} us ({self.cpus:g} CPU)"}


def _mount_points(mountinfo: Path = Path("/proc/self/mountinfo")) -> Dict[str, Path]:
    """{"cgroup-v1": the v1 hierarchy with the cpu controller, "cgroup-v2": the unified one} as mounted here."""
    found: Dict[str, Path] = {}
    for mount in parse_mountinfo(mountinfo.read_text()):
        if mount.fstype == "cgroup" and "cpu" in mount.options and mount.root == "/":
            found.setdefault(CGROUP_V1, Path(mount.point))
        elif mount.fstype == "cgroup2" and mount.root == "/":
            found.setdefault(CGROUP_V2, Path(mount.point))
    return found


def _v2_has_cpu(root: Path) -> bool:
    """True when the v2 root can hand the cpu controller to children (enabling it if needed)."""
    try:
        if "cpu" not in (root / "cgroup.controllers").read_text().split():
            return False
        if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
            (root / "cgroup.subtree_control").write_text("+cpu")
        return True
    except OSError:
        return False


def create_cpu_quota_cgroup(name: str, cpus: float = 1.0) -> CpuQuotaCgroup:
    """A new cgroup ``name`` allowed ``cpus`` CPUs of time; OSError/ValueError if this machine does not allow it."""
    points = _mount_points()
    quota = int(cpus * PERIOD_US)
    if CGROUP_V1 in points:
        path = points[CGROUP_V1] / name
        path.mkdir()
        try:
            (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (path / "cpu.cfs_quota_us").write_text(str(quota))
        except OSError:
            remove_cgroup(CpuQuotaCgroup(path, CGROUP_V1, path / "cgroup.procs", cpus))
            raise
        return CpuQuotaCgroup(path, CGROUP_V1, path / "cgroup.procs", cpus)
    if CGROUP_V2 in points and _v2_has_cpu(points[CGROUP_V2]):
        path = points[CGROUP_V2] / name
        path.mkdir()
        try:
            (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        except OSError:
            remove_cgroup(CpuQuotaCgroup(path, CGROUP_V2, path / "cgroup.procs", cpus))
            raise
        return CpuQuotaCgroup(path, CGROUP_V2, path / "cgroup.procs", cpus)
    raise ValueError("no cgroup v1 cpu hierarchy and no cgroup v2 with the cpu controller is mounted here")


def remove_cgroup(group: CpuQuotaCgroup, wait_s: float = 5.0) -> None:
    """Remove the cgroup folder, waiting up to ``wait_s`` for its last processes to go."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(group.path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                logger.warning("%s: cannot remove the judge's cgroup: %s", group.path, exc)
                return
            time.sleep(0.1)
