"""The npm packages that tests/js's scripts import, installed once per package-lock.json.

better-sqlite3 compiles its native module from source (npm cannot fetch its prebuilt binary
here), which takes minutes. `.ci/run` therefore starts this module in the background while the
venv installs (`python3 -m tests.js_packages`), and the tests that run node wait for that install
under the same lock instead of starting their own. Standard library only: it runs before the venv
exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

JS_DIR = Path(__file__).parent / "js"
# What `npm ci` leaves behind once it has finished (better-sqlite3 builds its native module).
JS_INSTALLED = ("better-auth/package.json", "better-sqlite3/build/Release/better_sqlite3.node")
# Written into node_modules after `npm ci`: the lockfile it installed (a changed lockfile installs again).
STAMP_NAME = ".brain-lock-sha256"


class NpmInstallFailed(Exception):
    """npm is missing, or `npm ci` failed; the message says which, with npm's output."""


def lock_path(js_dir: Path) -> Path:
    """The lock that serialises installs into js_dir.

    One lock per package directory of a checkout: its background install and its test workers take
    turns, while another checkout on the same machine installs into its own directory at the same time.
    """
    return Path(tempfile.gettempdir()) / f"brain-tests-js-npm-{hashlib.sha256(bytes(js_dir)).hexdigest()[:16]}.lock"


def ensure_installed(js_dir: Path = JS_DIR, expected: tuple[str, ...] = JS_INSTALLED) -> None:
    """`npm ci` into js_dir unless its node_modules already holds this package-lock.json's install;
    `expected` are paths under node_modules that a finished install has."""
    npm = shutil.which("npm")
    if npm is None:
        raise NpmInstallFailed(f"npm is not installed: the tests that run {js_dir.name}'s scripts need node and npm")
    wanted = hashlib.sha256((js_dir / "package-lock.json").read_bytes()).hexdigest()
    stamp = js_dir / "node_modules" / STAMP_NAME
    with lock_path(js_dir).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        installed = all((js_dir / "node_modules" / path).exists() for path in expected)
        if installed and stamp.exists() and stamp.read_text() == wanted:
            return
        command = [npm, "ci", "--no-audit", "--no-fund"]
        # node-gyp compiles sqlite3.c and better-sqlite3's C++ one file at a time unless told otherwise.
        env = {**os.environ, "JOBS": os.environ.get("JOBS", "max")}
        out = subprocess.run(command, cwd=js_dir, capture_output=True, text=True, timeout=1200, env=env)
        if out.returncode != 0:
            raise NpmInstallFailed(f"{' '.join(command)} in {js_dir} failed:\n{out.stdout}\n{out.stderr}")
        stamp.write_text(wanted)


if __name__ == "__main__":
    try:
        ensure_installed()
    except NpmInstallFailed as failure:
        sys.exit(str(failure))
