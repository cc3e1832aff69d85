"""Capacity findings (figure drops): the capacity factor each routing distribution needs, how far
measured uniform drops lie from the binomial expectation, and (where recorded) how much routing
weight each drop policy throws away.

The drop rate is the metric `drop_rate`: the fraction of (token, expert) assignments not computed for
capacity. A series is one run, variant, E, K, T, min_capacity, routing distribution and drop policy (the
drops figure's facet and line): cases of another variant or min_capacity at one CF are never pooled
into one median. The full capacity suite holds 2 E x 2 K x 5 distributions x 2 policies = 40 series:
the CF findings are one sentence per (run, variant, E, K, T, min_capacity) naming every distribution,
and a policy only where the two policies' answers differ. A record lacking one of these keys is
grouped under '?', never dropped.
"""

from __future__ import annotations

import pandas as pd

from moebench.report.data import column
from moebench.report.findings.base import Finding
from moebench.report.findings.describe import OWN_ROUTER, conditions, tokens_per_step

FIGURE = "drops"
DROP_LIMITS = (0.01, 0.05)  # drop rates a reader asks the smallest CF for
EQUAL_CF = 1.0  # where the two drop policies' dropped weight mass is compared
SERIES = ["run", "variant", "E", "K", "T", "min C"]  # one facet of the drops figure


def capacity_findings(df: pd.DataFrame) -> list[Finding]:
    d = _capacity_rows(df)
    if d.empty:
        return []
    ok = d[(d["status"] == "ok") & d["drop rate"].notna()]
    if ok.empty:
        return [Finding(f"Every capacity case ({len(d)}) failed or has no drop rate: no capacity factor can be "
                        "named.", FIGURE, conditions(d), answered=False)]
    name_run = df["run"].nunique() > 1
    found = [_smallest_cf_finding(rows, name_run) for _, rows in d.groupby(SERIES, sort=False, dropna=False)]
    found.append(_uniform_gap_finding(ok, name_run))
    found += _policy_weight_findings(ok, name_run)
    return found


def _capacity_rows(df: pd.DataFrame) -> pd.DataFrame:
    """Token-choice cases with a capacity factor (dropless and expert choice have no CF), failed included."""
    if df.empty or "spec.capacity_factor" not in df:
        return df.iloc[0:0]
    d = df[column(df, "spec.capacity_factor").notna()].copy()
    if "spec.variant" in d:
        d = d[d["spec.variant"] != "expert_choice"]
    d["CF"] = column(d, "spec.capacity_factor")
    d["drop rate"] = column(d, "drop_rate")
    d["E"], d["K"] = column(d, "spec.n_experts"), column(d, "spec.top_k")
    d["T"] = tokens_per_step(d)
    d["variant"] = d["spec.variant"].fillna("?").astype(str) if "spec.variant" in d else "?"
    d["min C"] = column(d, "spec.min_capacity").fillna(0)
    d["routing"] = [_distribution(r) for _, r in d.iterrows()]
    d["policy"] = d["spec.drop_policy"].fillna("?").astype(str) if "spec.drop_policy" in d else "?"
    return d


def _distribution(row) -> str:
    name = row.get("workload.routing")
    name = OWN_ROUTER if name in (None, "router") or pd.isna(name) else str(name)
    extra = (row.get("case_params") or {}).get("routing_params") or {}
    return " ".join([name, *(f"{k}={v}" for k, v in sorted(extra.items()))])


def _cf(value: float) -> str:
    """1.0, 1.25, 0.5: a capacity factor as the suites write it."""
    text = f"{value:g}"
    return text if "." in text or "e" in text else text + ".0"


def _ek(rows: pd.DataFrame) -> str:
    """'E=8, K=2', led by the variant when it is not token_choice and followed by min_capacity when set:
    what sets one series apart from another in the sentence."""
    first = rows.iloc[0]
    head = "" if first["variant"] == "token_choice" else f"{first['variant']}, "
    text = f"{head}E={_int(first['E'])}, K={_int(first['K'])}"
    return text + (f", min_capacity {_int(first['min C'])}" if first["min C"] != 0 else "")


