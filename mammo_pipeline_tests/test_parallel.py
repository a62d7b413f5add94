import pytest

from mammo_pipeline.parallel import imap_unordered


def square(x: int) -> int:
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_imap_unordered_returns_every_result(workers):
    assert sorted(imap_unordered(square, range(50), workers=workers, chunksize=4)) == [x * x for x in range(50)]


def test_imap_unordered_bounds_items_in_flight():
    pulled = []

    def items():
        for i in range(100):
            pulled.append(i)
            yield i

    results = imap_unordered(square, items(), workers=2, chunksize=5, max_pending=2)
    next(results)
    assert len(pulled) <= 5 * 3  # at most max_pending chunks (plus the one being assembled) read ahead
    assert len(list(results)) == 99
