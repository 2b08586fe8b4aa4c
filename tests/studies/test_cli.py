import pytest

from studies.cli import main


def test_list_runs(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "kingma2015adam" in out and "digits" in out and "embedded" in out


def test_unknown_study_is_rejected():
    with pytest.raises(SystemExit):
        main(["study", "no-such-study"])
