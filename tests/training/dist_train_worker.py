"""torchrun worker for tests/training/test_distributed.py: trains with ``training.trainer.Trainer`` exactly
as ``python -m training train`` does, then every rank saves the weights it ended with.

    torchrun --nproc_per_node 2 tests/training/dist_train_worker.py OUT_DIR key=value ...

Writes ``OUT_DIR/rank{r}.pt`` ({name: tensor} of the rank's model) and ``OUT_DIR/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from training.config import load_config  # noqa: E402
from training.trainer import Trainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    trainer = Trainer(load_config(None, sys.argv[2:]))
    final = trainer.train()
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, out / f"rank{trainer.rank}.pt")
    info = {"rank": trainer.rank, "world": trainer.world, "wrapper": type(trainer.step_module).__name__,
            "final": str(final) if final else None}
    (out / f"rank{trainer.rank}.json").write_text(json.dumps(info))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
