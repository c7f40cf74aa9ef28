"""The predictor: network shape, beam decoding, save/load (its training: tests/test_training_network.py)."""

import itertools
import json
import math

import pytest
import torch

from polar.predictor import (
    OPS,
    PredictorConfig,
    ProgramPredictor,
    decode,
    load,
    program_logprob,
    program_targets,
    save,
)
from polar.programs import CompactProgram, Op, Program
from polar.settings import TrainConfig


def _logits_for(compact: CompactProgram, confident: float = 6.0) -> tuple[torch.Tensor, torch.Tensor]:
    b = torch.full((compact.depth,), -confident)
    o = torch.zeros(compact.depth, 3)
    for i, (z, op) in enumerate(zip(compact.boundaries(), compact.ops(), strict=True)):
        b[i] = confident if z else -confident
        if op is not None:
            o[i, OPS.index(op)] = confident
    return b, o


def test_paper_sized_network():
    config = PredictorConfig(depth=30, embed_dim=576)
    model = ProgramPredictor(config).eval()
    b, o = model(torch.randn(3, 11, 576), torch.ones(3, 11, dtype=torch.long))
    assert b.shape == (3, 30) and o.shape == (3, 30, 3)
    assert 1.8e6 < model.n_parameters() < 2.4e6  # the paper's ~2.1M


def test_padding_does_not_change_the_output():
    model = ProgramPredictor(PredictorConfig(depth=6, embed_dim=8, d_model=16, ff=32)).eval()
    x = torch.randn(1, 5, 8)
    padded = torch.cat([x, torch.randn(1, 3, 8)], dim=1)
    mask = torch.tensor([[1] * 5 + [0] * 3])
    for a, b in zip(model(x, torch.ones(1, 5)), model(padded, mask), strict=True):
        torch.testing.assert_close(a, b)


def test_decode_recovers_a_confident_program_and_ranks_alternatives():
    compact = CompactProgram.parse("keep(0-3) repeat(4-5) skip(6) keep(7-9)")
    config = PredictorConfig(depth=10, embed_dim=8)
    b, o = _logits_for(compact)
    o[4, OPS.index("keep")] = 5.0  # second choice for the repeat segment
    programs = decode(b, o, config, k=3)
    assert programs[0] == compact.to_program()
    assert programs[1] == CompactProgram.parse("keep(0-3) keep(4-5) skip(6) keep(7-9)").to_program()
    assert len({p.layers for p in programs}) == 3


def test_threshold_decoder_splits_long_segments_and_keeps_length_bounds():
    depth = 12
    config = PredictorConfig(depth=depth, embed_dim=8, min_length_ratio=0.55, max_length_ratio=1.2, decoder="threshold")
    b = torch.full((depth,), -5.0)  # no boundary: one 12-layer segment, split into 3 of k_max = 4
    o = torch.zeros(depth, 3)
    o[:, OPS.index("repeat")] = 3.0  # repeating everything would give 24 layers: out of bounds
    o[:, OPS.index("keep")] = 2.0
    programs = decode(b, o, config, k=5)
    for p in programs:
        assert 7 <= len(p) <= 14 and p.visits().most_common(1)[0][1] <= 2
    assert programs[0] == Program.identity(depth)  # repeating even one 4-layer block gives 16 > 14 layers


def test_decode_falls_back_to_full_depth_when_nothing_is_admissible():
    b, o = torch.full((4,), -5.0), torch.zeros(4, 3)
    o[:, OPS.index("skip")] = 5.0
    assert decode(b, o, PredictorConfig(depth=4, embed_dim=8, ops_per_segment=1, decoder="threshold"), k=2) == [
        Program.identity(4)
    ]
    impossible = PredictorConfig(depth=4, embed_dim=8, min_length_ratio=2.5, max_length_ratio=3.0)
    assert decode(b, o, impossible, k=2) == [Program.identity(4)]


def _every_compact(depth: int, k_max: int):
    """Every (boundaries, ops) of a depth: segment lengths up to k_max, any op per segment (all-skip included)."""

    def cuts(start):
        if start == depth:
            yield []
        for n in range(1, min(k_max, depth - start) + 1):
            for rest in cuts(start + n):
                yield [(start, n), *rest]

    for segments in cuts(0):
        for ops in itertools.product(range(3), repeat=len(segments)):
            z, o = [0] * depth, [-100] * depth
            for (start, _), op in zip(segments, ops, strict=True):
                z[start], o[start] = 1, op
            yield segments, ops, z, o


def test_program_logprob_is_a_distribution_over_segmentations():
    torch.manual_seed(0)
    depth = 5
    b, o = torch.randn(2, depth, dtype=torch.float64), torch.randn(2, depth, 3, dtype=torch.float64)
    every = list(_every_compact(depth, k_max=depth))
    z = torch.tensor([e[2] for e in every], dtype=torch.float64)
    ops = torch.tensor([e[3] for e in every])
    total = program_logprob(b, o, z, ops).exp().sum(1)  # (2,): all boundary patterns x all ops
    torch.testing.assert_close(total, torch.ones(2, dtype=torch.float64))


