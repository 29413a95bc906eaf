"""The checkpoint of a search: what it holds, how it is checked, written and read.

A search rewrites ``checkpoint.pt`` after every episode (atomically, see
:mod:`haq_plugin.storage.files`).  It holds everything needed to continue bit for bit:
the settings, the finished episodes, the agent (networks, optimisers, replay
buffer, generators) and the global random generators a backend may draw from.
It contains tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` and never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from haq_plugin.api.errors import HaqError, one_line
from haq_plugin.storage.files import write_via_temp
from haq_plugin.engine.results import EpisodeRecord
from haq_plugin.engine.settings import SearchSettings

CHECKPOINT = "checkpoint.pt"
FORMAT = 2
_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(EpisodeRecord))
# key -> the types its value may have
_KEYS: dict[str, tuple[type, ...]] = {
    "format": (int,), "settings": (dict,), "run": (dict,), "float_accuracy": (float, int),
    "uniform": (dict, type(None)), "history": (list,), "best": (int, type(None)), "agent": (dict, type(None)),
    "action_rng": (dict,), "rng": (dict,),
}


@dataclass
class Checkpoint:
    """The state of a search after its last finished episode.

    ``run`` identifies what was searched beyond the settings (hardware, backend,
    the model's layers, the allowed bit widths): a resumed search must match it.
    """

    settings: SearchSettings
    run: dict[str, Any]
    float_accuracy: float
    uniform: dict[str, Any] | None
    history: list[EpisodeRecord]
    best: int | None
    agent: dict[str, Any] | None
    action_rng: dict[str, Any]
    rng: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        return {"format": FORMAT, "settings": self.settings.to_dict(), "run": self.run,
                "float_accuracy": self.float_accuracy, "uniform": self.uniform,
                "history": [r.to_dict() for r in self.history], "best": self.best, "agent": self.agent,
                "action_rng": self.action_rng, "rng": self.rng}

    def check_resumable(self, settings: SearchSettings, run: Mapping[str, Any]) -> None:
        """Raise unless a search with ``settings`` on ``run`` may continue this one (only episodes may grow)."""
        differences = self.settings.differences(settings)
        differences += [f"{key}: checkpoint {self.run.get(key)!r}, now {value!r}"
                        for key, value in run.items() if self.run.get(key) != value]
        if differences:
            raise HaqError("Cannot resume: the search settings differ from the checkpoint's ("
                           + "; ".join(differences) + "). Resume with the same settings (only episodes may "
                           "grow) or start a new search.")
        if settings.episodes < len(self.history):
            raise HaqError(f"Cannot resume with episodes={settings.episodes}: the checkpoint already has "
                           f"{len(self.history)} finished episodes.")

    @classmethod
    def from_payload(cls, payload: Any, path: Path) -> "Checkpoint":
        """The checkpoint in ``payload``, or a :class:`HaqError` naming the key that is wrong."""
        check_payload(payload, path)
        try:
            settings = SearchSettings.from_dict(payload["settings"])
        except (HaqError, TypeError, ValueError, KeyError) as exc:
            raise _damaged(path, "settings", str(exc)) from None
        history = [EpisodeRecord.from_dict(r) for r in payload["history"]]
        return cls(settings=settings, run=payload["run"], float_accuracy=float(payload["float_accuracy"]),
                   uniform=payload["uniform"], history=history, best=payload["best"], agent=payload["agent"],
                   action_rng=payload["action_rng"], rng=payload["rng"])


def check_payload(payload: Any, path: Path) -> None:
    """Raise unless ``payload`` has this format's keys, of the right types, and complete history entries."""
    if not isinstance(payload, dict):
        raise HaqError(f"Checkpoint {path} is not one of ours, or is damaged: it holds a "
                       f"{type(payload).__name__}, not a dict. Start a new search in a fresh directory.")
    if payload.get("format") != FORMAT:
        raise HaqError(f"Checkpoint {path} has format {payload.get('format')!r}; this haq-plugin reads format "
                       f"{FORMAT}. Start a new search.")
    for key, types in _KEYS.items():
        if key not in payload:
            raise _damaged(path, key, "missing")
        if not isinstance(payload[key], types) or isinstance(payload[key], bool):
            raise _damaged(path, key, f"a {type(payload[key]).__name__}")
    for i, entry in enumerate(payload["history"]):
        missing = [name for name in _RECORD_FIELDS if not isinstance(entry, dict) or name not in entry]
        if missing:
            raise _damaged(path, f"history[{i}]", f"lacks field(s) {', '.join(missing)}")
    best = payload["best"]
    if (best is None) != (not payload["history"]) or (best is not None and not 0 <= best < len(payload["history"])):
        raise _damaged(path, "best", f"{best!r} for {len(payload['history'])} episode(s)")


def _damaged(path: Path, key: str, what: str) -> HaqError:
    return HaqError(f"Checkpoint {path} is not one of ours, or is damaged: key '{key}' ({what}). "
                    "Start a new search in a fresh directory.")


# -- file I/O ---------------------------------------------------------------------------
def save(path: Path, checkpoint: Checkpoint) -> Path:
    """Write the checkpoint atomically (tensors and plain values only, so it loads with weights_only)."""
    payload = checkpoint.to_payload()
    return write_via_temp(path, lambda tmp: torch.save(payload, tmp))


def read_payload(path: Path) -> Any:
    """The raw payload of a checkpoint file; a truncated, foreign or unsafe file is a one-line error."""
    try:
        with warnings.catch_warnings():  # torch warns about unsafe content before refusing it: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, weights_only=True)
    except Exception as exc:  # torch explains unpickling failures in paragraphs: keep the first line
        raise HaqError(f"Cannot read checkpoint {path}: {one_line(exc).rstrip('.')}. It is not a checkpoint "
                       "of haq-plugin, or is damaged; start a new search in a fresh directory.") from None


def load(path: Path) -> Checkpoint:
    return Checkpoint.from_payload(read_payload(path), path)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary checkpoint files an interrupted write left behind (e.g. after SIGKILL)."""
    stem, suffix = Path(CHECKPOINT).stem, Path(CHECKPOINT).suffix
    stale = sorted(directory.glob(f".{stem}.*{suffix}"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def stored_settings(output_dir: str | Path) -> tuple[SearchSettings, dict[str, Any]]:
    """The settings and run identity (hardware, backend, ...) of the search checkpointed in ``output_dir``."""
    path = Path(output_dir) / CHECKPOINT
    if not path.is_file():
        raise HaqError(f"Nothing to resume in {output_dir}: it has no {CHECKPOINT}.")
    checkpoint = load(path)
    return checkpoint.settings, checkpoint.run


def checkpoint_settings(output_dir: str | Path) -> dict[str, Any]:
    """The settings an interrupted search in ``output_dir`` was started with, with its hardware and backend."""
    settings, run = stored_settings(output_dir)
    return {**settings.to_dict(), "hardware": run["hardware"], "backend": run["backend"]}
