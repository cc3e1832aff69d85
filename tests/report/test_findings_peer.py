"""PEER findings: the N from which product keys beat brute force (within one configuration) and by how
much, and each configuration's latency and fraction of floor at the largest N, against hand counts."""

from __future__ import annotations

from report_records import case, write_run

from moebench.report.data import load_runs
from moebench.report.findings import FINDINGS_BY_KIND
from moebench.report.findings.peer import peer_findings


def p_case(N: int, retrieval: str, latency_s: float, heads: int = 4, k: int = 8, floor_s: float = 0.001,
           status: str = "ok"):
    return case(f"peer_experts={N},peer_retrieval={retrieval},peer_heads={heads},peer_k={k}",
                {"peer_experts": N, "peer_retrieval": retrieval, "peer_heads": heads, "peer_k": k},
                spec={"variant": "peer", "peer_experts": N, "peer_retrieval": retrieval, "peer_heads": heads,
                      "peer_k": k, "d_key": 32},
                metrics={"latency_s": latency_s, "floor_s": floor_s, "frac_of_ceiling": floor_s / latency_s},
                status=status, error=None if status == "ok" else "RuntimeError: out of memory", tokens=256)


def findings(tmp_path, cases):
    _, df = load_runs([write_run(tmp_path / "peer.jsonl", cases, kind="peer", suite="peer")])
    return peer_findings(df)


def test_product_keys_beat_brute_force_from_the_crossover_n(tmp_path):
    cases = [p_case(1024, "product", 0.002), p_case(1024, "brute", 0.001),  # brute force faster
             p_case(4096, "product", 0.003), p_case(4096, "brute", 0.006),  # 2x
             p_case(16384, "product", 0.004), p_case(16384, "brute", 0.020)]  # 5x
    crossover, largest = findings(tmp_path, cases)
    assert crossover.answered and crossover.figure == "peer"
    assert crossover.text == ("heads=4, k=8, D=64, d_key=32: product keys beat brute force from N=4,096 on (brute "
                              "force faster below; measured N=1,024 to 16,384): 2.0× faster at N=4,096, 5.0× at "
                              "N=16,384.")
    assert crossover.conditions == "float32, T=256, forward, 2 threads, cpu timer, device cpu"
    # at N=16384, one configuration: product keys 4 ms and brute force 20 ms, floor 1 ms: 4x and 20x the
    # floor, that is 25% and 5% of its speed
    assert largest.text == ("At the largest N measured (16,384; heads=4, k=8, D=64, d_key=32, dtype=float32), latency "
                            "per step against the bandwidth floor: product keys: 4 ms, 4× the floor of 1 ms (25% of "
                            "the floor's speed); brute force: 20 ms, 20× the floor of 1 ms (5% of the floor's "
                            "speed).")


def test_brute_force_faster_everywhere_is_said(tmp_path):
    cases = [p_case(1024, "product", 0.004), p_case(1024, "brute", 0.001),
             p_case(4096, "product", 0.004), p_case(4096, "brute", 0.002)]
    crossover, _ = findings(tmp_path, cases)
    assert "brute force was faster at every N measured with both (N=1,024 to 4,096; product keys at most " \
           "0.50× its speed)" in crossover.text


def test_only_cases_of_one_configuration_are_compared(tmp_path):
    # same N, but product keys with 16 heads against brute force with 4: not a comparison
    cases = [p_case(1024, "product", 0.001, heads=16), p_case(1024, "brute", 0.010, heads=4)]
    crossover, largest = findings(tmp_path, cases)
    assert not crossover.answered
    assert crossover.text.startswith("Product keys and brute force cannot be compared: no N has both")
    # both configurations at the largest N, each named by what differs, with its own floor fraction (floor 1 ms)
    assert largest.text == ("At the largest N measured (1,024; k=8, D=64, d_key=32, dtype=float32), latency per "
                            "step against the bandwidth floor: product keys heads=16: 1 ms, 1× the floor of 1 ms (100% "
                            "of the floor's speed); brute force heads=4: 10 ms, 10× the floor of 1 ms (10% of the "
                            "floor's speed).")


def test_no_brute_force_cannot_answer(tmp_path):
    crossover, largest = findings(tmp_path, [p_case(1024, "product", 0.001), p_case(4096, "product", 0.002)])
    assert not crossover.answered and "cannot be compared" in crossover.text
    assert largest.answered and largest.text == (
        "At the largest N measured (4,096), product keys with heads=4, k=8, D=64, d_key=32, dtype=float32 take "
        "2 ms per step, 2× the bandwidth floor of 1 ms (a step reaches 50% of the floor's speed).")


def test_all_failed_cannot_answer(tmp_path):
    found = findings(tmp_path, [p_case(1024, "product", 0.001, status="error"),
                                p_case(1024, "brute", 0.001, status="error")])
    assert len(found) == 1 and not found[0].answered
    assert found[0].text == "Every PEER case (2) failed or has no latency: nothing to compare."
    assert FINDINGS_BY_KIND["peer"] == ("peer",)


def test_no_peer_case_no_finding(tmp_path):
    assert findings(tmp_path, [case("variant=hash", {"variant": "hash"})]) == []
