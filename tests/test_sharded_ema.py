"""The EMA of an FSDP run resumes on another number of ranks: saved by 2 gloo ranks (FSDP on the
CPU), read back by 1, it is the full EMA again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = '''
import sys, torch, torch.distributed as dist
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
sys.path.insert(0, sys.argv[3])
from nami_core.train.ema import EMA
from nami_core.train.sharded_ema import load_sharded_ema, save_sharded_ema

dist.init_process_group("gloo")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
full = {k: v.clone() for k, v in model.state_dict().items()}
fsdp = FSDP(model, device_id=torch.device("cpu"), use_orig_params=True)
ema = EMA(fsdp.parameters(), 0.99)
if sys.argv[1] == "save":
    ema.shadow_params = [2 * s + 1 for s in ema.shadow_params]  # the EMA is 2 w + 1 of every weight w
    before = [p.detach().clone() for p in fsdp.parameters()]
    save_sharded_ema(fsdp, ema, sys.argv[2])
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import StateDictType
    with FSDP.state_dict_type(fsdp, StateDictType.SHARDED_STATE_DICT):  # the model, as accelerate saves it
        dcp.save({"model": fsdp.state_dict()}, checkpoint_id=sys.argv[2] + "/pytorch_model_fsdp_0")
    assert all(torch.equal(p.detach(), b) for p, b in zip(fsdp.parameters(), before))  # weights restored
else:
    load_sharded_ema(fsdp, ema, sys.argv[2])
    names = [n.replace("_fsdp_wrapped_module.", "") for n, _ in fsdp.named_parameters()]
    for name, shadow in zip(names, ema.shadow_params):
        assert torch.allclose(shadow, 2 * full[name] + 1), name
    assert all(torch.equal(p.detach(), full[n]) for n, p in zip(names, fsdp.parameters()))  # weights restored
    print("resharded", dist.get_world_size(), "ranks", flush=True)
dist.barrier()  # no rank tears gloo down while the other is still in a collective
dist.destroy_process_group()
'''


def test_ema_saved_by_two_ranks_loads_on_one(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed")
    script = tmp_path / "ema_reshard.py"
    script.write_text(SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for ranks, action in ((2, "save"), (1, "load")):
        result = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", str(ranks), str(script), action,
                                 str(tmp_path / "ckpt"), root], capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    assert "resharded 1 ranks" in result.stdout
    assert (tmp_path / "ckpt" / "ema" / ".metadata").is_file()

    # read whole in one process, no process group (what `nami convert checkpoint` does)
    import torch

    from nami_core.train.sharded_ema import read_sharded

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    weights = read_sharded(tmp_path / "ckpt" / "pytorch_model_fsdp_0")["model"]
    ema = read_sharded(tmp_path / "ckpt" / "ema")["ema"]
    assert sorted(weights) == sorted(ema) == sorted(model.state_dict())
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value) and torch.allclose(ema[name], 2 * value + 1)