def test_search_decoder_ranks_exactly_as_exhaustive_scoring():
    torch.manual_seed(1)
    depth, k = 7, 6
    config = PredictorConfig(depth=depth, embed_dim=8, beam=10_000, identity_rule="marginal")
    lo, hi = math.ceil(config.min_length_ratio * depth), math.floor(config.max_length_ratio * depth)
    every = []  # (layers run, boundaries, ops) of every admissible segmentation
    for segments, ops, z, oo in _every_compact(depth, config.k_max):
        layers = tuple(
            i for (s, n), op in zip(segments, ops, strict=True) for _ in range(OPS[op].times) for i in range(s, s + n)
        )
        if layers and lo <= len(layers) <= hi:
            every.append((layers, z, oo))
    z, oo = torch.tensor([e[1] for e in every]), torch.tensor([e[2] for e in every])
    for _ in range(5):
        b, o = 2 * torch.randn(depth), 2 * torch.randn(depth, 3)
        scores = program_logprob(b[None], o[None], z, oo)[0].tolist()
        best: dict[tuple[int, ...], float] = {}
        for (layers, _, _), score in zip(every, scores, strict=True):
            best[layers] = max(best.get(layers, -math.inf), score)
        expected = [Program(x) for x, _ in sorted(best.items(), key=lambda kv: -kv[1])[:k]]
        assert decode(b, o, config, k) == expected


def test_search_decoder_emits_one_layer_edits_the_threshold_decoder_cannot():
    """Boundary probabilities of 0.4 at the starts of a one-layer repeat: no threshold passes, search finds it."""
    compact = CompactProgram.parse("keep(0-3) keep(4-6) repeat(7) keep(8-9)")
    b, o = _logits_for(compact)
    b[[4, 7, 8]] = math.log(0.4 / 0.6)
    config = PredictorConfig(depth=10, embed_dim=8)
    assert decode(b, o, config, k=1)[0] == compact.to_program()
    threshold = decode(b, o, PredictorConfig(depth=10, embed_dim=8, decoder="threshold"), k=5)
    assert compact.to_program() not in threshold


def test_program_targets_mark_programs_without_a_compact_form():
    z, ops, ok = program_targets(["0-5", "0-2,4-5", "0-3,0-1"], depth=6)
    assert ok.tolist() == [True, True, False]
    assert z[1].tolist() == CompactProgram.from_program(Program.parse("0-2,4-5"), 6).boundaries()
    assert ops[1, 3].item() == OPS.index(Op.SKIP)
    with pytest.raises(ValueError, match="decoder must be one of"):
        PredictorConfig(depth=6, embed_dim=8, decoder="nope")
    with pytest.raises(ValueError, match="decoder must be one of"):
        TrainConfig(decoder="nope")


def test_predictors_saved_before_the_search_decoder_still_decode_by_thresholds(tmp_path):
    model = ProgramPredictor(PredictorConfig(depth=6, embed_dim=8, d_model=16, ff=32))
    save(model, tmp_path / "p")
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert load(tmp_path / "p").config.decoder == "search"
    del config["decoder"]
    (tmp_path / "p" / "config.json").write_text(json.dumps(config))
    assert load(tmp_path / "p").config.decoder == "threshold"


@pytest.mark.parametrize(("p_keep", "mass_first"), [(0.8, "0-3,6-15"), (0.95, "0-15")])
def test_identity_ranks_first_only_when_it_holds_half_the_probability(p_keep, mass_first):
    # Five segments. Each is kept with probability p_keep; otherwise a skip is likelier than a repeat, and
    # most of all for layers 4-5. Per segment, keep always wins, so the plain beam order starts with the
    # identity even when p_keep ** 5 (0.33 at 0.8) says that some edit is the likelier outcome.
    depth = 16
    b = torch.full((depth,), -8.0)
    b[[0, 4, 6, 8, 12]] = 8.0  # segments 0-3, 4-5, 6-7, 8-11, 12-15
    o = torch.full((depth, 3), -8.0)
    o[:, OPS.index(Op.KEEP)] = math.log(p_keep)
    o[:, OPS.index(Op.SKIP)] = math.log((1 - p_keep) * 0.6)
    o[:, OPS.index(Op.REPEAT)] = math.log((1 - p_keep) * 0.4)
    o[4, OPS.index(Op.SKIP)] = math.log((1 - p_keep) * 0.9)
    o[4, OPS.index(Op.REPEAT)] = math.log((1 - p_keep) * 0.1)
    config = PredictorConfig(depth=depth, embed_dim=8)
    marginal = decode(b, o, PredictorConfig(depth=depth, embed_dim=8, identity_rule="marginal"), k=3)
    mass = decode(b, o, config, k=3)
    assert marginal[0] == Program.identity(depth)
    assert mass[0] == Program.parse(mass_first) and Program.identity(depth) in mass[:2]
    with pytest.raises(ValueError, match="identity_rule must be one of"):
        PredictorConfig(depth=depth, embed_dim=8, identity_rule="nope")


def test_save_and_load_round_trip(tmp_path):
    model = ProgramPredictor(PredictorConfig(depth=6, embed_dim=8, d_model=16, ff=32, meta={"x": 1})).eval()
    save(model, tmp_path / "p")
    again = load(tmp_path / "p")
    x, m = torch.randn(2, 4, 8), torch.ones(2, 4)
    for a, b in zip(model(x, m), again(x, m), strict=True):
        torch.testing.assert_close(a, b)
    assert again.config.meta == {"x": 1}
    with pytest.raises(FileNotFoundError, match="run `polar train`"):
        load(tmp_path / "nothing")
