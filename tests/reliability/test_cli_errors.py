"""The ``valley`` command's promise: a user's mistake is one line on stderr and exit status 2, never a traceback.

Each case runs the command in process (``main(argv)``) and checks the status, that stderr is exactly one line without
"Traceback", the words that name the problem, and that special files at output paths are left untouched. A few cases
run the command as a subprocess: a real Ctrl-C (status 130, finished chunks kept) and one end-to-end error.
"""

import argparse
import hashlib
import json
import os
import runpy
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from studies import analyse, arguments, catalog
from studies.cli import main
from studies.errors import UserError
from studies.models import make_model

ROOT = Path(__file__).resolve().parents[2]
MODEL = ["--model", "mlp", "--model-kwargs", '{"widths": [8]}', "--dataset", "digits"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A digits MLP 64-8-10 saved in studies.train's format."""
    path = tmp_path_factory.mktemp("checkpoint") / "net.pt"
    torch.manual_seed(0)
    torch.save({"model": make_model("mlp", (1, 8, 8), 10, widths=(8,)).state_dict(), "step": 0}, path)
    return path


def surface(checkpoint, out, *extra):
    base = ["--samples", "16", "--resolution", "3", "--no-progress", "--out", str(out)]
    return ["surface", "--checkpoint", str(checkpoint), *MODEL, *base, *extra]


def curvature(checkpoint, out, *extra):
    base = ["--samples", "16", "--top-k", "1", "--trace-probes", "2", "--no-progress", "--out", str(out)]
    return ["curvature", "--checkpoint", str(checkpoint), *MODEL, *base, *extra]


def fails(capsys, argv, *words, status=2):
    """Run ``valley argv``: it returns ``status`` with exactly one line on stderr holding ``words``."""
    assert main([str(a) for a in argv]) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err
    return err


def with_kwargs(checkpoint, out, kwargs):
    argv = surface(checkpoint, out)
    argv[argv.index('{"widths": [8]}')] = kwargs
    return argv


# --- names and options -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["study", "no-such-study"], ["valley study: error:", "invalid choice: 'no-such-study'"]),
        (["figures", "--only", "no-such-figure"], ["valley figures: error:", "'no-such-figure'"]),
        (["frobnicate"], ["valley: error:", "'frobnicate'"]),
        ([], ["valley: error: choose a command"]),
        (["study", "ravines", "--scale", "huge"], ["--scale: invalid choice: 'huge'"]),
        (["surface", "--model", "mlp"], ["valley surface: error:", "required"]),
    ],
)
def test_unknown_names_and_usage(capsys, argv, words):
    fails(capsys, argv, *words)


