"""The repository documents itself: nothing points readers to notes they cannot open, and every
pointer into docs/ (a page, a section) or into a README section leads somewhere that exists.

In code and READMEs a pointer is the page's path under docs/, optionally followed by #anchor for a
section; inside docs/ it is a markdown link; a section of the top-level README is named as README
followed by its title in double quotes. An anchor is GitHub's: the heading in lower case, punctuation
dropped, spaces turned into hyphens.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
# Spelled in pieces so that this file does not mention them itself.
PRIVATE_NOTES = tuple(name + ".md" for name in ("DESIGN", "REFERENCE", "STYLE")) + ("../" + "shared",)
DOCS_POINTER = re.compile(r"(?<![\w/.])docs/([\w-]+\.md)(?:#([\w-]+))?")
DOCS_LINK = re.compile(r"\]\(((?:\.\./)?[\w./-]*\.md)?(?:#([\w-]+))?\)")
README_SECTION = re.compile(r"""README(?:'s)? "([^"]+)\"""")
TEST_NAME = re.compile(r"`(test_\w+)`")


def repository_files() -> list[Path]:
    """Tracked files and new files git does not ignore: what a commit of this tree would hold."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in sorted(set(out.splitlines())) if (REPO / line).is_file()]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # a PNG or another binary file


def outside_docs() -> dict[Path, str]:
    texts = {}
    for path in repository_files():
        if DOCS in path.parents:
            continue
        text = text_of(path)
        if text is not None:
            texts[path] = text
    return texts


def anchor(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def headings(page: Path) -> list[str]:
    lines = page.read_text(encoding="utf-8").splitlines()
    return [line.lstrip("#").strip() for line in lines if re.match(r"#{1,6} ", line)]


def test_no_file_outside_docs_points_to_private_notes():
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path, text in outside_docs().items()
                 for number, line in enumerate(text.splitlines(), start=1)
                 if any(note in line for note in PRIVATE_NOTES)]
    assert not offenders, "pointers to notes a user cannot open:\n" + "\n".join(offenders)


def test_every_pointer_into_docs_or_a_readme_section_resolves():
    texts = outside_docs()
    pointers = [(path, page, section) for path, text in texts.items() for page, section in DOCS_POINTER.findall(text)]
    assert pointers, "nothing in the code or the READMEs points into docs/"
    broken = []
    for path, page, section in pointers:
        target = DOCS / page
        if not target.is_file():
            broken.append(f"{path.relative_to(REPO)}: docs/{page} does not exist")
        elif section and section not in {anchor(h) for h in headings(target)}:
            broken.append(f"{path.relative_to(REPO)}: docs/{page} has no section #{section}")
    readme_sections = headings(REPO / "README.md")
    for path, text in {**texts, **{page: page.read_text(encoding="utf-8") for page in DOCS.glob("*.md")}}.items():
        for name in (" ".join(found.split()) for found in README_SECTION.findall(text)):  # may span lines
            # "Speed" names the section "Speed: against transformers and PEER-pytorch"
            if not any(h == name or h.startswith(name + ":") for h in readme_sections):
                broken.append(f'{path.relative_to(REPO)}: README has no section "{name}"')
    assert not broken, "\n".join(broken)


def test_links_between_docs_pages_resolve():
    pages = sorted(DOCS.glob("*.md"))
    assert {p.name for p in pages} >= {"README.md", "architecture.md", "formulas.md", "results.md"}
    broken = []
    for page in pages:
        for target, section in DOCS_LINK.findall(page.read_text(encoding="utf-8")):
            linked = (page.parent / target).resolve() if target else page
            if not linked.is_file():
                broken.append(f"docs/{page.name}: link to {target} leads nowhere")
            elif section and section not in {anchor(h) for h in headings(linked)}:
                broken.append(f"docs/{page.name}: {linked.name} has no section #{section}")
    assert not broken, "\n".join(broken)


def test_docs_index_lists_every_page_and_the_readme_links_the_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    unlisted = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name})" not in index]
    assert not unlisted, f"{DOCS.name}/README.md does not list {unlisted}"
    assert f"]({DOCS.name}/README.md)" in (REPO / "README.md").read_text(encoding="utf-8")


def test_every_test_the_docs_cite_exists():
    """formulas.md says which test checks each formula: those tests must exist under those names."""
    defined = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)", path.read_text(encoding="utf-8"), flags=re.M))
    cited = {name for page in DOCS.glob("*.md") for name in TEST_NAME.findall(page.read_text(encoding="utf-8"))}
    assert cited, "the docs cite no test"
    assert not sorted(cited - defined), f"cited tests that do not exist: {sorted(cited - defined)}"


def test_architecture_names_every_module_of_the_package():
    """docs/architecture.md has one line per module as the package is today; a new module needs its line."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"[\w/*]+\.py", text))
    package = REPO / "moebench"
    modules = [p.relative_to(package).as_posix() for p in package.rglob("*.py") if p.name != "__init__.py"]
    unnamed = [m for m in sorted(modules) if not any(fnmatch.fnmatch(m, pattern) for pattern in named)]
    assert not unnamed, f"modules missing from docs/architecture.md: {unnamed}"


def documented_names(page: str) -> set[str]:
    return set(re.findall(r"`([\w<>]+)`", (DOCS / page).read_text(encoding="utf-8")))


def is_documented(metric: str, names: set[str]) -> bool:
    """A metric is named in the page, or is phase_<name>_s for a phase the page names."""
    phase = re.fullmatch(r"phase_(\w+)_s", metric)
    return metric in names or (phase is not None and "phase_<name>_s" in names and phase.group(1) in names)


def test_every_metric_and_field_a_case_writes_is_in_results_md():
    """Real cases (routed with capacity, shared experts and phases; a noisy training step; PEER) write
    only metrics and record fields that docs/results.md explains."""
    from moebench.bench import run_case
    from moebench.spec import LayerSpec
    from moebench.suite import Case, MeasurePlan, Workload

    names = documented_names("results.md")
    plan = MeasurePlan(warmup=1, min_samples=3, max_samples=3, budget_s=0.05)
    routed = dict(d_model=32, d_ff=64, n_experts=4, top_k=2)
    cases = [
        (LayerSpec(**routed, n_shared=1, capacity_factor=1.0, backend="padded"), Workload(tokens=64)),
        (LayerSpec(**routed, noisy_gating=True), Workload(tokens=64, mode="train_step")),
        (LayerSpec(variant="peer", d_model=32, peer_experts=64, peer_heads=2, peer_k=2, d_key=8),
         Workload(tokens=64)),
    ]
    undocumented = set()
    for spec, workload in cases:
        record = run_case(Case("c", {}, spec, workload, plan), "cpu", threads=1)
        undocumented |= {f"metrics.{m}" for m in record["metrics"] if not is_documented(m, names)}
        undocumented |= {field for field in record if field not in names}
    assert not undocumented, f"written but not in docs/results.md: {sorted(undocumented)}"
