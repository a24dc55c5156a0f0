"""Ray sharding: same rows as the single-process run, and a killed worker loses no finished row.

Starting even a small local Ray cluster costs 30–60 s of wall time on two shared CPU cores (each
of Ray's helper processes imports Ray), so these tests run only when HYBRIDRS_RAY_TESTS=1.  They
start their own local cluster (``ray start --head --block`` with 2 CPUs and the optional helper
processes off, in its own process group) and stop exactly that process group afterwards.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'hybridrs[ray]')")
if os.environ.get("HYBRIDRS_RAY_TESTS") != "1":
    pytest.skip("Ray tests start a local cluster (30-60 s on 2 shared cores); set HYBRIDRS_RAY_TESTS=1",
                allow_module_level=True)

from hybridrs.cli import CertifyConfig, run_certify  # noqa: E402
from hybridrs.distributed import run_certify_ray  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "examples.toy_model:make_model"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "ray.log", "w")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus", "2",
         "--num-gpus", "0", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
         "--no-monitor", "--include-log-monitor=false", "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env, cwd=ROOT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                ray.init(address=address, log_to_driver=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.skip(f"could not start a local Ray cluster (see {log.name})")
                time.sleep(2)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the group this fixture started, nothing else
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture()
def inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    d = tmp_path / "in"
    shutil.copytree(ROOT / "examples" / "images", d / "images")
    shutil.copy(ROOT / "examples" / "inputs.jsonl", d / "inputs.jsonl")
    return d / "inputs.jsonl"


def _rows(path):
    with open(path, newline="") as f:
        return {r["id"]: {k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)}


def _cfg():
    return CertifyConfig(model=MODEL, sigma=0.25, n=400, tau=4.6e-5, d_max=2, batch_size=200)


def test_sharded_equals_single_process_and_survives_a_killed_worker(cluster, inputs, tmp_path):
    single, sharded = tmp_path / "single.csv", tmp_path / "ray.csv"
    run_certify(_cfg(), inputs, single, progress=False)
    killed = []

    def kill_one(written, actors):
        if written == 2 and not killed:
            pid = ray.get(actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)  # a worker dies mid-run
            killed.append(pid)

    run_certify_ray(_cfg(), inputs, sharded, workers=2, progress=False, after_row=kill_one)
    assert killed
    assert _rows(sharded) == _rows(single)
    lines = sharded.read_text().splitlines()
    assert len(lines) == 1 + len(_rows(single))  # no duplicate rows
    # resumable the same way: a rerun (here single-process) finds nothing to do
    before = sharded.read_bytes()
    run_certify(_cfg(), inputs, sharded, progress=False)
    assert sharded.read_bytes() == before
