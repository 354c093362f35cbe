"""`CohortPrediction`: `sammoe predict` over a cohort of scans with prompts files (see `cohort_data`).

Each rank holds one `Predictor` (the model loaded once per process, not once per scan) and segments the cases
its sampler hands it; every case is written by ``inference.cohort_case`` (label map, then its report, the
mark of a complete case). A case that fails (an unreadable scan, a click outside its image, out of memory)
is recorded with its one-line reason and the run goes on. Each rank appends its rows to its own log as cases
finish; at the end rank 0 merges them with the cases skipped as complete into ``summary.csv`` (and
``scores.csv`` when reference labels were given), prints the table, and the command exits 1 if any case
failed.
"""

from __future__ import annotations

import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from sammoe.errors import ConfigError, SammoeError
from sammoe.files import append_line, write_text
from sammoe.inference.cohort_case import peak_rss_mb, previous_row, segment_case, summary_row
from sammoe.inference.cohort_summary import progress_line, summary_table, write_scores, write_summary

LOG_FOLDER = ".sammoe-predict"


def _say(message: str) -> None:
    print(f"sammoe predict: {message}", flush=True)


class CohortPrediction(LightningModule):
    """Segments each case of a `CohortDataModule` from its prompts file (no labels needed).

    Args:
        checkpoint: turbo (cached by `sammoe weights fetch turbo`), demo (phantom-only) or a weights file.
        preset: architecture of ``checkpoint``: auto, tiny or vit_b_ori.
        experts: all installed (None), "none", or names.
        gate: a gate trained over the experts (default: their own routers, or the shipped gate for demo).
        routing: auto, gate or routers.
        route: force one decoder for every target (foundation or an expert's name).
        autocast: None (bf16 where it pays: GPUs, CPUs with native bf16), true or false (float32).
        sliding_window: grow a mask that reaches its crop's face into neighbouring windows.
        share_roi: reuse a neighbouring target's crop within this fraction of the crop (0: off).
        threads: torch threads per process (None: torch's default); set it when several processes share a
            CPU (DDP on CPU), so that they do not fight over the cores.
        probabilities: keep per-target probabilities in memory (they are not written; off saves memory).
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        preset: str = "auto",
        experts: str | list[str] | None = None,
        gate: str | None = None,
        routing: str = "auto",
        route: str | None = None,
        autocast: bool | None = None,
        sliding_window: bool = True,
        share_roi: float = 0.0,
        threads: int | None = None,
        probabilities: bool = False,
    ) -> None:
        super().__init__()
        if threads is not None and threads < 1:
            raise ConfigError("model.threads must be >= 1")
        self.options = dict(checkpoint=checkpoint, preset=preset, experts=experts, gate=gate, routing=routing)
        self.route = route
        self.autocast = "auto" if autocast is None else bool(autocast)
        self.sliding_window = sliding_window
        self.share_roi = share_roi
        self.threads = threads
        self.probabilities = probabilities
        self.net: torch.nn.Module | None = None
        self.info: dict[str, Any] = {}
        self.predictor: Any = None
        self.rows: list[dict[str, Any]] = []
        self.failed = 0

    # ------------------------------------------------------------------------------------------ set up
    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ConfigError("CohortPrediction runs with `sammoe predict` only")
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        if self.net is None:
            from sammoe.inference.arguments import expert_names_argument
            from sammoe.loading import load_model

            options = dict(self.options, experts=expert_names_argument(self.options["experts"]))
            self.net, self.info = load_model(**options, route=self.route)  # moved to the device by Lightning
        self._open_log()

    def on_predict_start(self) -> None:
        from sammoe.inference.predictor import Predictor

        self.predictor = Predictor(
            self.net,
            device=self.device,
            autocast=self.autocast,
            use_sliding_window=self.sliding_window,
            share_roi=self.share_roi,
            info=self.info,
            route=self.route,
        )

    def _open_log(self) -> None:
        """This rank's log of finished cases (emptied: a summary covers this run's cases and the skipped)."""
        data = self.trainer.datamodule
        self._out = Path(data.out)
        self._log = self._out / LOG_FOLDER / f"rank-{self.global_rank}.jsonl"
        self._log.parent.mkdir(parents=True, exist_ok=True)
        write_text(self._log, "")
        world = self.trainer.world_size
        self._total = len(data.todo) // world + (self.global_rank < len(data.todo) % world)
        self._started = time.perf_counter()
        self._done = 0
        if self.global_rank == 0:
            _say(
                f"{len(data.cases)} case(s) in the cohort: {len(data.todo)} to segment on {world} "
                f"process(es), {len(data.skipped)} complete before (skipped)"
            )

    # ------------------------------------------------------------------------------------------ cases
    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        case = batch["case"]
        started = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        row: dict[str, Any] = {"case": case.case_id, "labels": str(case.labels)}
        if "error" in batch:
            row.update(status="failed", reason=batch["error"])
        else:
            try:
                report = segment_case(
                    self.predictor, case, batch["volume"], batch["targets"], probabilities=self.probabilities
                )
            except torch.OutOfMemoryError:
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                row.update(status="failed", reason=f"{case.image}: out of memory on {self.device}")
            except SammoeError as err:
                row.update(status="failed", reason=str(err))
            except Exception as err:  # noqa: BLE001  (one case must not end a cohort run: it is reported)
                errors = self._log.with_suffix(".errors.log")
                append_line(errors, f"case {case.case_id}:\n{traceback.format_exc()}")
                reason = (
                    f"{case.image}: {type(err).__name__}: {err} (a sammoe bug? the traceback is in {errors})"
                )
                row.update(status="failed", reason=reason)
            else:
                row.update(summary_row(case, report))
        row["seconds"] = round(time.perf_counter() - started + batch.get("read_seconds", 0.0), 3)
        row["peak_rss_mb"] = peak_rss_mb()
        if self.device.type == "cuda":
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(self.device) / (1 << 20), 1)
        append_line(self._log, json.dumps(row))
        self._done += 1
        elapsed = time.perf_counter() - self._started
        prefix = f"rank {self.global_rank} " if self.trainer.world_size > 1 else ""
        line = progress_line(self._done, self._total, case.case_id, row["status"], row["seconds"], elapsed)
        _say(prefix + line + (f" | {row['reason']}" if row["status"] == "failed" else ""))
        return {"case": case.case_id, "status": row["status"]}

    # ------------------------------------------------------------------------------------------ summary
    def teardown(self, stage: str) -> None:
        """The summary, also when every case was complete before (Lightning then skips the predict loop)."""
        if stage != "predict" or not hasattr(self, "_log"):
            return
        self.trainer.strategy.barrier("cohort summary")  # every rank's log is complete
        if self.global_rank != 0:
            return
        data = self.trainer.datamodule
        rows = [previous_row(c) for c in data.skipped]
        for rank in range(self.trainer.world_size):
            path = self._out / LOG_FOLDER / f"rank-{rank}.jsonl"
            rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
        self.rows = rows
        self.failed = sum(r["status"] == "failed" for r in rows)
        write_summary(rows, data.summary_path)
        scores = [s for r in rows for s in r.get("scores", [])]
        if scores:
            write_scores(sorted(scores, key=lambda s: (str(s["case"]), str(s["target"]))), data.scores_path)
        _say(summary_table(rows, time.perf_counter() - self._started))
        _say(
            f"summary written to {data.summary_path}" + (f", scores to {data.scores_path}" if scores else "")
        )

    def configure_optimizers(self) -> None:  # prediction only
        return None
