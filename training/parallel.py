"""Multi-process wrappers (DDP, FSDP) and the state-dict helpers that read through them.

DDP replicates the model on every rank. FSDP is PyTorch's ``fully_shard`` ("FSDP2"): parameters,
gradients and optimizer state are sharded across ranks, one unit per transformer block (the model's
``_no_split_modules``) plus the root. FSDP2 runs on CUDA (nccl) and on CPU (gloo), so the CPU tests
exercise the same code path as GPUs. Checkpoints always hold full, unsharded tensors
(``torch.distributed.checkpoint.state_dict``), so the saved model folder is a plain Hugging Face one.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn


def wrap(module: nn.Module, kind: str, world: int, device: torch.device, split_names) -> nn.Module:
    """Wrap ``module`` for ``world`` processes: DDP, or FSDP sharding every submodule whose class name
    is in ``split_names`` (transformer blocks) and then the root. One process: unchanged."""
    if world == 1:
        return module
    if kind == "fsdp":
        from torch.distributed.fsdp import fully_shard

        split = set(split_names or ())
        for m in [m for m in module.modules() if type(m).__name__ in split]:
            fully_shard(m)
        fully_shard(module)  # the rest (embeddings, norms, projector, lm_head) as the root unit
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    # find_unused_parameters: e.g. SigLIP's pooling head never runs (LLaVA reads the last hidden state).
    return DDP(module, device_ids=[device] if device.type == "cuda" else None, find_unused_parameters=True)


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def grad_sync(module: nn.Module, sync: bool):
    """Context for one micro-step: ``sync=False`` skips the gradient all-reduce (DDP) / reduce-scatter
    (FSDP) on accumulation micro-steps; gradients accumulate locally until the last one."""
    if sync:
        return nullcontext()
    if hasattr(module, "no_sync"):  # DDP
        return module.no_sync()
    if is_fsdp(module):
        return _fsdp_no_sync(module)
    return nullcontext()


@contextmanager
def _fsdp_no_sync(module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def full_state_dict(module: nn.Module) -> dict:
    """Unsharded weights of an FSDP module, on CPU; rank 0 gets the tensors, other ranks an empty dict.
    A collective: every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def optimizer_state(module: nn.Module, optimizer) -> dict:
    """The optimizer state to checkpoint. FSDP: full (unsharded) tensors keyed by parameter name, on
    rank 0 (a collective); otherwise ``optimizer.state_dict()``."""
    if not is_fsdp(module):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer, state: dict, rank: int) -> None:
    """Inverse of :func:`optimizer_state`; under FSDP rank 0's copy is broadcast and re-sharded."""
    if not is_fsdp(module):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # strict=False: parameters that never get a gradient (SigLIP's unused pooling head and final norm)
    # have no optimizer state to restore.
    set_optimizer_state_dict(module, optimizer, state if rank == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (possibly DTensor) parameter or gradient."""
    return t.to_local() if hasattr(t, "to_local") else t