def test_unknown_model_and_dataset(capsys, checkpoint, tmp_path):
    argv = surface(checkpoint, tmp_path / "s.csv")
    argv[argv.index("mlp")] = "no-such-model"
    fails(capsys, argv, "--model 'no-such-model' is neither a built-in name nor of the form pkg.module:function")
    argv = surface(checkpoint, tmp_path / "s.csv")
    argv[argv.index("digits")] = "no-such-data"
    fails(capsys, argv, "--data 'no-such-data' is neither a built-in name nor of the form pkg.module:function")


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ("{bad json", ["--model-kwargs: not valid JSON"]),
        ("[8]", ["--model-kwargs: expected a JSON object"]),
        ('{"widths": [8], "depth": 3}', ["mlp has no option 'depth'", "widths, dropout"]),
        ('{"widths": "8"}', ["widths='8': expected a list of integers"]),
        ('{"widths": [8.5]}', ["widths=[8.5]: expected a list of integers"]),
        ('{"widths": [8], "dropout": "high"}', ["dropout='high': expected a number"]),
        ('{"widths": [8], "dropout": true}', ["dropout=True: expected a number"]),
    ],
)
def test_bad_model_kwargs(capsys, checkpoint, tmp_path, kwargs, words):
    fails(capsys, with_kwargs(checkpoint, tmp_path / "s.csv", kwargs), *words)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("device", "words"),
    [("bogus", ["unknown device 'bogus'"]), ("meta", ["cpu or cuda, not on 'meta'"]), ("cuda", ["no CUDA device"])],
)
def test_bad_device_everywhere(capsys, checkpoint, tmp_path, monkeypatch, device, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(catalog, "get", lambda name: pytest.fail("the study started"))
    runs = ["--runs-dir", tmp_path / "runs", "--no-progress"]
    for argv in (
        surface(checkpoint, tmp_path / "s.csv", "--device", device),
        curvature(checkpoint, tmp_path / "c.csv", "--device", device),
        ["study", "ravines", "--scale", "tiny", "--device", device, *runs],
        ["figures", "--only", "ravines", "--scale", "tiny", "--device", device, "--out", tmp_path / "f", *runs],
    ):
        fails(capsys, argv, "--device", *words)


def test_a_grid_that_cannot_fit_is_refused_before_allocating(capsys, checkpoint, tmp_path):
    err = fails(capsys, surface(checkpoint, tmp_path / "s.csv", "--resolution", "100000"), "--resolution 100000")
    assert "10,000,000,000 points" in err and "GiB" in err
    assert not (tmp_path / "s.chunks").exists()  # refused before the cache folder was made


def test_eigenvectors_that_cannot_fit_are_refused_before_the_work(capsys, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(analyse, "_memory_bytes", lambda: 2**20)  # a machine with 1 MiB
    argv = curvature(checkpoint, tmp_path / "c.csv", "--top-k", "200")  # 200 × 610 float64 = 0.93 MiB > 0.5 MiB
    fails(capsys, argv, "--top-k 200: 200 eigenvectors of 610 parameters need about 0.0 GiB")
    assert not (tmp_path / "c.csv").exists()
    assert main(curvature(checkpoint, tmp_path / "c.csv", "--top-k", "100")) == 0  # 0.47 MiB fits


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--span", "nan"], ["--span: expected a positive number of at most 1e+300, got 'nan'"]),
        (["--span", "0"], ["--span: expected a positive number"]),
        (["--chunk-size", "0"], ["Invalid --chunk-size: 0"]),
        (["--dims", "2", "--to", "x.pt"], ["--to interpolates in 1D"]),
    ],
)
def test_bad_surface_values(capsys, checkpoint, tmp_path, extra, words):
    fails(capsys, surface(checkpoint, tmp_path / "s.csv", *extra), *words)


# --- damaged checkpoints -----------------------------------------------------------------------------------------


def _damaged(folder: Path, kind: str, good: Path) -> Path:
    path = folder / f"{kind}.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "text":
        path.write_text("weights: none\n")
    elif kind == "random":
        path.write_bytes(b"\x07" + np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif kind == "architecture":
        torch.save(make_model("lenet5", (1, 8, 8), 10).state_dict(), path)
    elif kind == "meta":
        state = make_model("mlp", (1, 8, 8), 10, widths=(8,)).state_dict()
        torch.save({k: torch.empty_like(v, device="meta") for k, v in state.items()}, path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("empty", ["is empty"]),
        ("truncated", ["is a damaged PyTorch checkpoint"]),
        ("text", ["is not a PyTorch checkpoint", "b'weig'"]),
        ("random", ["is not a PyTorch checkpoint"]),
        ("architecture", ["does not fit mlp", "'layers.0.weight' is missing"]),
        ("meta", ["holds meta tensors"]),
        ("folder", ["is a folder, not a checkpoint file"]),
        ("fifo", ["is a special file"]),  # refused without being opened: opening a FIFO would wait for a writer
    ],
)
def test_damaged_checkpoints(capsys, checkpoint, tmp_path, kind, words):
    bad = _damaged(tmp_path, kind, checkpoint)
    fails(capsys, surface(bad, tmp_path / "s.csv"), f"checkpoint '{bad}'", *words)
    fails(capsys, curvature(bad, tmp_path / "c.csv"), *words)
    argv = surface(checkpoint, tmp_path / "s.csv", "--dims", "1", "--to", bad)
    fails(capsys, argv, f"checkpoint '{bad}'", *words)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_a_malicious_pickle_is_refused_and_the_message_says_why(capsys, tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, path)
    words = ["was refused", "other than tensors and plain containers", "system)", "never runs code"]
    fails(capsys, surface(path, tmp_path / "s.csv"), *words)
    assert not marker.exists()


def test_a_missing_checkpoint(capsys, tmp_path):
    fails(capsys, surface(tmp_path / "absent.pt", tmp_path / "s.csv"), "absent.pt' does not exist")


# --- outputs -----------------------------------------------------------------------------------------------------


