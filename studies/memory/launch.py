"""Where the study's runs execute: a local process pool, this process, or Slurm through submitit.

A job is one ``trainers/pretrain.py`` configuration, or (``stack_seeds``) the seeds of one width
trained together as one stack (``trainers.nanollama.run.pretrain_stacked``); several GPUs per run
go through torchrun (DDP). Futures of the jobs' summaries come back to
``studies.memory.search.Study``, which only decides what to run next.
"""

from __future__ import annotations

import json
import logging
import sys
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

import configs
from trainers.nanollama.run import PretrainConfig

if TYPE_CHECKING:
    from studies.memory.search import StudyConfig

logger = logging.getLogger("studies.memory.search")


class SlurmConfig(BaseModel):
    """The Slurm resources of each run submitted through submitit: partition, time limit, CPUs and memory."""

    model_config = ConfigDict(extra="forbid")

    partition: str | None = Field(None, description="Slurm partition")
    timeout_min: int = Field(120, ge=1, description="Slurm time limit per run, minutes")
    cpus_per_task: int = Field(4, ge=1, description="CPUs per Slurm task")
    mem_gb: int | None = Field(None, description="memory per Slurm job, GB")
    cluster: str | None = Field(None, description="submitit cluster: None = auto (slurm), 'local' or 'debug' to test")


def run_trial(cfg_json: str, gpus: int = 0) -> dict[str, Any]:
    """Train one run (all its seeds are separate trials) and return its ``RunSummary`` as a dict."""
    logging.basicConfig(level=logging.WARNING)
    cfg = PretrainConfig.model_validate_json(cfg_json)
    if gpus > 1:
        return _run_torchrun(cfg, gpus)
    from trainers.nanollama.run import pretrain

    return pretrain(cfg).model_dump()


def run_trials(cfg_jsons: list[str], gpus: int = 0) -> list[dict[str, Any]]:
    """One run, or runs that differ only in seed trained as one stack: their ``RunSummary`` dicts."""
    if len(cfg_jsons) == 1:
        return [run_trial(cfg_jsons[0], gpus)]
    logging.basicConfig(level=logging.WARNING)
    from trainers.nanollama.run import pretrain_stacked

    return [s.model_dump() for s in pretrain_stacked([PretrainConfig.model_validate_json(c) for c in cfg_jsons])]


def run_slurm_trials(cfg_jsons: list[str], gpus: int = 0) -> list[dict[str, Any]]:
    return [run_slurm_trial(cfg_jsons[0], gpus)] if len(cfg_jsons) == 1 else run_trials(cfg_jsons, gpus)


def run_slurm_trial(cfg_json: str, gpus: int = 0) -> dict[str, Any]:
    """Slurm entry: with several tasks (one per GPU) set up torch.distributed from Slurm's variables."""
    if gpus > 1:
        import submitit

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    logging.basicConfig(level=logging.WARNING)
    from trainers.nanollama.run import pretrain

    return pretrain(PretrainConfig.model_validate_json(cfg_json)).model_dump()


def _run_torchrun(cfg: PretrainConfig, gpus: int) -> dict[str, Any]:
    import subprocess

    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    request = configs.record(run_dir / "request.yaml", cfg)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={gpus}", "-m", "trainers.pretrain"]
    subprocess.run([*command, "--config", str(request)], check=True, cwd=Path(__file__).resolve().parent.parent)
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


class Launcher:
    """Runs trials and hands back futures: a local process pool, this process, or Slurm via submitit."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self._pool: Any = None
        self._waiters: ThreadPoolExecutor | None = None
        if cfg.launcher == "slurm":
            import submitit

            self._executor = submitit.AutoExecutor(folder=str(cfg.out_dir() / "slurm"), cluster=cfg.slurm.cluster)
            params: dict[str, Any] = {"timeout_min": cfg.slurm.timeout_min, "cpus_per_task": cfg.slurm.cpus_per_task}
            if cfg.gpus_per_run:
                params |= {"gpus_per_node": cfg.gpus_per_run, "tasks_per_node": max(1, cfg.gpus_per_run)}
            if cfg.slurm.partition:
                params["slurm_partition"] = cfg.slurm.partition
            if cfg.slurm.mem_gb:
                params["mem_gb"] = cfg.slurm.mem_gb
            self._executor.update_parameters(**params)
            self._waiters = ThreadPoolExecutor(max_workers=64)
        elif cfg.workers > 0:
            import multiprocessing

            self._pool = ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn"))

    @property
    def slots(self) -> int:
        return 10_000 if self.cfg.launcher == "slurm" else max(1, self.cfg.workers)

    def submit(self, runs: list[PretrainConfig]) -> Future:
        """A future of the ``RunSummary`` dicts of ``runs``: one run, or runs differing only in seed (one stack)."""
        payload = [run.model_dump_json() for run in runs]
        if self._waiters is not None:
            job = self._executor.submit(run_slurm_trials, payload, self.cfg.gpus_per_run)
            logger.info("submitted Slurm job %s for %s", job.job_id, ", ".join(r.run_dir().name for r in runs))
            return self._waiters.submit(job.result)
        if self._pool is not None:
            return self._pool.submit(run_trials, payload, self.cfg.gpus_per_run)
        future: Future = Future()
        try:
            future.set_result(run_trials(payload, self.cfg.gpus_per_run))
        except Exception as err:  # noqa: BLE001  (handed to the caller through the future, like a pool would)
            future.set_exception(err)
        return future

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._waiters is not None:
            self._waiters.shutdown(cancel_futures=True)
