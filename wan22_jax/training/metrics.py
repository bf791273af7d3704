"""Per-step training metrics: loss, gradient norm, learning rate, samples/s, achieved FLOP/s and MFU, written to
a CSV file and to TensorBoard event files (tensorboardX's writer).

    metrics = MetricsLogger(out_dir, peak_flops=total_peak_flops("bf16"), resume_step=start,
                            enabled=jax.process_index() == 0)
    for step in ...:
        state, m = train_step(state, batch, frozen)
        metrics.log(step + 1, loss=m["loss"], grad_norm=m["grad_norm"], lr=m["lr"],
                    samples=batch_size * grad_accum, flops=train_flops(dit_cfg, batch["latents"].shape))
    metrics.close()

MFU counts the FLOPs of our model (wan22_jax/flops.py: matmuls and attention; a training step as forward plus a
backward of twice its cost) against the devices' dense peak; it is left empty where the peak is unknown (a CPU).
"""

from __future__ import annotations

import csv
import math
import os
import struct
import time
from pathlib import Path

import jax
import numpy as np

from wan22_jax.errors import InputFileError
from wan22_jax.flops import dit_forward_flops, peak_flops
from wan22_jax.models.dit import DiTConfig

CSV_NAME = "metrics.csv"
TB_DIR = "tensorboard"
HEADER = ["step", "loss", "grad_norm", "lr", "samples_per_s", "tflops_per_s", "mfu", "seconds"]
TAGS = {"loss": "train/loss", "grad_norm": "train/grad_norm", "lr": "train/lr",
        "samples_per_s": "perf/samples_per_s", "tflops_per_s": "perf/tflops_per_s", "mfu": "perf/mfu"}


def train_flops(cfg: DiTConfig, latents_shape: tuple[int, ...], *, text_len: int | None = None) -> float:
    """FLOPs of one training step on latents [..., z, F, h, w] (leading axes: micro-batches x samples): three
    forward passes' worth per sample (the forward, and a backward of twice its cost)."""
    *lead, _, f, h, w = latents_shape
    return 3.0 * dit_forward_flops(cfg, (f, h, w), batch=math.prod(lead), text_len=text_len)


def total_peak_flops(dtype: str) -> float | None:
    """Dense peak FLOP/s of all the run's devices ("bf16" or "fp32"), or None for a device kind not in
    flops.PEAK_FLOPS (then no MFU)."""
    one = peak_flops(jax.devices()[0].device_kind, dtype)
    return None if one is None else one * jax.device_count()


class MetricsLogger:
    """Writes one row per logged step to out_dir/metrics.csv and scalars to out_dir/tensorboard/.

    Args:
      out_dir: the run's folder.
      peak_flops: dense peak FLOP/s of all devices together (`total_peak_flops`), for MFU; None: no MFU.
      resume_step: the step a resumed run starts from: CSV rows past it are dropped and TensorBoard hides events
        past it (a killed run may have logged steps its checkpoint does not have).
      enabled: False makes every call a no-op (processes other than 0 of a multi-host run).
      tensorboard: also write event files.
    """

    def __init__(self, out_dir: str | os.PathLike, *, peak_flops: float | None = None, resume_step: int = 0,
                 enabled: bool = True, tensorboard: bool = True):
        self.enabled, self.peak = enabled, peak_flops
        self.csv_path = Path(out_dir) / CSV_NAME
        self._writer = None
        self._t0 = self._last = time.perf_counter()
        if not enabled:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        rows = []
        if resume_step > 0 and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, HEADER)
            w.writeheader()
            w.writerows(rows)
        if tensorboard:
            # imported here: tensorboardX imports torch when it is installed, seconds that only a run that writes
            # events should pay
            from tensorboardX import SummaryWriter
            # purge_step: TensorBoard hides the events at steps >= it that earlier files hold
            # the suffix keeps a resumed run's file apart from (and sorted after) one made in the same second
            self._writer = SummaryWriter(str(Path(out_dir) / TB_DIR), purge_step=resume_step + 1 if resume_step
                                         else None, flush_secs=30,
                                         filename_suffix=f".{os.getpid()}.from{resume_step:010d}")

    def log(self, step: int, *, loss, grad_norm, lr, samples: int, flops: float | None = None) -> dict:
        """Records step `step` (the number of steps done); time per step is the wall time since the previous call
        (or since the logger was made), so call it once per step after the step's results are on the host.

        Args:
          loss, grad_norm, lr: the step's metrics (scalars or 0-d arrays).
          samples: samples the step consumed (batch_size x grad_accum, all processes).
          flops: the step's FLOPs (`train_flops`), for FLOP/s and MFU; None: not reported.
        Returns:
          the row written ({name: float or None}).
        """
        now = time.perf_counter()
        dt, self._last = max(now - self._last, 1e-9), now
        row = {"step": int(step), "loss": float(loss), "grad_norm": float(grad_norm), "lr": float(lr),
               "samples_per_s": samples / dt, "tflops_per_s": None if flops is None else flops / dt / 1e12,
               "mfu": None if flops is None or not self.peak else flops / dt / self.peak,
               "seconds": now - self._t0}
        if not self.enabled:
            return row
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, HEADER).writerow({k: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                                                for k, v in row.items()})
        if self._writer is not None:
            for name, tag in TAGS.items():
                if row[name] is not None:
                    self._writer.add_scalar(tag, row[name], global_step=int(step))
        return row

    def log_scalars(self, step: int, values: dict[str, float]) -> None:
        """Scalars {tag: value} at `step` to TensorBoard only (e.g. held-out losses, "eval/t500"; their CSV is
        the caller's)."""
        if self.enabled and self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, float(value), global_step=int(step))

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every scalar in the TensorBoard event files under `logdir`, in file order,
    as TensorBoard shows them: a session restart at step s (a resumed run's purge) hides earlier values at steps
    >= s. Records are checked against their CRCs; a truncated last record (a killed writer) is ignored."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog  # see MetricsLogger: a reader of events only
    from tensorboardX.record_writer import masked_crc32c

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            body = data[pos + 12:pos + 12 + n]
            if len(body) < n or pos + 16 + n > len(data):
                break
            (crc,) = struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])
            if struct.unpack("<I", data[pos + 8:pos + 12])[0] != masked_crc32c(data[pos:pos + 8]) or \
                    crc != masked_crc32c(body):
                raise InputFileError(f"{path}: corrupt TensorBoard record at byte {pos}")
            pos += 16 + n
            event = Event.FromString(body)
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in out.items()}
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(event.step), float(np.float32(v.simple_value))))
    return out
