"""DDP (2 CPU processes): CalibrationMonitor(intervals=True) gathers the test rows of both ranks.

Saves rank{r}.pt with the logged test values and the bootstrap replicates each rank computed.
"""

from __future__ import annotations

import sys

from calibration_interval_helpers import FixedLinear, make_data
from ddp_run import ddp_trainer, save_and_close
from torch.utils.data import DataLoader, TensorDataset

from lightning_mix.callbacks import CalibrationMonitor


def main(out_dir: str) -> None:
    x, y, weight = make_data()
    monitor = CalibrationMonitor(metrics=["ece", "nll"], plot=False, stages=["test"], intervals=True, n_resamples=30)
    trainer = ddp_trainer(callbacks=[monitor])
    results = trainer.test(FixedLinear(weight), DataLoader(TensorDataset(x, y), batch_size=50), verbose=False)[0]
    replicates = {key: r.distribution for key, r in monitor.last_intervals.items()}
    save_and_close({"metrics": results, "replicates": replicates}, out_dir, trainer.global_rank)


if __name__ == "__main__":
    main(sys.argv[1])
