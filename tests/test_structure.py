"""The package's shape, checked so that it cannot drift back: one-way imports, one home per
concept, datasets that carry their protocol, Optuna's public API only, CLI code in one place,
every registry listed by `granalign ls`."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness import cli
from harness.cli import main
from harness.config import ExperimentConfig, load_config
from harness.config.table import TableError, load_table
from harness.core import results
from harness.core.errors import ConfigError
from harness.core.registries import DATASETS
from harness.core.registry import REGISTRIES
from harness.data import dataset_spec, load_dataset
from harness.eval import evaluate, protocol_of

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "harness"
IMPORT_GRAPH = REPO.parent / "shared" / "tools" / "import_graph.py"


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages(harness.__path__, "harness.")]


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_import_graph_has_no_cycle_and_no_function_level_package_import() -> None:
    if not IMPORT_GRAPH.is_file():
        pytest.fail(f"{IMPORT_GRAPH} not found: CI runs beside ../shared")
    out = subprocess.run([sys.executable, str(IMPORT_GRAPH), "harness"], cwd=REPO,
                         capture_output=True, text=True, check=False)
    assert "cycles: 0; function-level package imports: 0" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("script", sorted((REPO / "benchmarks").glob("*.py")), ids=lambda p: p.name)
def test_benchmark_scripts_import_names_the_package_still_has(script: Path) -> None:
    """Benchmarks are not run by CI (they print timings), so a moved name breaks them
    silently; every `from harness... import name` they hold must still resolve."""
    stale = []
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
            module = importlib.import_module(node.module)
            stale += [f"{script.name}:{node.lineno}: {node.module}.{a.name}"
                      for a in node.names if not hasattr(module, a.name)
                      and importlib.util.find_spec(f"{node.module}.{a.name}") is None]  # a submodule
    assert not stale, "benchmark imports names the package no longer has:\n" + "\n".join(stale)


def test_lazy_imports_are_heavy_optional_packages_named_in_a_comment() -> None:
    """A function-level import is allowed only for a heavy optional package, with a comment."""
    bad = []
    for path, tree in _sources().items():
        lines = (REPO / path).read_text(encoding="utf-8").splitlines()
        for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    line = lines[node.lineno - 1]
                    if "# lazy:" not in line and "# a dependency of" not in line:
                        bad.append(f"{path}:{node.lineno}: {line.strip()}")
    assert not bad, "function-level imports without a `# lazy: ...` reason:\n" + "\n".join(bad)


def test_one_missing_and_one_failed_type() -> None:
    homes: dict[str, set[str]] = {"Missing": set(), "Failed": set()}
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, obj in vars(module).items():
            if cls_name in homes and inspect.isclass(obj):
                homes[cls_name].add(f"{obj.__module__}.{obj.__qualname__}")
    assert homes == {"Missing": {"harness.core.results.Missing"}, "Failed": {"harness.core.results.Failed"}}
    assert results.Missing("captions_aware/x").label == "missing: captions_aware/x"


def test_cli_code_lives_in_harness_cli_only() -> None:
    offenders = []
    for path, tree in _sources().items():
        if path.startswith("harness/cli/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                offenders.append(path)
            if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                offenders.append(f"{path} (a __main__ entry point)")
    assert not offenders, offenders


def test_no_private_optuna_attribute_is_used() -> None:
    """Trial states change through `Study.ask` and `Study.tell` only; the one storage
    wrapper (harness/runner/mirror.py, a `BaseStorage`) passes its own
    `set_trial_state_values` on to the storage it wraps, and does nothing else private."""
    private = ("_create_new_trial", "_trial_id", "_study_id", "_storage", "_backend",
               "_pop_waiting_trial_id", "set_trial_state_values", "record_heartbeat")
    passed_on = {("harness/runner/mirror.py", "set_trial_state_values")}
    hits = [f"{path}:{n.lineno} .{n.attr}" for path, tree in _sources().items()
            for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in private
            and (path, n.attr) not in passed_on]
    assert not hits, hits
    calls = [f"{path}:{n.lineno}" for path, tree in _sources().items() if path == "harness/runner/mirror.py"
             for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "set_trial_state_values"]
    assert len(calls) == 1, calls


def test_dataset_names_are_parsed_only_by_the_registry() -> None:
    """No module but harness/data/spec.py splits a dataset name or tests its prefix."""
    hits = []
    for path, tree in _sources().items():
        if path == "harness/data/spec.py":
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("startswith", "split", "partition")
                    and any(isinstance(a, ast.Constant) and a.value in (":", "demo") for a in node.args)):
                src = ast.unparse(node)
                if "dataset" in src or "name" in src:
                    hits.append(f"{path}:{node.lineno}: {src}")
    assert not hits, hits


def test_a_dataset_is_one_module_and_one_decorator() -> None:
    """tests/toy_dataset.py registers `toy:val` (protocol top1) and nothing else: every stage
    then knows how to load it, check configs on it, evaluate it and validate tables on it."""
    spec = dataset_spec("toy:val")
    assert (spec.family, spec.split, spec.protocol, spec.synthetic) == ("toy", "val", "top1", True)
    ds = load_dataset("toy:val")
    assert (len(ds), ds.family, ds.has_ground_truth) == (3, "toy", True)
    assert ExperimentConfig(dataset="toy:val").dataset == "toy:val"
    preds = [{"qid": q.qid, "pred_relevant_windows": [[*q.windows[0], 1.0]]} for q in ds.queries]
    assert evaluate("toy:val", ds.queries, preds)["brief"] == {
        "R1@0.3": 100.0, "R1@0.5": 100.0, "R1@0.7": 100.0, "mIoU": 100.0}
    assert protocol_of("toy:val").metric_keys == ("R1@0.3", "R1@0.5", "R1@0.7", "mIoU")
    assert "toy:val" in DATASETS


def test_table_columns_are_checked_against_the_datasets_protocol(tmp_path: Path) -> None:
    import yaml

    spec = {"table": "9", "title": "t", "dataset": "toy:val", "paper_dataset": "toy",
            "base": "../experiments/granalign_qvh.yaml", "kind": "rows",
            "columns": {"mAP": "MR-full-mAP"}, "rows": [{"name": "a", "paper": {"mAP": 1.0}}]}
    path = tmp_path / "ablations" / "table9.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(TableError, match=r"unknown metric key 'MR-full-mAP'; known: R1@0.3, R1@0.5"):
        load_table(path)


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("recipe", "vtggpt", "granalign, vtg-gpt"),
        ("prune", "merg", "frames, merge, none, spans"),
        ("embedder", "minlm", "minilm"),
        ("normalisation", "min-max", "minmax, raw, shift"),
        ("span_score", "whole", "granalign, selected"),
        ("dataset", "qvhighlights:train", "qvhighlights:test, qvhighlights:val"),
        ("captions", "qwen", "blip2, minigptv2, qwen2.5-vl"),
        ("frame_filter", "clip", "caption-text, clip-vit-b32"),
        ("rewriter", "llama", "hf-causal-lm"),
        ("instruction_pair", 99, "1, 2, 3, 4, 5"),
        ("cq_fallback", "none", "ca, zero"),
        ("proposals_from", "all", "variants+mean, mean"),
        ("pairing", "qx-Ca", "valid names: granalign"),
    ],
)
def test_config_names_are_checked_when_the_yaml_is_read(tmp_path: Path, key: str, value: object, valid: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {REPO / 'experiments' / 'vtg_gpt_qvh.yaml'}\n{key}: {value}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and repr(key) in message and str(value) in message and valid in message


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("lam", 1.5, "0 <= lam <= 1"), ("K", 0, "0 < K <= 100"), ("tau", 0.0, "0 < tau <= 1"),
     ("gap", -1, "gap >= 0"), ("m", 6, "1 <= m <= 5"), ("n", 100, "0 <= n < 100"),
     ("bins", 10**9, "1 <= bins <= 1000"), ("limit", 0, "limit >= 1"), ("limit", -5, "limit >= 1"),
     ("top_k", 0, "top_k >= 1")],
)
def test_config_ranges_are_checked_when_the_yaml_is_read(tmp_path: Path, key: str, value: object, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"base: {REPO / 'experiments' / 'granalign_qvh.yaml'}\n{key}: {value}\n")
    with pytest.raises(ConfigError, match=r".*") as err:
        load_config(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_config_hash_covers_only_what_the_recipe_reads() -> None:
    vtg = load_config(REPO / "experiments" / "vtg_gpt_qvh.yaml")
    # VTG-GPT's recipe ignores prune, n, span_score and proposals_from: one computation
    assert vtg.replace(prune="frames", n=40, span_score="granalign", proposals_from="mean").hash() == vtg.hash()
    assert vtg.replace(lam=0.4).hash() != vtg.hash()
    granalign = load_config(REPO / "experiments" / "granalign_qvh_minigptv2.yaml")
    assert granalign.replace(prune="spans").hash() != granalign.hash()
    assert granalign.replace(name="other", tags={"row": "x"}).hash() == granalign.hash()


def test_ls_lists_every_registry_and_one_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    for kind, reg in REGISTRIES.items():
        assert f"{kind} ({len(reg)})" in out
    for name in ("granalign", "vtg-gpt", "qvhighlights:val", "hf-causal-lm", "clip-vit-b32", "minmax"):
        assert f"  {name} " in out
    assert main(["ls", "recipe"]) == 0
    one = capsys.readouterr().out
    assert one.startswith("recipe (2): ") and "vtg-gpt" in one and "pairing" not in one
    assert main(["ls", "recipes"]) == 2
    assert "unknown registry 'recipes'; registries: " in capsys.readouterr().err


# -- start-up: a command imports what it uses ------------------------------------------------------
HEAVY = ("numpy", "yaml", "tqdm", "optuna", "mlflow", "torch", "transformers", "sqlalchemy", "pandas",
         "matplotlib", "spacy", "onnxruntime", "sklearn")


def _fresh(code: str, *args: str) -> str:
    """Run `code` in a new interpreter (nothing imported yet) and return what it printed."""
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                         check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_importing_the_command_line_imports_no_heavy_package() -> None:
    """`granalign --help` builds its parser from `harness.cli` alone: no command module, no
    numpy, Optuna, MLflow, torch, ... (each command imports its own when it runs)."""
    code = ("import contextlib, io, sys\nfrom harness.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    main(['--help'])\n"
            f"print(sorted(m for m in {HEAVY!r} + ('harness.cli.cache', 'harness.cli.build', 'harness.cli.run',"
            " 'harness.cli.eval', 'harness.cli.study', 'harness.cli.ls') if m in sys.modules))")
    assert _fresh(code).strip() == "[]"


def test_eval_imports_the_evaluator_and_not_the_builder_optuna_or_mlflow(data_root: Path) -> None:
    """`granalign eval` scores a real file in a fresh process without importing the
    builder's model backends, the study runner, Optuna, SQLAlchemy or MLflow."""
    pred = data_root / "qvhighlights" / "eval_reference" / "sample_val_preds.jsonl"
    code = ("import contextlib, io, sys\nfrom harness.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    rc = main(['eval', '--dataset', 'qvhighlights:val', '--pred', sys.argv[1], '--data-root', sys.argv[2]])\n"
            "print(rc, 'MR-full-mAP' in out.getvalue())\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow', 'torch', 'sqlalchemy',"
            " 'transformers', 'spacy', 'pandas', 'matplotlib') or m.startswith(('harness.builder', 'harness.runner',"
            " 'harness.cli.study', 'harness.cli.build', 'harness.cli.cache', 'harness.cli.run'))))")
    ran, imported = _fresh(code, str(pred), str(data_root)).splitlines()
    assert ran == "0 True"
    assert imported == "[]"


