"""Fused kernels behind the layers and dispatch backends.

peer_experts: PEER's gather + expert step in torch (CPU default; chunked, optionally torch.compile'd).
peer_triton, grouped_triton: Triton (GPU) kernels, imported only when used; on CPU they run under the
Triton interpreter (TRITON_INTERPRET=1, set before triton is first imported), which the tests use.
"""
