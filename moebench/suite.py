"""Suite files: load, validate against the schema, expand the parameter grid into cases.

A suite file is YAML data, never executed:

    description: one line saying which question the suite answers
    kind: throughput | memory | granularity | capacity | peer | models | routers | lifelong | ci | mixed
    base:      {LayerSpec fields}                      # the layer every case starts from
    grid:      {axis: [values, ...], ...}              # cartesian product
    zip:       [{axis: value, ...}, ...]               # rows varied together (crossed with grid)
    exclude:   [{axis: value, ...}, ...]               # drop cases matching all of a row
    blocks:    [{grid, zip, exclude}, ...]             # instead of the three above: several grids,
                                                       # their cases concatenated
    on_cuda:   {base: {..}, workload: {..}, measure: {..}, extra_blocks: [..]}   # with --device cuda
                                                       # only; base/workload/measure fields override
    workload:  {tokens, batch, mode, routing, seed, input_variants}
    measure:   {warmup, min_samples, max_samples, budget_s, rel_ci, phases, memory, ceiling, timeout_s}

An axis is a LayerSpec field, a workload field, `preset` (a model preset's MoE layer, see
`moebench list`: its fields, except backend and dtype, replace the base's, and the case's own axis
fields replace the preset's), `granularity` (Krajewski's transform applied to the spec) or
`baseline` (a dense FFN with equal `active` or `total` parameters instead of the MoE).
Every error names the file and the field. Axis legend in names: T tokens, D model dim.

Limits, so that a mistaken or hostile file is refused at once rather than hanging or exhausting memory:
a file is at most 1 MiB of UTF-8 YAML without duplicate keys, nested at most 32 levels, at most 100,000
values with every alias expanded; its grid at most 100,000 cases, counted before any is built. The
on_cuda section is validated on every device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moebench.spec import LayerSpec

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
SUITE_KINDS = ("throughput", "memory", "granularity", "capacity", "peer", "models", "routers", "lifelong",
               "ci", "mixed")
BLOCK_KEYS = ("grid", "zip", "exclude")
TOP_LEVEL_KEYS = ("description", "kind", "base", "workload", "measure", "blocks", "on_cuda") + BLOCK_KEYS
ON_CUDA_KEYS = ("base", "workload", "measure", "extra_blocks")
MODES = ("forward", "forward_backward", "train_step")
BASELINES = ("none", "equal_active", "equal_total")

# Bounds on what a suite file may ask for, so that hostile or mistaken input is refused at once instead
# of hanging or exhausting memory. The bundled suites are under 2 KB, 300 values, 5 levels, 400 cases.
MAX_SUITE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # every alias expanded
MAX_YAML_DEPTH = 32
MAX_CASES = 100_000  # the grid's size, computed before it is expanded


@dataclass(frozen=True)
class Workload:
    tokens: int = 512  # tokens per batch element
    batch: int = 1
    mode: str = "forward"  # forward (eval, no grad) | forward_backward (train mode) | train_step (+ AdamW step)
    routing: str = "router"  # "router" = the layer's own router; else a synthetic distribution name
    routing_params: dict = field(default_factory=dict)
    seed: int = 0
    input_variants: int = 4  # distinct inputs cycled between timed iterations
    expand: int = 0  # lifelong: experts added with layer.expand() (old ones frozen) before measuring
    # CUDA, forward: replay the forward from a CUDA graph where the layer never reads device values on
    # the host (moebench.measure.host_sync); otherwise it runs eagerly and the record says why
    cuda_graph: bool = False

    @property
    def n_tokens(self) -> int:
        return self.tokens * self.batch


@dataclass(frozen=True)
class MeasurePlan:
    warmup: int = 2
    min_samples: int = 5
    max_samples: int = 50
    budget_s: float = 2.0
    rel_ci: float = 0.05
    phases: bool = True
    memory: bool = True
    ceiling: bool = True
    timeout_s: float = 300.0


WORKLOAD_FIELDS = {f.name for f in dataclasses.fields(Workload)}
MEASURE_FIELDS = {f.name for f in dataclasses.fields(MeasurePlan)}
SPEC_FIELDS = {f.name for f in dataclasses.fields(LayerSpec)}
SPECIAL_AXES = {"granularity", "baseline", "preset"}


@dataclass(frozen=True)
class Case:
    case_id: str  # stable across runs: what --resume and compare match on
    params: dict[str, Any]  # the axis values that vary
    spec: LayerSpec
    workload: Workload
    measure: MeasurePlan


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    kind: str
    cases: list[Case]
    digest: str  # hash of the file's data, recorded with every run


class SuiteError(ValueError):
    """A suite file problem: the message names the file and the field."""


def resolve_suite_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the name of a bundled suite under suites/."""
    if not name_or_path.strip():
        raise SuiteError("the suite name is empty; bundled suites are " + ", ".join(bundled_suites())
                         + " (or give a path to a .yaml file)")
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SuiteError(f"{path}: " + ("not a regular file" if path.exists() else "no such suite file"))
        return path
    bundled = SUITES_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise SuiteError(f"unknown suite {name_or_path!r}; bundled suites are " + ", ".join(bundled_suites())
                         + " (or give a path to a .yaml file)")
    return bundled


