"""Which code ran each step of a forward: native C, oneDNN, torch, torch.compile, Triton or its interpreter.

    with recording() as code:        # bench.run_case: around its one untimed statistics forward
        layer(x)
    code  ->  {"sort": "native_c", "experts": "onednn", "swiglu": "native_c", "combine": "native_c"}

Call sites say what they run with `note(step, impl)` once they have chosen it. With no recorder active
(the timed loop) a note costs one context-variable lookup. Steps are the dispatch path's "sort",
"experts", the activation by name ("swiglu", "gelu", "relu"), "combine", "shared" (shared experts), and
PEER's phases "query", "subkey_scores", "candidate_topk", "gather_experts". A step noted twice in one
recording keeps its first note: the forward's, where a training step's backward reruns a step in other
code (the triton backend's backward is torch's grouped_mm). Records carry the result as their "code"
field (docs/results.md).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

IMPLS = ("native_c", "onednn", "torch", "torch_compile", "triton", "triton_interpreter")

_ACTIVE: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("moebench_code_path",
                                                                               default=None)


def note(step: str, impl: str) -> None:
    """Say that `step` of the running forward runs `impl` (one of IMPLS); a no-op when nothing records."""
    code = _ACTIVE.get()
    if code is not None:
        if impl not in IMPLS:
            raise ValueError(f"code_path.note: impl={impl!r} is invalid: allowed values are {', '.join(IMPLS)}")
        code.setdefault(step, impl)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, str]]:
    """Collect the notes of everything run inside into the yielded {step: impl} dict."""
    code: dict[str, str] = {}
    token = _ACTIVE.set(code)
    try:
        yield code
    finally:
        _ACTIVE.reset(token)


__all__ = ["IMPLS", "note", "recording"]
