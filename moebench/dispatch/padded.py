"""Padded capacity buffers (GShard / Switch style): every expert gets C slots, filled in assignment
order; one bmm per weight runs all experts at once, empty slots computing on zeros.

    slot(a)      = expert_a * C + (kept assignments of expert_a before a)     dropped a -> no slot
    x_ECD[e, c]  = x[token of the assignment in slot (e, c)], or 0 if the slot is empty
    out_ECD      = bmm(act(bmm(x_ECD, w_in_EID^T)), w_out_EDF^T)
    y_TD         = sum over kept a of weight_a * out_ECD[slot(a)]       (float32, like the loop)

Instead of GShard's one-hot [T, E, C] dispatch / combine einsums, dispatch and combine are two
gathers through a slot <-> token map (linear in T*K, not T*E*C).

C = routing.capacity when the router applied one: shapes are then static and nothing is read on
the host, so this mode can be captured in a CUDA graph. Dropless routing (capacity None) uses
C = the largest kept load, one host sync, and shapes that change with the routing.
Axis legend: T tokens, D model dim, F expert hidden dim, E experts, C capacity (slots per expert),
I = rows of w_in, A assignments.
"""

from __future__ import annotations

import torch

from moebench.dispatch.common import activate
from moebench.measure.code_path import note
from moebench.measure.phases import phase
from moebench.routing.assignment import Routing


def slot_in_expert(routing: Routing) -> tuple[torch.Tensor, torch.Tensor]:
    """Position of each kept assignment among its expert's kept assignments (assignment order), and
    the kept load per expert [E]. Dropped assignments get positions past every kept one.

    Same result as routing.capacity.position_in_expert with priority = assignment index on the kept
    assignments, but without torch.bincount, which syncs the host on CUDA to size its output.
    """
    E, A = routing.n_experts, routing.n_assignments
    key_A = torch.where(routing.kept_A, routing.expert_A, torch.full_like(routing.expert_A, E))
    order_A = torch.argsort(key_A, stable=True)  # stable: assignment order within each expert
    counts_E1 = torch.zeros(E + 1, dtype=torch.long, device=key_A.device).scatter_add_(0, key_A, torch.ones_like(key_A))
    starts_E1 = torch.cumsum(counts_E1, 0) - counts_E1
    pos_A = torch.empty_like(key_A)
    pos_A[order_A] = torch.arange(A, device=key_A.device) - starts_E1[key_A[order_A]]
    return pos_A, counts_E1[:E]


def run_padded(x_TD: torch.Tensor, routing: Routing, w_in_EID: torch.Tensor, w_out_EDF: torch.Tensor,
               activation: str) -> torch.Tensor:
    T, D = x_TD.shape
    E, kept_A = routing.n_experts, routing.kept_A
    for step in ("experts", activation, "combine"):
        note(step, "torch")
    with phase("dispatch"):
        pos_A, load_E = slot_in_expert(routing)
        if routing.capacity is not None:
            C = routing.capacity
            # The router promised at most C kept assignments per expert; a broken promise would spill
            # into the next expert's slots, so check it on the device (no host sync).
            torch._assert_async(((pos_A < C) | ~kept_A).all(), "padded backend: an expert keeps more than capacity")
        else:
            C = int(load_E.max()) if E else 0  # dropless: the host sync
        n_slots = E * C
        # Dropped assignments point at slot n_slots, a trash slot past the buffer.
        slot_A = torch.where(kept_A, routing.expert_A * C + pos_A, torch.full_like(pos_A, n_slots))
        # Which token fills each slot; empty slots read row T, a zero row appended to x.
        token_slot = torch.full((n_slots + 1,), T, dtype=torch.long, device=x_TD.device)
        token_slot = token_slot.scatter(0, slot_A, routing.token_A)[:n_slots]
        x_pad = torch.cat([x_TD, x_TD.new_zeros(1, D)])
        x_ECD = x_pad[token_slot].view(E, C, D)
    with phase("experts"):
        h_ECI = torch.bmm(x_ECD, w_in_EID.transpose(1, 2))
        out_ECD = torch.bmm(activate(h_ECI, activation), w_out_EDF.transpose(1, 2))
    with phase("combine"):
        # Dropped assignments read the zero row n_slots and so add nothing (and get no gradient).
        out_pad = torch.cat([out_ECD.reshape(n_slots, D), out_ECD.new_zeros(1, D)])
        out_AD = out_pad[slot_A].float() * routing.weight_A[:, None].float()
        y_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
        y_TD = y_TD.index_add(0, routing.token_A, out_AD)
        return y_TD.to(x_TD.dtype)
