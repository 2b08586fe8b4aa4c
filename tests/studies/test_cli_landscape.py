"""``valley surface`` and ``valley curvature`` on a trained checkpoint: the library's numbers, 1 or 2 processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from landscape import distributed
from landscape.curvature import HessianOperator, hutchinson_trace, lanczos_eigenpairs, slq_density
from landscape.directions import random_direction
from landscape.surfaces import interpolate_1d, make_grid, surface_1d, surface_2d
from studies.analyse import load_model
from studies.cli import main
from studies.data import load_dataset
from studies.models import make_model
from studies.train import train

SAMPLES = 64
MODEL = ["--model", "mlp", "--model-kwargs", '{"widths": [8]}', "--dataset", "digits"]
SURFACE = ["--samples", str(SAMPLES), "--resolution", "5", "--chunk-size", "7", "--no-progress"]
CURVATURE = ["--samples", str(SAMPLES), "--top-k", "2", "--trace-probes", "6", "--no-progress"]
DENSITY = ["--density", "--slq-probes", "2", "--slq-steps", "5"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Checkpoints of a digits MLP 64-8-10 before (epoch 0) and after one epoch of SGD, and its data."""
    folder = tmp_path_factory.mktemp("checkpoints")
    digits = load_dataset("digits")
    data = digits.subset(128, 32)
    train(
        lambda: make_model("mlp", data.input_shape, data.num_classes, widths=(8,)),
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1),
        data,
        epochs=1,
        batch_size=32,
        checkpoint_dir=folder,
        checkpoint_epochs=[0, 1],
        progress=False,
    )
    batch = (digits.x_train[:SAMPLES], digits.y_train[:SAMPLES])
    return folder / "epoch0001.pt", folder / "epoch0000.pt", batch


def _model(path):
    return load_model(path, "mlp", {"widths": [8]}, (1, 8, 8), 10)


def _surface_args(checkpoint, out, *extra):
    return ["surface", "--checkpoint", str(checkpoint), *MODEL, *SURFACE, "--out", str(out), *extra]


def _curvature_args(checkpoint, out, *extra):
    return ["curvature", "--checkpoint", str(checkpoint), *MODEL, *CURVATURE, "--out", str(out), *extra]


def test_surface_equals_the_library_and_resumes(trained, tmp_path, capsys):
    checkpoint, start, batch = trained
    grid = make_grid(-1, 1, 5)
    assert main(_surface_args(checkpoint, tmp_path / "plane.csv", "--seed", "3")) == 0
    model = _model(checkpoint)
    directions = [random_direction(model, seed=s) for s in (3, 4)]
    expected = surface_2d(model, batch, directions, grid, grid, chunk_size=7, progress=False).frame()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "plane.csv"), expected, check_exact=False, rtol=1e-12)
    meta = json.loads((tmp_path / "plane.csv.meta.json").read_text())
    assert meta["config"]["chunks_computed"] == 4 and meta["arguments"]["seed"] == 3
    assert main(_surface_args(checkpoint, tmp_path / "plane.csv", "--seed", "3")) == 0  # resumes from the chunks
    assert json.loads((tmp_path / "plane.csv.meta.json").read_text())["config"]["chunks_reused"] == 4
    assert "0 chunks computed and 4 reused on 1 process(es)" in capsys.readouterr().out

    assert main(_surface_args(checkpoint, tmp_path / "line.csv", "--dims", "1")) == 0
    line = surface_1d(model, batch, random_direction(model, seed=0), grid, progress=False).frame()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "line.csv"), line, check_exact=False, rtol=1e-12)

    assert main(_surface_args(start, tmp_path / "interp.csv", "--dims", "1", "--to", str(checkpoint))) == 0
    alphas = make_grid(-0.5, 1.5, 5)
    interp = interpolate_1d(_model(start), _model(start), model, batch, alphas, progress=False).frame()
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "interp.csv"), interp, check_exact=False, rtol=1e-12)


