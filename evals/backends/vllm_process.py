"""vLLM in its own interpreter: a policy whose engine runs in a subprocess of another virtual environment.

vLLM pins its own torch and transformers, so it lives in ``.venv-vllm``, apart from the environment
that trains. ``VLLMProcess`` starts ``python -m evals.backends.vllm_server`` there, which builds a
``VLLMPolicy`` and answers requests: generate replies for a batch of conversations, or reload the
engine's weights in place from a directory (``vllm.LLM.collective_rpc("reload_weights")``) — so a
training run that evaluates every checkpoint pays the engine's start-up once, not once per
checkpoint. The environment, its tools and the records stay in the calling process: only
conversations go over and replies come back (JSON lines on a pipe), so the records are those the
in-process backends write.

``vllm_python()`` finds the interpreter: ``$ITL_VLLM_PYTHON``, else the project's ``.venv-vllm``,
else this interpreter when it has vLLM itself.
"""

from __future__ import annotations

import importlib.util
import json
import os
import selectors
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 900.0  # a first start compiles the model (about 1.5-2.5 min for SmolLM2-135M on 2 CPU cores)


def vllm_python() -> str | None:
    """The interpreter that has vLLM: ``$ITL_VLLM_PYTHON``, the project's ``.venv-vllm``, this one, or None."""
    named = os.environ.get("ITL_VLLM_PYTHON")
    if named:
        if not os.access(named, os.X_OK) or not Path(named).is_file():
            raise ValueError(f"ITL_VLLM_PYTHON={named} is not an executable file (a Python interpreter with vLLM)")
        return named
    venv = ROOT / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    return sys.executable if importlib.util.find_spec("vllm") is not None else None


class VLLMProcess:
    """A ``VLLMPolicy`` in a subprocess (see the module docstring); ``generate`` as every policy, plus ``reload``.

    ``log`` receives the engine's own output; its tail is in the error when the engine fails.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        tools: list[dict[str, Any]] | None = None,
        *,
        max_new_tokens: int = 128,
        dtype: str = "float32",
        python: str | None = None,
        log: str | os.PathLike[str],
        cache_dir: str | os.PathLike[str] | None = None,
        engine_args: dict[str, Any] | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ):
        python = python or vllm_python()
        if python is None:
            raise ValueError(
                "no interpreter with vLLM: `make vllm-env` builds .venv-vllm, or set ITL_VLLM_PYTHON to one"
            )
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.last_token_counts: list[int] = []
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        with self.log.open("ab") as log_file:
            self._process = subprocess.Popen(
                [python, "-m", "evals.backends.vllm_server"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                cwd=ROOT,
                env=env,
                text=True,
            )
        options = {
            "model": str(Path(model).resolve()),
            "tools": tools or None,
            "max_new_tokens": max_new_tokens,
            "dtype": dtype,
            "cache_dir": str(Path(cache_dir).resolve()) if cache_dir else None,
            "engine_args": engine_args or {},
        }
        try:
            self.startup_s = self._ask(options, timeout=start_timeout)["ready"]
        except BaseException:
            self.close()
            raise

    def generate(self, conversations: list[list[dict[str, Any]]], tool_choice: list[str] | None = None) -> list[str]:
        """One greedy reply per conversation (``tool_choice`` as ``VLLMPolicy.generate``)."""
        answer = self._ask({"generate": conversations, "tool_choice": tool_choice})
        self.last_token_counts = answer["counts"]
        return answer["texts"]

    def reload(self, model: str | os.PathLike[str]) -> float:
        """The engine's weights replaced in place by those saved in ``model`` (same architecture); seconds taken."""
        return self._ask({"reload": str(Path(model).resolve())})["seconds"]

    def _ask(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        process = self._process
        if process.poll() is not None:
            raise RuntimeError(f"the vLLM engine process has exited ({process.returncode}): {self._log_tail()}")
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request) + "\n")
            process.stdin.flush()
        except (BrokenPipeError, OSError) as error:
            raise RuntimeError(f"the vLLM engine process is gone: {self._log_tail()}") from error
        line = _read_line(process.stdout, timeout)
        if line is None:
            raise RuntimeError(f"the vLLM engine did not answer within {timeout:.0f} s: {self._log_tail()}")
        if not line:
            raise RuntimeError(f"the vLLM engine process has exited ({process.wait()}): {self._log_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the vLLM engine: {answer['error']}")
        return answer

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            tail = []
        return f"see {self.log}" + (":\n" + "\n".join(tail) if tail else "")

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            try:
                assert process.stdin is not None
                process.stdin.close()  # end of requests: the engine shuts down and the process exits
                process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> VLLMProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(stream: IO[str], timeout: float | None) -> str | None:
    """A line from ``stream`` ('' at its end), or None when ``timeout`` seconds pass without one."""
    if timeout is None:
        return stream.readline()
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            return None
    return stream.readline()