def read_suite_file(path: Path) -> Any:
    """The YAML data of a suite file, bounded: at most MAX_SUITE_BYTES of UTF-8, no duplicate keys,
    at most MAX_YAML_DEPTH levels and MAX_YAML_NODES nodes with every alias expanded."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_SUITE_BYTES + 1)
    except OSError as err:
        raise SuiteError(f"{path}: cannot be read: {err.strerror or err}") from None
    if len(raw) > MAX_SUITE_BYTES:
        raise SuiteError(f"{path}: larger than {MAX_SUITE_BYTES:,} bytes, the limit for a suite file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path}: not a text file (byte {err.start} is not UTF-8)") from None
    try:
        loader = _SuiteLoader(text, path)  # its reader refuses control characters (a binary file) at once
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not a YAML text file: {' '.join(str(err).split())}") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ""
        context = f"{err.context} " if err.context else ""
        raise SuiteError(f"{path}{line}: not valid YAML: {context}{err.problem}") from None
    except yaml.YAMLError as err:
        raise SuiteError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise SuiteError(f"{path}: not valid YAML: {err}") from None
    finally:
        loader.dispose()


class _SuiteLoader(yaml.SafeLoader):
    """SafeLoader that refuses what the safe loader lets through: duplicate keys (the last one would win
    silently) and nesting deep enough to exhaust Python's recursion limit while composing."""

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text)
        self.name = str(path)  # marks (line numbers in errors) name the file
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"values nested deeper than {MAX_YAML_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` overrides by design
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in first_line:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key {key!r} (first at line {first_line[key]})",
                            key_node.start_mark)
                    first_line[key] = key_node.start_mark.line + 1
                except TypeError:  # an unhashable key: the safe loader's own message follows
                    pass
        return super().construct_mapping(node, deep=deep)


