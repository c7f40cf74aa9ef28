import pytest

from polar.programs import CompactProgram, Op, Program, ProgramError, Segment


def test_parse_text_form_with_ranges_and_loops():
    p = Program.parse("0-7,6-7,8-29")
    assert p.layers == (*range(8), 6, 7, *range(8, 30))
    assert len(p) == 32
    assert p.text == "0-7,6-29"  # canonical: maximal ascending runs
    assert Program.parse(p.text) == p


def test_text_form_is_canonical():
    assert Program.parse("0,1,2,3").text == "0-3"
    assert Program.parse(" 0 - 2 , 4 ").text == "0-2,4"
    assert Program.parse("[0, 1, 3]").text == "0-1,3"
    assert Program.parse("3-1").layers == (3, 2, 1)
    assert Program.coerce([0, 1, 2]) == Program.identity(3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty program"),
        ("  ", "empty program"),
        ("0-3,,5", "cannot parse item 2 ''"),
        ("0-3,a", "cannot parse item 2 'a'"),
        ("0-3,-1", "cannot parse item 2 '-1'"),
        ("0..4", "cannot parse item 1"),
    ],
)
def test_parse_errors_say_what_is_wrong(text, message):
    with pytest.raises(ProgramError, match=message.replace("(", r"\(")):
        Program.parse(text)


def test_validate_range_and_visits():
    Program.parse("0-5,4-5,6-9").validate(depth=10)
    with pytest.raises(ProgramError, match="layer 10 is out of range .* 10 layers"):
        Program.parse("0-10").validate(depth=10)
    with pytest.raises(ProgramError, match="layer 2 runs 3 times"):
        Program.parse("0-3,2,2").validate(depth=10)
    Program.parse("0-3,2,2").validate(depth=10, max_visits=3)
    with pytest.raises(ProgramError, match="negative"):
        Program((0, -1))


def test_identity_and_skipped():
    p = Program.parse("0-3,6-9")
    assert p.skipped(10) == [4, 5]
    assert not p.is_identity(10)
    assert Program.identity(10).is_identity(10)


def test_compact_roundtrip_and_arrays():
    c = CompactProgram.parse("keep(0-3) repeat(4-5) skip(6) keep(7-9)")
    assert c.to_program().text == "0-5,4-5,7-9"
    assert c.boundaries() == [1, 0, 0, 0, 1, 0, 1, 1, 0, 0]
    assert c.ops()[4] is Op.REPEAT
    assert CompactProgram.from_arrays(c.boundaries(), c.ops()) == c
    assert CompactProgram.parse(str(c)) == c


def test_canonical_compact_form_prefers_fewest_segments_then_long_leading_ones():
    c = CompactProgram.from_program(Program.identity(10), depth=10)
    assert str(c) == "keep(0-3) keep(4-7) keep(8-9)"
    c = CompactProgram.from_program(Program.parse("0-5,4-5,7-9"), depth=10)
    assert c.to_program().text == "0-5,4-5,7-9"
    assert [s.op for s in c.segments].count(Op.REPEAT) == 1
    assert len(c.segments) == 4  # keep(0-3) repeat(4-5) skip(6) keep(7-9)


def test_canonical_form_merges_skips():
    c = CompactProgram.from_program(Program.parse("0-1,6-9"), depth=10)
    assert c.to_program() == Program.parse("0-1,6-9")
    assert sum(s.op is Op.SKIP for s in c.segments) == 1


@pytest.mark.parametrize("text", ["0-3,1-2,4-9", "3,2,1,0,4-9", "0-9,0-9", "0-4,0-4,5-9"])
def test_inexpressible_programs_are_rejected(text):
    with pytest.raises(ProgramError, match="no compact form"):
        CompactProgram.from_program(Program.parse(text), depth=10)


def test_compact_validation():
    with pytest.raises(ProgramError, match="contiguous"):
        CompactProgram((Segment(0, 2, Op.KEEP), Segment(3, 2, Op.KEEP)))
    with pytest.raises(ProgramError, match="k_max=4"):
        CompactProgram((Segment(0, 5, Op.KEEP),))
    with pytest.raises(ProgramError, match="no layer"):
        CompactProgram((Segment(0, 2, Op.SKIP),))
    with pytest.raises(ProgramError, match="cannot parse segment"):
        CompactProgram.parse("keep(0-3) loop(4)")


def test_every_compact_program_is_its_own_canonical_expansion():
    # Every expansion of a random compact program converts back to a compact program with the same
    # expansion (the canonical one may segment it differently, never worse).
    import random

    rng = random.Random(0)
    for _ in range(200):
        depth, segs, pos = rng.randint(4, 16), [], 0
        while pos < depth:
            length = rng.randint(1, min(4, depth - pos))
            segs.append(Segment(pos, length, rng.choice([Op.KEEP, Op.KEEP, Op.SKIP, Op.REPEAT])))
            pos += length
        if all(s.op is Op.SKIP for s in segs):
            continue
        c = CompactProgram(tuple(segs))
        canon = CompactProgram.from_program(c.to_program(), depth)
        assert canon.to_program() == c.to_program()
        assert len(canon.segments) <= len(c.segments)


def test_parse_any_reads_either_form():
    compact = CompactProgram.from_program(Program.parse("0-1,3-5"), 6)
    assert Program.parse_any(str(compact)) == Program.parse("0-1,3-5") == Program.parse_any(" 0-1,3-5 ")
    with pytest.raises(ProgramError):
        Program.parse_any("keep(0-")
