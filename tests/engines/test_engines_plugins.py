from __future__ import annotations

import pytest

from edgevis.engines import plugins as P


def test_library_search_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(P.ENV_VAR, raising=False)
    monkeypatch.setattr(P, "_repo_root", lambda: tmp_path / "repo")
    with pytest.raises(P.PluginError, match="libedgevis_plugins.so not found.*make plugins"):
        P.find_plugin_library()
    lib = tmp_path / "build" / "plugins" / P.LIB_NAME
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    assert P.find_plugin_library() == lib
    env_lib = tmp_path / "custom.so"
    monkeypatch.setenv(P.ENV_VAR, str(env_lib))
    with pytest.raises(P.PluginError, match="EDGEVIS_PLUGIN_LIB=.*does not exist"):
        P.find_plugin_library()
    env_lib.write_bytes(b"\x7fELF")
    assert P.find_plugin_library() == env_lib


def test_wrong_tensorrt_version_or_not_a_library(tmp_path):
    lib = tmp_path / P.LIB_NAME
    lib.write_bytes(b"\x7fELF....libnvinfer.so.10\x00...")
    P.check_plugin_library(lib, "10.3.0")
    with pytest.raises(P.PluginError, match=r"built against TensorRT 10 .* TensorRT 11.1.0 .*make plugins"):
        P.check_plugin_library(lib, "11.1.0")
    lib.write_bytes(b"garbage")
    with pytest.raises(P.PluginError, match="not a shared library"):
        P.check_plugin_library(lib, "10.3.0")


def test_required_and_missing_creators():
    need = P.required_plugins({"ConvGRUCell", "MultiscaleDeformableAttnPlugin_TRT"})
    assert need == {"ConvGRUCell": ("1", "edgevis"), "MultiscaleDeformableAttnPlugin_TRT": ("1", "")}
    have = [("ConvGRUCell", "2", "edgevis"), ("MultiscaleDeformableAttnPlugin_TRT", "1", "")]
    assert P.missing_creators(have, need) == ["edgevis::ConvGRUCell v1"]
    assert P.missing_creators([*have, ("ConvGRUCell", "1", "edgevis")], need) == []
