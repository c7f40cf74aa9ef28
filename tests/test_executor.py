"""Equivalence tests of the executor on one tiny random model per supported architecture."""

import pytest
import torch
from tiny import ARCHS, DEPTH, prompt, tiny_model

from polar import decoding, hf
from polar.executor import Executor, Sampling
from polar.hf import ProgramCache
from polar.programs import Program, ProgramError

SKIP = Program.parse("0-1,4-5")
LOOP = Program.parse("0-3,2-3,4-5")
SKIP_LOOP = Program.parse("0,2-4,3-4,5")
REPEAT_ONE = Program.parse("0-5,5")
PROGRAMS = [Program.identity(DEPTH), SKIP, LOOP, SKIP_LOOP, REPEAT_ONE]


@pytest.fixture(scope="module", params=ARCHS)
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def executor(model):
    return Executor(model)


def test_identity_program_is_the_stock_model(model, executor):
    ids = torch.tensor([prompt(0, 12)])
    stock_logits = model(ids).logits
    ours = executor.forward(ids, torch.ones_like(ids), executor.plan([Program.identity(DEPTH)]))
    torch.testing.assert_close(ours, stock_logits, rtol=1e-4, atol=1e-4)

    stock = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    ours = executor.generate([ids[0].tolist()], [Program.identity(DEPTH)], max_new_tokens=16)[0]
    assert ours.tokens == stock[0, 12:].tolist()


@pytest.mark.parametrize("program", [SKIP, LOOP, SKIP_LOOP, REPEAT_ONE], ids=str)
def test_cached_generation_equals_full_recompute(executor, program):
    p = prompt(1, 10)  # longer than the sliding window of the Mistral and Gemma configs, with 20 more tokens
    cached = executor.generate([p], [program], max_new_tokens=20)[0]
    recomputed = executor.generate([p], [program], max_new_tokens=20, use_cache=False)[0]
    assert cached.tokens == recomputed.tokens
    assert len(cached.tokens) == 20


def test_program_changes_the_output(executor):
    p = prompt(2, 8)
    outs = {tuple(executor.generate([p], [prog], max_new_tokens=12)[0].tokens) for prog in PROGRAMS}
    assert len(outs) > 1, "every program produced the same text: programs are not being applied"


def test_batch_of_prompts_equals_one_at_a_time(executor):
    prompts = [prompt(3, 5), prompt(4, 12), prompt(5, 9)]  # different lengths: left padding
    for program in (Program.identity(DEPTH), LOOP):
        batched = executor.generate(prompts, [program], max_new_tokens=12)
        alone = [executor.generate([p], [program], max_new_tokens=12)[0] for p in prompts]
        assert [g.tokens for g in batched] == [g.tokens for g in alone]


def test_batch_of_programs_equals_one_at_a_time(executor):
    p = prompt(6, 11)
    alone = [executor.generate([p], [prog], max_new_tokens=12)[0].tokens for prog in PROGRAMS]
    batched = executor.generate([p], PROGRAMS, max_new_tokens=12)
    assert [g.tokens for g in batched] == alone
    recomputed = executor.generate([p], PROGRAMS, max_new_tokens=12, use_cache=False)
    assert [g.tokens for g in recomputed] == alone


def test_mixed_rows_equal_one_at_a_time(executor):
    prompts = [prompt(7, 6), prompt(8, 10), prompt(9, 4)]
    programs = [SKIP, LOOP, Program.identity(DEPTH)]
    batched = executor.generate(prompts, programs, max_new_tokens=10)
    alone = [executor.generate([p], [q], max_new_tokens=10)[0].tokens for p, q in zip(prompts, programs, strict=True)]
    assert [g.tokens for g in batched] == alone


