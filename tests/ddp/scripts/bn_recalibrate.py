"""Two gloo processes with different amounts of data (and different means) recalibrate one BN layer."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from lightning_mix.averaging import recalibrate_batchnorm


def data():
    g = torch.Generator().manual_seed(0)
    rank0 = [torch.randn(8, 3, generator=g) + 5.0, torch.randn(8, 3, generator=g), torch.randn(3, 3, generator=g)]
    rank1 = [torch.randn(6, 3, generator=g) * 2 - 4.0, torch.randn(6, 3, generator=g)]
    return [rank0, rank1]


def main(rank, out_dir, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = nn.Sequential(nn.BatchNorm1d(3))
    recalibrate_batchnorm(model, data()[rank])
    bn = model[0]
    all_inputs = [b for per_rank in data() for b in per_rank]
    torch.save(
        {
            "running_mean": bn.running_mean.clone(),
            "running_var": bn.running_var.clone(),
            "num_batches_tracked": bn.num_batches_tracked.clone(),
            "all_inputs": all_inputs,
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(main, args=(sys.argv[1], port), nprocs=2)
