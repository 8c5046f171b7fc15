"""Effective CPUs from affinity, cgroup v1/v2 quotas and --threads, on fake cgroup trees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional

import pytest

from conftest import REPO, read_json
from datagen import make_dataset

from zeroshot.resources import (AFFINITY, CGROUP_V1, CGROUP_V2, FLAG, cgroup_cpus, effective_cpus,
                                parse_mountinfo, quota_cpus)

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""
V2_MOUNTS = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID_MOUNTS = V1_MOUNTS + "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"


def fake_tree(root: Path, proc_cgroup: str, mountinfo: str, files: Dict[str, str]) -> Path:
    """root/proc/self/{cgroup,mountinfo} and the cgroup files given as {relative path: content}."""
    (root / "proc" / "self").mkdir(parents=True)
    (root / "proc" / "self" / "cgroup").write_text(proc_cgroup)
    (root / "proc" / "self" / "mountinfo").write_text(mountinfo)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return root


def cpus(root: Path, affinity: int = 64, threads: Optional[int] = None):
    limit = effective_cpus(threads, host_root=root, affinity=affinity)
    return limit.cpus, limit.source


@pytest.mark.parametrize("quota,period,expected", [(100000, 100000, 1), (150000, 100000, 2), (50000, 100000, 1),
                                                   (400000, 100000, 4), (-1, 100000, None), (0, 100000, None)])
def test_quota_rounds_up_and_is_at_least_one(quota: int, period: int, expected: Optional[int]) -> None:
    assert quota_cpus(quota, period) == expected


def test_cgroup_v1_nested_quota(tmp_path: Path) -> None:
    base = "sys/fs/cgroup/cpu,cpuacct/docker/abc"
    root = fake_tree(tmp_path, "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n", V1_MOUNTS,
                     {f"{base}/cpu.cfs_quota_us": "100000\n", f"{base}/cpu.cfs_period_us": "100000\n",
                      "sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_quota_us": "-1\n",
                      "sys/fs/cgroup/cpu,cpuacct/docker/cpu.cfs_period_us": "100000\n"})
    assert cpus(root) == (1, CGROUP_V1)


def test_cgroup_v1_parent_quota_is_tighter(tmp_path: Path) -> None:
    pod = "sys/fs/cgroup/cpu,cpuacct/kubepods/pod1"
    root = fake_tree(tmp_path, "2:cpu,cpuacct:/kubepods/pod1/c1\n", V1_MOUNTS,
                     {f"{pod}/c1/cpu.cfs_quota_us": "800000", f"{pod}/c1/cpu.cfs_period_us": "100000",
                      f"{pod}/cpu.cfs_quota_us": "300000", f"{pod}/cpu.cfs_period_us": "100000"})
    assert cpus(root) == (3, CGROUP_V1)


def test_cgroup_v1_container_view_uses_the_mount_point(tmp_path: Path) -> None:
    """Inside docker (cgroupns=host) /proc/self/cgroup shows the host path, the mount shows only our cgroup."""
    mounts = "32 31 0:29 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n"
    root = fake_tree(tmp_path, "3:cpu:/docker/abc\n", mounts,
                     {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "150000", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert cpus(root) == (2, CGROUP_V1)


def test_cgroup_v2_fractional_quota_rounds_up(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "0::/user.slice/app\n", V2_MOUNTS,
                     {"sys/fs/cgroup/user.slice/app/cpu.max": "150000 100000\n",
                      "sys/fs/cgroup/user.slice/cpu.max": "max 100000\n"})
    assert cpus(root) == (2, CGROUP_V2)


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "0::/a\n", V2_MOUNTS, {"sys/fs/cgroup/a/cpu.max": "max 100000\n"})
    assert cpus(root, affinity=6) == (6, AFFINITY)


def test_hybrid_v1_cpu_controller_and_unified_without_cpu(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "2:cpu,cpuacct:/job\n0::/job\n", HYBRID_MOUNTS,
                     {"sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_quota_us": "200000",
                      "sys/fs/cgroup/cpu,cpuacct/job/cpu.cfs_period_us": "100000",
                      "sys/fs/cgroup/unified/job/cgroup.procs": ""})
    assert cpus(root) == (2, CGROUP_V1)


def test_no_limit_anywhere_is_the_affinity_mask(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "2:cpu,cpuacct:/\n0::/\n", HYBRID_MOUNTS,
                     {"sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "-1",
                      "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000"})
    assert cpus(root, affinity=3) == (3, AFFINITY)


def test_affinity_smaller_than_quota_wins(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "0::/a\n", V2_MOUNTS, {"sys/fs/cgroup/a/cpu.max": "400000 100000"})
    assert cpus(root, affinity=2) == (2, AFFINITY)


def test_threads_flag_lowers_but_never_raises(tmp_path: Path) -> None:
    root = fake_tree(tmp_path, "0::/a\n", V2_MOUNTS, {"sys/fs/cgroup/a/cpu.max": "400000 100000"})
    assert cpus(root, threads=2) == (2, FLAG)
    assert cpus(root, threads=16) == (4, CGROUP_V2)


@pytest.mark.parametrize("content", ["garbage", "", "100000 abc", "\x00\x01"])
def test_malformed_files_fall_back(tmp_path: Path, content: str) -> None:
    root = fake_tree(tmp_path, "0::/a\n2:cpu:/a\n", HYBRID_MOUNTS.replace("cpu,cpuacct rw", "cpu rw"),
                     {"sys/fs/cgroup/unified/a/cpu.max": content,
                      "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us": content,
                      "sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us": content})
    assert cpus(root, affinity=5) == (5, AFFINITY)


def test_unreadable_files_and_missing_proc_fall_back(tmp_path: Path) -> None:
    root = fake_tree(tmp_path / "a", "0::/x\n", V2_MOUNTS, {})
    (root / "sys/fs/cgroup/x/cpu.max").mkdir(parents=True)  # reading a folder raises IsADirectoryError
    assert cpus(root, affinity=2) == (2, AFFINITY)
    assert cgroup_cpus(tmp_path / "nothing-here") is None
    assert cpus(tmp_path / "nothing-here", affinity=7) == (7, AFFINITY)


def test_mountinfo_escapes_and_junk_lines() -> None:
    mounts = parse_mountinfo("junk\n40 31 0:38 / /sys/fs/my\\040cgroup rw - cgroup cgroup rw,cpu\n")
    assert [(m.point, m.options) for m in mounts] == [("/sys/fs/my cgroup", ("rw", "cpu"))]


# --- a real cgroup quota (needs root and a writable cgroup file system) ------------------------

def test_runtime_picks_one_thread_inside_a_real_quota(tiny_model: Path, tmp_path: Path) -> None:
    """A 1-CPU CFS quota with every CPU in the affinity mask (docker run --cpus=1): 1 thread, source cgroup."""
    from contest.cgroups import create_cpu_quota_cgroup, remove_cgroup

    try:
        group = create_cpu_quota_cgroup(f"zeroshot-test-{os.getpid()}", 1.0)
    except (OSError, ValueError) as exc:
        pytest.skip(f"cannot create a cgroup with a CPU quota here (needs root and cgroup v1/v2): {exc}")
    make_dataset(tmp_path / "data", "a", ["x", "y"], 3)
    report = tmp_path / "report.json"
    try:
        proc = subprocess.run(group.prefix() + [sys.executable, str(REPO / "predict.py"), str(tmp_path / "data"),
                                                str(tmp_path / "o.json"), "--model", str(tiny_model),
                                                "--report", str(report)],
                              cwd="/", capture_output=True, text=True, timeout=120)
    finally:
        remove_cgroup(group)
    assert proc.returncode == 0, proc.stderr
    rep = read_json(report)
    assert rep["threads"] == 1 and rep["cpu_source"] in (CGROUP_V1, CGROUP_V2) and rep["decode"] == "inline", rep


def test_quota_bench_runs_predict_sh_inside_the_quota(tiny_model: Path, tmp_path: Path) -> None:
    from contest import quota_bench
    from contest.cgroups import create_cpu_quota_cgroup, remove_cgroup

    try:
        remove_cgroup(create_cpu_quota_cgroup(f"zeroshot-probe-{os.getpid()}", 1.0))
    except (OSError, ValueError) as exc:
        pytest.skip(f"cannot create a cgroup with a CPU quota here (needs root and cgroup v1/v2): {exc}")
    make_dataset(tmp_path / "data", "a", ["x", "y"], 4)
    out = tmp_path / "rates.json"
    assert quota_bench.main([str(tmp_path / "data"), "--case", f"tiny={REPO}:--model {tiny_model}",
                             "--rounds", "1", "--out", str(out)]) == 0
    rates = read_json(out)
    assert list(rates) == ["tiny"] and len(rates["tiny"]) == 1 and rates["tiny"][0] > 0
    with pytest.raises(ValueError, match="NAME=TREE"):
        quota_bench.parse_case("no-equals-sign")
