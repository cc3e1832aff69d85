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
from moebench.report.fig_ratios import ratios
from moebench.report.fig_roofline import roofline
from moebench.report.fig_routing_tax import routing_crossover, routing_tax
from moebench.report.fig_throughput import throughput
from moebench.report.figure_base import Plot, case_label

__all__ = ["FIGURES", "FIGURES_BY_KIND", "MEMORY_QUANTITIES", "Plot", "case_label", "drops", "expert_load",
           "figures_for", "memory", "peer", "ratios", "roofline", "routing_crossover", "routing_tax", "throughput",
           "uniform_reference"]

FIGURES = {  # name: (section title, function, caption under the figure)
    "throughput": ("Throughput", throughput,
                   "Left: tokens per second at the median latency. Right: the expert FLOP rate (analytic expert "
                   "FLOPs / median latency) against the ceiling measured in the same run: a dense GEMM over the "
                   "same T·K rows. PEER has no FLOP ceiling (it is memory-bound; see its figure). A panel with "
                   "more cases than fit shows its fastest and says so in its title; the table lists them all."),
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
                    "divided by the mean over experts. A panel too large to read row by row averages the cases "
                    "that differ only in the axes its title names (capacity factor first)."),
    "peer": ("PEER latency against N", peer,
             "Median latency per step against the number of experts, both axes logarithmic, one colour per "
             "configuration (retrieval, heads H, top-k k, width D). Each configuration's floor, in its colour: "
             "the time to read the expert rows its step retrieves once at the measured copy bandwidth (a lower "
             "bound; it depends on T, H, k and D, not on N). Left: configurations measured at several N (dashed: "
             "their floors); right: those measured at one N, beside the sweep's points there (bar: the floor)."),
    "memory": ("Memory", memory,
               "Left: the measured peak (allocated during a step above what was live before it, so weights are "
               "excluded) beside the analytic upper bound on a forward's activations (every intermediate alive at "
               "once, accounting.layer_activation_bytes); training steps have no bound drawn: their peak also holds "
               "gradients and optimizer state. Right: the module's weights, apart. Bytes moved per step is traffic, "
               "not memory held: it is in the roofline."),
    "roofline": ("Roofline", roofline,
                 "Each forward case placed by arithmetic intensity (analytic FLOPs / analytic bytes one forward "
                 "moves, accounting.py) against achieved FLOP/s (analytic FLOPs / median latency), log-log. One "
                 "panel per run and dtype, under that panel's own ceilings: the roof is the highest dense-GEMM rate "
                 "measured for its cases (PEER has none: its panel shows the bandwidth line only), the dashed line "
                 "the measured copy bandwidth times intensity. Training steps are left out: their FLOPs count the "
                 "backward, the bytes a forward only. A point above the dashed line moved fewer bytes than counted "
                 "(the count assumes no cache reuse, e.g. PEER rows of a small table)."),
    "ratios": ("Ratios against the baseline run", ratios,
               "Only with two or more runs. Each point: a case's median time per step in another run divided by "
               "its median in the first run given (the baseline), on a log axis; bar: the 95% bootstrap CI of "
               "that ratio; colour: the verdict of moebench compare at its defaults (threshold 10%, alpha 0.01; "
               "CHANGED: other code ran); shaded: the band within which a change is SAME. Cases are paired by "
               "case id as compare pairs them; runs on different devices are compared on wall latency. Largest "
               "ratio first, at most 60 cases a panel."),
}
# "mixed" (quick) and unknown kinds get every figure their data supports. The roofline goes with the kinds
# whose suites measure FLOPs, bytes and both ceilings (ci and memory measure no ceiling; lifelong runs training
# steps only, whose FLOPs and bytes describe different work).
FIGURES_BY_KIND = {
    "throughput": ("throughput", "roofline"),
    "memory": ("memory",),
    "granularity": ("routing_tax", "throughput", "roofline"),
    "capacity": ("drops", "expert_load"),
    "peer": ("peer", "memory", "roofline"),
    "models": ("throughput", "expert_load", "memory", "roofline"),
    "routers": ("throughput", "drops", "expert_load", "roofline"),
    "lifelong": ("throughput", "memory"),
    "ci": ("throughput",),
}
SEVERAL_RUNS = ("ratios",)  # asked for by every kind; drawn only when the report has two or more runs


def figures_for(kinds) -> list[str]:
    """The figure names the given suite kinds call for, in FIGURES order."""
    wanted: set[str] = set(SEVERAL_RUNS)
    for kind in kinds:
        wanted |= set(FIGURES_BY_KIND.get(kind, FIGURES))
    return [name for name in FIGURES if name in wanted]