def _int(value: float) -> str:
    return str(int(value)) if pd.notna(value) else "?"


# --- the smallest CF under 1% and 5% ---------------------------------------------------------------

def _smallest_cf_finding(rows: pd.DataFrame, name_run: bool) -> Finding:
    """'E=8, K=2: the smallest CF with drops under 1% / under 5%: uniform 1.5 / 1.25; zipf ...'."""
    parts, answered = [], False
    for routing, by_routing in rows.groupby("routing", sort=True):
        answers = {policy: _smallest_cfs(series) for policy, series in by_routing.groupby("policy", sort=True)}
        if len(set(answers.values())) == 1:
            parts.append(f"{routing} {next(iter(answers.values()))}")
        else:
            parts.append(f"{routing} " + ", ".join(f"{a} ({p} policy)" for p, a in answers.items()))
        answered |= any(not a.startswith("no finished") for a in answers.values())
    limits = " / ".join(f"under {limit:.0%}" for limit in DROP_LIMITS)
    text = f"{_ek(rows)}: the smallest capacity factor with drops {limits} is " + "; ".join(parts) + "."
    return Finding(text, FIGURE, conditions(rows, name_run), answered=answered)


def _smallest_cfs(series: pd.DataFrame) -> str:
    """'1.5 / 1.25', '(none up to CF 2.0) / 1.5': one answer per limit, from the finished cases; a
    failed case at a smaller CF than the answer is said, since the answer could be that CF."""
    done = series[(series["status"] == "ok") & series["drop rate"].notna()]
    if done.empty:
        return "no finished case"
    failed = sorted(set(series["CF"]) - set(done["CF"]))
    by_cf = done.groupby("CF")["drop rate"].median().sort_index()
    answers = []
    for limit in DROP_LIMITS:
        under = by_cf[by_cf < limit]
        cf = under.index[0] if not under.empty else None
        # in brackets: "uniform (none up to CF 1.0) / 1.0" must not read as two numbers for one limit
        answer = _cf(cf) if cf is not None else f"(none up to CF {_cf(by_cf.index.max())})"
        if cf is not None and cf == series["CF"].min():
            answer += " (the smallest measured)"  # a smaller CF, not run, could do too
        unsure = [f for f in failed if cf is None or f < cf]
        answers.append(answer + (f" (CF {', '.join(_cf(f) for f in unsure)} failed)" if unsure else ""))
    if len(set(answers)) == 1 and answers[0].startswith("(none up to"):  # not even under the loosest limit
        return f"none under {max(DROP_LIMITS):.0%}" + answers[0].removeprefix("(none").removesuffix(")")
    return " / ".join(answers)


# --- measured uniform drops against the binomial expectation ------------------------------------

def _uniform_gap_finding(ok: pd.DataFrame, name_run: bool) -> Finding:
    """The largest |measured - expected| over the uniform-routing cases, in percentage points."""
    uniform = ok[(ok["routing"] == "uniform")].copy()
    uniform["expected"] = column(uniform, "expected_drop_rate_uniform")
    uniform = uniform[uniform["expected"].notna()]
    if uniform.empty:
        return Finding("Measured drops cannot be set against the binomial expectation: no finished case used "
                       "uniform routing with its expectation recorded.", FIGURE, conditions(ok, name_run),
                       answered=False)
    gap = uniform["drop rate"] - uniform["expected"]
    at = uniform.loc[gap.abs().idxmax()]
    place = [*SERIES, "CF"]
    same_place = uniform[(uniform[place].astype(str) == at[place].astype(str)).all(axis=1)]
    policy = f", {at['policy']} policy" if same_place["drop rate"].nunique() > 1 else ""  # else the policies agree
    where = f"{_ek(uniform.loc[[at.name]])}, CF {_cf(at['CF'])}{policy}"
    # cases where neither the expectation nor the measurement drops anything agree trivially: counted apart
    dropping = int(((uniform["drop rate"] > 0) | (uniform["expected"] > 0)).sum())
    text = (f"Measured uniform-routing drops lie within {abs(gap[at.name]) * 100:.2f} percentage points of the "
            f"binomial expectation over {len(uniform)} uniform-routing cases ({dropping} of them with a drop "
            f"expected or measured); the largest gap is at {where} "
            f"({at['drop rate']:.2%} measured against {at['expected']:.2%} expected).")
    return Finding(text, FIGURE, conditions(uniform, name_run))