def _check_expanded_size(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels
    (a "billion laughs": nine lines of ten aliases each are 10**9 values once anything walks them;
    the safe loader itself shares them and returns at once), or that refers to itself.

    Sizes are computed on the node graph without expanding it: size(n) = 1 + sum of its children's
    sizes, memoised per node, in an explicit stack so that depth costs no recursion."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        children = _children(node)
        if children_done:
            open_nodes.discard(id(node))
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            depth[id(node)] = 1 + max((depth[id(c)] for c in children), default=0)
            if size[id(node)] > MAX_YAML_NODES or depth[id(node)] > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand to more than {MAX_YAML_NODES:,} values or {MAX_YAML_DEPTH} "
                    "levels (the limit of a suite file)", node.start_mark)
            continue
        if id(node) in size:
            continue
        if id(node) in open_nodes:
            raise yaml.composer.ComposerError(None, None, "an alias refers to a value that contains it",
                                              node.start_mark)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in size)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def bundled_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str, overrides: dict[str, Any] | None = None, device: str = "cpu") -> Suite:
    """Read, validate and expand a suite. overrides (e.g. dtype from --dtype) apply to every case;
    on device "cuda" the file's `on_cuda` section (bigger workloads, extra blocks) applies too."""
    path = resolve_suite_path(name_or_path)
    data = read_suite_file(path)
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: a suite file is a mapping with keys " + ", ".join(TOP_LEVEL_KEYS))
    _check_keys(path, "", data, TOP_LEVEL_KEYS)
    merged = _apply_device_section(path, data, device)
    kind, description, cases = _expand(path, merged, overrides or {})
    if device != "cuda" and data.get("on_cuda"):
        _validate_on_cuda(path, data, overrides or {})
    digest = hashlib.sha256(json.dumps(merged, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return Suite(path.stem, path, description, kind, cases, digest)


def _validate_on_cuda(path: Path, data: dict, overrides: dict) -> None:
    """Build the CUDA cases too and drop them, so a mistake in on_cuda is refused on the laptop that
    wrote it, not hours later on the GPU machine."""
    try:
        _expand(path, _apply_device_section(path, data, "cuda"), overrides)
    except SuiteError as err:
        raise SuiteError(f"{err} (with --device cuda: the on_cuda section applies)") from None


def _expand(path: Path, data: dict, overrides: dict) -> tuple[str, str, list[Case]]:
    """(kind, description, cases) of a suite's data, the device section already merged."""
    kind = data.get("kind", "mixed")
    if not isinstance(kind, str) or kind not in SUITE_KINDS:
        raise SuiteError(f"{path}: kind={kind!r} is invalid; allowed values are " + ", ".join(SUITE_KINDS))
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{path}: description must be a string")
    base = _mapping(path, "base", data.get("base", {}))
    _check_keys(path, "base", base, SPEC_FIELDS)
    workload = _mapping(path, "workload", data.get("workload", {}))
    _check_keys(path, "workload", workload, WORKLOAD_FIELDS)
    measure = _mapping(path, "measure", data.get("measure", {}))
    _check_keys(path, "measure", measure, MEASURE_FIELDS)
    blocks = data.get("blocks")
    if blocks is None:
        blocks = [{k: data[k] for k in BLOCK_KEYS if k in data}]
    elif any(k in data for k in BLOCK_KEYS) or not isinstance(blocks, list) or not blocks:
        raise SuiteError(f"{path}: blocks must be a non-empty list of mappings with keys "
                         + ", ".join(BLOCK_KEYS) + ", used instead of a top-level grid / zip / exclude")
    measure_plan = _build(path, "measure", MeasurePlan, measure)
    parsed = [_parse_block(path, "" if "blocks" not in data else f"blocks[{i}].", block)
              for i, block in enumerate(blocks)]
    _check_case_count(path, parsed)
    cases, seen = [], set()
    for grid, zip_rows, exclude_rows in parsed:
        for combo in itertools.product(*grid.values()):
            for row in zip_rows:
                params = {**dict(zip(grid.keys(), combo, strict=True)), **row}
                if any(all(params.get(k) == v for k, v in ex.items()) for ex in exclude_rows):
                    continue
                case = _make_case(path, base, workload, measure_plan, params, overrides)
                if case.case_id in seen:
                    raise SuiteError(f"{path}: two cases share the id {case.case_id!r}; make the rows distinct")
                seen.add(case.case_id)
                cases.append(case)
    return kind, description, cases


def _parse_block(path: Path, where: str, block: Any) -> tuple[dict, list[dict], list[dict]]:
    """A block's (grid, zip rows, exclude rows), validated but not expanded."""
    axes = SPEC_FIELDS | WORKLOAD_FIELDS | SPECIAL_AXES
    block = _mapping(path, where.rstrip(".") or "block", block)
    _check_keys(path, where.rstrip("."), block, BLOCK_KEYS)
    grid = _mapping(path, f"{where}grid", block.get("grid", {}))
    _check_keys(path, f"{where}grid", grid, axes)
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SuiteError(f"{path}: {where}grid.{axis} must be a non-empty list of values")
    zip_rows = _rows(path, f"{where}zip", block.get("zip", [{}]) or [{}], axes)
    exclude_rows = _rows(path, f"{where}exclude", block.get("exclude", []), axes)
    return grid, zip_rows, exclude_rows


def _check_case_count(path: Path, blocks: list[tuple[dict, list[dict], list[dict]]]) -> None:
    """Refuse a grid above MAX_CASES from its size alone, before a single case is built: ten axes of
    ten values would otherwise be expanded (and held in memory) case by case."""
    sizes = [math.prod(len(values) for values in grid.values()) * len(zip_rows) for grid, zip_rows, _ in blocks]
    total = sum(sizes)
    if total <= MAX_CASES:
        return
    grid, zip_rows, _ = blocks[sizes.index(max(sizes))]
    factors = " x ".join([f"{axis} {len(values)}" for axis, values in grid.items()] + [f"zip {len(zip_rows)}"])
    raise SuiteError(f"{path}: the grid expands to {total:,} cases, above the limit of {MAX_CASES:,} "
                     f"(largest block: {factors}); split the suite or use fewer values per axis")


def _apply_device_section(path: Path, data: dict, device: str) -> dict:
    """Merge `on_cuda` into the suite when running on CUDA (sizes a CPU cannot afford, and backends that
    are fastest there but not on a CPU)."""
    section = _mapping(path, "on_cuda", data.get("on_cuda", {}))
    _check_keys(path, "on_cuda", section, ON_CUDA_KEYS)
    data = {k: v for k, v in data.items() if k != "on_cuda"}
    if device != "cuda" or not section:
        return data
    for key in ("base", "workload", "measure"):
        if key in section:
            data[key] = {**_mapping(path, key, data.get(key, {})), **_mapping(path, f"on_cuda.{key}", section[key])}
    extra = section.get("extra_blocks", [])
    if extra:
        if not isinstance(extra, list):
            raise SuiteError(f"{path}: on_cuda.extra_blocks must be a list of blocks")
        blocks = data.pop("blocks", None) or [{k: data.pop(k) for k in BLOCK_KEYS if k in data}]
        data["blocks"] = blocks + extra
    return data


def _make_case(path: Path, base: dict, workload: dict, plan: MeasurePlan, params: dict,
               overrides: dict) -> Case:
    where = f"{path}: case " + (",".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "default")
    preset_fields = {}
    if "preset" in params:
        from moebench.presets import PRESETS, get_preset

        if not isinstance(params["preset"], str):
            raise SuiteError(f"{where}: preset={params['preset']!r} is invalid; allowed values are "
                             + ", ".join(PRESETS))

        try:
            # The preset defines the layer; how to run it (backend, dtype) stays the suite's choice.
            preset_fields = {k: v for k, v in get_preset(params["preset"]).moe.to_dict().items()
                             if k not in ("backend", "dtype")}
        except ValueError as err:
            raise SuiteError(f"{where}: {err}") from None
    spec_fields = {**base, **preset_fields, **{k: v for k, v in params.items() if k in SPEC_FIELDS}, **overrides}
    work_fields = {**workload, **{k: v for k, v in params.items() if k in WORKLOAD_FIELDS}}
    case_id = ",".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "default"
    try:
        spec = LayerSpec(**spec_fields)
        if "granularity" in params:
            spec = spec.with_granularity(params["granularity"])
        baseline = params.get("baseline", "none")
        if baseline not in BASELINES:
            raise ValueError(f"baseline={baseline!r} is invalid; allowed values are " + ", ".join(BASELINES))
        if baseline != "none":
            experts = spec.top_k if baseline == "equal_active" else spec.n_experts
            spec = spec.replace(variant="dense", d_ff=spec.d_ff * experts + spec.n_shared * (spec.shared_d_ff or
                                                                                              spec.d_ff))
    except ValueError as err:
        raise SuiteError(f"{where}: {err}") from None
    work = _build(where, "workload", Workload, work_fields)
    return Case(case_id, params, spec, work, plan)


def _build(where: Any, section: str, cls: type, fields: dict):
    try:
        obj = cls(**fields)
    except TypeError as err:
        raise SuiteError(f"{where}: {section}: {err}") from None
    for f in dataclasses.fields(cls):
        value, default = getattr(obj, f.name), f.default
        if default is not dataclasses.MISSING and default is not None:
            kind = type(default)
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or (isinstance(value, bool) and kind is not bool):
                raise SuiteError(f"{where}: {section}.{f.name}={value!r} must be of type {kind.__name__}")
            if kind is float and not math.isfinite(value):
                raise SuiteError(f"{where}: {section}.{f.name}={value!r} must be a finite number")
            if kind in (int, float) and value < 0:
                raise SuiteError(f"{where}: {section}.{f.name}={value!r} must be >= 0")
    if cls is MeasurePlan:
        _check_measure(where, obj)
    if cls is Workload:
        if obj.mode not in MODES:
            raise SuiteError(f"{where}: workload.mode={obj.mode!r} is invalid; allowed values are "
                             + ", ".join(MODES))
        if not isinstance(obj.routing_params, dict):
            raise SuiteError(f"{where}: workload.routing_params must be a mapping")
        if obj.tokens < 1 or obj.batch < 1 or obj.input_variants < 1:
            raise SuiteError(f"{where}: workload.tokens, batch and input_variants must be >= 1")
        if obj.seed >= 2**64:  # torch.manual_seed takes 64 bits; a bigger seed would fail only in the worker
            raise SuiteError(f"{where}: workload.seed={obj.seed} must be < 2**64")
        if obj.routing != "router":
            from moebench.routing.distributions import make_distribution

            try:
                make_distribution(obj.routing, **{"seed": obj.seed, **obj.routing_params})
            except ValueError as err:
                raise SuiteError(f"{where}: workload.routing: {err}") from None
    return obj


def _check_measure(where: Any, plan: MeasurePlan) -> None:
    """Bounds the sampler relies on: it stops between min_samples and max_samples, when the CI's half-width
    falls under rel_ci or the budget runs out; a zero or inverted bound would never stop or never start."""
    if not 1 <= plan.min_samples <= plan.max_samples:
        raise SuiteError(f"{where}: measure.min_samples={plan.min_samples} and max_samples={plan.max_samples} "
                         "must satisfy 1 <= min_samples <= max_samples")
    for name in ("rel_ci", "budget_s", "timeout_s"):
        if getattr(plan, name) <= 0:
            raise SuiteError(f"{where}: measure.{name}={getattr(plan, name)!r} must be a finite number > 0")


def _fmt(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _mapping(path: Path, name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise SuiteError(f"{path}: {name} must be a mapping, got {type(value).__name__}")
    return value


def _check_keys(path: Path, section: str, data: dict, allowed: set | tuple) -> None:
    for key in data:
        if key not in allowed:
            where = f"{section}.{key}" if section else key
            raise SuiteError(f"{path}: unknown key {where!r}; allowed keys are " + ", ".join(sorted(allowed)))


def _rows(path: Path, name: str, rows: Any, axes: set) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SuiteError(f"{path}: {name} must be a list of mappings")
    for i, row in enumerate(rows):
        _check_keys(path, f"{name}[{i}]", row, axes)
    return rows
