"""The figures of a report, one function per figure (report/fig_*.py). Each takes the cases
DataFrame (report.data.load_runs) and returns a Plot (the figure and the rows it drew, for the
conditions line) or None when the data has nothing for that figure. Figures are built on
matplotlib's Agg canvas directly: no GUI backend, no pyplot global state.
"""

from __future__ import annotations

from moebench.report.fig_drops import drops, uniform_reference
from moebench.report.fig_expert_load import expert_load
from moebench.report.fig_memory import MEMORY_QUANTITIES, memory
from moebench.report.fig_peer import peer
from moebench.report.fig_routing_tax import routing_crossover, routing_tax
from moebench.report.fig_throughput import throughput
from moebench.report.figure_base import Plot, case_label

__all__ = ["FIGURES", "FIGURES_BY_KIND", "MEMORY_QUANTITIES", "Plot", "case_label", "drops", "expert_load",
           "figures_for", "memory", "peer", "routing_crossover", "routing_tax", "throughput", "uniform_reference"]

FIGURES = {  # name: (section title, function, caption under the figure)
    "throughput": ("Throughput", throughput,
                   "Left: tokens per second at the median latency. Right: the expert FLOP rate (analytic expert "
                   "FLOPs / median latency) against the ceiling measured in the same run: a dense GEMM over the "
                   "same T·K rows. PEER has no FLOP ceiling (it is memory-bound; see its figure)."),
    "routing_tax": ("Routing tax over granularity", routing_tax,
                    "Bars: each phase's median time as a share of the summed phase times (measured). Lines: the "
                    "analytic routing FLOP share of this layer, and Krajewski et al.'s routing share of a whole "
                    "transformer block (training FLOPs). The red line marks the first G where router + dispatch "
                    "+ combine time exceeds expert time."),
    "drops": ("Drops against capacity factor", drops,
              "Top row of each facet: measured fraction of (token, expert) assignments not computed for "
              "capacity; bottom row: the share of routing weight those assignments carried (dropped_weight_frac). "
              "Colour: routing distribution; solid: position policy, dashed: probs policy (the two drop equally "
              "many assignments, so their top-row lines coincide). Dotted: the exact binomial expectation of the "
              "drop rate if every token picked its K experts uniformly at random."),
    "expert_load": ("Expert load", expert_load,
                    "Each row is one case: the number of assignments each expert computed (after capacity), "
                    "divided by the mean over experts."),
    "peer": ("PEER latency against N", peer,
             "Median latency per step against the number of experts, both axes logarithmic. Dashed: the time to "
             "read the expert rows a step retrieves once at the measured copy bandwidth (a lower bound)."),
    "memory": ("Memory", memory,
               "Measured bytes (peak allocated during a step above what was live before it; the module's weights) "
               "beside analytic byte counts. Bytes moved is traffic per step, not memory held at once."),
}
# "mixed" (quick) and unknown kinds get every figure their data supports.
FIGURES_BY_KIND = {
    "throughput": ("throughput",),
    "memory": ("memory",),
    "granularity": ("routing_tax", "throughput"),
    "capacity": ("drops", "expert_load"),
    "peer": ("peer", "memory"),
    "models": ("throughput", "expert_load", "memory"),
    "routers": ("throughput", "drops", "expert_load"),
    "lifelong": ("throughput", "memory"),
    "ci": ("throughput",),
}


def figures_for(kinds) -> list[str]:
    """The figure names the given suite kinds call for, in FIGURES order."""
    wanted: set[str] = set()
    for kind in kinds:
        wanted |= set(FIGURES_BY_KIND.get(kind, FIGURES))
    return [name for name in FIGURES if name in wanted]