def test_each_command_is_declared_once_and_the_lazy_parser_matches_the_full_one() -> None:
    """`COMMANDS` names every command a module declares (and only those); the parser made for
    one command line has that command's arguments exactly as the full parser has them."""
    declared: dict[str, str] = {}
    for info in pkgutil.iter_modules(cli.__path__, "harness.cli."):
        for command in getattr(importlib.import_module(info.name), "ARGUMENTS", {}):
            assert command not in declared, f"{command} declared by {declared[command]} and {info.name}"
            declared[command] = info.name
    assert declared == {c: m for c, (m, _help) in cli.COMMANDS.items()}

    def options(parser: object, words: list[str]) -> list[tuple[tuple[str, ...], object, object]]:
        for word in words:
            action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")  # type: ignore[attr-defined]
            parser = action.choices[word]
        return [(tuple(a.option_strings), a.dest, a.default) for a in parser._actions]  # type: ignore[attr-defined]

    full = cli.build_parser()
    for command in cli.COMMANDS:
        words = command.split()
        assert cli.named_command([*words, "--help"]) == command
        lazy = cli.build_parser([*words, "x"])
        assert options(lazy, words) == options(full, words), command
        assert len(options(lazy, words)) > 1, command  # more than -h: its arguments were declared


def test_ls_in_a_fresh_process_lists_what_importing_every_module_registers() -> None:
    """`granalign ls` fills the registries itself (`load_all`); importing every module of the
    package first registers nothing more."""
    run_ls = "import sys\nfrom harness.cli import main\nsys.exit(main(['ls']))"
    every_module = ("import importlib, pkgutil, harness\n"
                    "for m in pkgutil.walk_packages(harness.__path__, 'harness.'):\n"
                    "    importlib.import_module(m.name)\n")
    alone = _fresh(run_ls)
    assert alone == _fresh(every_module + run_ls)
    assert "qvhighlights:val" in alone and "hf-causal-lm" in alone


