"""Suite files: schema validation with clear errors, and grid expansion."""

import textwrap

import pytest

from moebench.suite import SuiteError, bundled_suites, load_suite


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_and_zip_expand_to_the_cartesian_product(tmp_path):
    path = write(tmp_path, """
        base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2}
        grid: {backend: [loop, sort_gather], tokens: [8, 16]}
        zip: [{capacity_factor: null}, {capacity_factor: 1.5, drop_policy: probs}]
        exclude: [{backend: loop, tokens: 16}]
    """)
    suite = load_suite(str(path))
    ids = [c.case_id for c in suite.cases]
    assert len(ids) == 2 * 2 * 2 - 2
    assert "backend=loop,tokens=8,capacity_factor=1.5,drop_policy=probs" in ids
    case = suite.cases[0]
    assert case.spec.d_model == 32 and case.workload.tokens == 8


def test_granularity_and_baseline_axes(tmp_path):
    path = write(tmp_path, """
        base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 1}
        zip: [{granularity: 4}, {baseline: equal_active}, {baseline: equal_total}]
    """)
    fine, active, total = load_suite(str(path)).cases
    assert (fine.spec.n_experts, fine.spec.d_ff, fine.spec.top_k) == (16, 16, 4)
    assert (active.spec.variant, active.spec.d_ff) == ("dense", 64)
    assert (total.spec.variant, total.spec.d_ff) == ("dense", 256)


def test_overrides_apply_to_every_case(tmp_path):
    path = write(tmp_path, "grid: {backend: [loop, sort_gather]}\n")
    assert {c.spec.dtype for c in load_suite(str(path), overrides={"dtype": "bfloat16"}).cases} == {"bfloat16"}


BAD_SUITES = [
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("base: {n_expert: 8}\n", "unknown key 'base.n_expert'"),
    ("base: {top_k: 'two'}\n", "LayerSpec.top_k="),
    ("base: {n_experts: 4, top_k: 8}\n", "LayerSpec.top_k=8"),
    ("grid: {backend: loop}\n", "grid.backend must be a non-empty list"),
    ("grid: {backend: [loop, warp_drive]}\n", "LayerSpec.backend='warp_drive'"),
    ("workload: {tokens: -3}\n", "workload.tokens=-3 must be >= 0"),
    ("workload: {mode: backward}\n", "workload.mode='backward' is invalid"),
    ("workload: {routing: zipf, routing_params: {beta: 1}}\n", "has no parameter 'beta'"),
    ("workload: {routing: lognormal}\n", "unknown routing distribution 'lognormal'"),
    ("measure: {budget_s: fast}\n", "measure.budget_s='fast' must be of type float"),
    ("kind: vibes\n", "kind='vibes' is invalid"),
    ("- a\n- b\n", "a suite file is a mapping"),
    ("base: [1, 2\n", "not valid YAML"),
]


def test_unknown_suite_name_lists_the_bundled_ones():
    with pytest.raises(SuiteError, match="bundled suites are .*quick"):
        load_suite("no-such-suite")


@pytest.mark.parametrize("name", bundled_suites())
def test_every_bundled_suite_is_valid(name):
    suite = load_suite(name)
    assert suite.cases and suite.description


def test_preset_axis_replaces_the_base_layer_and_axis_fields_replace_the_preset(tmp_path):
    path = write(tmp_path, """
        base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2, backend: loop}
        zip: [{preset: mixtral-8x7b}, {preset: deepseek-v2-lite, backend: grouped_mm}]
    """)
    mixtral, lite = load_suite(str(path)).cases
    spec = mixtral.spec
    assert (spec.d_model, spec.d_ff, spec.n_experts, spec.top_k) == (4096, 14336, 8, 2)
    assert mixtral.spec.backend == "loop"  # the preset does not name a backend, so the base's stays
    assert (lite.spec.n_experts, lite.spec.n_shared, lite.spec.backend) == (64, 2, "grouped_mm")


def test_on_cuda_section_applies_only_on_cuda(tmp_path):
    path = write(tmp_path, """
        base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2}
        workload: {tokens: 64}
        grid: {backend: [loop]}
        on_cuda:
          workload: {tokens: 4096}
          extra_blocks: [{grid: {backend: [grouped_mm]}}]
    """)
    cpu, cuda = load_suite(str(path)), load_suite(str(path), device="cuda")
    assert [(c.case_id, c.workload.tokens) for c in cpu.cases] == [("backend=loop", 64)]
    assert [(c.case_id, c.workload.tokens) for c in cuda.cases] == [("backend=loop", 4096),
                                                                   ("backend=grouped_mm", 4096)]


def test_on_cuda_base_overrides_base_fields_on_cuda_only(tmp_path):
    path = write(tmp_path, """
        base: {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2, backend: sort_gather}
        grid: {dtype: [float32]}
        on_cuda:
          base: {backend: grouped_mm}
    """)
    (cpu,), (cuda,) = load_suite(str(path)).cases, load_suite(str(path), device="cuda").cases
    assert (cpu.spec.backend, cuda.spec.backend) == ("sort_gather", "grouped_mm")
    assert cuda.spec.n_experts == 4  # the other base fields stay


