"""Continuations scored in one grid equal each prompt and continuation scored alone, on every architecture."""

import pytest
from test_grid import PROGRAMS, _prompts  # the grid's programs and prompts sharing a few-shot block
from tiny import ARCHS, prompt, tiny_model

from polar.decoding import Sampling
from polar.executor import Executor
from polar.grid import Samples, generate_grid
from polar.likelihood import score_grid


@pytest.fixture(scope="module", params=ARCHS)
def executor(request):
    return Executor(tiny_model(request.param))


def _continuations():
    """Per prompt: choices of one to five tokens (one prompt with a single one, as a reference answer is)."""
    return [
        [prompt(10, 1), prompt(11, 3), prompt(12, 5)],
        [prompt(13, 2)],
        [prompt(14, 4), prompt(15, 1), prompt(16, 2), prompt(17, 3)],
        [prompt(18, 3), prompt(19, 3)],
    ]


def _alone(executor, prompts, conts):
    return [
        [[executor.score([ids], [c], [program])[0].logprob for c in cs] for program in PROGRAMS]
        for ids, cs in zip(prompts, conts, strict=True)
    ]


def test_every_score_is_its_prompt_and_continuation_alone(executor):
    prompts, conts = _prompts(), _continuations()
    grid = score_grid(executor, prompts, conts, PROGRAMS)
    alone = _alone(executor, prompts, conts)
    for i, row in enumerate(grid):
        assert len(row) == len(PROGRAMS)
        for j, cells in enumerate(row):
            assert [c.tokens for c in cells] == [len(c) for c in conts[i]]
            assert [c.logprob for c in cells] == pytest.approx(alone[i][j], abs=1e-4), (i, PROGRAMS[j].text)


def test_a_generation_grid_scores_from_its_own_question_states(executor):
    """Continuations given to a generation grid get the scores alone, and leave its rows and samples unchanged."""
    prompts, conts = _prompts(), _continuations()
    samples = Samples(2, Sampling(temperature=1.5), [3, 4, 5, 6])
    plain = generate_grid(executor, prompts, PROGRAMS, 6, [7, 11], samples)
    grid = generate_grid(executor, prompts, PROGRAMS, 6, [7, 11], samples, continuations=conts)
    alone = _alone(executor, prompts, conts)
    for i, row in enumerate(grid):
        assert [c.tokens for c in row] == [c.tokens for c in plain[i]]
        assert all(not c.likelihoods for c in row[len(PROGRAMS) :])  # samples are not scored
        for j, cell in enumerate(row[: len(PROGRAMS)]):
            assert [x.logprob for x in cell.likelihoods] == pytest.approx(alone[i][j], abs=1e-4), (i, j)
    with pytest.raises(ValueError, match="at least one token"):
        generate_grid(executor, prompts[:1], PROGRAMS, 6, continuations=[[[]]])


def test_prompts_without_a_common_prefix_and_small_batches(executor, monkeypatch):
    import polar.likelihood

    monkeypatch.setattr(polar.likelihood, "ROWS_PER_BATCH", 2)  # level 3 in several batches
    prompts, conts = [prompt(5, 6), prompt(6, 9)], [[prompt(20, 2), prompt(21, 4), prompt(22, 3)], [prompt(23, 2)]]
    grid = score_grid(executor, prompts, conts, PROGRAMS[:2])
    alone = [
        [[executor.score([ids], [c], [p])[0].logprob for c in cs] for p in PROGRAMS[:2]]
        for ids, cs in zip(prompts, conts, strict=True)
    ]
    assert [[[c.logprob for c in cells] for cells in row] for row in grid] == [
        [pytest.approx(x, abs=1e-4) for x in row] for row in alone
    ]


def test_bad_continuations_are_refused(executor):
    with pytest.raises(ValueError, match="at least one continuation"):
        score_grid(executor, _prompts()[:1], [[]], PROGRAMS)
    with pytest.raises(ValueError, match="at least one token"):
        score_grid(executor, _prompts()[:1], [[[]]], PROGRAMS)
    with pytest.raises(ValueError, match="continuation lists"):
        score_grid(executor, _prompts()[:2], [[[1]]], PROGRAMS)


def test_level_three_holds_one_layers_prompt_states_at_a_time(executor, monkeypatch):
    """Each node's prompt states for the continuations are built when the trie walk reaches the node and dropped
    after it: never every node's at once (nodes x rows x prompt positions: gigabytes for long few-shot prompts)."""
    import weakref
    from collections import Counter

    import polar.likelihood

    built, live, peak = [], set(), [0]
    original = polar.likelihood._PromptStates.__getitem__

    def tracked(self, pre):
        keys, values = original(self, pre)
        token = object()
        live.add(id(token))
        weakref.finalize(keys, live.discard, id(token))
        built.append(pre)
        peak[0] = max(peak[0], len(live))
        return keys, values

    monkeypatch.setattr(polar.likelihood._PromptStates, "__getitem__", tracked)
    prompts, conts = _prompts(), _continuations()
    grid = score_grid(executor, prompts, conts, PROGRAMS)
    nodes = {q.layers[: j + 1] for q in PROGRAMS for j in range(len(q.layers))}
    widest = max(  # the most nodes one layer visit runs together: the same step, the same layer
        sum(1 for pre in nodes if len(pre) == j + 1 and pre[-1] == layer)
        for j in range(max(len(q.layers) for q in PROGRAMS))
        for layer in range(executor.depth)
    )
    counts, first = Counter(built), built[0]  # per level-3 batch: every node once, the first again (its length)
    batches = counts[first] // 2
    assert set(counts) == nodes and batches >= 1
    assert counts == Counter({pre: 2 * batches if pre == first else batches for pre in nodes})
    assert 1 <= peak[0] <= widest < len(nodes)
    assert [[[c.logprob for c in cells] for cells in row] for row in grid] == [
        [[pytest.approx(x, abs=1e-4) for x in cells] for cells in row] for row in _alone(executor, prompts, conts)
    ]
