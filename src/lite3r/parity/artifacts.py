"""Every file of an output folder with what parity did with it: compared (with numbers), not run (with the reason),
failed to run, the reference it was compared with, or a record. The parity report lists them all, so nothing in
the folder looks checked that was not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

COMPARED, NOT_RUN, FAILED, REFERENCE, RECORD = "compared", "not run", "failed to run", "reference", "record"

_REFERENCE_FILES = {
    "student.safetensors": "the student's trained SLA parameters: the PyTorch student every export is compared with",
    "quant_state.json": "the student's FP8 scales (applied to the PyTorch student and written into the ONNX)",
}
_RECORD_SUFFIXES = (".json", ".md", ".log", ".jsonl", ".txt")


@dataclass(frozen=True)
class ArtifactStatus:
    name: str
    status: str  # one of COMPARED, NOT_RUN, FAILED, REFERENCE, RECORD
    detail: str

    def describe(self) -> str:
        return f"{self.name}: {self.status} ({self.detail})"


def artifact_statuses(
    names: Iterable[str], runs: Mapping[str, ArtifactStatus], *, has_student: bool
) -> list[ArtifactStatus]:
    """One status per file name: the status of the runner that ran it (``runs``, keyed by file name), else what
    the file is. A model file no runner was given is "not run", never silently left out."""
    statuses = []
    for name in sorted(set(names)):
        if name in runs:
            statuses.append(runs[name])
        elif name in _REFERENCE_FILES and has_student:
            statuses.append(ArtifactStatus(name, REFERENCE, _REFERENCE_FILES[name]))
        elif name.endswith(".onnx.data"):
            graph = name.removesuffix(".data")
            status = runs[graph].status if graph in runs else NOT_RUN
            statuses.append(ArtifactStatus(name, status, f"external weights of {graph}"))
        elif name.endswith(_RECORD_SUFFIXES):
            statuses.append(ArtifactStatus(name, RECORD, "a record of the run, nothing to compare"))
        else:
            statuses.append(ArtifactStatus(name, NOT_RUN, "parity was given no runner for this file"))
    return statuses


def folder_files(folder: str | Path) -> list[str]:
    """The visible files directly in ``folder`` (staging folders and the manifest are hidden)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