# --- hostile input is bounded (the alias bomb and the 10-million-case grid: tests/test_cli_run.py, run in a
# memory-bounded process) ---------------------------------------------------------------------------------

HOSTILE_SUITES = [
    ("base: {d_model: 32}\nworkload: {tokens: 8}\nbase: {d_model: 64}\n", ":3: not valid YAML: duplicate key 'base' "
                                                                            "(first at line 1)"),
    ("base: {d_model: 32, d_model: 64}\n", ":1: not valid YAML: duplicate key 'd_model'"),
    ("base: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than 32 levels"),
    ("base: &b [*b]\n", "an alias refers to a value that contains it"),
    ("measure: {min_samples: 9, max_samples: 3}\n", "measure.min_samples=9 and max_samples=3 must satisfy"),
    ("measure: {min_samples: 0}\n", "measure.min_samples=0 and max_samples=50 must satisfy 1 <= min_samples"),
    ("measure: {rel_ci: 0}\n", "measure.rel_ci=0 must be a finite number > 0"),
    ("measure: {rel_ci: .nan}\n", "measure.rel_ci=nan must be a finite number"),
    ("measure: {budget_s: .inf}\n", "measure.budget_s=inf must be a finite number"),
    ("measure: {timeout_s: 0}\n", "measure.timeout_s=0 must be a finite number > 0"),
    ("base: {capacity_factor: .nan}\n", "LayerSpec.capacity_factor=nan is invalid"),
    ("base: {capacity_factor: .inf}\n", "LayerSpec.capacity_factor=inf is invalid"),
    ("base: {renormalize: 'no'}\n", "LayerSpec.renormalize='no' is invalid: must be true or false"),
    ("grid: {preset: [[mixtral-8x7b]]}\n", "preset=['mixtral-8x7b'] is invalid; allowed values are"),
    ("on_cuda: {workload: {tokens: -5}}\n", "workload.tokens=-5 must be >= 0 (with --device cuda"),
    ("workload: {seed: 18446744073709551616}\n", "workload.seed=18446744073709551616 must be < 2**64"),
    ("on_cuda: {base: {capacity_factor: .nan}}\n", "LayerSpec.capacity_factor=nan is invalid"),
    ("on_cuda: {measure: {rel_ci: 0}}\n", "measure.rel_ci=0 must be a finite number > 0 (with --device cuda"),
    ("on_cuda: {extra_blocks: [{grid: {backend: [warp_drive]}}]}\n", "LayerSpec.backend='warp_drive' is invalid"),
]


@pytest.mark.parametrize("text, expected", BAD_SUITES + HOSTILE_SUITES)
def test_bad_suite_files_are_refused_in_one_line_naming_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path, text, name="broken.yaml")
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_aliases_within_the_budget_still_load(tmp_path):
    path = write(tmp_path, """
        base: &small {d_model: 32, d_ff: 64, n_experts: 4, top_k: 2}
        zip: [{<<: *small, backend: loop}, {<<: *small, backend: sort_gather}]
    """)
    cases = load_suite(str(path)).cases
    assert [c.spec.backend for c in cases] == ["loop", "sort_gather"] and cases[0].spec.d_model == 32


def test_a_mistake_in_on_cuda_is_refused_on_cpu_but_a_valid_section_still_loads(tmp_path):
    good = write(tmp_path, "grid: {backend: [loop]}\non_cuda: {workload: {tokens: 4096}}\n", name="good.yaml")
    assert [c.workload.tokens for c in load_suite(str(good)).cases] == [512]
    bad = write(tmp_path, "grid: {backend: [loop]}\non_cuda: {measure: {min_samples: 0}}\n", name="bad.yaml")
    with pytest.raises(SuiteError, match="measure.min_samples=0"):
        load_suite(str(bad))


@pytest.mark.parametrize("content, expected", [
    (b"\x00\xff\xfe binary", "not a text file"),
    (b"\x00\x01\x02binary", "not a YAML text file"),  # valid UTF-8, but control characters
    (b"description: x\n" + b"#" * (1 << 20), "larger than 1,048,576 bytes"),
])
def test_binary_and_oversized_suite_files_are_refused_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "odd.yaml"
    path.write_bytes(content)
    with pytest.raises(SuiteError) as err:
        load_suite(str(path))
    assert str(path) in str(err.value) and expected in str(err.value)


def test_an_empty_suite_name_is_refused():
    with pytest.raises(SuiteError, match="the suite name is empty; bundled suites are"):
        load_suite("")


def test_a_folder_given_as_a_suite_is_refused_as_not_a_regular_file(tmp_path):
    folder = tmp_path / "folder.yaml"
    folder.mkdir()
    with pytest.raises(SuiteError, match="folder.yaml: not a regular file"):
        load_suite(str(folder))
