"""The EMA of an FSDP run, saved and loaded as a sharded checkpoint of the model's shape.

Under FSDP every rank holds only its shard of each parameter, and so of the EMA. Saving the
shards as such (one file per rank) ties a checkpoint to its number of ranks. Instead, the EMA
is swapped into the model for a moment and written with `torch.distributed.checkpoint` from the
model's sharded state dict: the checkpoint names full parameters (their FQNs) and any number of
ranks can read it back, each taking its own shard.
"""

from __future__ import annotations

from pathlib import Path

import torch

EMA_FOLDER = "ema"


def _sharded(model):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp import StateDictType

    return FSDP.state_dict_type(model, StateDictType.SHARDED_STATE_DICT)


@torch.no_grad()
def save_sharded_ema(model, ema, folder: Path) -> None:
    """Collective: every rank writes its shard of the EMA to `folder`/ema (a DCP checkpoint)."""
    import torch.distributed.checkpoint as dcp

    params = list(model.parameters())
    ema.store(params)
    ema.copy_to(params)
    try:
        with _sharded(model):
            dcp.save({"ema": model.state_dict()}, checkpoint_id=str(Path(folder) / EMA_FOLDER))
    finally:
        ema.restore(params)


@torch.no_grad()
def load_sharded_ema(model, ema, folder: Path) -> None:
    """Collective: read `folder`/ema into `ema`'s shadows, resharded to this run's ranks."""
    import torch.distributed.checkpoint as dcp

    params = list(model.parameters())
    ema.store(params)
    try:
        with _sharded(model):
            state = {"ema": model.state_dict()}
            dcp.load(state, checkpoint_id=str(Path(folder) / EMA_FOLDER))
            model.load_state_dict(state["ema"])
        ema.shadow_params = [p.detach().clone() for p in params]
    finally:
        ema.restore(params)


def has_sharded_ema(folder: Path) -> bool:
    return is_sharded(Path(folder) / EMA_FOLDER)


def is_sharded(folder: Path) -> bool:
    """Whether `folder` is a torch.distributed.checkpoint (a .metadata file beside the shards)."""
    return (Path(folder) / ".metadata").is_file()


def read_sharded(folder: Path) -> dict:
    """A sharded checkpoint read whole into one process (no process group): its nested state dict of
    full tensors, e.g. {"model": {...}} or {"ema": {...}}."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        whole = Path(tmp) / "whole.pt"
        dcp_to_torch_save(str(folder), str(whole))
        return torch.load(whole, map_location="cpu", weights_only=False)
