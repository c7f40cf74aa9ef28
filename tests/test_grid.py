"""Prompts sharing a prefix x programs: the prefix runs once per program, and every row is its prompt run alone."""

from dataclasses import replace

import pytest
import torch
from tiny import ARCHS, DEPTH, prompt, tiny_model

from polar.decoding import Sampling
from polar.executor import Executor
from polar.grid import Samples, common_prefix, generate_grid
from polar.programs import Program

PROGRAMS = [Program.identity(DEPTH), Program.parse("0-2,4-5"), Program.parse("0-3,2-5"), Program.parse("0-5,5")]


@pytest.fixture(scope="module", params=ARCHS)
def executor(request):
    return Executor(tiny_model(request.param))


def _prompts():
    shared = prompt(0, 14)  # the few-shot block
    return [shared + prompt(s, n) for s, n in ((1, 3), (2, 6), (3, 1), (4, 4))]  # questions of several lengths


def test_every_row_is_its_prompt_alone(executor):
    prompts = _prompts()
    assert common_prefix(prompts) == 14
    grid = generate_grid(executor, prompts, PROGRAMS, 10, stop_token_ids=[7, 11])
    for ids, row in zip(prompts, grid, strict=True):
        for program, cell in zip(PROGRAMS, row, strict=True):
            alone = executor.generate([ids], [program], 10, stop_token_ids=[7, 11])[0]
            assert cell.tokens == alone.tokens, (program.text, ids)
            score = executor.score([ids], [alone.tokens], [program])[0]
            assert cell.logprob == pytest.approx(score.logprob, abs=1e-3)
        first = torch.softmax(
            executor.forward(torch.tensor([ids]), torch.ones(1, len(ids)), executor.plan(PROGRAMS[:1]), keep=1)[0, -1],
            -1,
        )
        top2 = first.topk(2).values
        assert row[0].margin == pytest.approx(float(top2[0] - top2[1]), abs=1e-5)
        assert row[0].entropy == pytest.approx(float(-(first * first.log()).sum()), abs=1e-4)
        assert all(cell.margin is None and cell.entropy is None for cell in row[1:])


def test_prompts_without_a_common_prefix(executor):
    prompts = [prompt(5, 6), prompt(6, 9)]
    assert common_prefix(prompts) == 0
    grid = generate_grid(executor, prompts, PROGRAMS[:2], 6)
    assert [[c.tokens for c in row] for row in grid] == [
        [executor.generate([ids], [p], 6)[0].tokens for p in PROGRAMS[:2]] for ids in prompts
    ]
    assert common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # each prompt keeps a token of its own


def test_a_grid_needs_a_new_token(executor):
    with pytest.raises(ValueError, match="max_new_tokens=0: a grid row needs at least one new token"):
        generate_grid(executor, _prompts(), PROGRAMS, 0)


def test_samples_are_drawn_as_each_prompt_alone_draws_them(executor):
    """Sampled rows share the grid's batch, yet each prompt's draws are those of the prompt run alone."""
    prompts, sampling = _prompts(), Sampling(temperature=1.5)
    seeds = [11, 12, 13, 14]
    grid = generate_grid(executor, prompts, PROGRAMS, 10, [7, 11], Samples(3, sampling, seeds))
    drawn = 0
    for ids, seed, row in zip(prompts, seeds, grid, strict=True):
        alone = executor.generate([ids], [PROGRAMS[0]] * 3, 10, replace(sampling, seed=seed), stop_token_ids=[7, 11])
        assert [c.tokens for c in row[len(PROGRAMS) :]] == [g.tokens for g in alone]
        assert [c.tokens for c in row[: len(PROGRAMS)]] == [  # the greedy rows are unchanged by the samples
            g.tokens for g in executor.generate([ids], PROGRAMS, 10, stop_token_ids=[7, 11])
        ]
        drawn += sum(c.tokens != row[0].tokens for c in row[len(PROGRAMS) :])
    assert drawn  # at this temperature some samples leave the greedy path


def test_reused_cache_buffers_change_nothing(executor):
    """The second grid writes into the first one's buffers (old contents and all) and gives the same rows."""
    pool = executor.slot_pool
    first = generate_grid(executor, _prompts(), PROGRAMS, 10, stop_token_ids=[7, 11])
    hits = pool.hits
    for _ in range(4):
        again = generate_grid(executor, _prompts(), PROGRAMS, 10, stop_token_ids=[7, 11])
        assert [[c.tokens for c in row] for row in again] == [[c.tokens for c in row] for row in first]
    assert pool.hits > hits
    assert pool.bytes <= pool.limit  # it keeps about one grid's cache


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_sliding_windows_wider_than_the_rows_run_every_question_length_together(arch, monkeypatch):
    """A window that covers every row's cache hides nothing, so questions of all lengths share one batch."""
    import polar.grid

    model = tiny_model(arch)
    model.config.sliding_window = 64  # prompts of 15-20 tokens and 10 new ones fit
    executor, batches = Executor(model), []
    run = polar.grid._suffixes
    monkeypatch.setattr(polar.grid, "_suffixes", lambda *a: batches.append(len(a[4])) or run(*a))
    prompts = _prompts()
    grid = generate_grid(executor, prompts, PROGRAMS, 10, stop_token_ids=[7, 11])
    assert batches == [len(prompts)]
    for ids, row in zip(prompts, grid, strict=True):
        assert [c.tokens for c in row] == [
            g.tokens for g in executor.generate([ids], PROGRAMS, 10, stop_token_ids=[7, 11])
        ]
    model.config.sliding_window = 7  # a narrow window: one batch per question length, as before
    batches.clear()
    generate_grid(executor, prompts, PROGRAMS, 10, stop_token_ids=[7, 11])
    assert sorted(batches) == [1, 1, 1, 1]
