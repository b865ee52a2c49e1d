"""Thread defaults: one thread unless two or more cores are idle; explicit choices stick."""

import pytest
import torch

from spectrostream import runtime
from spectrostream.cli import main


@pytest.mark.parametrize(
    ("cores", "load", "expected"),
    [(1, 0.0, 1), (2, 0.0, 1), (4, 0.0, 4), (4, 2.5, 1), (8, 5.0, 3), (16, 0.3, 4), (16, 15, 1)],
)
def test_default_threads(cores, load, expected):
    assert runtime.default_threads(cores, load) == expected


def test_explicit_choice_is_kept(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_chosen", False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    try:
        assert runtime.set_threads(2) == 2
        assert runtime.set_threads() == 2 == torch.get_num_threads()  # load() keeps it
        monkeypatch.setattr(runtime, "_chosen", False)
        assert runtime.set_threads() == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert runtime.set_threads() == 2  # the environment decided
        with pytest.raises(ValueError):
            runtime.set_threads(0)
    finally:
        torch.set_num_threads(before)


def test_cli_threads_option_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--threads", "0", "info", "x.ssc"])
    assert e.value.code == 2
    assert "positive integer" in capsys.readouterr().err