def test_score_matches_stock_log_probabilities_and_greedy(model, executor):
    p = prompt(10, 8)
    greedy = executor.generate([p], [Program.identity(DEPTH)], max_new_tokens=6)[0].tokens
    s = executor.score([p], [greedy], [Program.identity(DEPTH)])[0]
    assert s.greedy and s.n_tokens == 6
    ids = torch.tensor([p + greedy])
    logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    expected = logp[len(p) - 1 :].gather(-1, torch.tensor(greedy)[:, None]).sum().item()
    assert s.logprob == pytest.approx(expected, abs=1e-3)
    other = greedy[:-1] + [(greedy[-1] + 1) % 96]
    assert not executor.score([p], [other], [Program.identity(DEPTH)])[0].greedy


def test_score_batched_equals_alone(executor):
    prompts = [prompt(11, 5), prompt(12, 9)]
    conts = [[5, 6, 7], [8, 9]]
    batched = executor.score(prompts, conts, [LOOP, SKIP])
    alone = [executor.score([p], [c], [q])[0] for p, c, q in zip(prompts, conts, [LOOP, SKIP], strict=True)]
    for b, a in zip(batched, alone, strict=True):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-3)
        assert b.greedy == a.greedy


def test_cached_greedy_score_agrees_with_generation(executor):
    p = prompt(13, 7)
    g = executor.generate([p], [LOOP], max_new_tokens=8)[0]
    assert executor.score([p], [g.tokens], [LOOP])[0].greedy


def test_sampling_is_seeded(executor):
    p = prompt(14, 6)
    a = executor.generate([p], [LOOP], 10, Sampling(temperature=1.0, seed=3))[0].tokens
    b = executor.generate([p], [LOOP], 10, Sampling(temperature=1.0, seed=3))[0].tokens
    assert a == b
    tight = executor.generate([p], [LOOP], 10, Sampling(temperature=1.0, top_p=1e-6, seed=3))[0].tokens
    assert tight == executor.generate([p], [LOOP], 10)[0].tokens  # top_p -> 0 keeps only the argmax


def test_plan_groups_layer_calls(executor):
    plan = executor.plan([Program.parse("0-5"), Program.parse("0-5"), Program.parse("0-2,4-5")])
    # Layers 0-2 for all rows, 3 for the two that visit it, then 4 and 5 for all again.
    assert [(c.layer, c.members) for c in plan.calls] == [
        (0, (0, 1, 2)),
        (1, (0, 1, 2)),
        (2, (0, 1, 2)),
        (3, (0, 1)),
        (4, (0, 1, 2)),
        (5, (0, 1, 2)),
    ]
    assert plan.n_slots == plan.layer_calls == 6
    loop = executor.plan([Program.parse("0-5"), LOOP])  # 0-3,2-3,4-5: the loop runs alone, then they rejoin
    assert [(c.layer, c.members, c.visits) for c in loop.calls][3:7] == [
        (3, (0, 1), (3, 3)),
        (2, (1,), (4,)),
        (3, (1,), (5,)),
        (4, (0, 1), (4, 6)),
    ]


def test_bad_inputs_are_rejected(executor):
    with pytest.raises(ProgramError, match="out of range"):
        executor.generate([prompt(0, 4)], ["0-6"], 2)
    with pytest.raises(ValueError, match="empty prompt"):
        executor.generate([[]], ["0-5"], 2)
    with pytest.raises(ValueError, match="2 prompts and 3 programs"):
        executor.generate([prompt(0, 4), prompt(1, 4)], ["0-5", "0-4", "0-3"], 2)