# --- dropped routing-weight mass per drop policy ----------------------------------------------------

def _policy_weight_findings(ok: pd.DataFrame, name_run: bool) -> list[Finding]:
    """Where `dropped_weight_frac` is recorded: at CF 1.0, per K, the mean weight mass each policy drops
    over the series where both policies dropped equally many (and some) assignments, and which policy
    drops more. A series where each policy's dropped mass equals its drop rate (K=1 with renormalised
    weights: every weight is 1) cannot tell the policies apart: it is left out and counted."""
    weight = column(ok, "dropped_weight_frac")
    if weight.isna().all():
        return []
    d = ok.assign(weight=weight)
    d = d[(d["CF"] == EQUAL_CF) & d["weight"].notna() & d["policy"].isin(["position", "probs"])]
    index = [*SERIES, "routing"]
    pairs = d.assign(**{c: d[c].astype(str) for c in ("variant", "min C")}).pivot_table(
        index=index, columns="policy", values=["drop rate", "weight"], aggfunc="median")
    if pairs.empty or not {"position", "probs"} <= set(pairs["weight"].columns):
        return []
    pairs = pairs.dropna()
    equal = pairs[(pairs[("drop rate", "position")] - pairs[("drop rate", "probs")]).abs() < 1e-12]
    equal = equal[equal[("drop rate", "position")] > 0]  # no drop: no weight to compare
    mass_is_count = ((equal["weight"] - equal["drop rate"]).abs() < 1e-9).all(axis=1)
    found = []
    for k, by_k in equal.groupby(level="K", sort=True):
        trivial = int(mass_is_count[by_k.index].sum())
        telling = by_k[~mass_is_count[by_k.index]]
        found.append(_policy_weight_sentence(k, telling, trivial))
    cond = conditions(ok[ok["CF"] == EQUAL_CF], name_run)
    return [Finding(text, FIGURE, cond, answered=answered) for text, answered in found]


def _policy_weight_sentence(k: float, pairs: pd.DataFrame, trivial: int) -> tuple[str, bool]:
    head = f"At CF {_cf(EQUAL_CF)}, K={_int(k)}"
    left_out = (f" ({trivial} series where each policy's dropped mass equals its drop rate left out: they cannot "
                "tell the policies apart)") if trivial else ""
    if pairs.empty:
        return (f"{head}, the drop policies drop the same routing-weight mass{left_out}.", False)
    position, probs = pairs[("weight", "position")], pairs[("weight", "probs")]
    gap = probs.mean() - position.mean()
    verdict = ("both drop the same weight on average" if abs(gap) < 5e-5 else
               f"the {'probs' if gap > 0 else 'position'} policy drops more weight, by {abs(gap) * 100:.2f} "
               "percentage points")
    widest = (position - probs).abs().idxmax()
    where = f"{widest[-1]} at {_where(pairs, widest)}"
    text = (f"{head}, where both drop policies drop equally many assignments ({len(pairs)} series{left_out}), "
            f"the probs policy drops {probs.mean():.2%} of the routing-weight mass and the position policy "
            f"{position.mean():.2%} (means): {verdict}; the widest difference is {where}: {probs[widest]:.2%} "
            f"against {position[widest]:.2%}.")
    return (text, True)


def _where(pairs: pd.DataFrame, key: tuple) -> str:
    """'E=8' or 'sinkhorn, E=8, min_capacity 4': one series of the pivot, K said by the sentence."""
    named = dict(zip(pairs.index.names, key, strict=True))
    head = "" if named["variant"] == "token_choice" else f"{named['variant']}, "
    tail = f", min_capacity {named['min C']}" if float(named["min C"]) != 0 else ""
    return f"{head}E={_int(named['E'])}{tail}"
