"""Evaluation counts each question once, alone and across two DDP processes on CPU (gloo)."""

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader

from training_toys import NUM_ANSWERS, ToyVocab, ToyVQADataset, ToyVQAModel, make_config, toy_collate, toy_score
from vqa.training import (
    ResumableSampler,
    Trainer,
    build_eval_loader,
    cleanup_distributed,
    evaluate,
    init_distributed,
)

# Questions 500..506: 500 and 505 have 2 of 10 matching annotators (score 2/3), the rest score 1.
EXPECTED_ACCURACY = 100 * (5 + 2 * 2 / 3) / 7
EXPECTED_PER_TYPE = {"even": 100 * (3 + 2 / 3) / 4, "odd": 100 * (2 + 2 / 3) / 3}


class OracleModel(nn.Module):
    """Predicts the right toy answer: the first question token minus one."""

    def __init__(self):
        super().__init__()
        self.vocab = ToyVocab([f"ans{i}" for i in range(NUM_ANSWERS)])
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, pixel_values, input_ids, attention_mask, image_index):
        assert not torch.is_grad_enabled()
        assert not self.training
        return nn.functional.one_hot(input_ids[:, 0] - 1, NUM_ANSWERS).float() * self.scale  # (B, A)


def test_evaluate_scores_overall_and_per_type():
    model = OracleModel().train()
    loader = build_eval_loader(ToyVQADataset(7, offset=500), batch_size=3, collate_fn=toy_collate)
    result = evaluate(model, loader, torch.device("cpu"), "fp32", single_answer=False, score_fn=toy_score)

    assert result["num_questions"] == 7
    assert result["accuracy"] == pytest.approx(EXPECTED_ACCURACY)
    assert result["per_answer_type"] == pytest.approx(EXPECTED_PER_TYPE)
    assert result["predictions"][0] == {"question_id": 1500, "answer": "ans0"}
    assert [p["question_id"] for p in result["predictions"]] == list(range(1500, 1507))
    assert model.training


def test_evaluate_counts_repeated_questions_once():
    # A padded sampler repeats items 0 and 1; they must not count twice.
    dataset = ToyVQADataset(5, offset=500)
    loader = DataLoader(dataset, batch_size=2, sampler=[0, 1, 2, 3, 4, 0, 1], collate_fn=toy_collate)
    result = evaluate(OracleModel(), loader, torch.device("cpu"), "fp32", score_fn=toy_score)
    assert result["num_questions"] == 5
    assert result["duplicates"] == 2
    assert result["accuracy"] == pytest.approx(100 * (4 + 2 / 3) / 5)


def test_evaluate_single_answer_uses_exact_match():
    loader = build_eval_loader(ToyVQADataset(7, offset=500), batch_size=4, collate_fn=toy_collate)
    result = evaluate(OracleModel(), loader, torch.device("cpu"), "fp32", single_answer=True, score_fn=toy_score)
    assert result["accuracy"] == pytest.approx(100.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    context = init_distributed("cpu")
    try:
        loader = build_eval_loader(ToyVQADataset(7, offset=500), batch_size=2, collate_fn=toy_collate)
        oracle = evaluate(OracleModel(), loader, context.device, "fp32", score_fn=toy_score)
        toy = evaluate(ToyVQAModel(seed=0), loader, context.device, "fp32", score_fn=toy_score)

        # Rank 0's second batch and rank 1's third batch have no readable image: the rank with
        # an empty batch must still take part in the gradient all-reduce.
        shards = []
        for shard_rank in range(world_size):
            sampler = ResumableSampler(10, seed=0, rank=shard_rank, world_size=world_size)
            sampler.set_epoch(0)
            shards.append(list(sampler))
        unreadable = (shards[0][1], shards[1][2])

        # Different initial weights per rank: DDP must broadcast rank 0's weights.
        cfg = make_config(
            os.path.join(out_dir, "run"),
            data={"batch_size": 1},
            train={"epochs": 2, "max_steps": 3, "time_limit_min": 60.0},
        )
        trainer = Trainer(
            cfg,
            ToyVQAModel(seed=rank),
            ToyVQADataset(10, unreadable=unreadable),
            toy_collate,
            val_dataset=ToyVQADataset(7, offset=500),
            score_fn=toy_score,
        )
        summary = trainer.fit()
        torch.save(trainer.model.state_dict(), os.path.join(out_dir, f"weights{rank}.pt"))
        report = {
            "local_questions": len(loader.sampler),
            "oracle": {k: oracle[k] for k in ("accuracy", "per_answer_type", "num_questions", "duplicates")},
            "toy": {k: toy[k] for k in ("accuracy", "num_questions", "predictions")},
            "summary": summary,
        }
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as handle:
            json.dump(report, handle)
    finally:
        cleanup_distributed()


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    mp.spawn(ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]

    assert [report["local_questions"] for report in reports] == [4, 3]
    for report in reports:
        assert report["oracle"]["num_questions"] == 7
        assert report["oracle"]["duplicates"] == 0
        assert report["oracle"]["accuracy"] == pytest.approx(EXPECTED_ACCURACY)
        assert report["oracle"]["per_answer_type"] == pytest.approx(EXPECTED_PER_TYPE)

    loader = build_eval_loader(ToyVQADataset(7, offset=500), batch_size=2, collate_fn=toy_collate)
    single = evaluate(ToyVQAModel(seed=0), loader, torch.device("cpu"), "fp32", score_fn=toy_score)
    for report in reports:
        assert report["toy"]["accuracy"] == single["accuracy"]
        assert report["toy"]["predictions"] == single["predictions"]

    # Training: identical weights on both ranks, one writer, and the same eval result everywhere.
    weights = [torch.load(tmp_path / f"weights{rank}.pt", weights_only=True) for rank in range(2)]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    assert not torch.equal(weights[0]["head.weight"], ToyVQAModel(seed=0).head.weight)
    assert reports[0]["summary"]["global_step"] == reports[1]["summary"]["global_step"] == 3
    evals = [report["summary"]["last_eval"] for report in reports]
    assert evals[0]["accuracy"] == evals[1]["accuracy"]
    assert evals[0]["per_answer_type"] == evals[1]["per_answer_type"]
    assert evals[0]["num_questions"] == evals[1]["num_questions"] == 7

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert [r["skipped_images"] for r in train] == [0, 1, 1]
    assert all(math.isfinite(r["loss"]) for r in train)
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3]
    assert reports[0]["summary"]["skipped_images"] == reports[1]["summary"]["skipped_images"] == 1
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    assert checkpoint["world_size"] == 2
    assert len(checkpoint["rng"]) == 2
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (0, 3)
