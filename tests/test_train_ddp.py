"""Two-process DDP (gloo, CPU) via torchrun: both ranks end with identical weights."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from test_train_loop import CONFIGS, write_music

from spectrostream.train import checkpoint as ckpt
from spectrostream.train.config import TrainConfig
from spectrostream.train.loop import build_model

SRC = str(Path(__file__).resolve().parents[1] / "src")

WORKER = textwrap.dedent("""
    import os, sys, torch
    from spectrostream.train.config import TrainConfig
    from spectrostream.train.loop import train
    torch.set_num_threads(1)
    cfg = TrainConfig.from_json(open(sys.argv[1]).read())
    result = train(cfg, sys.argv[2])
    rank = int(os.environ["RANK"])
    torch.save({"model": result.model.state_dict(), "ema": result.quantizer_ema.state_dict()},
               os.path.join(sys.argv[2], f"rank{rank}.pt"))
""")


def test_two_process_ddp_keeps_ranks_identical(tmp_path):
    music = write_music(tmp_path / "music")
    cfg = TrainConfig.from_toml(CONFIGS / "tiny.toml").with_(
        data={"train": (str(music),), "batch_size": 2},
        optim={"max_steps": 4},
        run={"ckpt_every": 4, "log_every": 2},
    )
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    (tmp_path / "worker.py").write_text(WORKER)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "worker.py"),
            str(tmp_path / "cfg.json"),
            str(run),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    r0 = torch.load(run / "rank0.pt", weights_only=True)
    r1 = torch.load(run / "rank1.pt", weights_only=True)
    for part in ("model", "ema"):
        for k in r0[part]:
            assert torch.equal(r0[part][k], r1[part][k]), (part, k)
    # Rank 0's checkpoint holds the same weights, and training moved them.
    saved = ckpt.load_checkpoint(ckpt.latest_checkpoint(run))
    assert saved["step"] == 4 and len(saved["rng"]) == 2
    for k, v in saved["generator"].items():
        assert torch.equal(v, r0["model"][k]), k
    torch.manual_seed(cfg.run.seed)  # rank 0's initial weights, which DDP broadcasts
    init = build_model(cfg.model_config()).state_dict()
    moved = [k for k in init if not torch.equal(init[k], r0["model"][k])]
    assert len(moved) > len(init) // 2