# -- one home per table, per config and per hyperparameter ------------------------------------------
def _defined_classes() -> dict[str, str]:
    """class name -> the module that defines it, for every class of the package."""
    return {node.name: path for path, tree in _sources().items()
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def test_one_tables_package_and_one_config_package() -> None:
    """Running, statistics and rendering of tables live in `harness/tables/`; every config
    class (run, table, sweep, build, settings) in `harness/config/`."""
    table_modules = [p for p in _sources() if Path(p).stem == "tables" or "/tables/" in p]
    assert all(p.startswith("harness/tables/") for p in table_modules), table_modules
    where = _defined_classes()
    for name in ("ExperimentConfig", "TableSpec", "RowSpec", "SweepSpec", "BuildConfig", "Settings"):
        assert where[name].startswith("harness/config/"), (name, where[name])
    # not configs: a registered dataset's description, and the cached inputs a run names
    configs = {n: p for n, p in where.items() if n.endswith(("Config", "Spec"))
               and n not in ("DatasetSpec", "SourceSpec")}
    assert all(p.startswith("harness/config/") for p in configs.values()), configs


def test_every_registry_is_declared_in_one_module() -> None:
    made = [f"{path}:{node.lineno}" for path, tree in _sources().items() for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Registry"]
    assert made and all(m.startswith("harness/core/registries.py:") for m in made), made
    from harness.core import registries

    declared = {v.kind for v in vars(registries).values() if isinstance(v, type(registries.DATASETS))}
    assert declared == set(REGISTRIES)  # nothing else made a registry at run time


def test_mpg_params_are_passed_by_keyword_only() -> None:
    positional = [f"{path}:{node.lineno}" for path, tree in _sources().items() for node in ast.walk(tree)
                  if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MPGParams" and node.args]
    assert not positional, positional
    from harness.method.proposals import MPGParams

    with pytest.raises(TypeError):
        MPGParams(10, 8, 6, 20.0, 0.3, "frames", "granalign")  # type: ignore[misc]


def test_query_kinds_are_declared_once() -> None:
    """The literal list of query kinds appears nowhere but their declarations."""
    literal = [f"{path}:{node.lineno}" for path, tree in _sources().items() for node in ast.walk(tree)
               if isinstance(node, ast.Tuple | ast.List | ast.Set)
               and {getattr(e, "value", None) for e in node.elts} >= {"qs", "qd", "qp"}]
    assert not literal, literal


def test_adding_a_hyperparameter_is_one_declaration_plus_its_use_in_the_method() -> None:
    """A toy MPG hyperparameter, declared once with `param`: its check, the hash, the MLflow
    params and the MPG's keywords all follow; the MPG refuses it until the method uses it
    (no positional shift can hide it)."""
    import dataclasses

    from harness.config.experiment import param
    from harness.method.proposals import MPGParams

    # the one declaration
    toy = dataclasses.make_dataclass("ToyConfig", [("toy_bias", float, param(
        0.0, "mpg", "a toy bias on span scores", check=lambda v: -1.0 <= v <= 1.0,
        expect="-1 <= toy_bias <= 1"))], bases=(ExperimentConfig,), frozen=True)
    base = toy()
    with pytest.raises(ConfigError, match="toy_bias.*expected -1 <= toy_bias <= 1"):
        toy(toy_bias=2.0)
    assert "toy_bias" in base.reads() and base.hash() != base.replace(toy_bias=0.5).hash()
    assert base.flat_params()["toy_bias"] == "0.0"
    assert base.values("mpg")["toy_bias"] == 0.0
    with pytest.raises(TypeError, match="toy_bias"):
        MPGParams(**base.values("mpg"))
    # its use in the method: the MPG declares the keyword it reads
    toy_mpg = dataclasses.make_dataclass("ToyMPG", [("toy_bias", float, dataclasses.field(kw_only=True))],
                                         bases=(MPGParams,), frozen=True)
    assert toy_mpg(**base.values("mpg")).toy_bias == 0.0
    # and the real config is untouched: the same hash as before the toy existed
    assert "toy_bias" not in ExperimentConfig().reads()


def test_every_mutant_of_the_mutation_check_still_applies() -> None:
    """`benchmarks/mutants.py` changes exact source lines: a refactor that moves one must
    move the mutant too, or the check silently tests less (it reports NO LONGER APPLIES)."""
    spec = importlib.util.spec_from_file_location("granalign_mutants", REPO / "benchmarks" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["granalign_mutants"] = module
    spec.loader.exec_module(module)
    stale = [f"{m.id} ({m.path}): found {(REPO / m.path).read_text().count(m.old)} times"
             for m in module.MUTANTS if (REPO / m.path).read_text().count(m.old) != 1]
    assert not stale, stale


def test_every_make_command_the_docs_name_is_a_makefile_target() -> None:
    """`make X` in the README and the docs is a command a reader will type."""
    targets = set(re.findall(r"^([A-Za-z0-9_-]+):", (REPO / "Makefile").read_text(), flags=re.M))
    docs = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *REPO.glob("*/README.md")]
    named = {(p.name, m) for p in docs for m in re.findall(r"\bmake\s+([a-z][a-z0-9-]*)", p.read_text())}
    assert not {(f, m) for f, m in named if m not in targets}, sorted(named)
