"""benchmarks/vs_transformers.py and vs_peer_pytorch.py: paired timing, argument errors, target checks (the
comparisons themselves need the [hf] extra and minutes: they are run by hand, see the README's Speed section)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
vs_transformers = pytest.importorskip("vs_transformers")


def test_paired_medians_times_each_fn_in_turns_of_one_warmup_and_a_block():
    calls = {"a": 0, "b": 0}
    order = []

    def make(name):
        def fn():
            calls[name] += 1
            order.append(name)
        return fn

    medians = vs_transformers.paired_medians([make("a"), make("b")], quick=True, block=3)
    assert len(medians) == 2 and all(m >= 0 for m in medians)
    assert calls["a"] == calls["b"] and calls["a"] % 4 == 0  # per round: 1 untimed + 3 timed each
    rounds = calls["a"] // 4
    assert rounds >= 2
    turns = [order[i] for i in range(0, len(order), 4)]
    assert turns[:4] == ["a", "b", "b", "a"]  # each round starts from the next fn


def test_paired_medians_tracks_which_fn_is_slower():
    import time

    fast, slow = (lambda: None), (lambda: time.sleep(0.002))
    m_fast, m_slow = vs_transformers.paired_medians([fast, slow], quick=True)
    assert m_slow > m_fast + 0.001


@pytest.mark.parametrize("argv, message", [(["--G", "3"], "--G [3] invalid"), (["--G", "x"], "--G 'x' invalid"),
                                           (["--dtypes", "int8"], "--dtypes 'int8' unknown")])
def test_bad_arguments_exit_2_with_one_message(argv, message, capsys):
    assert vs_transformers.main(argv) == 2
    assert message in capsys.readouterr().err


def test_vs_peer_pytorch_targets_use_unrounded_times():
    vs_peer = pytest.importorskip("vs_peer_pytorch")
    times = {"PEER-pytorch": 0.300, "moebench[torch]": 0.2, "moebench[native]": 0.1001}
    lines = vs_peer.targets(times, floor=0.05)
    assert "moebench[native]" in lines[0]
    assert lines[1].endswith("2.997x MISSED")  # 3.00 when rounded to two places
    assert lines[2].endswith("0.500 MISSED")  # 0.05 / 0.1001 = 0.4995
    assert vs_peer.targets({"PEER-pytorch": 0.3, "moebench[native]": 0.09}, floor=0.05)[2].endswith("ok")
