"""Fine-tuning runs on a tessera server.

    from tessera.model_training import foundation_model as fm
    run = fm.create(model="dbrx-tiny", train_data_path="./train.jsonl", register_to="main.mydirectory")
    run.wait()

create() checks the data on the server before anything starts: bad lines raise TesseraError
whose details list every problem (file, line, message).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from tessera.client import Client, TesseraError, default_client

_RUNS = "/api/2.0/fine-tuning/runs"
FINISHED = ("completed", "failed", "stopped")


@dataclass
class Event:
    time: int  # unix milliseconds
    type: str  # created, started, eval, cancel_requested, registered, completed, failed, stopped
    message: str


@dataclass
class MetricPoint:
    step: int
    value: Optional[float]
    time: int


@dataclass
class FinetuningRun:
    """A fine-tuning run as the server last described it; refresh() asks again."""

    id: str
    status: str
    model: Optional[str] = None
    task: Optional[str] = None
    train_data: Any = None
    register_to: Optional[str] = None
    hyperparameters: Dict[str, Any] = field(default_factory=dict)
    step: int = 0
    total_steps: int = 0
    progress: Optional[float] = None
    loss: Optional[float] = None
    eval_loss: Optional[float] = None
    error: Optional[str] = None
    registered_model: Optional[str] = None
    registered_version: Optional[int] = None
    created_at: Optional[int] = None
    started_at: Optional[int] = None
    finished_at: Optional[int] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)
    _client: Optional[Client] = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.id

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, j: Dict[str, Any], client: Optional[Client] = None) -> "FinetuningRun":
        known = {k: j.get(k) for k in ("model", "task", "train_data", "register_to", "step", "total_steps", "progress",
                                       "loss", "eval_loss", "error", "registered_model", "registered_version",
                                       "created_at", "started_at", "finished_at")}
        return cls(id=j["id"], status=j["status"], hyperparameters=j.get("hyperparameters") or {}, raw=j,
                   _client=client, **known)

    def _api(self) -> Client:
        return self._client or default_client()

    def refresh(self) -> "FinetuningRun":
        fresh = get(self.id, client=self._client)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})
        return self

    def get_events(self) -> List[Event]:
        j = self._api().request("GET", f"{_RUNS}/{self.id}")
        return [Event(e["time"], e["type"], e["message"]) for e in j.get("events", [])]

    def get_metrics(self) -> Dict[str, List[MetricPoint]]:
        j = self._api().request("GET", f"{_RUNS}/{self.id}/metrics")
        return {name: [MetricPoint(p["step"], p["value"], p["time"]) for p in points]
                for name, points in j["metrics"].items()}

    def cancel(self) -> "FinetuningRun":
        j = self._api().request("POST", f"{_RUNS}/{self.id}/cancel")
        return self._update(j)

    def wait(self, timeout: Optional[float] = None, poll_interval: float = 1.0) -> "FinetuningRun":
        """Polls until the run completes, fails or stops; TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.refresh().finished:
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"run {self.id} is still {self.status} after {timeout}s "
                                   f"(step {self.step}/{self.total_steps})")
            time.sleep(poll_interval)
        return self

    def _update(self, j: Dict[str, Any]) -> "FinetuningRun":
        fresh = FinetuningRun.from_json(j, self._client)
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "_client"})
        return self


RunRef = Union[str, FinetuningRun]


def _id(run: RunRef) -> str:
    return run.id if isinstance(run, FinetuningRun) else str(run)


def _paths(paths: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[str]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    return [os.path.abspath(os.fspath(p)) for p in items]


def create(model: str, train_data_path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
           register_to: Optional[str] = None, task_type: str = "INSTRUCTION_FINETUNE",
           training_duration: Optional[str] = None, learning_rate: Optional[float] = None,
           context_length: Optional[int] = None, batch_size: Optional[int] = None,
           lora_rank: Optional[int] = None, lora_alpha: Optional[float] = None,
           lora_targets: Optional[Iterable[str]] = None, eval_fraction: Optional[float] = None,
           seed: Optional[int] = None, experiment_path: Optional[str] = None,
           client: Optional[Client] = None) -> FinetuningRun:
    """Starts a fine-tuning run. task_type: INSTRUCTION_FINETUNE, CHAT_COMPLETION or CONTINUED_PRETRAIN.
    training_duration: "3ep" (epochs), "20000tok" (tokens) or "100ba" (steps)."""
    body: Dict[str, Any] = {"model": model, "train_data_path": _paths(train_data_path), "task_type": task_type}
    optional = {"register_to": register_to, "training_duration": training_duration, "learning_rate": learning_rate,
                "context_length": context_length, "batch_size": batch_size, "lora_rank": lora_rank,
                "lora_alpha": lora_alpha, "eval_fraction": eval_fraction, "seed": seed,
                "experiment_path": experiment_path,
                "lora_targets": list(lora_targets) if lora_targets is not None else None}
    body.update({k: v for k, v in optional.items() if v is not None})
    api = client or default_client()
    return FinetuningRun.from_json(api.request("POST", _RUNS, body), client)


def validate(model: str, train_data_path, task_type: str = "INSTRUCTION_FINETUNE", client: Optional[Client] = None,
             **hyperparameters: Any) -> Dict[str, Any]:
    """Checks the data and plans the run (steps, tokens) without starting it."""
    body = {"model": model, "train_data_path": _paths(train_data_path), "task_type": task_type,
            "validate_only": True, **{k: v for k, v in hyperparameters.items() if v is not None}}
    return (client or default_client()).request("POST", _RUNS, body)


def get(run: RunRef, client: Optional[Client] = None) -> FinetuningRun:
    return FinetuningRun.from_json((client or default_client()).request("GET", f"{_RUNS}/{_id(run)}"), client)


def list(limit: Optional[int] = None, client: Optional[Client] = None) -> List[FinetuningRun]:  # noqa: A001
    """The caller's runs, newest first (every fine-tuning run for an admin token)."""
    j = (client or default_client()).request("GET", _RUNS, params={"limit": limit})
    return [FinetuningRun.from_json(r, client) for r in j["runs"]]


def cancel(runs: Union[RunRef, Sequence[RunRef]], client: Optional[Client] = None) -> List[FinetuningRun]:
    """Cancels one run or several; returns them as they are after the request."""
    items = [runs] if isinstance(runs, (str, FinetuningRun)) else runs
    api = client or default_client()
    return [FinetuningRun.from_json(api.request("POST", f"{_RUNS}/{_id(r)}/cancel"), client) for r in items]


__all__ = ["create", "validate", "get", "list", "cancel", "FinetuningRun", "Event", "MetricPoint", "TesseraError",
           "FINISHED"]
