"""Data-parallel training on 2 CPU processes (gloo), as torchrun would start it."""

import os
import socket

import torch
import torch.multiprocessing as mp

from lgvq.config import load_config
from lgvq.train import build_run, seed_everything, train

STEPS = 3


def _config(out_dir, batch_size):
    return load_config(None, [
        "model.name=vqvae-tiny", "model.overrides={quantizer: ema}",
        f"train.out_dir={out_dir}", f"train.steps={STEPS}", "train.tensorboard=false", "train.log_every=1",
        f"data.batch_size={batch_size}", "data.size=32", "optim.base_lr=1e-4",
    ])


def _rank_main(rank, world, port, out_dir, result_dir):
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    run = train(_config(out_dir, batch_size=2), progress=False)
    torch.save({k: v.clone() for k, v in run.model.state_dict().items()}, f"{result_dir}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_match_each_other_and_one_process(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, 2, port, str(tmp_path / "ddp"), str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, "a rank hung"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for key in rank0:  # weights and every quantizer buffer: bit-identical across ranks
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "ddp" / "checkpoints" / "latest").is_file()

    config = _config(tmp_path / "single", batch_size=4)
    seed_everything(config.train.seed)
    initial = {k: v.clone() for k, v in build_run(config).model.state_dict().items()}
    single = train(config, progress=False).model.state_dict()
    # Same global batches. Adam's first steps are nearly sign(gradient), which turns
    # reduction-order noise in near-zero gradients into ±lr differences: compare the update
    # directions of the weights, and the EMA codebook statistics directly.
    ddp_update = torch.cat([(rank0[k] - initial[k]).flatten() for k in single if "quantize" not in k])
    one_update = torch.cat([(single[k] - initial[k]).flatten() for k in single if "quantize" not in k])
    assert torch.nn.functional.cosine_similarity(ddp_update, one_update, dim=0) > 0.99
    for key in ["quantize.ema_counts", "quantize.usage_ema", "quantize.last_used"]:
        assert torch.allclose(rank0[key].float(), single[key].float(), atol=1e-5), key
