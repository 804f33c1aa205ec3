"""The run's logs: CSV files (``log.csv``, ``val.csv``) that a resumed run continues as if never stopped,
and TensorBoard beside them when it is installed."""

from __future__ import annotations

import csv
from pathlib import Path


class CsvLog:
    """Appends rows to a CSV file, writing the header once; TensorBoard too when installed."""

    def __init__(self, path: Path):
        self.path = path
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:  # noqa: BLE001 (tensorboard is optional)
            self.tb = None

    def truncate_after(self, step: int) -> None:
        """Drop rows past ``step``, so a resumed run's log reads like an uninterrupted one."""
        if not self.path.exists():
            return
        with self.path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        kept = [r for r in rows if int(r["step"]) <= step]
        if len(kept) < len(rows):
            with self.path.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(kept)

    def write(self, **row: float) -> None:
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k != "step":
                    self.tb.add_scalar(f"{self.path.stem}/{k}", v, row["step"])
