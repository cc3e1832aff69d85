"""Capacity findings: the smallest CF under 1% / 5% drops per (E, K) and distribution, the gap to the
binomial expectation, the policies' dropped weight mass, against hand counts; and a capacity report
that opens with them."""

from __future__ import annotations

import re

from report_records import case, write_run

from moebench.report import make_report
from moebench.report.data import load_runs
from moebench.report.findings import FINDINGS_BY_KIND
from moebench.report.findings.capacity import capacity_findings

CFS = (0.5, 1.0, 1.25, 1.5, 2.0)


def c_case(cf: float, routing: str, drop_rate: float, *, E: int = 8, K: int = 2, policy: str = "position",
           expected: float = 0.0, status: str = "ok", **metrics):
    params = {"capacity_factor": cf, "n_experts": E, "top_k": K, "routing": routing, "drop_policy": policy}
    record = case(",".join(f"{k}={v}" for k, v in params.items()), params,
                  spec={"capacity_factor": cf, "n_experts": E, "top_k": K, "drop_policy": policy},
                  metrics={"drop_rate": drop_rate, "expected_drop_rate_uniform": expected, **metrics},
                  status=status, error=None if status == "ok" else "RuntimeError: boom", tokens=4096)
    record["workload"]["routing"] = routing
    return record


def series(routing: str, drops, policy: str = "position", **kwargs):
    return [c_case(cf, routing, d, policy=policy, **kwargs) for cf, d in zip(CFS, drops, strict=True)]


UNIFORM = (0.30, 0.08, 0.03, 0.005, 0.0)  # under 5% from CF 1.25, under 1% from CF 1.5
EXPECTED = (0.31, 0.07, 0.035, 0.004, 0.0)  # measured - expected: -1, +1, -0.5, +0.1, 0 pp
ZIPF = (0.6, 0.4, 0.3, 0.2, 0.1)  # never under 5%


def findings(tmp_path, cases):
    _, df = load_runs([write_run(tmp_path / "capacity.jsonl", cases, kind="capacity", suite="capacity")])
    return capacity_findings(df)


def uniform_series(policy: str = "position"):
    return [c_case(cf, "uniform", d, policy=policy, expected=e) for cf, d, e in zip(CFS, UNIFORM, EXPECTED,
                                                                                   strict=True)]


def test_smallest_cf_under_1_and_5_percent_per_distribution(tmp_path):
    cases = [*uniform_series("position"), *uniform_series("probs"), *series("zipf", ZIPF),
             *series("zipf", ZIPF, policy="probs")]
    cf, gap = findings(tmp_path, cases)
    assert cf.answered and cf.figure == "drops"
    # the policies agree, so neither is named
    assert cf.text == ("E=8, K=2: the smallest capacity factor with drops under 1% / under 5% is uniform 1.5 / 1.25; "
                       "zipf none under 5% up to CF 2.0.")
    assert cf.conditions == "float32, T=4096, forward, 2 threads, cpu timer, device cpu"
    # by hand: the largest |measured - expected| is 1 pp, at CF 0.5 (the first of the ties); both policies
    # dropped the same there, so neither is named
    assert gap.text == ("Measured uniform-routing drops lie within 1.00 percentage points of the binomial "
                        "expectation over 10 uniform-routing cases (8 of them with a drop expected or measured); "
                        "the largest gap is at E=8, K=2, CF 0.5 "
                        "(30.00% measured against 31.00% expected).")


def test_the_uniform_gap_names_the_policy_where_the_policies_differ(tmp_path):
    cases = [*uniform_series("position"), c_case(1.0, "uniform", 0.095, policy="probs", expected=0.07)]
    gap = findings(tmp_path, cases)[1]
    # probs at CF 1.0: 9.5% - 7% = 2.5 pp, the largest; position dropped 8% there
    assert "within 2.50 percentage points" in gap.text and "over 6 uniform-routing cases (5 of them" in gap.text
    assert "the largest gap is at E=8, K=2, CF 1.0, probs policy (9.50% measured against 7.00% expected)" in gap.text


