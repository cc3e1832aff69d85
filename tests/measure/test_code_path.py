"""The code-path recorder: notes count only while recording, the first note of a step stays."""

import pytest

from moebench.measure.code_path import note, recording


def test_notes_are_kept_only_while_recording():
    note("experts", "torch")  # nothing records: no effect, no error
    with recording() as code:
        note("experts", "native_c")
        note("experts", "torch")  # a backward rerunning the step in other code: the forward's note stays
        note("combine", "onednn")
    note("sort", "torch")
    assert code == {"experts": "native_c", "combine": "onednn"}


def test_an_unknown_implementation_is_a_bug_at_the_call_site():
    with recording(), pytest.raises(ValueError, match="allowed values are native_c, onednn, torch"):
        note("experts", "cuda")
