"""What the help texts, the README and docs/ARCHITECTURE.md state as facts about the code, checked
against the code: the defaults `kfm <command> --help` prints, the README's list of `kfm train`
defaults and of a run's columns, the names, defaults and attributes of ARCHITECTURE §4's API, and
the figures the README and a docstring give for small dopri5 runs, measured again.
"""
import ast
import dataclasses
import functools
import inspect
import json
import re
import warnings
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pytest
import torch

import kinetic_fm as kfm
from kinetic_fm.cli import build_parser, main
from kinetic_fm.commands import sample as sample_command
from kinetic_fm.models import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCHITECTURE = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")

_SAMPLE = inspect.signature(kfm.sample).parameters
_KTS = {f.name: f.default for f in dataclasses.fields(kfm.KTS)}
# flags whose argparse default is None (so that "not given" can be told apart) and whose help
# states the default that then applies: where that default lives
EFFECTIVE_DEFAULTS = {
    ("sample", "--steps"): _SAMPLE["steps"].default,
    ("sample", "--grid"): _SAMPLE["grid"].default,
    ("sample", "--rtol"): _SAMPLE["rtol"].default,
    ("sample", "--atol"): _SAMPLE["atol"].default,
    ("sample", "--max-steps"): _SAMPLE["max_steps"].default,
    ("sample", "--dtype"): sample_command.DEFAULT_DTYPE,   # the parser's None: not typed (a float64 --train is told)
    ("sample", "--alpha0"): _KTS["alpha0"],
    ("sample", "--beta0"): _KTS["beta0"],
    ("sample", "--tau"): _KTS["tau_split"],
    ("sample", "--launch"): _KTS["launch"],
    ("sample", "--landing"): _KTS["landing"],
    ("sample", "--k"): _KTS["k"],
    ("train", "--label-dropout"): TrainConfig().label_dropout,
    ("memorization", "--bootstrap"): inspect.signature(kfm.memorization).parameters["bootstrap"].default,
    ("memorization", "--seed"): inspect.signature(kfm.memorization).parameters["seed"].default,
    # what a run made without them records: checked by test_a_runs_columns_are_the_ones_...
    ("sample", "--field"): "gaussian",
    ("sample", "--dim"): 2,
}
# defaults the help describes in words rather than as a value
PROSE_DEFAULTS = {("sample", "--shape"), ("sample", "--guidance"), ("sample", "--first-step"),
                  ("sample", "--split"), ("train", "--n"), ("reproduce", "--studies")}


def _commands() -> dict:
    return build_parser()._subparsers._group_actions[0].choices


def _same(stated: str, actual) -> bool:
    """Does the value a text states ("1e-3", "1/3", "linear", "3") equal ``actual``?"""
    if isinstance(actual, str):
        return stated == actual
    try:
        return Fraction(stated) == Fraction(actual).limit_denominator(10**6) or float(stated) == actual
    except (ValueError, TypeError):
        return False


def _stated_defaults():
    """(command, flag, the default its help states, the default that applies) for every flag whose
    help says "(default X)", "(default: X)" or "(default X under KTS)"."""
    rows = []
    for command, parser in _commands().items():
        for action in parser._actions:
            found = re.search(r"\(default:? ([^;)]+?)(?: under KTS)?[;)]", action.help or "")
            if not found:
                continue
            flag = action.option_strings[-1] if action.dest != "n" else "--n"
            key = (command, flag)
            if key in PROSE_DEFAULTS:
                continue
            applies = EFFECTIVE_DEFAULTS.get(key, action.default)
            rows.append((command, flag, found.group(1), applies))
    return rows


def test_the_help_texts_state_their_defaults():
    rows = _stated_defaults()
    assert len(rows) >= 30  # every command's numeric and named defaults are covered
    assert all(applies is not None for *_, applies in rows), (
        "a flag defaults to None but its help states a value: add where that value lives to "
        f"EFFECTIVE_DEFAULTS: {[row for row in rows if row[3] is None]}")
    wrong = [row for row in rows if not _same(row[2], row[3])]
    assert not wrong, "help text (command, flag, stated default, actual default):\n" + "\n".join(map(str, wrong))


