"""`CohortDataModule`: the scans of a cohort and their prompts files, for `sammoe predict`.

Cases come from ``sammoe.data.cohort.find_cases`` (a folder, an nnU-Net/MSD dataset or a CSV manifest), sorted
by case id so that every process of a DDP run agrees on them. ``setup`` checks every output against every
input before anything is read, and sets aside the cases that a previous run completed (``redo`` does them
again). Scans are read and their clicks files parsed in DataLoader workers while the model runs; a case that
cannot be read comes through as its one-line reason, and the run goes on. Lightning splits the cases over
DDP ranks with its unrepeated sampler for prediction: no case is padded in twice.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from sammoe.data.cohort import REPORT_SUFFIX, CohortCase, find_cases
from sammoe.data.io import read_image
from sammoe.errors import ConfigError, SammoeError
from sammoe.files import check_outputs
from sammoe.inference.cohort_case import is_complete
from sammoe.inference.targets import read_targets

SUMMARY = "summary.csv"
SCORES = "scores.csv"
CONFIG = "predict_config.yaml"


class CaseReader(Dataset):
    """Reads one case per item: ``{"case", "volume", "targets", "read_seconds"}`` or ``{"case", "error"}``."""

    def __init__(self, cases: list[CohortCase], channel: int | None = None) -> None:
        self.cases = cases
        self.channel = channel

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        started = time.perf_counter()
        try:
            if case.problem is not None:
                raise ConfigError(case.problem)
            targets = read_targets(case.prompts)  # quick: a bad clicks file fails before the scan is read
            volume = read_image(case.image, channel=self.channel)
        except SammoeError as err:
            return {"case": case, "error": str(err)}
        except Exception as err:  # noqa: BLE001  (one bad scan must not end the run: it is reported)
            return {"case": case, "error": f"{case.image}: cannot read it ({type(err).__name__}: {err})"}
        return {
            "case": case,
            "volume": volume,
            "targets": targets,
            "read_seconds": round(time.perf_counter() - started, 3),
        }


def one_case(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Batches are single cases, handed over as read (no tensors to stack)."""
    return items[0]


class CohortDataModule(LightningDataModule):
    """Scans and prompts files to segment with `sammoe predict` (see the module docstring).

    Args:
        images: a folder of scans (NIfTI, NRRD, MHA/MHD, MGZ, DICOM series folders) or an nnU-Net/MSD root.
        prompts: the folder of clicks files (``CASE.json``, ``CASE.clicks.json`` or ``CASE.mrk.json``);
            default: ``CASE.clicks.json`` / ``CASE.mrk.json`` beside each scan.
        manifest: a CSV with columns image, prompts (and output, case, label) instead of ``images``.
        labels: a folder of reference label maps (``CASE.nii.gz``, ...) to score Dice and NSD against.
        out: the output folder: ``CASE<output_suffix>``, ``CASE.report.json``, ``summary.csv``.
        output_suffix: .nii.gz, .nii, .seg.nrrd (3D Slicer) or .dcm (DICOM-SEG, DICOM series inputs only).
        channel: the volume of 4D scans to segment (MSD multi-modal images).
        redo: segment every case again, complete ones included.
        num_workers: DataLoader processes reading scans ahead of the model (0: read in the main process).
    """

    def __init__(
        self,
        images: str | None = None,
        prompts: str | None = None,
        manifest: str | None = None,
        labels: str | None = None,
        out: str = "predictions",
        output_suffix: str = ".nii.gz",
        channel: int | None = None,
        redo: bool = False,
        num_workers: int = 1,
    ) -> None:
        super().__init__()
        if num_workers < 0:
            raise ConfigError("data.num_workers must be >= 0")
        self.images, self.prompts, self.manifest, self.labels = images, prompts, manifest, labels
        self.out = Path(out)
        self.output_suffix = output_suffix
        self.channel = channel
        self.redo = redo
        self.num_workers = num_workers
        self.cases: list[CohortCase] = []
        self.todo: list[CohortCase] = []
        self.skipped: list[CohortCase] = []

    @property
    def summary_path(self) -> Path:
        return self.out / SUMMARY

    @property
    def scores_path(self) -> Path:
        return self.out / SCORES

    @property
    def config_path(self) -> Path:
        return self.out / CONFIG

    @staticmethod
    def saved_config(init_args: Any) -> Path:
        """Where the run's config is saved, from the parsed arguments (checked before anything is built)."""
        out = init_args.get("out") if init_args is not None and hasattr(init_args, "get") else None
        return Path(out or "predictions") / CONFIG

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ConfigError("CohortDataModule is for `sammoe predict`; train and test on a SegDataModule")
        self.cases = find_cases(
            self.images,
            out=self.out,
            prompts=self.prompts,
            manifest=self.manifest,
            labels=self.labels,
            suffix=self.output_suffix,
        )
        self._check_outputs()
        self.out.mkdir(parents=True, exist_ok=True)
        self.skipped = [] if self.redo else [c for c in self.cases if is_complete(c)]
        done = {c.case_id for c in self.skipped}
        self.todo = [c for c in self.cases if c.case_id not in done]
        for case in self.todo:  # a killed run's temp files (a SIGKILL leaves them; never a partial output)
            for output in (case.labels, case.report):
                for stale in output.parent.glob(f".{glob.escape(output.name)}.*.tmp*"):
                    stale.unlink(missing_ok=True)

    def _check_outputs(self) -> None:
        """Every file the run writes against every file it reads, before any scan is read."""
        if self.output_suffix == ".dcm":
            for case in self.cases:
                if not case.image.is_dir():
                    raise ConfigError(
                        f"case {case.case_id}: {case.image} is not a DICOM series, so it cannot have a "
                        "DICOM-SEG; use output_suffix .nii.gz or .seg.nrrd"
                    )
        inputs: dict[str, Any] = {"data.manifest": self.manifest}
        outputs: dict[str, Any] = {
            "the run summary": self.summary_path,
            "the scores table": self.scores_path,
            "the saved config": self.config_path,
        }
        for case in self.cases:
            inputs[f"case {case.case_id}'s image"] = case.image
            inputs[f"case {case.case_id}'s prompts"] = case.prompts
            inputs[f"case {case.case_id}'s reference labels"] = case.reference
            outputs[f"case {case.case_id}'s label map"] = case.labels
            outputs[f"case {case.case_id}'s report"] = case.report
        check_outputs(outputs, inputs, overwrite=True)  # earlier outputs of the cohort are its own to replace

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        return batch  # a scan on its input grid stays on the host: the Predictor moves each crop it encodes

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            CaseReader(self.todo, self.channel),
            batch_size=1,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=one_case,
            persistent_workers=False,
        )


__all__ = ["CohortDataModule", "CaseReader", "REPORT_SUFFIX"]
