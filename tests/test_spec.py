"""LayerSpec validation and Krajewski's granularity transform."""

import pytest

from moebench.spec import BACKEND_NAMES, VARIANTS, LayerSpec


def test_defaults_are_valid_and_frozen():
    spec = LayerSpec()
    with pytest.raises(AttributeError):
        spec.n_experts = 4  # frozen


@pytest.mark.parametrize(
    "changes, field, hint",
    [
        ({"top_k": 9, "n_experts": 8}, "top_k", "<= n_experts"),
        ({"variant": "moe"}, "variant", "token_choice"),
        ({"backend": "cuda_magic"}, "backend", "sort_gather"),
        ({"capacity_factor": -1.0}, "capacity_factor", "> 0"),
        ({"capacity_factor": 0}, "capacity_factor", "> 0"),
        ({"drop_policy": "random"}, "drop_policy", "position, probs"),
        ({"activation": "tanh"}, "activation", "swiglu"),
        ({"dtype": "fp8"}, "dtype", "bfloat16"),
        ({"d_model": 0}, "d_model", "positive integer"),
        ({"n_experts": 2.5}, "n_experts", "positive integer"),
        ({"variant": "peer", "peer_experts": 1000}, "peer_experts", "perfect square"),
        ({"variant": "peer", "d_key": 7}, "d_key", "even"),
        ({"n_groups": 3}, "n_groups", "divide n_experts"),
        ({"n_groups": 2, "topk_groups": 3}, "topk_groups", "<= n_groups"),
        ({"variant": "sinkhorn", "top_k": 2}, "top_k", "top_k=1"),
        ({"variant": "gshard", "top_k": 1}, "top_k", "top_k=2"),
        ({"n_shared": -1}, "n_shared", ">= 0"),
    ],
)
def test_invalid_specs_name_the_field_and_the_allowed_values(changes, field, hint):
    with pytest.raises(ValueError) as err:
        LayerSpec(**changes)
    message = str(err.value)
    assert f"LayerSpec.{field}=" in message
    assert hint in message


INT_FIELDS = ("d_model", "d_ff", "n_experts", "top_k", "n_shared", "min_capacity", "n_groups", "topk_groups",
              "sinkhorn_iters", "hash_seed", "peer_experts", "peer_heads", "peer_k", "d_key")
FLOAT_FIELDS = ("routed_scaling", "jitter", "bias_update_rate", "aux_loss_coef", "z_loss_coef", "expert_capacity_c",
                "lifelong_distill", "capacity_factor")
FLAG_FIELDS = ("shared_gate", "renormalize", "noisy_gating", "expert_bias", "peer_query_batchnorm")


def accepted_values(fields, values, allowed):
    """(field, value) pairs LayerSpec accepts; for the ones it refuses, check the message names the field
    and says what is allowed."""
    accepted = []
    for field in fields:
        for value in values:
            try:
                LayerSpec(**{field: value})
            except ValueError as err:
                assert f"LayerSpec.{field}=" in str(err) and allowed in str(err), str(err)
            else:
                accepted.append((field, value))
    return accepted


def test_every_integer_field_refuses_bool_float_str_and_nan():
    assert accepted_values(INT_FIELDS, [True, 2.0, "2", float("nan")], "integer") == []


def test_every_float_field_refuses_bool_str_nan_and_inf():
    assert accepted_values(FLOAT_FIELDS, [True, "0.5", float("nan"), float("inf"), float("-inf")],
                           "must be a finite number") == []


def test_every_flag_field_refuses_anything_but_a_bool():
    """`renormalize: "false"` is a non-empty string, so it would have switched renormalisation on."""
    assert accepted_values(FLAG_FIELDS, [1, "false", None], "must be true or false") == []


def test_numeric_fields_still_take_ints_for_floats():
    spec = LayerSpec(capacity_factor=2, routed_scaling=1, jitter=0)
    assert (spec.capacity_factor, spec.routed_scaling) == (2, 1)


def test_name_lists_match_registries():
    from moebench.dispatch import BACKENDS
    from moebench.layers import VARIANTS as BUILT

    assert set(BUILT) <= set(VARIANTS)
    assert set(BACKENDS) <= set(BACKEND_NAMES)


def test_with_granularity_keeps_active_and_total_expert_params():
    spec = LayerSpec(d_model=64, d_ff=1408, n_experts=8, top_k=2)
    fine = spec.with_granularity(4)
    assert (fine.n_experts, fine.d_ff, fine.top_k) == (32, 352, 8)
    assert fine.n_experts * fine.d_ff == spec.n_experts * spec.d_ff  # total expert width
    assert fine.top_k * fine.d_ff == spec.top_k * spec.d_ff  # active expert width


def test_with_granularity_rejects_indivisible_width():
    with pytest.raises(ValueError, match=r"LayerSpec.d_ff=.*divisible by granularity G=3"):
        LayerSpec(d_ff=512).with_granularity(3)
    with pytest.raises(ValueError, match="granularity"):
        LayerSpec().with_granularity(0)


def test_replace_and_from_dict_reject_unknown_fields():
    with pytest.raises(ValueError, match="no field 'experts'"):
        LayerSpec().replace(experts=4)
    with pytest.raises(ValueError, match="no field 'experts'"):
        LayerSpec.from_dict({"experts": 4})
    spec = LayerSpec(n_experts=16, top_k=4)
    assert LayerSpec.from_dict(spec.to_dict()) == spec
