"""The layout's rules, read from the code itself (stdlib ast): no import cycles among project modules, production
never imports the simulator, no stage module imports another, and every artifact name is spelled once (in
atlas/run_folder.py), with atlas/board/'s own copies equal to it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from atlas import run_folder as rf
from atlas import om_container

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("atlas", "training", "export")
# atlas.split_deploy is not one of them: it is the deploy stage for a split run, built on deploy's bundle
STAGE_MODULES = {"training.train", "training.prune_stage", "training.split", "export.stage", "export.quant.stage",
                 "atlas.om_stage", "atlas.deploy", "atlas.verify", "atlas.split_verify"}
ARTIFACT_NAMES = {value for name, value in vars(rf).items()
                  if name.isupper() and isinstance(value, str) and "." in value} | {r.FILE for r in rf.RECORDS}


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if "board" in path.relative_to(REPO).parts:  # ships alone to the board; imports siblings by file name
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Project modules `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES and name not in PACKAGES:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {module: imports_of(path, set(files)) - {module} for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_project_modules():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():  # negative control
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _is_sim(module: str) -> bool:
    return module == "atlas.sim" or module.startswith("atlas.sim.")


def test_production_never_imports_the_simulator():
    offenders = {m: sorted(i for i in deps if _is_sim(i))
                 for m, deps in import_graph().items() if not _is_sim(m)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_no_stage_module_imports_another():
    graph = import_graph()
    assert STAGE_MODULES <= set(graph)
    assert {m: sorted(graph[m] & STAGE_MODULES) for m in STAGE_MODULES if graph[m] & STAGE_MODULES} == {}


def stray_artifact_names(path: Path) -> list[tuple[int, str]]:
    """String constants (f-string parts included) that are exactly an artifact name of the run folder."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ARTIFACT_NAMES:
            hits.append((node.lineno, node.value))
    return hits


def test_artifact_names_are_spelled_only_in_the_run_folder_module():
    stray = {}
    for module, path in module_files().items():
        if module == "atlas.run_folder":
            continue
        hits = stray_artifact_names(path)
        if hits:
            stray[module] = hits
    assert stray == {}


def test_the_stray_name_check_finds_a_literal(tmp_path):  # negative control
    bad = tmp_path / "bad.py"
    bad.write_text('OM = "model.om"\nprint(f"{1}/export.json")\n')
    assert stray_artifact_names(bad) == [(1, "model.om")]  # a name inside a longer text is prose, not a literal


def test_the_board_apps_copies_equal_the_contract():
    board = REPO / "atlas" / "board"
    constants = {}
    for node in ast.parse((board / "infer.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            constants[node.targets[0].id] = node.value.value
    assert constants["SIM_OM_MAGIC"] == om_container.SIM_MAGIC
    assert constants["TIMING_NAME"] == rf.REMOTE_TIMING == rf.BOARD_TIMING
    assert rf.REMOTE_OUTPUTS == rf.BOARD_OUTPUTS


@pytest.mark.parametrize("record", rf.RECORDS, ids=lambda r: r.FILE)
def test_every_record_names_its_file_and_how_it_is_made(record):
    assert record.FILE.endswith(".json") and "{run}" in record.MADE_BY


def test_training_never_imports_export():
    graph = import_graph()
    assert {m: sorted(d for d in deps if d.startswith("export")) for m, deps in graph.items()
            if m.startswith("training") and any(d.startswith("export") for d in deps)} == {}
