"""Fused kernels behind the layers and dispatch backends.

peer_experts: PEER's gather + expert step in torch (CPU default; chunked, optionally torch.compile'd).
peer_native: PEER's product-key top-k and u gather-dot in C for CPU inference (compiled once with the
system C compiler, run on torch's OpenMP threads); `available()` is False without a compiler.
peer_triton, grouped_triton: Triton (GPU) kernels, imported only when used; on CPU they run under the
Triton interpreter (TRITON_INTERPRET=1, set before triton is first imported), which the tests use.
"""