def _library_curvature(checkpoint, batch):
    hessian = HessianOperator(_model(checkpoint), F.cross_entropy, batch, torch.float64, 1000)
    eigen = lanczos_eigenpairs(hessian, k=2, seed=0)
    trace = hutchinson_trace(hessian, max_applications=6, rtol=0.0, min_samples=6, seed=0)
    density = slq_density(hessian, probes=2, steps=5, num_grid=200, seed=0)
    return eigen, trace, density


def test_curvature_equals_the_library(trained, tmp_path):
    checkpoint, _, batch = trained
    assert main(_curvature_args(checkpoint, tmp_path / "c.csv", *DENSITY)) == 0
    frame = pd.read_csv(tmp_path / "c.csv").set_index(["estimator", "quantity", "index"])["value"].sort_index()
    eigen, trace, density = _library_curvature(checkpoint, batch)
    np.testing.assert_allclose(frame["lanczos", "eigenvalue"], eigen.eigenvalues, rtol=1e-10)
    assert frame["lanczos", "converged"].tolist() == [1.0, 1.0]
    assert frame["hutchinson", "trace", 0] == pytest.approx(trace.estimate, rel=1e-12)
    assert frame["hutchinson", "standard_error", 0] == pytest.approx(trace.standard_error, rel=1e-9)
    np.testing.assert_allclose(frame["slq", "grid"], density.grid, rtol=1e-9)
    np.testing.assert_allclose(frame["slq", "density"], density.density, rtol=1e-6, atol=1e-12)
    meta = json.loads((tmp_path / "c.csv.meta.json").read_text())
    assert meta["config"]["parameters"] == 610 and meta["config"]["examples"] == SAMPLES


def test_missing_or_mismatched_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    checkpoint, _, _ = trained
    assert main(_curvature_args(tmp_path / "absent.pt", tmp_path / "c.csv")) == 2
    assert "absent.pt' does not exist" in capsys.readouterr().err
    args = _surface_args(checkpoint, tmp_path / "s.csv")
    args[args.index('{"widths": [8]}')] = '{"widths": [16]}'
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "'layers.0.weight' has shape (8, 64) in the checkpoint, (16, 64) in the model" in err
    args[args.index('{"widths": [16]}')] = '{"widths": [8, 8]}'
    assert main(args) == 2
    assert "the model's 'layers.2.weight' is missing" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkout_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` with this checkout first on the child's module search path, so it runs the code under test."""
    root = str(Path(__file__).resolve().parents[2])
    return {**env, "PYTHONPATH": os.pathsep.join([root, *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])}


def _torchrun(command: list[str]) -> subprocess.CompletedProcess:
    launch = ["-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launch += ["--master-addr", "127.0.0.1", "--master-port", str(_free_port())]
    env = {k: v for k, v in os.environ.items() if k not in distributed.TORCHRUN_VARIABLES}
    env = _checkout_env(env | {"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    done = subprocess.run([sys.executable, *launch, "-m", "studies.cli", *command], env=env, capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("command", ["surface", "curvature"])  # two tests: test workers can run them side by side
def test_surface_and_curvature_under_torchrun_equal_one_process(trained, tmp_path, command):
    checkpoint, _, _ = trained
    torch.set_num_threads(1)
    args = {"surface": _surface_args, "curvature": _curvature_args}[command]
    assert main(args(checkpoint, tmp_path / "one.csv")) == 0
    done = _torchrun(args(checkpoint, tmp_path / "two.csv"))
    assert done.stdout.count("on 2 process(es)") == 1  # rank 0 prints
    one, two = (pd.read_csv(tmp_path / f"{n}.csv") for n in ("one", "two"))
    pd.testing.assert_frame_equal(two, one, check_exact=False, rtol=1e-6, atol=1e-12)
    if command == "surface":
        config = json.loads((tmp_path / "two.csv.meta.json").read_text())["config"]
        assert config["world_size"] == 2 and config["chunks_computed"] == 4  # computed, not read from one's chunks
