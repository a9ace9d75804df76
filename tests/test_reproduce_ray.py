"""A reproduction on a Ray cluster (parl_core.reproduce_ray): the test starts a local Ray
cluster with 2 CPU workers (`ray start --head --block`, stopped with it), runs the smoke
reproduction on it through the CLI, and checks that its report's tables equal a local
run's, that a half-finished cluster run is finished by the local command, and that the
units ran on Ray workers with their progress streamed back."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'parl-lab[ray]'")

REPO = Path(__file__).resolve().parents[1]
TABLES = ("table1.csv", "table2.csv", "accuracy_vs_eps.csv", "cka_layers.csv", "sanity_checks.csv",
          "verdicts.csv")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-CPU Ray head on this machine; its address. Stopped (with every worker) after."""
    port = _port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    with open(log, "w") as f:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 "--num-cpus", "2", "--num-gpus", "0", "--port", str(port),
                                 "--include-dashboard", "false", "--disable-usage-stats"],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        if head.poll() is not None or time.monotonic() > deadline:
            head.kill()
            pytest.fail(f"ray start failed:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield address
    head.terminate()  # --block: stopping the head process stops the cluster it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, 9)
        head.wait()


def _reproduce(out: Path, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "parl_core", "reproduce", "--scale", "smoke",
                           "--threads", "1", "--out", str(out), *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, **(env or {})))


def test_smoke_reproduction_on_ray_equals_the_local_run(cluster, tmp_path):
    t0 = time.perf_counter()
    # the head was started with token authentication (Ray's default); a client opts in
    on_ray = _reproduce(tmp_path / "ray", "--ray", cluster, env={"RAY_AUTH_MODE": "token"})
    ray_s = time.perf_counter() - t0
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    t0 = time.perf_counter()
    local = _reproduce(tmp_path / "local", "--quiet")
    local_s = time.perf_counter() - t0
    assert local.returncode == 0, local.stderr[-3000:]
    print(f"smoke reproduction: Ray {ray_s:.0f}s, local {local_s:.0f}s")
    for name in TABLES:  # the numbers, verdicts and checks: identical
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    # every unit ran as a Ray task on a worker, and said so while it ran
    units = sorted((tmp_path / "ray" / "units").glob("*.json"))
    assert len(units) == 20 and all('"runner": "ray"' in u.read_text() for u in units)
    assert on_ray.stderr.count("running on") == 20 and on_ray.stderr.count(" done (") == 20
    assert "epoch 1:" in on_ray.stderr  # the train command's own lines, forwarded by Ray

    # half finished on the cluster, finished here: only the missing units run again
    for u in units[:3]:
        u.unlink()
    again = _reproduce(tmp_path / "ray", "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    for name in TABLES:
        assert (tmp_path / "ray" / name).read_text() == (tmp_path / "local" / name).read_text(), name
    fresh = [u for u in sorted((tmp_path / "ray" / "units").glob("*.json")) if '"runner": "ray"' not in u.read_text()]
    assert [u.name for u in fresh] == [u.name for u in units[:3]]


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    import parl_core.reproduce_ray as rr
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SystemExit, match=r"pip install 'parl-lab\[ray\]'"):
        rr.ray_or_exit()
    with pytest.raises(ValueError, match="cpus per unit"):
        rr._validate(0, 0, None)
    with pytest.raises(ValueError, match="threads"):
        rr._validate(1, 0, 0)


def test_a_training_sweep_on_ray_equals_the_local_sweep(cluster, tmp_path):
    import parl_core as pc
    args = ["-m", "parl_core", "train", "--dataset", "digits", "--members", "2", "--epochs", "1",
            "--threads", "1", "--sweep", "seed=0,1", "--sweep", "method=ce_only,parl", "--quiet"]

    def sweep(where, *extra):
        r = subprocess.run([sys.executable, *args, "--out", str(tmp_path / where / "{method}_s{seed}.safetensors"),
                            *extra], cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, RAY_AUTH_MODE="token"))
        assert r.returncode == 0, r.stderr[-3000:]
        return r
    on_ray = sweep("ray", "--ray", cluster)
    assert "4 to train on Ray" in on_ray.stderr and on_ray.stdout.count("| 0 |") == 4
    sweep("local")
    for name in ("ce_only_s0", "parl_s0", "ce_only_s1", "parl_s1"):
        a = pc.load_checkpoint(tmp_path / "ray" / f"{name}.safetensors")
        b = pc.load_checkpoint(tmp_path / "local" / f"{name}.safetensors")
        assert a[1]["clean_acc"] == b[1]["clean_acc"] and a[1]["r_mean"] == b[1]["r_mean"]
        for p, q in zip(a[0].parameters(), b[0].parameters()):
            assert p.equal(q)
    again = sweep("ray", "--ray", cluster)  # every run finished: nothing to train, no cluster work
    assert "0 to train" in again.stderr and again.stderr.count("finished, kept") == 4


def test_sweep_arguments_are_checked():
    from parl_core.sweep import parse_sweep, sweep_runs
    assert parse_sweep(["seed=0,1", "layers=3,5"]) == {"seed": ["0", "1"], "layers": ["3", "5"]}
    for bad, msg in ((["seed"], "KEY=V1"), (["colour=1,2"], "cannot sweep"), (["seed=1", "seed=2"], "twice"),
                     (["seed=1,1"], "repeated")):
        with pytest.raises(ValueError, match=msg):
            parse_sweep(bad)
    runs = sweep_runs(["--dataset", "digits", "--seed", "9", "--out", "x", "--sweep", "seed=0,1", "--ray"],
                      {"seed": ["0", "1"]}, "runs/s{seed}.safetensors")
    assert [c for _, c in runs] == [["--dataset", "digits", "--seed", "0", "--out", "runs/s0.safetensors"],
                                    ["--dataset", "digits", "--seed", "1", "--out", "runs/s1.safetensors"]]
    with pytest.raises(ValueError, match="name every swept key"):
        sweep_runs([], {"seed": ["0", "1"]}, "runs/one.safetensors")
    with pytest.raises(ValueError, match="not swept"):
        sweep_runs([], {"seed": ["0"]}, "runs/{seed}_{method}.safetensors")