class _SlotPerLayer(ProgramCache):
    """The reference code's fault: the cache is keyed by layer id, so two visits share one slot."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)


def test_a_cache_slot_per_layer_breaks_loop_programs():
    # Control for test_cached_generation_equals_full_recompute: with the reference code's cache
    # layout, cached decoding of a loop program diverges from recomputation.
    executor = Executor(tiny_model("llama"))
    p, program = prompt(1, 10), LOOP
    plan = executor.plan([program])
    cache = _SlotPerLayer(DEPTH)
    ids, mask, tokens = torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), []
    for _ in range(20):
        token = executor.forward(ids, mask, plan, cache, keep=1)[0, -1].argmax().item()
        tokens.append(token)
        ids, mask = torch.tensor([[token]]), torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
    assert tokens != executor.generate([p], [program], 20, use_cache=False)[0].tokens


STOPS = list(range(3, 40))  # ~40% of the tiny vocabulary: rows stop at different steps and leave the batch


def test_rows_that_stop_leave_the_batch_without_changing_the_others(executor):
    p = prompt(15, 9)
    programs = [*PROGRAMS, Program.parse("0-3"), Program.parse("0-3"), SKIP]  # a prefix, and duplicates
    alone = [executor.generate([p], [q], 16, stop_token_ids=STOPS)[0] for q in programs]
    assert len({len(g.tokens) for g in alone}) > 1, "the stop tokens should end rows at different steps"
    for use_cache in (True, False):
        batched = executor.generate([p], programs, 16, stop_token_ids=STOPS, use_cache=use_cache)
        assert [(g.tokens, g.finish_reason) for g in batched] == [(g.tokens, g.finish_reason) for g in alone]
    stopped = [g for g in alone if g.finish_reason == "stop"]
    assert stopped and all(g.tokens[-1] in STOPS for g in stopped)


def test_prompts_that_stop_leave_the_batch(executor):
    prompts = [prompt(16, 5), prompt(17, 11), prompt(18, 8), prompt(19, 3)]
    batched = executor.generate(prompts, [LOOP], 16, stop_token_ids=STOPS)
    alone = [executor.generate([q], [LOOP], 16, stop_token_ids=STOPS)[0] for q in prompts]
    assert [g.tokens for g in batched] == [g.tokens for g in alone]


def test_a_prefix_store_reused_across_calls_changes_nothing(executor):
    from polar.prefix import PrefixStore

    p = prompt(20, 9)
    store = PrefixStore()
    first = executor.generate([p], [LOOP, SKIP], 10, prefix_store=store)
    assert store.nodes and store.hits == 0
    later = executor.generate([p], [SKIP_LOOP, LOOP, Program.identity(DEPTH)], 10, prefix_store=store)
    assert store.hits > 0  # the prefixes of LOOP and SKIP were not recomputed
    assert [g.tokens for g in first + later] == [
        executor.generate([p], [q], 10)[0].tokens for q in (LOOP, SKIP, SKIP_LOOP, LOOP, Program.identity(DEPTH))
    ]
    other = prompt(21, 9)  # another prompt empties the store
    assert (
        executor.generate([other], [LOOP], 10, prefix_store=store)[0].tokens
        == executor.generate([other], [LOOP], 10)[0].tokens
    )


# ------------------------------------------------------------------------- the token loop's state
@pytest.mark.parametrize(
    "check_every,compact_at",
    [(1, 0.0), (3, 0.5), (2, 1.0), (1000, 0.5)],
    ids=["leave-at-once", "every-3-half", "never-compact", "never-check"],
)
def test_finished_rows_kept_in_the_batch_change_nothing(executor, monkeypatch, check_every, compact_at):
    # Rows stop at different steps; whether they leave at once, in groups, or run to the end with
    # the others, each row's tokens are those it produces alone.
    monkeypatch.setattr(decoding, "CHECK_EVERY", check_every)
    monkeypatch.setattr(decoding, "COMPACT_AT", compact_at)
    p = prompt(22, 9)
    programs = [*PROGRAMS, Program.parse("0-3"), SKIP]
    batched = executor.generate([p], programs, 16, stop_token_ids=STOPS)
    alone = [executor.generate([p], [q], 16, stop_token_ids=STOPS)[0] for q in programs]
    assert len({len(g.tokens) for g in alone}) > 1, "the stop tokens should end rows at different steps"
    assert [(g.tokens, g.finish_reason) for g in batched] == [(g.tokens, g.finish_reason) for g in alone]
    prompts = [prompt(23, 5), prompt(24, 11), prompt(25, 8)]  # left padding, one program
    batched = executor.generate(prompts, [LOOP], 16, stop_token_ids=STOPS)
    assert [g.tokens for g in batched] == [
        executor.generate([q], [LOOP], 16, stop_token_ids=STOPS)[0].tokens for q in prompts
    ]


def test_a_static_cache_longer_than_needed_gives_the_same_tokens(executor):
    # The layers attend over every position of a slot: the mask must hide the ones not yet written.
    prompts, programs = [prompt(26, 10), prompt(27, 6)], [LOOP, SKIP_LOOP]
    ids, mask = executor.pad_left(prompts)
    plan = executor.plan(programs)
    stops = torch.tensor([-1])
    with torch.inference_mode():
        exact, steps = decoding.decode(executor.decoder, ids, mask, plan, 14, Sampling(), stops)
        longer, _ = decoding.decode(executor.decoder, ids, mask, plan, 14, Sampling(), stops, capacity=10 + 14 + 17)
        with pytest.raises(ValueError, match="cannot hold"):
            decoding.decode(executor.decoder, ids, mask, plan, 14, Sampling(), stops, capacity=10 + 12)
    assert steps == 14
    assert torch.equal(exact, longer)
    assert exact.tolist() == [g.tokens for g in executor.generate(prompts, programs, 14, use_cache=False)]


def test_a_decoding_step_never_waits_for_the_device(executor, monkeypatch):
    # No .item(), bool(tensor), .tolist() ... in a step: neither ours nor in the transformers code it calls.
    syncs = []
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "nonzero", "numpy"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            syncs.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)
    ids, mask = executor.pad_left([prompt(28, 10), prompt(29, 7)])
    stops = torch.tensor(STOPS)
    with torch.inference_mode():
        dec = executor.decoder
        hidden, state = decoding.prefill(dec, ids, mask, executor.plan([LOOP, SKIP]), 6)
        decoding.record(state, dec.pick(hidden).token, stops)
        syncs.clear()  # the prefill may ask (once per call); the steps may not
        for _ in range(5):
            decoding.record(state, dec.pick(decoding.decode_step(dec, state)).token, stops)
    assert syncs == []
    assert state.length == 10 + 5 and state.steps == 6


def test_sampled_rows_leave_the_batch_at_once(executor):
    # Rows draw from one generator in batch order: cached decoding keeps the reference's rule that a
    # finished row leaves at once, so the same seed gives the same samples on both paths.
    p = prompt(30, 8)
    sampling = Sampling(temperature=1.0, seed=5)
    cached = executor.generate([p] * 6, [LOOP], 16, sampling, stop_token_ids=STOPS)
    recomputed = executor.generate([p] * 6, [LOOP], 16, sampling, use_cache=False, stop_token_ids=STOPS)
    assert len({len(g.tokens) for g in cached}) > 1
    assert [g.tokens for g in cached] == [g.tokens for g in recomputed]


def test_one_and_no_new_tokens(executor):
    p = prompt(31, 7)
    one = executor.generate([p], [LOOP, SKIP], 1)
    assert [g.tokens for g in one] == [g.tokens[:1] for g in executor.generate([p], [LOOP, SKIP], 3)]
    assert [g.tokens for g in executor.generate([p], [LOOP], 0)] == [[]]


@pytest.mark.parametrize("chunk", [7, 32, 4096])
def test_pick_runs_the_head_in_chunks_without_changing_the_choice(executor, monkeypatch, chunk):
    monkeypatch.setattr(hf, "VOCAB_CHUNK", chunk)  # 96 entries: several chunks, one ragged, or one
    dec = executor.decoder
    hidden = torch.randn(6, dec.config.hidden_size, generator=torch.Generator().manual_seed(chunk)) * 3
    with torch.inference_mode():
        logits = dec.logits(hidden)
        picked = dec.pick(hidden, keep=torch.tensor([4, 1]))
    assert torch.equal(picked.token, logits.argmax(-1))
    torch.testing.assert_close(picked.logprob, torch.log_softmax(logits, -1).amax(-1))
    torch.testing.assert_close(picked.logits, logits[[4, 1]])
    assert dec.pick(hidden).logits is None