def _special(path: Path, kind: str) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        target = path.with_name("target.txt")
        target.write_text("keep me\n")
        path.symlink_to(target)
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    elif kind == "folder":
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("fifo", ["refusing to replace a FIFO"]),
        ("symlink", ["refusing to replace a symbolic link"]),
        ("device", ["refusing to replace a character device"]),
        ("folder", ["refusing to replace a folder"]),
    ],
)
def test_special_files_at_out_are_refused_and_untouched(capsys, checkpoint, tmp_path, monkeypatch, kind, words):
    monkeypatch.setattr(analyse, "analysis_target", lambda args: pytest.fail("the work started"))
    node = tmp_path / "node"
    _special(node, kind)
    before = os.lstat(node)
    for argv in (surface(checkpoint, node), curvature(checkpoint, node)):
        fails(capsys, argv, str(node), *words)
    after = os.lstat(node)
    assert (after.st_mode, after.st_ino, after.st_rdev, after.st_mtime_ns) == (
        before.st_mode, before.st_ino, before.st_rdev, before.st_mtime_ns
    )  # fmt: skip
    if kind == "symlink":
        assert node.with_name("target.txt").read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "node.chunks") == sorted(
        ["node", "target.txt"] if kind == "symlink" else ["node"]
    )


def test_special_file_at_the_sidecar_is_refused(capsys, checkpoint, tmp_path):
    os.mkfifo(tmp_path / "s.csv.meta.json")
    fails(capsys, surface(checkpoint, tmp_path / "s.csv"), "s.csv.meta.json: refusing to replace a FIFO")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("make", "out", "extra", "words"),
    [
        (lambda t: (t / "a").write_text("x"), "a/s.csv", [], ["a parent of this path is a file"]),
        (
            lambda t: (t / "cache").write_text("x"),
            "s.csv",
            ["--cache-dir", "cache"],
            ["expected a folder, found a file"],
        ),
        (lambda t: os.mkfifo(t / "cache"), "s.csv", ["--cache-dir", "cache"], ["expected a folder, found a FIFO"]),
        (lambda t: None, "x" * 300 + ".csv", [], ["is longer than"]),
        # the output itself as the cache: the whole grid was computed and then refused
        (lambda t: None, "s.csv", ["--cache-dir", "s.csv"], ["s.csv is the output file itself"]),
        (lambda t: None, "s.csv", ["--cache-dir", "s.csv.meta.json"], ["json is the output file itself"]),
    ],
)
def test_unusable_output_paths(capsys, checkpoint, tmp_path, monkeypatch, make, out, extra, words):
    monkeypatch.setattr(analyse, "analysis_target", lambda args: pytest.fail("the work started"))
    make(tmp_path)
    extra = [e if e.startswith("--") else str(tmp_path / e) for e in extra]
    fails(capsys, surface(checkpoint, tmp_path / out, *extra), *words)


def test_an_unwritable_folder_is_refused_before_the_work(capsys, checkpoint, monkeypatch):
    monkeypatch.setattr(analyse, "analysis_target", lambda args: pytest.fail("the work started"))
    fails(capsys, curvature(checkpoint, "/proc/valley-test.csv"), "/proc", "not writable")


def test_unusable_folders_of_study_figures_and_theory(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "get", lambda name: pytest.fail("the study started"))
    (tmp_path / "file").write_text("x")
    file = tmp_path / "file"
    fails(capsys, ["study", "ravines", "--runs-dir", file], f"{file}/ravines", "a parent is not a folder")
    argv = ["figures", "--only", "ravines", "--runs-dir", tmp_path / "runs", "--out", file]
    fails(capsys, argv, f"{file}/ravines")
    fails(capsys, ["theory", "--out", file], str(file), "expected a folder, found a file")
    (tmp_path / "theory").mkdir()
    os.mkfifo(tmp_path / "theory" / "theory.md")
    fails(capsys, ["theory", "--out", tmp_path / "theory"], "theory.md: refusing to replace a FIFO")


def test_out_json_keeps_the_csv_and_the_sidecar_describes_it(capsys, checkpoint, tmp_path):
    out = tmp_path / "s.json"
    assert main(surface(checkpoint, out)) == 0
    table = out.read_text()
    assert table.startswith("alpha,beta,loss,accuracy\n") and table.count("\n") == 10
    meta = json.loads((tmp_path / "s.json.meta.json").read_text())
    assert meta["written_by"] == "valley" and meta["output"] == "s.json"
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert main(surface(checkpoint, out)) == 0  # valley's own files are replaced on a second run
    assert "1 reused" in capsys.readouterr().out


