import random

from hypothesis import given
from hypothesis import strategies as st

from engine.storage.bitmap import BlockBitmap, count_bits, runs


def _read_file_bits(path):
    with open(path, "rb") as f:
        return f.read()


@given(st.sets(st.integers(0, 299)), st.integers(1, 40))
def test_runs_cover_exactly_the_set_bits(blocks, max_run):
    bits = bytearray(38)
    for b in blocks:
        bits[b >> 3] |= 1 << (b & 7)
    covered = []
    for first, count in runs(bits, 300, max_run):
        assert 1 <= count <= max_run
        covered.extend(range(first, first + count))
    assert covered == sorted(blocks)


def test_mark_is_written_through_and_survives_reopen(tmp_path):
    path = str(tmp_path / "bm")
    bm = BlockBitmap.create(path, 100)
    assert bm.mark(3, 5) and not bm.mark(4, 4)
    bm.close()  # no save: as if the process were killed here
    again = BlockBitmap(path, 100)
    assert [b for b in range(100) if again.test(b)] == [3, 4, 5]


def test_taken_bits_stay_in_the_file_until_save(tmp_path):
    """A crash between take() and save() must re-report the taken blocks, even when new writes
    to the same bitmap bytes happen in between (the file is never under-reported)."""
    path = str(tmp_path / "bm")
    bm = BlockBitmap.create(path, 64)
    bm.mark(0, 1)
    taken = bm.take()
    assert count_bits(taken) == 2 and bm.count() == 0
    bm.mark(2, 2)  # same byte as the taken bits
    file_bits = _read_file_bits(path)
    assert file_bits[0] == 0b111
    bm.save()
    assert _read_file_bits(path)[0] == 0b100


def test_torn_file_reports_everything(tmp_path):
    path = str(tmp_path / "bm")
    with open(path, "wb") as f:
        f.write(b"\x01")  # wrong length for 100 blocks
    bm = BlockBitmap(path, 100)
    assert bm.count() >= 100


def test_random_marks_match_a_set(tmp_path):
    rng = random.Random(7)
    bm = BlockBitmap.create(str(tmp_path / "bm"), 5000)
    model = set()
    for _ in range(300):
        a = rng.randrange(5000)
        b = min(4999, a + rng.randrange(20))
        bm.mark(a, b)
        model.update(range(a, b + 1))
    assert bm.count() == len(model)
    assert {b for b in range(5000) if bm.test(b)} == model
