"""brain's own distribution builds quietly and whole: `make run` installs it (editable), and a
wheel carries the console's static files, which are data, not a package of modules."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_console_files_and_setuptools_has_no_warning(tmp_path: Path) -> None:
    # A copy of what the build reads, so that the build's own files stay out of the repository.
    src = tmp_path / "src"
    shutil.copytree(REPO / "brain", src / "brain", ignore=shutil.ignore_patterns("__pycache__"))
    for cache in ("brain/__pycache__", "brain/api/__pycache__"):  # as in a tree that has run
        (src / cache).mkdir()
        (src / cache / "x.cpython-311.pyc").write_bytes(b"")
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    # setuptools warned on every install ("Package 'brain.console.static' is absent from the
    # `packages` configuration"), some forty lines in the middle of `make run`'s first output.
    assert "BuildBackendWarning: Package" not in out.stderr + out.stdout
    (wheel,) = (tmp_path / "dist").glob("brain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = {p.relative_to(REPO).as_posix() for p in (REPO / "brain" / "console" / "static").iterdir()}
    assert static and static <= names, sorted(static - names)
    assert "brain/console/plugin.py" in names
    assert not [n for n in names if "__pycache__" in n]