class _Hung(BaseException):
    """Raised by the alarm: passes every ``except Exception`` and fails the test."""


def _hung(*_):
    raise _Hung("blocked: a FIFO was opened")


def test_a_fifo_where_the_old_sidecar_was_is_not_opened(capsys, checkpoint, tmp_path):
    (tmp_path / "s.csv").write_text("alpha,loss\n")
    os.mkfifo(tmp_path / "s.json")
    previous = signal.signal(signal.SIGALRM, _hung)
    signal.alarm(20)  # fail rather than hang if it is opened
    try:
        fails(capsys, surface(checkpoint, tmp_path / "s.csv"), "s.csv: exists and valley did not write it")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_files_valley_did_not_write_are_never_replaced(capsys, checkpoint, tmp_path):
    (tmp_path / "s.csv.meta.json").write_text("my notes\n")
    fails(capsys, surface(checkpoint, tmp_path / "s.csv"), "s.csv.meta.json: exists and valley did not write it")
    assert (tmp_path / "s.csv.meta.json").read_text() == "my notes\n"
    (tmp_path / "t.csv").write_text("my table\n")
    fails(capsys, surface(checkpoint, tmp_path / "t.csv"), "t.csv: exists and valley did not write it")
    assert (tmp_path / "t.csv").read_text() == "my table\n"


