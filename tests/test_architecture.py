"""The architecture is checked, not hoped for (docs/architecture.md; after hassfest and import-linter).

- import-linter's contracts (setup.cfg): the core imports no role, the roles are independent of
  each other, no role imports the runtime, providers use only `brain.mail.provider` of mail sync;
- the core's contract names every core module (a new one cannot slip past it);
- a function-local import of a brain module needs a comment saying why, and there are at most 5;
- every built-in manifest names modules that exist, requires plugins that exist, and serves a
  listener some plugin declares;
- every hook is exercised by a test: its name appears in a test module or a test plugin;
- the providers' own tests use, of brain's roles, only `brain.mail.provider` (and `brain.testing`);
- `brain --help` imports neither the roles' server code nor aiohttp.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import subprocess
import sys
from pathlib import Path

from brain.config import load_settings
from brain.plugins.manager import BUILTIN_PLUGINS, builtin_manifests, load_plugins
from brain.runtime import collect_listeners
from tests.test_plugins import hookspec_functions

REPO = Path(__file__).resolve().parent.parent
ROLES = {"auth", "api", "mail", "agents", "webhooks", "console"}
MAX_LOCAL_IMPORTS = 5


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    assert lint.exists(), "import-linter is not installed (it is in the test extra: make venv-test)"
    out = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_the_core_contract_names_every_core_module() -> None:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["importlinter:contract:core"]["source_modules"].split())
    core = {
        f"brain.{path.stem if path.is_file() else path.name}"
        for path in (REPO / "brain").iterdir()
        if (path.suffix == ".py" and path.stem != "__init__") or (path.is_dir() and (path / "__init__.py").exists())
    } - {f"brain.{role}" for role in ROLES} - {"brain.testing"}  # test support: it drives mail's providers
    assert core == listed, f"add to (or remove from) setup.cfg's core contract: {sorted(core ^ listed)}"


def local_imports_of_brain() -> list[tuple[str, int, bool]]:
    """(file, line, has a why-comment) of every import of a brain module inside a function."""
    found = []
    for path in sorted((REPO / "brain").rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom):
                    names = [sub.module or ""]
                elif isinstance(sub, ast.Import):
                    names = [alias.name for alias in sub.names]
                else:
                    continue
                if any(name == "brain" or name.startswith("brain.") for name in names):
                    above = lines[max(0, sub.lineno - 4) : sub.lineno - 1]
                    commented = any(line.strip().startswith("#") for line in above)
                    found.append((str(path.relative_to(REPO)), sub.lineno, commented))
    return found


def test_function_local_imports_are_few_and_say_why() -> None:
    found = local_imports_of_brain()
    assert len(found) <= MAX_LOCAL_IMPORTS, found
    silent = [f"{file}:{line}" for file, line, commented in found if not commented]
    assert not silent, f"function-local imports without a comment saying why: {silent}"


def test_manifests_name_what_exists() -> None:
    manifests = builtin_manifests()
    names = {m.name for m in manifests}
    assert {m.name for m in manifests} >= ROLES | {"core"}
    assert len(BUILTIN_PLUGINS) == len(manifests) - 1
    listeners = set(collect_listeners(load_plugins(()), load_settings(environ={})))
    for manifest in manifests:
        for target in (*manifest.hooks, manifest.hookspecs, manifest.commands):
            if target:
                importlib.import_module(target.partition(":")[0])
        assert set(manifest.requires) <= names, manifest
        assert manifest.listener is None or manifest.listener in listeners, manifest


def test_help_imports_no_server_code() -> None:
    probe = (
        "import sys, contextlib, io\n"
        "from brain.cli import build_parser\n"
        "build_parser()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] == 'aiohttp' or m.endswith('.plugin')"
        " or m in ('brain.runtime', 'brain.auth.routes', 'brain.api.routes', 'brain.mail.service'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_every_hook_has_a_test_that_calls_it() -> None:
    generic = {"test_plugins.py", "test_architecture.py"}  # these only list the hooks
    texts = [
        path.read_text()
        for path in [*(REPO / "tests").rglob("*.py"), *(REPO / "plugins").glob("*/tests/*.py")]
        if path.name not in generic
    ]
    untested = [name for name, _ in hookspec_functions() if not any(name in text for text in texts)]
    assert not untested, f"hooks no test exercises (write one, e.g. in tests/test_hooks.py): {untested}"


def test_provider_tests_use_only_the_provider_interface() -> None:
    allowed = ("brain.mail.provider", "brain.testing")
    for path in sorted((REPO / "plugins").glob("*/tests/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )
            for name in names:
                role = name.split(".")[:2]
                if role[0] == "brain" and len(role) > 1 and role[1] in ROLES | {"runtime"}:
                    assert name.startswith(allowed), f"{path.relative_to(REPO)} imports {name}"
