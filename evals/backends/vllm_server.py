"""The other end of ``evals.backends.vllm_process``: a ``VLLMPolicy`` answering requests in vLLM's interpreter.

    .venv-vllm/bin/python -m evals.backends.vllm_server    # started by VLLMProcess, never by hand

Requests and answers are JSON lines: the first request configures the policy (answered ``{"ready": seconds}``),
then each ``{"generate": conversations, "tool_choice": ...}`` is answered with the replies and their token
counts, each ``{"reload": model_dir}`` with the seconds the in-place reload took; any failure is answered
``{"error": ...}`` and the caller raises it. The end of the requests stops the engine and the process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import IO, Any


def serve(requests: IO[str], answers: IO[str]) -> None:
    """The subprocess: the first request configures a ``VLLMPolicy``, each later one is answered in order."""
    from evals.backends.vllm import VLLMPolicy

    def answer(value: dict[str, Any]) -> None:
        answers.write(json.dumps(value) + "\n")
        answers.flush()

    options = json.loads(requests.readline())
    try:
        policy = VLLMPolicy(
            options["model"],
            options["tools"],
            max_new_tokens=options["max_new_tokens"],
            dtype=options["dtype"],
            cache_dir=options["cache_dir"],
            engine_args=options["engine_args"],
        )
    except Exception as error:  # noqa: BLE001 - any failure is told to the caller, who raises it
        answer({"error": f"{type(error).__name__}: {error}"})
        return
    try:
        answer({"ready": policy.startup_s})
        for line in requests:
            request = json.loads(line)
            try:
                if "reload" in request:
                    start = time.perf_counter()
                    policy.reload(request["reload"])
                    answer({"seconds": time.perf_counter() - start})
                else:
                    texts = policy.generate(request["generate"], request["tool_choice"])
                    answer({"texts": texts, "counts": policy.last_token_counts})
            except Exception as error:  # noqa: BLE001 - told to the caller; the engine serves on
                answer({"error": f"{type(error).__name__}: {error}"})
    finally:
        policy.close()


if __name__ == "__main__":
    # The answers go to a copy of stdout; stdout itself becomes stderr, so that what vLLM prints reaches the log.
    answers = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    serve(sys.stdin, answers)
