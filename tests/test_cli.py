"""The click CLI: list, params (preset and config.json, text and --json), exit code 2 on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moebench import accounting as acc
from moebench.cli import cli
from moebench.presets import PRESETS
from moebench.suite import bundled_suites

MIXTRAL_JSON = dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                    num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, num_local_experts=8,
                    num_experts_per_tok=2, hidden_act="silu", tie_word_embeddings=False, torch_dtype="bfloat16")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), prog_name="moebench")


def test_help_lists_the_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "params" in result.output and "list" in result.output
    result = invoke("params", "--help")
    assert result.exit_code == 0 and "PRESET|CONFIG.json" in result.output and "--json" in result.output


def test_list_has_presets_and_suites_sections():
    result = invoke("list")
    assert result.exit_code == 0, result.output
    presets = result.output.split("presets:\n", 1)[1].split("suites:\n", 1)[0]
    listed = [line.split()[0] for line in presets.splitlines() if line.startswith("  ")]
    assert listed == list(PRESETS)
    assert "46.70B total / 12.88B active" in presets  # mixtral-8x7b
    suites = result.output.split("suites:\n", 1)[1]
    assert [line.split()[0] for line in suites.splitlines()] == bundled_suites()


def test_params_preset_text():
    result = invoke("params", "mixtral-8x7b")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "46,702,792,704" in out and "46.70B" in out  # exact and human total
    assert "12,879,925,248" in out  # active, embeddings=both
    assert "published: 46.70B total / 12.90B active" in out
    assert "moe_experts" in out and "FLOPs per token" in out and "MoE layer: token_choice" in out


def test_params_json_matches_accounting():
    result = invoke("params", "deepseek-v3", "--json", "--embeddings", "output", "--context", "128")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    shape = PRESETS["deepseek-v3"]
    assert data["params"]["total"] == sum(acc.model_params(shape).values())
    assert data["params"]["active"] == sum(acc.model_active_params(shape, "output").values())
    assert data["flops_per_token"]["by_phase"] == acc.model_flops_per_token(shape, 128)
    assert data["moe_layer"]["n_experts"] == 256 and data["layers"]["moe"] == 58
    assert data["published"]["active"] == 37e9 and data["source"] == "preset"


def test_params_config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(MIXTRAL_JSON))
    result = invoke("params", str(path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["params"]["total"] == sum(acc.model_params(PRESETS["mixtral-8x7b"]).values())
    assert data["source"] == str(path) and "published" not in data
    text = invoke("params", str(path))
    assert text.exit_code == 0 and "46,702,792,704" in text.output


@pytest.mark.parametrize("content, message", [
    (None, "cannot be read"),
    ("{not json", "is not valid JSON"),
    (json.dumps({"model_type": "llama"}), "model_type='llama' is not supported; supported model types are mixtral"),
    (json.dumps({k: v for k, v in MIXTRAL_JSON.items() if k != "hidden_size"}), "config has no 'hidden_size'"),
])
def test_params_bad_config_exits_2_naming_the_file(tmp_path, content, message):
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    result = invoke("params", str(path))
    assert result.exit_code == 2
    assert f"moebench: error: config file '{path}'" in result.output and message in result.output


def test_params_unknown_preset_exits_2_listing_presets():
    result = invoke("params", "mixtral-8x22b")
    assert result.exit_code == 2
    assert "unknown preset 'mixtral-8x22b'; valid presets are " + ", ".join(PRESETS) in result.output


def test_usage_errors_exit_2():
    assert invoke("params").exit_code == 2
    assert invoke("params", "mixtral-8x7b", "--embeddings", "all").exit_code == 2


def test_installed_console_script():
    script = Path(sys.executable).parent / "moebench"
    if not script.exists():
        pytest.skip("the moebench console script is not installed next to this python")
    done = subprocess.run([str(script), "params", "olmoe-1b-7b", "--json"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["params"]["total"] == sum(acc.model_params(PRESETS["olmoe-1b-7b"]).values())
    bad = subprocess.run([str(script), "params", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("moebench: error: unknown preset 'nope'")


@pytest.mark.parametrize("content, message", [
    (json.dumps({**MIXTRAL_JSON, "num_hidden_layers": 1e30}), "num_hidden_layers=1e+30 is invalid: must be an integer"),
    (json.dumps({**MIXTRAL_JSON, "vocab_size": "32000"}), "vocab_size='32000' is invalid: must be an integer"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON: nested too deeply"),
    (b"\x00\xff\xfe", "is not a text file"),
])
def test_params_hostile_config_exits_2_in_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    result = invoke("params", str(path))
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and f"config file '{path}'" in result.stderr and message in result.stderr


def test_params_config_with_10_to_the_30_layers_exits_2_instead_of_hanging(tmp_path):
    """An integer layer count passes every type check, and counting evaluates the layer rules layer by layer."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**MIXTRAL_JSON, "num_hidden_layers": 10**30}))
    done = subprocess.run([sys.executable, "-m", "moebench.cli", "params", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"moebench: error: config file '{path}': config num_hidden_layers=")
    assert "must be an integer in [1, 100,000]" in done.stderr


def test_params_context_beyond_any_model_exits_2_instead_of_overflowing():
    result = invoke("params", "mixtral-8x7b", "--context", str(10**400))
    assert result.exit_code == 2 and "--context" in result.stderr and result.stderr.count("\n") == 1


def test_usage_errors_are_one_line_naming_the_command_and_option():
    result = invoke("params", "mixtral-8x7b", "--embeddings", "all")
    assert result.exit_code == 2
    assert result.stderr.startswith("moebench: error: moebench params: Invalid value for '--embeddings'")
    assert result.stderr.count("\n") == 1
