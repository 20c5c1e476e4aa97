import importlib.util

import pytest

from sparsetrt.build import tensorrt_status


def test_tensorrt_status_explains_itself():
    available, reason = tensorrt_status()
    assert isinstance(reason, str) and reason
    if importlib.util.find_spec("tensorrt") is None:
        assert not available and "not importable" in reason


@pytest.mark.tensorrt
def test_tensorrt_present_where_marked():
    available, reason = tensorrt_status()
    if not available:
        pytest.skip(reason)
    import tensorrt

    assert tensorrt.__version__
