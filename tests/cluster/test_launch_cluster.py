"""launch.py's --cluster when the cluster cannot be reached: a sentence, and the offer to run alone."""

import io

import pytest

pytest.importorskip("ray", reason="the cluster packages (pip install -e .[cluster]) are not installed")

import launch  # noqa: E402
from app.cluster import connect as connect_module  # noqa: E402
from app.cluster.connect import ClusterUnreachable, parse_cluster, unreachable_sentence  # noqa: E402
from app.errors import EaselError  # noqa: E402


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def unreachable(monkeypatch):
    def refuse(value, settings):
        raise ClusterUnreachable(unreachable_sentence(parse_cluster(value), ConnectionError("connection refused")))

    monkeypatch.setattr(connect_module, "connect", refuse)


def test_unreachable_in_a_terminal_offers_this_machine_alone(unreachable, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", Terminal("\n"))
    monkeypatch.setattr("builtins.input", lambda prompt: print(prompt) or "")
    assert launch.cluster_workers("ray://10.0.0.9:10001", settings=None) is None  # None: run here alone
    shown = capsys.readouterr()
    assert "could not reach the Ray cluster at ray://10.0.0.9:10001" in shown.err
    assert "Run Easel on this machine alone instead?" in shown.out


def test_unreachable_and_declined_does_not_start(unreachable, monkeypatch):
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(EaselError, match="Start the cluster, then start Easel again"):
        launch.cluster_workers("auto", settings=None)


def test_unreachable_without_a_terminal_says_how_to_run_alone(unreachable, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(EaselError, match="without --cluster to run on this machine alone"):
        launch.cluster_workers("auto", settings=None)
    assert "ray start --head" in capsys.readouterr().err


def test_a_malformed_cluster_value_is_a_sentence():
    with pytest.raises(EaselError, match="--cluster takes auto, ray://HOST:PORT or local:N"):
        launch.cluster_workers("everywhere", settings=None)
