"""Interop with other MoE code (optional extras). Import the submodule you need, e.g.
`from moebench.interop.peer_pytorch import from_peer_pytorch`; nothing optional is imported here."""
