from studies.cli import main


def test_list_runs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kingma2015adam" in out and "digits" in out and "embedded" in out


def test_unknown_study_is_rejected(capsys):
    assert main(["study", "no-such-study"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("valley study: error: argument name: invalid choice: 'no-such-study'")
    assert err.count("\n") == 1


def test_figures_theory_checks_follow_the_progress_switch(tmp_path, monkeypatch):
    """`valley figures --no-progress` runs the theory checks without their progress bar too."""
    import pandas as pd

    import theory
    from studies import cli

    seen = []

    def run_all(out_dir, progress):
        seen.append(progress)
        return pd.DataFrame({"item": ["x"], "passed": [True]})

    monkeypatch.setattr(theory, "run_all", run_all)
    for progress in (False, True):
        cli._theory_table(tmp_path / "out", tmp_path / "root", True, progress)
    assert seen == [False, True]