def test_the_readmes_list_of_train_defaults_matches_kfm_train():
    sentence = re.search(r"Defaults \(`kfm train --help` lists the flags\):(.*?)\n\n", README, re.S)
    assert sentence, "README: the paragraph of `kfm train` defaults moved; update this test"
    stated = re.findall(r"`(--[\w-]+) ([^`\s]+)`", sentence.group(1))
    assert len(stated) >= 6
    actions = {a.option_strings[-1]: a for a in _commands()["train"]._actions if a.option_strings}
    applies = {flag: EFFECTIVE_DEFAULTS.get(("train", flag), actions[flag].default) for flag, _ in stated}
    wrong = [(flag, value, applies[flag]) for flag, value in stated if not _same(value, applies[flag])]
    assert not wrong, f"README's kfm train defaults (flag, stated, actual): {wrong}"


def test_a_runs_columns_are_the_ones_the_readme_and_the_help_list(tmp_path, capsys):
    readme = re.search(r"- Rows: `([^`]*)`", README)
    help_text = re.search(r"one row per seed: ([^`(]*?), the\s+class", _commands()["sample"].description)
    assert readme and help_text, "the README's or --help's list of columns moved; update this test"
    listed = [[c.strip() for c in m.group(1).split(",")] for m in (readme, help_text)]
    assert main(["sample", "--n", "3", "--steps", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    columns = list(pd.read_parquet(tmp_path / "run" / "results.parquet").columns)
    config = json.loads((tmp_path / "run" / "manifest.json").read_text())["config"]
    assert (config["field"], config["dim"]) == (EFFECTIVE_DEFAULTS[("sample", "--field")],
                                                EFFECTIVE_DEFAULTS[("sample", "--dim")])
    for named in listed:
        assert columns == named + ["x"], f"README/--help list {named} + x, the run wrote {columns}"


def _architecture_api_block() -> str:
    section = ARCHITECTURE.split("## 4. ", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_every_name_in_architecture_section_4_is_public():
    names = set(re.findall(r"\bkfm\.(\w+)", _architecture_api_block()))
    assert {"KTS", "sample", "noise", "EmpiricalFlow", "memorization"} <= names
    assert not names - set(kfm.__all__), f"ARCHITECTURE §4 names {names - set(kfm.__all__)}, not in kfm.__all__"


def test_architecture_section_4_keywords_and_defaults_match_the_signatures():
    calls = [node for node in ast.walk(ast.parse(_architecture_api_block()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Name) and node.func.value.id == "kfm"]
    assert len(calls) >= 5
    wrong = []
    for call in calls:
        parameters = inspect.signature(getattr(kfm, call.func.attr)).parameters
        positional = [p for p in parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if len(call.args) > len(positional):
            wrong.append(f"kfm.{call.func.attr}: {len(call.args)} positional arguments, takes {len(positional)}")
        for keyword in call.keywords:
            if keyword.arg not in parameters:
                wrong.append(f"kfm.{call.func.attr}: no argument {keyword.arg!r}")
                continue
            try:  # a literal (0.6, "euler", 1/3) is the documented default; a name is an example
                value = eval(compile(ast.Expression(keyword.value), "§4", "eval"), {"__builtins__": {}})
            except NameError:
                continue
            if value != parameters[keyword.arg].default:
                wrong.append(f"kfm.{call.func.attr}({keyword.arg}={value!r}): "
                             f"the default is {parameters[keyword.arg].default!r}")
    assert not wrong, "ARCHITECTURE §4:\n" + "\n".join(wrong)


@pytest.mark.parametrize("variable, cls", [("res", kfm.SampleResult), ("rep", kfm.MemorizationReport)])
def test_architecture_section_4_attributes_exist(variable, cls):
    documented = set(re.findall(rf"\b{variable}\.(\w+)", _architecture_api_block()))
    assert documented
    fields = {f.name for f in dataclasses.fields(cls)}
    missing = {name for name in documented if name not in fields and not hasattr(cls, name)}
    assert not missing, f"ARCHITECTURE §4 documents {variable}.{missing}, which {cls.__name__} lacks"


def test_every_readme_section_the_messages_name_exists():
    # the convention hint sent users to "the README's 'Other conventions'", a section that no
    # longer existed
    from kinetic_fm.sampling import guards

    headings = set(re.findall(r"^#+ (.+)$", README, flags=re.MULTILINE))
    for hint in (guards.CONVENTION_HINT, guards.BY_NAME_HINT):
        named = re.findall(r"README's section '([^']+)'", hint)
        assert named and set(named) <= headings
    sources = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    for quoted in re.findall(r"README's (?:section )?'([^']+)'", sources):
        assert quoted in headings, quoted
    phrases = re.findall(r"README: '([^']+)'", sources)      # a paragraph's opening words
    assert phrases and all(phrase in README for phrase in phrases)


# --- the README's commands, names and paths, against the code and the tree ------------------------

_COMMAND_LINE = re.compile(r"\b(?:kfm|kinetic_fm\.cli) (" + "|".join(_commands()) + r")\b([^`\n#]*)")
_FLAG = re.compile(r"(?<![\w-])--[a-z][\w-]*")


def test_every_kfm_flag_the_readme_uses_exists():
    """Every `kfm <command> --flag` in the README's blocks and prose is a flag of that command."""
    known = {name: {o for a in parser._actions for o in a.option_strings} for name, parser in _commands().items()}
    uses = [(command, flag) for command, rest in _COMMAND_LINE.findall(README) for flag in _FLAG.findall(rest)]
    assert len(uses) >= 60
    unknown = sorted({use for use in uses if use[1] not in known[use[0]]})
    assert not unknown, f"README uses flags its command lacks (command, flag): {unknown}"


def test_the_readmes_shell_commands_parse():
    """Each `kfm` line of the README's bash blocks parses as written (values, choices; nothing runs)."""
    lines = [line.split("#", 1)[0] for block in re.findall(r"```bash\n(.*?)```", README, re.S)
             for line in block.splitlines() if re.search(r"\b(?:kfm|kinetic_fm\.cli) \w", line)]
    commands = [line[_COMMAND_LINE.search(line).start():].split(None, 1)[1] for line in lines
                if "..." not in line]   # "kfm sample ... --resume" elides its flags
    assert len(commands) >= 15
    parser = build_parser()
    for command in commands:
        try:
            parser.parse_args(command.split())
        except SystemExit:
            pytest.fail(f"README: `{command}` does not parse")


def test_every_kfm_name_the_readme_uses_exists():
    names = set(re.findall(r"\bkfm\.(\w+)", README))
    assert {"sample", "KTS", "EmpiricalFlow", "memorization", "KineticODESolver"} <= names
    assert not names - set(dir(kfm)), f"README names kfm.{sorted(names - set(dir(kfm)))}, which kinetic_fm lacks"


def test_the_readme_names_every_public_warning_class():
    # a user filters kfm's warnings by their class; kfm.SamplerSettingsWarning was named nowhere in it
    warning_classes = [name for name in kfm.__all__ if isinstance(getattr(kfm, name), type)
                       and issubclass(getattr(kfm, name), Warning)]
    assert "SamplerSettingsWarning" in warning_classes
    unnamed = [name for name in warning_classes if f"kfm.{name}" not in README]
    assert not unnamed, f"README does not name kfm.{unnamed}"


@pytest.mark.parametrize("document", ["README.md", "docs/ARCHITECTURE.md", "BENCHMARKS.md"])
def test_every_file_and_test_the_docs_name_exists(document):
    text = (ROOT / document).read_text(encoding="utf-8")
    named = set(re.findall(r"((?:tests|benchmarks|\.ci|docs|src)/[\w./-]*\w)(?:::(\w+))?", text))
    assert named
    missing = [path for path, _ in named if not (ROOT / path).exists()]
    missing += [f"{path}::{test}" for path, test in named
                if test and (ROOT / path).is_file() and f"def {test}(" not in (ROOT / path).read_text()]
    assert not missing, f"{document} names {sorted(missing)}, not in the tree"


def test_architectures_module_map_names_the_package_as_it_is():
    """§1's map of layers names every module and subpackage of src/kinetic_fm, and only those."""
    section = ARCHITECTURE.split("## 1. ", 1)[1].split("\n## ", 1)[0]
    drawn = re.search(r"```\n(.*?)```", section, re.S).group(1)
    named = set(re.findall(r"(?<![\w./])(\w+\.py|\w+/)(?=\s)", drawn))
    package = ROOT / "src" / "kinetic_fm"
    present = {p.name + ("/" if p.is_dir() else "") for p in package.iterdir()
               if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert not named - present, f"the map names {sorted(named - present)}, not in src/kinetic_fm"
    assert not present - named, f"src/kinetic_fm has {sorted(present - named)}, not on the map"


def test_the_readmes_tiny_timings_are_the_benchmarked_ones():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    measured = re.search(r"`kfm reproduce --tiny`, same\s+machine: embedded digits ([\d.]+) s, CelebA ([\d.]+) s, "
                         r"MNIST ([\d.]+) s", benchmarks)
    stated = re.search(r"\(embedded digits (\d+) s, CelebA (\d+) s, MNIST (\d+) s", README)
    assert measured and stated, "the --tiny timings moved in README.md or BENCHMARKS.md; update this test"
    assert [round(float(s)) for s in measured.groups()] == [int(s) for s in stated.groups()]


def test_the_sections_the_readme_points_to_exist():
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    own = {" ".join(h.split()) for h in re.findall(r"^#+ (.+)$", README, flags=re.MULTILINE)}
    theirs = {" ".join(h.split()) for h in re.findall(r"^#+ (.+)$", benchmarks, flags=re.MULTILINE)}
    pointed = [(own, " ".join(m.split())) for m in re.findall(r'\bsee "([^"]+)"', README)]
    pointed += [(theirs, " ".join(m.split())) for m in re.findall(r'BENCHMARKS\.md, "([^"]+)"', README)]
    assert len(pointed) >= 3
    # a pointer may shorten a heading to its opening words ("On a GPU" for "On a GPU: NVIDIA H200 ...")
    missing = [name for headings, name in pointed if not any(re.match(re.escape(name) + r"\b", h) for h in headings)]
    assert not missing, f"README points to sections that do not exist: {missing}"


# --- ARCHITECTURE §8, the concept index: every module and name where the table says --------------

def _concept_index() -> list[tuple[str, str, list[str]]]:
    """(concept, module, names) for each row of §8's table."""
    section = ARCHITECTURE.split("## 8. ", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("Concept", "---"):
            continue
        module = re.fullmatch(r"`([\w.]+)`", cells[1])
        assert module, f"§8: the module cell of {cells[0]!r} is not one `dotted.name`: {cells[1]!r}"
        rows.append((cells[0], module.group(1), re.findall(r"`([\w.]+)`", cells[2])))
    return rows


def _module_file(module: str) -> Path:
    """Where ``module`` lives in the tree, read from the path alone (not from an import)."""
    base = ROOT / "src" / Path(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def _defines(source: str, name: str) -> bool:
    """Does a module's source bind ``name`` at its top level (def, class or assignment)?"""
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            return True
    return False


def _has_attribute(cls: type, attribute: str) -> bool:
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return attribute in fields or hasattr(cls, attribute)


def test_the_concept_index_names_modules_and_objects_where_they_are():
    import importlib

    rows = _concept_index()
    assert len(rows) >= 50
    wrong = []
    for concept, module, names in rows:
        path = _module_file(module)
        if not module.startswith("kinetic_fm.") or not path.is_file():
            wrong.append(f"{concept}: no module {module} in the tree ({path.relative_to(ROOT)})")
            continue
        # a concept lives in a public module; only the kfm verbs' own helpers (commands._rows) are private
        private = [part for part in module.split(".") if part.startswith("_")]
        if private and not module.startswith("kinetic_fm.commands._"):
            wrong.append(f"{concept}: {module} is private; give the concept a public home")
        imported = importlib.import_module(module)
        assert names, f"§8: {concept!r} names nothing"
        for written in names:
            top_level, name = written.startswith("kfm."), written.removeprefix("kfm.")
            owner, _, attribute = name.partition(".")
            # defined there, by the source itself: a re-export does not count as where a concept lives
            if not _defines(path.read_text(encoding="utf-8"), owner):
                wrong.append(f"{concept}: {module} does not define {owner}")
                continue
            found = getattr(imported, owner, None)
            if attribute and not _has_attribute(found, attribute):
                wrong.append(f"{concept}: {module}.{owner} has no attribute {attribute}")
            if top_level and (owner not in dir(kfm) or getattr(kfm, owner) is not found):
                wrong.append(f"{concept}: kfm.{owner} is not {module}.{owner}")
    assert not wrong, "docs/ARCHITECTURE.md §8:\n" + "\n".join(wrong)


def test_the_concept_index_covers_the_public_names_and_the_commands():
    indexed = {(module, name.removeprefix("kfm.")) for _, module, names in _concept_index() for name in names}
    unindexed = sorted(name for name in set(kfm.__all__) | set(kfm._LAZY) if not any(n == name for _, n in indexed))
    assert not unindexed, f"docs/ARCHITECTURE.md §8 does not index kfm.{unindexed}"
    modules = {module for module, _ in indexed}
    missing = [command for command in _commands() if f"kinetic_fm.commands.{command}" not in modules]
    assert not missing, f"docs/ARCHITECTURE.md §8 has no row for kfm {missing}"


# --- numbers the docs state about a tiny run, measured again --------------------------------------

@functools.cache
def _dopri5_on_the_gaussian_field(**tolerances) -> kfm.SampleResult:
    """dopri5 over seeds 0..999 of `kfm sample --field gaussian --dim 3`'s field, N(2·1, 0.5²I)."""
    field = sample_command._builtin_field("gaussian", 3).velocity
    return kfm.sample(field, seeds=range(1000), shape=(3,), solver="dopri5", profile=True, **tolerances)


def test_the_readmes_dopri5_step_counts_on_the_gaussian_field_are_measured_ones():
    """README, the sampler flags: "dopri5 takes 4–5 steps on the smooth 3-D `gaussian` field, the
    longest a third of the way (median over 1,000 seeds; up to M); `--rtol 1e-8 --atol 1e-8` takes
    A–B": the counts are the fewest and most over seeds 0..999 of `kfm sample --field gaussian --dim 3`."""
    found = re.search(r"dopri5 takes (\d+)–(\d+) steps on the smooth 3-D `gaussian` field, the\s+longest a third "
                      r"of the way \(median over 1,000 seeds; up to ([\d.]+)\); `--rtol 1e-8 --atol 1e-8`\s+"
                      r"takes (\d+)–(\d+)\.", README)
    assert found, "README: the sentence on dopri5's steps on the gaussian field moved; update this test"
    fewest, most, longest, tight_fewest, tight_most = found.groups()
    default, tight = _dopri5_on_the_gaussian_field(), _dopri5_on_the_gaussian_field(rtol=1e-8, atol=1e-8)
    step_lengths = default.times.diff(dim=1).nan_to_num(0.0).amax(dim=1)
    assert (default.steps.min().item(), default.steps.max().item()) == (int(fewest), int(most))
    assert abs(step_lengths.median().item() - 1 / 3) < 0.02
    assert step_lengths.max().item() == pytest.approx(float(longest), abs=5e-3)
    assert (tight.steps.min().item(), tight.steps.max().item()) == (int(tight_fewest), int(tight_most))


def test_energy_betweens_figures_for_dopri5s_long_steps_are_measured_ones():
    """energy_between's docstring: on that field at dopri5's default tolerances "L the longest [step]; by
    length M' % and S' % off, split so the mean energy after t = 0.5–0.9 comes out up to M % off and single
    samples' up to S %", the whole kpe "(K there)": the largest errors over t = 0.5, 0.55, ..., 0.9 against
    rk4 on 2,000 steps in float64 (exact to 1e-14 here), of energy_after and of the straddling step counted by
    its share of length (the rule before; benchmarks/energy_split_accuracy.py prints both), and the largest
    relative error of a sample's kpe."""
    doc = " ".join(inspect.getdoc(kfm.energy_between).split())
    found = re.search(r"([\d.]+) the longest; by length ([\d.]+) % and ([\d.]+) % off, split so the mean energy "
                      r"after t = 0\.5–0\.9 comes out (?:up to )?(?:[\d.]+–)?([\d.]+) % off "
                      r"and single samples' up to ~?([\d.]+) %\).*?``kpe`` is not affected \(([\d.e-]+) there\)", doc)
    assert found, "energy_between's docstring: the sentence on dopri5's long steps moved; update this test"
    longest, length_mean_error, length_sample_error, mean_error, sample_error, kpe_error = map(float, found.groups())
    run = _dopri5_on_the_gaussian_field()
    field = sample_command._builtin_field("gaussian", 3).velocity
    exact = kfm.sample(field, seeds=range(1000), shape=(3,), solver="rk4", steps=2000, profile=True,
                       dtype=torch.float64)
    starts, ends = run.times[:, :-1], run.times[:, 1:]
    means, samples, length_means, length_samples = [], [], [], []
    for t in [0.5 + 0.05 * i for i in range(9)]:
        measured, reference = run.energy_after(t), exact.energy_after(t)
        by_length = (run.profile * ((ends - t) / (ends - starts)).clamp(0.0, 1.0).nan_to_num(0.0)).sum(dim=1)
        for errors, energy in ((means, measured.mean()), (length_means, by_length.mean())):
            errors.append(abs(energy / reference.mean() - 1).item())
        for errors, energy in ((samples, measured), (length_samples, by_length)):
            errors.append((energy / reference - 1).abs().max().item())
    # a tail over 1,000 samples: a platform's rounding may move one adaptive step, hence the slack
    assert 100 * max(means) == pytest.approx(mean_error, abs=0.1)
    assert 100 * max(samples) == pytest.approx(sample_error, abs=2)
    assert 100 * max(length_means) == pytest.approx(length_mean_error, abs=0.1)
    assert 100 * max(length_samples) == pytest.approx(length_sample_error, abs=2)
    assert run.times.diff(dim=1).nan_to_num(0.0).max().item() == pytest.approx(longest, abs=5e-3)
    assert (run.kpe / exact.kpe - 1).abs().max().item() == pytest.approx(kpe_error, rel=0.2)
    assert samples[2] < 1e-3        # "at the early/late split (0.6), where its steps land, it is exact"


@functools.cache
def _point_target_errors(dtype: torch.dtype, solver: str, **options) -> tuple[float, float]:
    """benchmarks/half_precision_accuracy.py's set-up: PointTarget(y), y ~ N(0, I) in 16 dimensions
    (seed 0), seeds 0..63 drawn in ``dtype``; every path is a straight line, so KPE = ½‖y − x0‖².
    Returns the largest relative KPE error and the largest |x1 − y|."""
    torch.manual_seed(0)
    y = torch.randn(16)
    exact = 0.5 * (y.double() - kfm.noise(range(64), (16,), dtype=dtype).double()).pow(2).sum(dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the half-precision dopri5 warning, checked below
        res = kfm.sample(kfm.PointTarget(y), seeds=range(64), shape=(16,), solver=solver, dtype=dtype, **options)
    return ((res.kpe.double() - exact).abs() / exact).max().item(), (res.x.double() - y.double()).abs().max().item()


def test_the_half_precision_dopri5_warnings_figures_are_measured_ones():
    """The warning of dopri5 on a half-precision state, its docstring and the README quote PointTarget's
    KPE error (benchmarks/half_precision_accuracy.py): each figure is measured again."""
    with pytest.warns(UserWarning, match="dopri5 on a torch.bfloat16 state") as caught:
        kfm.sample(kfm.PointTarget(torch.zeros(2)), seeds=range(2), shape=(2,), solver="dopri5", dtype=torch.bfloat16)
    message = " ".join(str(w.message) for w in caught)
    doc = " ".join(inspect.getdoc(kfm.sampling.sample._warn_adaptive_half_precision).split())
    readme = " ".join(README.split())
    in_message = re.search(r"16-d PointTarget's KPE up to ([\d.]+) % off in bfloat16", message)
    in_readme = re.search(r"a 16-d `PointTarget`'s KPE came out up to ([\d.]+) % off in bfloat16", readme)
    in_doc = re.search(r"the KPE came out up to ([\d.]+) % off in bfloat16 at rtol 1e-5 \(([\d.]+) % at 1e-2\), "
                       r"its end points up to ([\d.]+) off, and up to ([\d.]+) % off in float16 at rtol 1e-2 "
                       r"\(([\d.]+) % at 1e-5\), where Euler's 20 steps were within ([\d.]+) %", doc)
    assert in_message and in_readme and in_doc, "the half-precision dopri5 figures moved; update this test"
    bf16_default, bf16_loose, end, fp16_loose, fp16_default, euler = map(float, in_doc.groups())
    assert float(in_message.group(1)) == float(in_readme.group(1)) == bf16_default
    loose = {"rtol": 1e-2, "atol": 1e-2}
    bf16_at_default, bf16_end = _point_target_errors(torch.bfloat16, "dopri5")
    fp16_at_loose, fp16_end = _point_target_errors(torch.float16, "dopri5", **loose)
    # the largest of 64 half-precision errors: a platform's rounding may move one adaptive step, hence the slack
    assert 100 * bf16_at_default == pytest.approx(bf16_default, abs=5)
    assert 100 * _point_target_errors(torch.bfloat16, "dopri5", **loose)[0] == pytest.approx(bf16_loose, abs=5)
    assert max(bf16_end, fp16_end) == pytest.approx(end, abs=0.02)
    assert 100 * fp16_at_loose == pytest.approx(fp16_loose, rel=0.3)
    assert 100 * _point_target_errors(torch.float16, "dopri5")[0] == pytest.approx(fp16_default, rel=0.3)
    worst_euler = max(_point_target_errors(dtype, "euler", steps=20)[0] for dtype in (torch.float16, torch.bfloat16))
    assert 100 * worst_euler <= euler


def test_the_hidden_kts_warnings_figures_are_measured_ones():
    """_warn_about_a_hidden_kts's docstring: on tests/test_shaping.py's case a function around the KTS
    "moved rk4's 10-step x by A and dopri5's by B (N–M field evaluations for P–Q), and single samples'
    early energy by E–F %"."""
    doc = " ".join(inspect.getdoc(kfm.sampling.sample._warn_about_a_hidden_kts).split())
    found = re.search(r"moved rk4's 10-step x by ([\d.e-]+) and dopri5's by ([\d.e-]+) \((\d+)–(\d+) field evaluations "
                      r"for (\d+)–(\d+)\), and single samples' early energy by (\d+)–(\d+) %", doc)
    assert found, "_warn_about_a_hidden_kts's docstring: the sentence on its figures moved; update this test"
    rk4_moved, dopri5_moved = float(found[1]), float(found[2])
    kts = kfm.KTS(alpha0=0.3, beta0=0.02, tau_split=0.5, launch="constant", landing="constant")  # its HIDDEN
    x0 = kfm.noise(range(4), (3,), dtype=torch.float64)
    velocity = lambda x, t: torch.cos(3 * t)[:, None] - x                                  # noqa: E731
    early_moved = []
    for solver, settings, moved in (("rk4", {"steps": 10}, rk4_moved), ("dopri5", {}, dopri5_moved)):
        declared = kfm.sample(velocity, x0, solver=solver, shaping=kts, **settings)
        with pytest.warns(UserWarning, match="around a KTS"):
            hidden = kfm.sample(velocity, x0, solver=solver, shaping=lambda t: kts(t), **settings)
        assert (hidden.x - declared.x).abs().max().item() == pytest.approx(moved, rel=0.1), solver
        early_moved.append((hidden.early / declared.early - 1).abs())
        if solver == "dopri5":
            assert (hidden.nfe.min().item(), hidden.nfe.max().item()) == (int(found[3]), int(found[4]))
            assert (declared.nfe.min().item(), declared.nfe.max().item()) == (int(found[5]), int(found[6]))
    early_moved = 100 * torch.cat(early_moved)
    assert (round(early_moved.min().item()), round(early_moved.max().item())) == (int(found[7]), int(found[8]))


def test_the_infinite_energy_warnings_figures_are_measured_ones():
    """_warn_about_infinite_energy's docstring: with β0 = 0.03 "a PointTarget's KPE read A at 100 steps
    and B at 10,000" (tests/test_sample.py's case: y = (2, 2), seed 0's noise, Euler steps)."""
    doc = " ".join(inspect.getdoc(kfm.sampling.sample._warn_about_infinite_energy).split())
    found = re.search(r"PointTarget's KPE read ([\d.]+) at 100 steps and ([\d.]+) at 10,000", doc)
    assert found, "_warn_about_infinite_energy's docstring: the sentence on its figures moved; update this test"
    field = kfm.PointTarget(torch.full((2,), 2.0, dtype=torch.float64))
    x0 = kfm.noise([0], (2,), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the warning itself; its figures are checked here
        for steps, stated in ((100, found[1]), (10_000, found[2])):
            kpe = kfm.sample(field, x0, steps=steps, shaping=kfm.KTS(alpha0=0.0, beta0=0.03)).kpe.item()
            assert f"{kpe:.{len(stated.split('.')[1])}f}" == stated, steps


def test_the_state_resolution_warnings_figure_is_a_measured_one():
    """_check_state_resolution's docstring: "bfloat16 at 1000 steps ended N % of the way to the data"
    (tests/test_sample.py's case: Euler to N(2, 0.5²), 256 samples in 2-d): the mean's share of the way
    from the noise's mean to 2."""
    doc = " ".join(inspect.getdoc(kfm.sampling.sample._check_state_resolution).split())
    found = re.search(r"bfloat16 at 1000 (?:Euler )?steps .*?ended (\d+) % of the way to the data", doc)
    assert found, "_check_state_resolution's docstring: the sentence on its figure moved; update this test"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # the warning itself; its figure is checked here
        res = kfm.sample(kfm.GaussianTarget(2.0, 0.5), seeds=range(256), shape=(2,), steps=1000, dtype=torch.bfloat16)
    start = kfm.noise(range(256), (2,), dtype=torch.bfloat16).double().mean().item()
    share = (res.x.double().mean().item() - start) / (2.0 - start)
    assert 100 * share == pytest.approx(int(found[1]), abs=2)


@pytest.mark.slow
def test_the_readmes_dopri5_batch_size_figure_is_measured(tmp_path):
    """README: under dopri5 a net's KPE moves with ``--batch-size`` by dopri5's own error, "up to A relative
    measured with a trained MLP at the default rtol (`kfm train --data moons --steps 500`; `--n 300 --solver
    dopri5` moved R rows between `--batch-size` 256 and 16)": the set-up measured again (~40 s of training on
    one core; measured 280 rows, 1.38e-2)."""
    import os
    import subprocess
    import sys

    from kinetic_fm.runs import read_run

    found = re.search(r"up to ([\d.e-]+) relative measured with a trained MLP at the default rtol "
                      r"\(`kfm train --data moons --steps 500`; `--n (\d+) --solver dopri5` "
                      r"moved (\d+) rows between `--batch-size` (\d+) and (\d+)\)", " ".join(README.split()))
    assert found, "README's --batch-size figure under dopri5 moved; update this test"
    figure, n, rows, batch_sizes = float(found[1]), found[2], int(found[3]), (found[4], found[5])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kfm_command = [sys.executable, "-m", "kinetic_fm"]
    subprocess.run([*kfm_command, "train", "--data", "moons", "--steps", "500", "--no-progress", "--out",
                    str(tmp_path / "net")], check=True, env=env, capture_output=True)
    kpe = {}
    for batch_size in batch_sizes:
        out = tmp_path / f"batch{batch_size}"
        subprocess.run([*kfm_command, "sample", "--model", str(tmp_path / "net"), "--n", n, "--solver", "dopri5",
                        "--batch-size", batch_size, "--out", str(out)], check=True, env=env, capture_output=True)
        kpe[batch_size] = torch.tensor(read_run(out).sort_values("seed")["kpe"].tolist(), dtype=torch.float64)
    first, second = kpe.values()
    moved = int((first != second).sum())
    largest = float(((first - second).abs() / first.abs()).max())
    # a maximum over the rows of how far dopri5's error moves with its steps: another build's rounding trains
    # another net and moves other steps, so the README's order of magnitude is what holds, not its digits
    assert abs(moved - rows) <= 0.1 * int(n), (moved, rows)
    assert figure / 2 <= largest <= 2 * figure, (largest, figure)
