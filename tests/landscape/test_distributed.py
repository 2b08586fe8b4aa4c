"""landscape.distributed: a no-op in one process; 2 gloo ranks on loopback give the 1-process numbers.

The multi-process tests launch this file as a script (``python test_distributed.py MODE OUT``) once per rank, with
the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from landscape import _grid, distributed
from landscape.curvature import GGNOperator, HessianOperator, hutchinson_trace, lanczos_eigenpairs, slq_density
from landscape.directions import random_direction
from landscape.surfaces import interpolate_1d, make_grid, surface_2d
from studies import catalog
from studies.runner import Study, run_study
from studies.store import RunStore

KILL_AFTER = 2  # rank 1 SIGKILLs itself after saving this many chunks


def _case() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], list[dict[str, torch.Tensor]]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    x, y = torch.randn(40, 4), torch.randint(0, 3, (40,))
    return model, (x, y), [random_direction(model, seed=s) for s in (1, 2)]


def _surface(cache: Path | None, dist: bool, chunk_size: int = 4):
    model, data, dirs = _case()
    grid_a, grid_b = make_grid(-1, 1, 7), make_grid(-1, 1, 5)
    return surface_2d(
        model, data, dirs, grid_a, grid_b, chunk_size=chunk_size, cache_dir=cache, progress=False, distributed=dist
    )


def _interpolation(dist: bool):
    model, data, dirs = _case()
    end = {n: p.detach() + dirs[0][n] for n, p in model.named_parameters()}
    return interpolate_1d(
        model, model, end, data, make_grid(-0.5, 1.5, 9), chunk_size=2, progress=False, distributed=dist
    )


def _curvature(dist: bool) -> dict[str, list[float]]:
    model, data, _ = _case()
    hessian = HessianOperator(model, F.cross_entropy, data, dtype=torch.float64, batch_size=10, distributed=dist)
    ggn = GGNOperator(model, F.cross_entropy, data, dtype=torch.float64, distributed=dist)  # one batch, cut in two
    eig = lanczos_eigenpairs(hessian, k=3, seed=0)
    trace = hutchinson_trace(hessian, max_applications=20, rtol=0.0, seed=0)
    density = slq_density(ggn, probes=2, steps=8, num_grid=10, seed=0)
    return {
        "eigenvalues": eig.eigenvalues.tolist(),
        "trace": [trace.estimate, trace.standard_error],
        "nodes": np.ravel(density.nodes).tolist(),
        "local_examples": [hessian.num_data, ggn.num_data],
        "applications": [eig.applications, trace.applications],
    }


def _toy_grid(scale: str, ctx) -> list[dict]:
    ctx.note("toy grid")
    return [{"x": i} for i in range(5)]


def _toy_run(config: dict, ctx) -> pd.DataFrame:
    ctx.note(f"ran {config['x']}")
    return pd.DataFrame({"quantity": ["square"], "value": [config["x"] ** 2], "rank": [distributed.rank()]})


TOY = Study(name="toy", title="toy", grid=_toy_grid, run=_toy_run)


def _worker(mode: str, out: Path) -> None:
    torch.set_num_threads(1)
    with distributed.process_group(timeout_s=15):
        me = distributed.rank()
        if mode == "kill":
            if me == 1:
                save, saved = _grid.SurfaceJob._save, []

                def save_then_die(job, chunk_id, result):
                    save(job, chunk_id, result)
                    saved.append(chunk_id)
                    if len(saved) == KILL_AFTER:
                        os.kill(os.getpid(), signal.SIGKILL)

                _grid.SurfaceJob._save = save_then_die
            _surface(out / "cache", True, chunk_size=3)
            return
        surface = _surface(out / "cache", True)
        result = {
            "world": distributed.world_size(),
            "loss": surface.loss.tolist(),
            "computed": surface.config["chunks_computed"],
            "reused": surface.config["chunks_reused"],
            "line": _interpolation(True).loss.tolist(),
            **_curvature(True),
        }
        frame = run_study(TOY, "tiny", root=out / "runs", progress=False)
        result["study"] = frame[["x", "value", "rank"]].values.tolist()
        (out / f"rank{me}.json").write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on the child's module search path, so it runs the code under test."""
    root = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join([root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])}


