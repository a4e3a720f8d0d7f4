import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tessera_bin():
    path = pathlib.Path(os.environ.get("TESSERA_BIN", ROOT / "build" / "tessera"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build with scripts/setup first")
    return path


@pytest.fixture(scope="session")
def run(tessera_bin):
    def _run(*args, check=True, input=None):
        proc = subprocess.run([str(tessera_bin), *map(str, args)], capture_output=True, input=input, timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"tessera {' '.join(map(str, args))} failed: {proc.stderr.decode(errors='replace')}")
        return proc

    return _run
