"""torch.distributed (gloo, CPU): 2 processes give the same adaptation as 1 process."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import ueo
from conftest import CLASSES, GeneratedImages

SETTINGS = dict(epochs=2, batch_size=8, lr_prompt=0.05, lr_norm=0.05, seed=3, eval_train=False)


def run(bundle):
    train = GeneratedImages(17, [0, 1, 2, -1], seed=21)  # last global batch of 1: one rank gets nothing
    test = GeneratedImages(9, [0, 1, 4], seed=22)
    return ueo.fit(bundle, CLASSES, train, test=test, **SETTINGS)


def worker(rank, world, folder, weights):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                                         world_size=world)
    try:
        result = run(ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"))
        if rank == 0:
            save_file(result.adapted.tensors, os.path.join(folder, "adapted.safetensors"))
            with open(os.path.join(folder, "result.json"), "w") as f:
                json.dump({"history": result.history, "evaluations": result.evaluations}, f)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one(tmp_path, tiny_vit_weights):
    weights = tiny_vit_weights

    single = run(ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"))
    mp.spawn(worker, args=(2, str(tmp_path), weights), nprocs=2, join=True)

    adapted = load_file(str(tmp_path / "adapted.safetensors"))
    for name, value in single.adapted.tensors.items():
        assert torch.allclose(adapted[name], value, atol=1e-5), name
    assert not torch.allclose(adapted["prompt.ctx"], ueo.fit(
        ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"), CLASSES,
        GeneratedImages(4, [0]), method="zeroshot").adapted.tensors["prompt.ctx"])
    other = json.loads((tmp_path / "result.json").read_text())
    assert [h["loss"] for h in other["history"]] == pytest.approx([h["loss"] for h in single.history], abs=1e-5)
    for a, b in zip(other["evaluations"], single.evaluations):
        assert (a["epoch"], a["split"], a["num_known_samples"], a["num_unknown_samples"]) == (
            b["epoch"], b["split"], b["num_known_samples"], b["num_unknown_samples"])
        assert a["pacc"] == pytest.approx(b["pacc"]) and a["auroc"] == pytest.approx(b["auroc"], abs=1e-6)