def _launch(mode: str, out: Path, world: int = 2) -> list[subprocess.Popen]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world)}
    env = _checkout_env(env | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    procs = []
    for r in range(world):
        with open(out / f"rank{r}.log", "wb") as log:  # the child keeps its own handle
            rank_env = {**env, "RANK": str(r), "LOCAL_RANK": str(r)}
            procs.append(subprocess.Popen([sys.executable, __file__, mode, str(out)], env=rank_env, stderr=log))
    return procs


def _logs(out: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(out.glob("rank*.log")))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One 2-rank run of surface, curvature and a study sweep whose first config is cached beforehand."""
    out = tmp_path_factory.mktemp("two_ranks")
    cached = pd.DataFrame({"quantity": ["square"], "value": [-1.0], "rank": [-1]})
    RunStore(out / "runs", "toy").save({"x": 0}, cached, "cpu", 0.0)
    procs = _launch("all", out)
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0, 0], _logs(out)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_rank_surface_equals_one_process(two_ranks):
    out, ranks = two_ranks
    reference = _surface(None, False)
    for result in ranks:  # every rank returns the whole surface
        assert result["world"] == 2
        np.testing.assert_array_equal(np.array(result["loss"]), reference.loss)
        assert result["computed"] == reference.config["n_chunks"] == 9 and result["reused"] == 0
        np.testing.assert_array_equal(np.array(result["line"]), _interpolation(False).loss)
    assert len(list((out / "cache").glob("*/chunk_*.npz"))) == 9
    restarted = _surface(out / "cache", False)  # one process finds every chunk the two ranks wrote
    assert restarted.config["chunks_computed"] == 0 and restarted.config["chunks_reused"] == 9
    np.testing.assert_array_equal(restarted.loss, reference.loss)


def test_two_rank_curvature_equals_one_process(two_ranks):
    _, ranks = two_ranks
    torch.set_num_threads(1)
    reference = _curvature(False)
    assert reference["local_examples"] == [40, 40]
    assert [r["local_examples"] for r in ranks] == [[20, 20], [20, 20]]
    for result in ranks:
        for key in ("eigenvalues", "trace", "nodes"):
            np.testing.assert_allclose(result[key], reference[key], rtol=1e-6, atol=0)
        assert result["applications"] == reference["applications"]
    assert ranks[0]["eigenvalues"] == ranks[1]["eigenvalues"]  # ranks agree bit for bit


def test_two_rank_study_sweep_runs_one_config_per_rank(two_ranks):
    out, ranks = two_ranks
    expected = [[0, -1.0, -1], [1, 1.0, 1], [2, 4.0, 0], [3, 9.0, 1], [4, 16.0, 0]]  # x = 0 was cached
    assert ranks[0]["study"] == ranks[1]["study"] == expected
    written = pd.read_csv(out / "runs" / "toy" / "tiny.csv")
    assert written[["x", "value", "rank"]].values.tolist() == expected
    notes = (out / "runs" / "toy" / "tiny.notes.txt").read_text().splitlines()
    assert notes == ["toy grid", "ran 2", "ran 4", "ran 1", "ran 3"]


def test_killed_rank_resumes_with_one_process_without_recomputing(tmp_path):
    procs = _launch("kill", tmp_path)
    assert procs[1].wait(timeout=120) == -signal.SIGKILL, _logs(tmp_path)
    try:
        procs[0].wait(timeout=60)  # its collective fails once rank 1 is gone
    except subprocess.TimeoutExpired:
        procs[0].kill()
        procs[0].wait()
    reference = _surface(None, False, chunk_size=3)
    n_chunks = reference.config["n_chunks"]
    recorded = [p.with_suffix(".npz") for p in (tmp_path / "cache").glob("*/chunk_*.json")]  # finished chunks
    files = {p: p.stat().st_mtime_ns for p in recorded}
    ids = sorted(int(p.stem.split("_")[1]) for p in files)
    assert n_chunks == 12 and [i for i in ids if i % 2 == 1] == [1, 3]  # rank 1 died mid-surface
    resumed = _surface(tmp_path / "cache", False, chunk_size=3)
    assert resumed.config["chunks_reused"] == len(files)
    assert resumed.config["chunks_computed"] == n_chunks - len(files) > 0
    np.testing.assert_array_equal(resumed.loss, reference.loss)
    assert all(p.stat().st_mtime_ns == t for p, t in files.items())  # finished chunks untouched


def test_cli_study_under_torchrun_equals_one_process(tmp_path):
    address = ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", "2", *address]
    study = ["-m", "studies.cli", "study", "reddi2018", "--scale", "tiny", "--runs-dir", str(tmp_path / "two")]
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env = _checkout_env(env | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    cmd = [sys.executable, *launch, *study, "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("5 runs on 2 process(es)") == 1  # printed by rank 0 only
    torch.set_num_threads(1)
    run_study(catalog.get("reddi2018"), "tiny", root=tmp_path / "one", progress=False)  # plain process, no set-up
    one, two = (pd.read_csv(tmp_path / d / "reddi2018" / "tiny.csv") for d in ("one", "two"))
    pd.testing.assert_frame_equal(two, one)


def test_children_import_this_checkout(tmp_path):
    """Packages of the same names earlier on the caller's path (another copy of valley) lose to this checkout."""
    for name in ("landscape", "optim", "studies"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    # where `import` would load each package from (find_spec: the same search, without importing torch)
    code = "import importlib.util as u; print(*(u.find_spec(n).origin for n in ('landscape', 'optim', 'studies')))"
    env = _checkout_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)})
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd="/", timeout=60)
    root = str(Path(__file__).resolve().parents[2])
    assert done.returncode == 0 and all(path.startswith(root) for path in done.stdout.split()), done.stdout