def test_the_policies_are_named_only_where_they_differ_and_each_e_k_is_one_sentence(tmp_path):
    cases = [*series("zipf", ZIPF), *series("zipf", (0.5, 0.04, 0.02, 0.009, 0.0), policy="probs"),
             *series("uniform", UNIFORM, E=64, K=1)]
    found = findings(tmp_path, cases)
    assert [f.text.split(":")[0] for f in found[:2]] == ["E=8, K=2", "E=64, K=1"]
    assert "zipf none under 5% up to CF 2.0 (position policy), 1.5 / 1.0 (probs policy)." in found[0].text
    assert found[1].text.endswith("uniform 1.5 / 1.25.")


def test_the_smallest_measured_cf_and_a_failed_smaller_cf_are_said(tmp_path):
    cases = [c_case(0.5, "balanced", 0.0), c_case(1.0, "balanced", 0.0),
             c_case(0.5, "khot", 0.0, status="error"), c_case(1.0, "khot", 0.03), c_case(2.0, "khot", 0.0)]
    cf = findings(tmp_path, cases)[0]
    assert "balanced 0.5 (the smallest measured) / 0.5 (the smallest measured)" in cf.text
    assert "khot 2.0 (CF 0.5 failed) / 1.0 (CF 0.5 failed)" in cf.text


def test_all_failed_cannot_answer(tmp_path):
    found = findings(tmp_path, [c_case(1.0, "uniform", 0.0, status="error")])
    assert len(found) == 1 and not found[0].answered
    assert found[0].text.startswith("Every capacity case (1) failed or has no drop rate")
    assert FINDINGS_BY_KIND["capacity"] == ("capacity",)


def test_no_uniform_routing_the_gap_is_not_guessed(tmp_path):
    _, gap = findings(tmp_path, series("zipf", ZIPF))
    assert not gap.answered and "no finished case used uniform routing" in gap.text


def test_dropped_weight_mass_contrasts_the_policies_only_when_recorded(tmp_path):
    assert len(findings(tmp_path, [*series("zipf", ZIPF), *series("zipf", ZIPF, policy="probs")])) == 2
    weights = {("zipf", "position"): 0.30, ("zipf", "probs"): 0.10,
               ("uniform", "position"): 0.05, ("uniform", "probs"): 0.03}
    cases = [c_case(1.0, routing, drop, policy=policy, dropped_weight_frac=weights[routing, policy])
             for routing, drop in (("zipf", 0.4), ("uniform", 0.08)) for policy in ("position", "probs")]
    cases.append(c_case(1.0, "khot", 0.1, dropped_weight_frac=0.2))  # one policy only: no pair
    weight = findings(tmp_path, cases)[-1]
    # means over the 2 pairs: probs (0.10 + 0.03) / 2 = 6.5%, position (0.30 + 0.05) / 2 = 17.5%
    assert weight.text == ("At CF 1.0, K=2, where both drop policies drop equally many assignments (2 series), the "
                           "probs policy drops 6.50% of the routing-weight mass and the position policy 17.50% "
                           "(means): the position policy drops more weight, by 11.00 percentage points; the widest "
                           "difference is zipf at E=8: 10.00% against 30.00%.")


def test_a_capacity_report_opens_with_its_findings_linked_to_the_drops_figure(tmp_path):
    path = write_run(tmp_path / "capacity.jsonl", [*uniform_series(), *series("zipf", ZIPF)], kind="capacity",
                     suite="capacity")
    html = make_report([path], tmp_path / "r.html").read_text()
    headings = re.findall(r"<h2[^>]*>([^<]*)</h2>", html)
    assert headings[0] == "Findings"
    findings_part = html[html.index('<h2 id="findings">'):html.index("<h2", html.index('<h2 id="findings">') + 1)]
    assert "uniform 1.5 / 1.25; zipf none under 5% up to CF 2.0." in findings_part
    assert findings_part.count('<a href="#fig-drops">[figure]</a>') == 2
    assert '<h2 id="fig-drops">' in html


