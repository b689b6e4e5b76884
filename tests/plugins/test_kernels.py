"""The CUDA-kernel switch: every op's CUDA dispatch asks it before using its extension."""

from __future__ import annotations

import pytest

from edgevis.plugins import kernels


def test_switch_restores_the_setting_even_on_error() -> None:
    assert kernels.enabled()
    with pytest.raises(RuntimeError), kernels.switched(False):
        assert not kernels.enabled()
        raise RuntimeError("boom")
    assert kernels.enabled()
    with kernels.switched(False), kernels.switched(True):
        assert kernels.enabled()


def test_switched_off_ops_never_reach_their_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off, the sparse conv and the ConvGRU update return 'no kernel' before asking their extension (the
    extensions here would fail loudly if called)."""
    from edgevis.plugins.convgru import ext as gru_ext
    from edgevis.plugins.convgru import op as gru_op
    from edgevis.plugins.sparse_conv import ext as tsc_ext
    from edgevis.plugins.sparse_conv import op as tsc_op

    def called(*args: object, **kwargs: object) -> None:
        raise AssertionError("extension asked")

    monkeypatch.setattr(tsc_ext, "available", lambda: True)
    monkeypatch.setattr(tsc_ext, "forward", called)
    monkeypatch.setattr(gru_ext, "convgru_update_cuda", called)
    with kernels.switched(False):
        assert tsc_op._cuda_impl(None, None, None, None, None, {}) is None
        assert gru_op._cuda_kernel(None, None, None, emit_fp16=False) is None
    with pytest.raises(AssertionError, match="extension asked"):  # on: the (stand-in) extension is asked
        tsc_op._cuda_impl(None, None, None, None, None, {})