def test_analyse_and_theory_never_replace_files_valley_did_not_write(capsys, checkpoint, tmp_path):
    """``analyse --out DIR`` replaced a user's line.csv and report.html, ``theory --out DIR`` their theory.md."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "line.csv").write_text("precious\n")
    argv = ["analyse", "--checkpoint", str(checkpoint), *MODEL, "--parts", "line", "--line-points", "3"]
    fails(capsys, [*argv, "--no-figures", "--out", str(out)], "mine: holds line.csv and no analysis.json")
    assert (out / "line.csv").read_text() == "precious\n"
    run = tmp_path / "run"  # a run folder holding the checkpoint: nothing of it is replaced
    run.mkdir()
    (run / "net.pt").write_bytes(checkpoint.read_bytes())
    assert main([*argv, "--no-figures", "--no-progress", "--out", str(run)]) == 0
    assert (run / "net.pt").read_bytes() == checkpoint.read_bytes()
    ours = tmp_path / "ours"  # valley's own folder is valley's to write into again
    for _ in range(2):
        assert main([*argv, "--no-figures", "--no-progress", "--out", str(ours)]) == 0
    capsys.readouterr()
    (tmp_path / "theory.md").write_text("# my derivations\n")
    fails(capsys, ["theory", "--out", str(tmp_path)], "theory.md: exists and valley did not write it")
    assert (tmp_path / "theory.md").read_text() == "# my derivations\n"


# --- data files through the command ------------------------------------------------------------------------------


def test_a_damaged_data_file_is_one_line_naming_it(capsys, checkpoint, tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    record = np.zeros(3073, np.uint8)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        record.tofile(folder / name)
    (folder / "data_batch_3.bin").write_bytes(record.tobytes()[:-1])
    argv = surface(checkpoint, tmp_path / "s.csv", "--data-dir", tmp_path)
    argv[argv.index("digits")] = "cifar10"
    fails(capsys, argv, "data_batch_3.bin: size 3072 bytes is not a whole number")


# --- the boundary itself -----------------------------------------------------------------------------------------


def test_debug_shows_the_traceback(checkpoint, tmp_path):
    with pytest.raises(UserError, match="is empty"):
        main([*surface(_damaged(tmp_path, "empty", checkpoint), tmp_path / "s.csv"), "--debug"])
    with pytest.raises(UserError, match="choose a command"):
        main(["--debug"])


def _raise(error):
    def command(args):
        raise error

    return command


@pytest.mark.parametrize(
    "error",
    [TypeError("unsupported operand"), KeyError("layers"), RuntimeError("shape mismatch")],
)
def test_an_internal_error_is_not_disguised_as_a_user_error(capsys, checkpoint, tmp_path, monkeypatch, error):
    monkeypatch.setattr(analyse, "_cmd_curvature", _raise(error))
    err = fails(capsys, curvature(checkpoint, tmp_path / "c.csv"), "internal error", "--debug", status=1)
    assert type(error).__name__ in err


def test_a_value_error_from_inside_a_library_is_an_internal_error(capsys, checkpoint, tmp_path, monkeypatch):
    def command(args):
        np.zeros(3).reshape(2, 2)  # a ValueError raised by numpy, not by valley's own checks

    monkeypatch.setattr(analyse, "_cmd_curvature", command)
    fails(capsys, curvature(checkpoint, tmp_path / "c.csv"), "internal error", "ValueError", status=1)


def test_ctrl_c_in_process_is_one_line_and_status_130(capsys, checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(analyse, "analysis_target", _raise(KeyboardInterrupt()))
    fails(capsys, surface(checkpoint, tmp_path / "s.csv"), "valley surface: interrupted; 0 finished chunks", status=130)
    monkeypatch.setattr(catalog, "get", _raise(KeyboardInterrupt()))
    argv = ["study", "ravines", "--runs-dir", tmp_path / "runs", "--no-progress"]
    fails(capsys, argv, "valley study: interrupted; 0 finished runs kept", status=130)


def _swallowed_interrupt(args):
    """Ctrl-C inside an import that a library swallows, leaving a half-imported module that fails later."""
    try:
        signal.raise_signal(signal.SIGINT)
    except KeyboardInterrupt:
        pass
    raise AttributeError("module 'numpy._core' has no attribute '_multiarray_umath'")


def test_an_error_after_a_swallowed_ctrl_c_is_reported_as_the_interrupt(capsys, checkpoint, tmp_path, monkeypatch):
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is not Python's default handler in this process")
    monkeypatch.setattr(analyse, "analysis_target", _swallowed_interrupt)
    fails(capsys, surface(checkpoint, tmp_path / "s.csv"), "valley surface: interrupted; 0 finished chunks", status=130)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _env() -> dict:
    return os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def test_ctrl_c_keeps_the_finished_chunks(checkpoint, tmp_path):
    out, cache = tmp_path / "s.csv", tmp_path / "chunks"
    argv = surface(checkpoint, out, "--resolution", "60", "--chunk-size", "1", "--cache-dir", cache)
    argv[argv.index("--samples") + 1] = "1000"
    command = [sys.executable, "-m", "studies.cli", *map(str, argv)]
    # A child inherits an ignored SIGINT (pytest-xdist workers ignore it), and Python then installs no handler:
    # restore the default so that the child sees Ctrl-C as a user's shell delivers it.
    process = subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not list(cache.glob("*/chunk_*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    kept = len(list(cache.glob("*/chunk_*.npz")))
    assert 1 <= kept < 3600
    assert err == f"valley surface: interrupted; {kept} finished chunks kept in {cache}\n"
    assert not out.exists()


def _probe(tmp_path, probe: str, interrupted_module: str | None = None) -> tuple[int, str]:
    """Exit status and stderr of ``python -m`` on the script ``probe`` (beside ``interrupted_module``, if given).

    The child gets the default SIGINT disposition, as a shell starts it (see above). The probes wait 60 s at most
    after their import; 30 s without an exit means an interrupt never reached the main thread.
    """
    (tmp_path / "valley_probe.py").write_text(probe)
    if interrupted_module is not None:
        (tmp_path / "interrupted_module.py").write_text(f"import signal, time\n{interrupted_module}\n")
    env = _env() | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-m", "valley_probe"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return done.returncode, done.stderr


def _probe_command(body: str) -> str:
    """A probe script running valley's ``main`` on a command ``probe`` whose function is ``run`` in ``body``."""
    lines = [
        "import argparse, sys, time",
        "from studies import cli",
        body,
        'args = argparse.Namespace(command="probe", debug=False, func=run, kept=lambda args: kept(args))',
        "cli._Parser.parse_args = lambda self, *a, **k: args",
        "sys.exit(cli.main([]))",
    ]
    return "\n".join(lines) + "\n"


EXEC_INTERRUPT = 'exec("raise KeyboardInterrupt")  # Ctrl-C inside code built from a string, as dataclasses build'
PRESS = "signal.raise_signal(signal.SIGINT)"
HELD = "interrupt received; stopping once the module being imported has loaded (Ctrl-C again to stop now)\n"


def test_ctrl_c_inside_exec_of_a_string_still_exits_130_under_python_m(tmp_path):
    """CPython flags a KeyboardInterrupt raised inside exec() of a string as unhandled even once it is caught;
    under ``python -m`` such a process killed itself with SIGINT (status -2) after saying it was interrupted."""
    probe = _probe_command(f"def run(args):\n    {EXEC_INTERRUPT}\n\ndef kept(args):\n    return 'all kept'")
    assert _probe(tmp_path, probe) == (130, "valley probe: interrupted; all kept\n")