def test_hessian_ignores_a_callers_autocast():
    model, data, _ = _case()
    hessian = HessianOperator(model, F.cross_entropy, data)
    v = torch.randn(hessian.shape[0], 2)
    plain = hessian.matmat(v)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision for training must not reach the Hessian
        assert torch.mm(v.T, v).dtype == torch.bfloat16
        mixed = hessian.matmat(v)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=1e-7)


def test_single_process_is_a_no_op(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with distributed.process_group():
        assert not distributed.is_distributed() and not distributed.launched()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        assert distributed.shard([3, 1, 2]) == [3, 1, 2] and distributed.all_gather_objects("a") == ["a"]
        total, count = distributed.all_reduce_sum(torch.arange(3.0), 7)
        assert total.tolist() == [0.0, 1.0, 2.0] and count == 7
        assert distributed.local_device("cuda") == "cuda"
        distributed.barrier()
    monkeypatch.setenv("RANK", "0")  # a partial launch environment is no launch
    assert not distributed.launched()


@pytest.mark.parametrize("n_batches", [1, 2, 5])
def test_shard_batches_puts_every_example_on_one_rank(monkeypatch, n_batches):
    x = torch.arange(20.0).reshape(10, 2)
    batches = [(x[i::n_batches], x[i::n_batches, 0].long()) for i in range(n_batches)]
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    seen = []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        seen += [int(v) for _, y in distributed.shard_batches(batches) for v in y]
        assert distributed.shard(list(range(7))) == list(range(r, 7, 3))
    assert sorted(seen) == list(range(0, 20, 2))


def test_invalid_arguments():
    with pytest.raises(ValueError, match="'mpi'"):
        with distributed.process_group(backend="mpi"):
            pass
    with pytest.raises(ValueError, match="-1"):
        with distributed.process_group(timeout_s=-1):
            pass
    model, data, _ = _case()
    with pytest.raises(TypeError, match="str"):
        HessianOperator(model, F.cross_entropy, data, distributed="yes")


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]))
