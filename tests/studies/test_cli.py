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
