import pytest

from ..aimpair import Pair


@pytest.fixture
def pair(tmp_path):
    """A source and a destination node on loopback, stopped cleanly (exit 0) afterwards."""
    p = Pair(tmp_path)
    yield p
    p.stop()