def test_a_distribution_under_5_but_never_under_1_percent_reads_as_two_answers(tmp_path):
    khot = (0.5, 0.2, 0.04, 0.03, 0.02)  # under 5% from CF 1.25, never under 1% up to CF 2.0
    cf, _ = findings(tmp_path, [*uniform_series(), *series("khot", khot)])
    assert "khot (none up to CF 2.0) / 1.25; uniform 1.5 / 1.25." in cf.text


def test_a_cf_answer_never_pools_two_variants_or_min_capacities_into_one_median(tmp_path):
    sinkhorn = [c_case(cf, "uniform", d) for cf, d in zip(CFS, (0.2, 0.002, 0.0, 0.0, 0.0), strict=True)]
    for record in sinkhorn:
        record["spec"]["variant"] = "sinkhorn"
        record["case_id"] += ",variant=sinkhorn"
    floored = [c_case(cf, "uniform", d) for cf, d in zip(CFS, (0.1, 0.04, 0.0, 0.0, 0.0), strict=True)]
    for record in floored:
        record["spec"]["min_capacity"] = 4
        record["case_id"] += ",min_capacity=4"
    found = findings(tmp_path, [*uniform_series(), *sinkhorn, *floored])
    # pooled, CF 1.0 would be the median of 8%, 0.2% and 4% = 4%: "under 5% from 1.0", a value no case measured
    texts = [f.text for f in found[:3]]
    assert texts == [
        "E=8, K=2: the smallest capacity factor with drops under 1% / under 5% is uniform 1.5 / 1.25.",
        "sinkhorn, E=8, K=2: the smallest capacity factor with drops under 1% / under 5% is uniform 1.0 / 1.0.",
        "E=8, K=2, min_capacity 4: the smallest capacity factor with drops under 1% / under 5% is uniform 1.25 / 1.0.",
    ]


def test_a_series_without_a_recorded_top_k_is_not_dropped_from_the_cf_findings(tmp_path):
    cases = uniform_series()
    for record in cases:
        del record["spec"]["top_k"]
    cf = findings(tmp_path, cases)[0]
    assert cf.answered and cf.text == ("E=8, K=?: the smallest capacity factor with drops under 1% / under 5% is "
                                       "uniform 1.5 / 1.25.")


def test_own_router_reads_as_in_the_drops_figure(tmp_path):
    cases = series("router", ZIPF)
    cf = findings(tmp_path, cases)[0]
    assert "layer's own router (not forced) none under 5% up to CF 2.0" in cf.text


def test_k1_series_whose_weight_mass_equals_their_drop_rate_do_not_dilute_the_policy_means(tmp_path):
    weights = {("zipf", "position"): 0.30, ("zipf", "probs"): 0.10}
    cases = [c_case(1.0, "zipf", 0.4, policy=p, dropped_weight_frac=w) for (_, p), w in weights.items()]
    # K=1: every renormalised weight is 1, so each policy drops its drop rate in mass
    cases += [c_case(1.0, r, d, K=1, policy=p, dropped_weight_frac=d)
              for r, d in (("zipf", 0.5), ("uniform", 0.1)) for p in ("position", "probs")]
    k1, k2 = findings(tmp_path, cases)[-2:]
    assert not k1.answered
    assert k1.text == ("At CF 1.0, K=1, the drop policies drop the same routing-weight mass (2 series where each "
                       "policy's dropped mass equals its drop rate left out: they cannot tell the policies apart).")
    # K=2 alone: probs 10%, position 30%, not diluted by the K=1 series' 50% and 10%
    assert k2.text == ("At CF 1.0, K=2, where both drop policies drop equally many assignments (1 series), the "
                       "probs policy drops 10.00% of the routing-weight mass and the position policy 30.00% "
                       "(means): the position policy drops more weight, by 20.00 percentage points; the widest "
                       "difference is zipf at E=8: 10.00% against 30.00%.")