def test_an_interrupt_caught_inside_the_command_does_not_change_its_status_under_python_m(tmp_path):
    body = f"def run(args):\n    try:\n        {EXEC_INTERRUPT}\n    except KeyboardInterrupt:\n        return 0"
    assert _probe(tmp_path, _probe_command(body + "\n\nkept = None")) == (0, "")


IMPORTING = """
def run(args):
    import interrupted_module  # Ctrl-C arrives while its body runs
    time.sleep(60)

def kept(args):  # counting what is kept takes a while (a large cache)
    end = time.monotonic() + 0.2
    while time.monotonic() < end:
        pass
    return "all kept"
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f"{PRESS}\ntime.sleep(0.3)", "imported\n"),  # the import finishes, then the interrupt
        (f"{PRESS}\ntime.sleep(0.1)\n{PRESS}\nwhile True:\n    time.sleep(0.01)", ""),  # never ends: pressed again
        (f"{PRESS}\ntime.sleep(0.225)\n{PRESS}", ""),  # pressed again: one interrupt, not a burst after the import
    ],
    ids=["import_finishes", "import_never_ends", "pressed_twice"],
)
def test_ctrl_c_inside_an_import_waits_for_the_import_to_finish(tmp_path, body, expected):
    """Raised inside an import, KeyboardInterrupt can abort the process from an extension's C++ (torch) or leave a
    half-imported module: the interrupt is delivered once the import is over, or at once on a second Ctrl-C. An
    impatient second press is one interrupt, not a burst whose second lands while the first is being reported."""
    # The module's last line says its body ran to the end; said by the caller, the interrupt could cut the line.
    finished = f"{body}\nimport sys\nprint('imported', file=sys.stderr)"
    status, err = _probe(tmp_path, _probe_command(IMPORTING), finished)
    assert (status, err) == (130, f"valley probe: {HELD}{expected}valley probe: interrupted; all kept\n")


def test_end_to_end_a_mistake_is_one_line_without_traceback(tmp_path):
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    argv = ["surface", "--checkpoint", tmp_path / "text.pt", *MODEL, "--out", tmp_path / "s.csv"]
    done = subprocess.run(
        [sys.executable, "-m", "studies.cli", *map(str, argv)], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "is not a PyTorch checkpoint" in done.stderr


def test_nan_weights_are_one_warning_line_and_the_nan_surface_another(capsys, checkpoint, tmp_path):
    state = torch.load(checkpoint)
    state["model"][next(iter(state["model"]))][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    assert main([str(a) for a in surface(tmp_path / "nan.pt", tmp_path / "s.csv")]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("valley surface: warning: ") for line in lines), lines
    assert "holds 1 NaN or infinite values in 1 tensor(s)" in lines[0]
    assert "surface_2d: the loss is not finite at 9 of 9 points" in lines[1]  # what follows from it, said once


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seed", "99999999999999999999"], "--seed: expected a whole number in [0, 2**63 - 1]"),  # was an overflow
        (["--span", "1e308"], "--span: expected a positive number of at most 1e+300"),  # numpy's overflow, then alphas
        (["--span", "inf"], "--span: expected a positive number"),
    ],
)
def test_seed_and_span_out_of_range_are_named(capsys, checkpoint, tmp_path, argv, words):
    fails(capsys, surface(checkpoint, tmp_path / "s.csv", *argv), words)


@pytest.mark.parametrize("text", ["0", "-1", "x", "2.5", ""])
def test_a_count_that_is_not_a_whole_number_of_at_least_one_is_one_argparse_line(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"expected a whole number >= 1, got {text!r}"):
        arguments.count(text)
    assert arguments.count(" 3") == 3 and arguments.count_or_zero("0") == 0


@pytest.mark.parametrize(
    ("script", "argv"),
    [("bench_surface.py", ["--points", "0"]), ("bench_curvature.py", ["--threads", "0"]), ("bench_optim.py", ["0"])],
)
def test_the_benchmarks_refuse_a_bad_count_in_one_line(script, argv, capsys, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))  # bench_optim sets it
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "benchmarks" / script), run_name="__main__")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].endswith(f"expected a whole number >= 1, got {argv[-1]!r}")
