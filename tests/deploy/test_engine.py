"""Engine builds from small ONNX graphs generated here: TensorRT-RTX on this CPU, datacenter TensorRT where it
is installed (``tensorrt`` marker). Graphs follow the export contract: input ``images [1, S, 3, H, W]``."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from lite3r.deploy import DeployError, EngineFromOnnx, TensorRTNotInstalledError, build_engine, parse_frames
from lite3r.deploy.frames import FrameRange
from lite3r.deploy.tensorrt.engine import BuildReport, OnnxParseError
from lite3r.deploy.tensorrt.nodes import NodeResolution
from lite3r.exporter.sla_onnx import ONNX_TYPES
from lite3r.plugins import contract

needs_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx_bindings") is None,
    reason="needs TensorRT-RTX (pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings)",
)
FLOAT = onnx.TensorProto.FLOAT
OPSETS = [oh.make_opsetid("", 19), oh.make_opsetid("lite3r", 1)]


def _images(shape=(1, "S", 3, 14, 14)):
    return oh.make_tensor_value_info("images", FLOAT, list(shape))


def _save(tmp_path, nodes, functions=(), initializers=(), shape=(1, "S", 3, 14, 14), name="model.onnx"):
    graph = oh.make_graph(
        nodes, "g", [_images(shape)], [oh.make_tensor_value_info("depth", FLOAT, list(shape))], list(initializers)
    )
    model = oh.make_model(graph, opset_imports=OPSETS, functions=list(functions))
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _function(op_type, body, inputs=("x",), outputs=("y",), attributes=("kh",)):
    return oh.make_function("lite3r", op_type, list(inputs), list(outputs), body, opset_imports=OPSETS,
                            attributes=list(attributes))  # fmt: skip


def _sla_like(tmp_path, node_name="attn_0"):
    """One custom node (``SparseLinearAttention``-like: attributes, plugin_namespace) with a 2-op body."""
    body = [oh.make_node("Relu", ["x"], ["t"]), oh.make_node("Mul", ["t", "t"], ["y"])]
    node = oh.make_node("SparseLinearAttention", ["images"], ["depth"], domain="lite3r", name=node_name, kh=0.05,
                        plugin_namespace="lite3r")  # fmt: skip
    return _save(tmp_path, [node], [_function("SparseLinearAttention", body)])


# --- frames ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [("2:8:32", (2, 8, 32)), (" 8 ", (8, 8, 8)), ("1:1:4", (1, 1, 4))])
def test_parse_frames(text, expected):
    assert parse_frames(text) == FrameRange(*expected)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a:b:c", "must be integers"),
        ("2.5", "must be integers"),
        ("", "must be integers"),
        ("8:2:32", "MIN <= OPT <= MAX"),
        ("0:1:2", "positive integers"),
        ("-1", "positive integers"),
        ("1:2", "MIN:OPT:MAX"),
    ],
)
def test_parse_frames_rejects_bad_input(text, message):
    with pytest.raises(ValueError, match=message):
        parse_frames(text)


# --- TensorRT-RTX builds ---------------------------------------------------------------------------------------


@needs_rtx
def test_rtx_build_inlines_custom_node_function_body(tmp_path):
    report = build_engine(_sla_like(tmp_path), tmp_path / "out" / "model.engine", target="tensorrt-rtx",
                          frames="1:2:4")  # fmt: skip

    assert report.engine_path.stat().st_size == report.engine_bytes > 0
    assert "[I]" in report.log_path.read_text()
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == [".lite3r-manifest.json", "model.build.log", "model.engine"]
    assert (report.frames, report.image_size) == (FrameRange(1, 2, 4), (14, 14))
    [node] = report.custom_nodes
    assert (node.node, node.op_type, node.resolved, node.layers) == ("attn_0", "SparseLinearAttention", "function", 2)
    assert report.sla_resolution == "function"
    assert "attn_0 (SparseLinearAttention): function body (2 layers, no plugin)" in report.summary()
    assert "custom nodes on a plugin: 0 of 1" in report.summary()


@needs_rtx
def test_rtx_build_reports_nested_and_unnamed_custom_nodes(tmp_path):
    """An unnamed outer node (parser name ``node_of_<output>``) whose body calls another custom node."""
    inner = _function("SparseLinearAttentionCore", [oh.make_node("Relu", ["x"], ["y"])])
    outer_body = [
        oh.make_node("SparseLinearAttentionCore", ["x"], ["t"], domain="lite3r", name="core",
                     plugin_namespace="lite3r"),  # fmt: skip
        oh.make_node("Mul", ["t", "t"], ["u"]),
        oh.make_node("Neg", ["u"], ["y"]),
    ]
    outer = _function("SparseLinearAttention", outer_body)
    node = oh.make_node("SparseLinearAttention", ["images"], ["depth"], domain="lite3r", kh=0.1,
                        plugin_namespace="lite3r")  # fmt: skip
    path = _save(tmp_path, [node], [outer, inner])

    report = build_engine(path, tmp_path / "model.engine", target="tensorrt-rtx", frames=(1, 1, 2))

    [resolution] = report.custom_nodes
    assert (resolution.node, resolution.resolved, resolution.layers) == ("node_of_depth", "function", 3)


@needs_rtx
def test_rtx_builds_strongly_typed_fp8_qdq_graph(tmp_path):
    weight = onh.from_array(np.random.default_rng(0).standard_normal((14, 14)).astype(np.float32), "w")
    scales = [onh.from_array(np.array(s, np.float32), n) for n, s in (("x_scale", 0.05), ("w_scale", 0.02))]
    zero = oh.make_tensor("zero", onnx.TensorProto.FLOAT8E4M3FN, [], [0.0])
    nodes = [
        oh.make_node("QuantizeLinear", ["images", "x_scale", "zero"], ["xq"]),
        oh.make_node("DequantizeLinear", ["xq", "x_scale"], ["xd"]),
        oh.make_node("QuantizeLinear", ["w", "w_scale", "zero"], ["wq"]),
        oh.make_node("DequantizeLinear", ["wq", "w_scale"], ["wd"]),
        oh.make_node("MatMul", ["xd", "wd"], ["depth"]),
    ]
    path = _save(tmp_path, nodes, initializers=[weight, *scales, zero])

    report = build_engine(path, tmp_path / "fp8.engine", target="tensorrt-rtx", frames="2:4:8", verbose=True)

    log = report.log_path.read_text()
    assert "[E]" not in log and "[V]" in log
    assert report.engine_bytes > 0 and report.custom_nodes == [] and report.sla_resolution == "none"


@needs_rtx
def test_rtx_ignores_timing_cache_and_says_so(tmp_path):
    cache = tmp_path / "timing.cache"
    report = build_engine(_sla_like(tmp_path), tmp_path / "model.engine", target="tensorrt-rtx", timing_cache=cache)
    assert report.timing_cache is None and not cache.exists()
    assert any("no timing cache" in note for note in report.notes)


@needs_rtx
def test_engine_from_onnx_builds_once(tmp_path):
    loader = EngineFromOnnx(_sla_like(tmp_path), tmp_path / "model.engine", target="tensorrt-rtx", frames=(1, 2, 2))
    assert not (tmp_path / "model.engine").exists()  # lazy: nothing happens until it is called
    report = loader()
    (tmp_path / "model.engine").unlink()
    assert loader() is report and not (tmp_path / "model.engine").exists()


@needs_rtx
def test_fixed_frame_count_is_taken_from_the_model(tmp_path):
    path = _sla_like(tmp_path)
    static = onnx.load(path)
    static.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    onnx.save(static, path)
    report = build_engine(path, tmp_path / "model.engine", target="tensorrt-rtx")
    assert report.frames == FrameRange(3, 3, 3)
    with pytest.raises(ValueError, match="exactly 3 frames"):
        build_engine(path, tmp_path / "model.engine", target="tensorrt-rtx", frames="1:2:4")


def _resolution(node: str, resolved: str) -> NodeResolution:
    plugin_layers = ("plugin_0",) if "plugin" in resolved else ()
    return NodeResolution(node, "SparseLinearAttention", resolved, 0 if resolved == "missing" else 5, plugin_layers)


@pytest.mark.parametrize(
    "resolved, expected",
    [
        (["function+plugin", "plugin"], "plugin"),
        (["function", "function"], "function"),
        (["missing"], "missing"),  # was counted as "plugin"
        (["function+plugin", "missing"], "mixed"),
        (["function", "function+plugin"], "mixed"),
        ([], "none"),
    ],
)
def test_sla_resolution_counts_only_real_plugins(tmp_path, resolved, expected):
    nodes = [_resolution(f"attn_{i}", r) for i, r in enumerate(resolved)]
    report = BuildReport(tmp_path / "e", tmp_path / "l", "tensorrt", "10.13", FrameRange(1, 1, 1), None, nodes, 1, 1.0)
    assert report.sla_resolution == expected
    on_plugin = sum(r in ("plugin", "function+plugin") for r in resolved)
    assert (f"custom nodes on a plugin: {on_plugin} of {len(resolved)}" in report.summary()) == bool(resolved)
    lines = [r.describe() for r in nodes]
    assert [line.split(": ", 1)[1].split(" (")[0] for line in lines] == [
        {"plugin": "plugin", "function+plugin": "plugin", "function": "function body", "missing": "missing"}[r]
        for r in resolved
    ]


# --- errors ----------------------------------------------------------------------------------------------------


def _failed(tmp_path, **options):
    out = tmp_path / "out"
    with pytest.raises(Exception) as info:
        build_engine(options.pop("onnx", tmp_path / "model.onnx"), out / "model.engine", **options)
    assert not out.exists() or not any(out.iterdir()), "a failed build left files behind"
    return info.value


@needs_rtx
def test_parser_error_names_the_node(tmp_path):
    mystery = oh.make_node("Mystery", ["images"], ["depth"], domain="lite3r", name="odd_one")
    path = _save(tmp_path, [mystery])
    error = _failed(tmp_path, onnx=path, target="tensorrt-rtx")
    assert isinstance(error, OnnxParseError) and isinstance(error, DeployError)
    assert "TensorRT-RTX could not parse model.onnx" in str(error) and "'odd_one' (Mystery)" in str(error)


@needs_rtx
@pytest.mark.parametrize(
    ("shape", "options", "message"),
    [
        ((1, "S", 3, 14, 14), {"image_size": (28, 28)}, "exported for 14x14 images"),
        ((1, "S", 3, "H", "W"), {}, "dynamic image size; pass image_size"),
        (("S", 4), {}, r"input 'images' has shape \(-1, 4\)"),
    ],
)
def test_profile_rejects_shapes_it_cannot_serve(tmp_path, shape, options, message):
    node = oh.make_node("Relu", ["images"], ["depth"])
    path = _save(tmp_path, [node], shape=shape)
    with pytest.raises(ValueError, match=message):
        build_engine(path, tmp_path / "out" / "model.engine", target="tensorrt-rtx", **options)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"target": "onnxruntime"}, ValueError, "unknown TensorRT target 'onnxruntime'"),
        ({"target": "tensorrt-rtx", "frames": (4, 2, 8)}, ValueError, "MIN <= OPT <= MAX"),
        ({"target": "tensorrt-rtx", "image_size": (0, 14)}, ValueError, "two positive integers"),
        ({"target": "tensorrt-rtx", "workspace": -1}, ValueError, "positive number of bytes"),
    ],
)
def test_bad_options_fail_before_any_work(tmp_path, options, error, message):
    _sla_like(tmp_path)
    failure = _failed(tmp_path, **options)
    assert isinstance(failure, error) and message in str(failure)


def test_missing_and_invalid_onnx_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", tmp_path / "model.engine", target="tensorrt-rtx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a protobuf\xff" * 8)
    with pytest.raises(OnnxParseError, match="is not an ONNX model"):
        build_engine(garbage, tmp_path / "model.engine", target="tensorrt-rtx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="datacenter TensorRT is installed here")
def test_missing_datacenter_tensorrt_is_one_clear_error(tmp_path):
    error = _failed(tmp_path, onnx=_sla_like(tmp_path), target="tensorrt")
    assert isinstance(error, TensorRTNotInstalledError) and isinstance(error, ImportError)
    assert str(error).startswith("datacenter TensorRT is not installed")
    assert "pip install 'lite3r[tensorrt]' on a machine with an NVIDIA GPU" in str(error)


def test_too_old_datacenter_tensorrt_is_one_clear_error(monkeypatch):
    """TensorRT 10.8 imports but lacks ``tensorrt.plugin.aot_impl``; lite3r refuses it by version, up front."""
    import types

    from lite3r.deploy.tensorrt.flavour import import_tensorrt

    old = types.ModuleType("tensorrt")
    old.__version__ = "10.8.0.43"
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(TensorRTNotInstalledError, match=r"TensorRT 10\.8\.0\.43 is too old: lite3r needs >= 10\.9"):
        import_tensorrt("tensorrt")


# --- datacenter TensorRT (needs `tensorrt` and a GPU) -----------------------------------------------------------


def _sla_core_graph(tmp_path, heads=2, length=128, dim=64):
    """A model whose only node is the SLA core plugin op, fed by graph inputs of the plugin's contract (bf16)."""
    types = {name: ONNX_TYPES[dtype] for name, dtype in contract.dtypes("bf16").items()}
    nq = length // 64
    inputs = [
        oh.make_tensor_value_info(name, types[name], shape)
        for name, shape in [
            ("q", [1, heads, length, dim]), ("k", [1, heads, length, dim]), ("v", [1, heads, length, dim]),
            ("lut", [1, heads, nq, 1]), ("kv_state", [heads, nq, dim * dim]), ("k_state", [heads, nq, dim]),
        ]
    ]  # fmt: skip
    weights = [onh.from_array(np.zeros((dim, dim), np.float32), "proj_w"),
               onh.from_array(np.zeros(dim, np.float32), "proj_b")]  # fmt: skip
    core = oh.make_node(
        "SparseLinearAttentionCore", ["q", "k", "v", "proj_w", "proj_b", "lut", "kv_state", "k_state"], ["out"],
        domain="lite3r", name="core_0", plugin_namespace="lite3r", block_q=64, block_k=64, feature_map="softmax",
        scale=dim**-0.5,
    )  # fmt: skip
    out = oh.make_tensor_value_info("out", types["out"], [1, heads, length, dim])
    model = oh.make_model(oh.make_graph([core], "core", inputs, [out], weights), opset_imports=OPSETS)
    path = tmp_path / "core.onnx"
    onnx.save(model, path)
    return path


@pytest.mark.tensorrt
def test_datacenter_build_uses_the_sla_plugin_and_saves_the_timing_cache(tmp_path):
    cache = tmp_path / "timing.cache"
    report = build_engine(_sla_core_graph(tmp_path), tmp_path / "core.engine", target="tensorrt", timing_cache=cache)
    [node] = report.custom_nodes
    assert (node.node, node.resolved, len(node.plugin_layers)) == ("core_0", "plugin", 1)
    assert cache.stat().st_size > 0 and report.timing_cache == cache
    rebuilt = build_engine(_sla_core_graph(tmp_path), tmp_path / "core2.engine", target="tensorrt", timing_cache=cache)
    assert rebuilt.engine_bytes > 0


@needs_rtx
@pytest.mark.parametrize("allowed", [False, True])
def test_tf32_is_off_unless_asked(allowed):
    """TensorRT turns TF32 on by default; float32 SLA block scores in TF32 can rank blocks differently."""
    import tensorrt_rtx_bindings as trt

    from lite3r.deploy.tensorrt.flavour import LogCapture
    from lite3r.deploy.tensorrt.engine import _set_tf32

    config = trt.Builder(LogCapture(trt).logger).create_builder_config()
    assert config.get_flag(trt.BuilderFlag.TF32)  # the default lite3r changes
    notes: list[str] = []
    _set_tf32(trt, config, allowed, notes)
    assert config.get_flag(trt.BuilderFlag.TF32) is allowed
    assert bool(notes) is allowed


@needs_rtx
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="datacenter TensorRT is installed here")
def test_build_command_defaults_to_auto(tmp_path):
    """`lite3r build` used to default to datacenter TensorRT, which cannot be installed here; auto, as
    lite3r-export, takes TensorRT-RTX."""
    from click.testing import CliRunner

    from lite3r.cli import main

    result = CliRunner().invoke(main, ["build", str(_sla_like(tmp_path)), "--frames", "1:2:4",
                                       "--out", str(tmp_path / "model.engine")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "tensorrt-rtx" in result.output and (tmp_path / "model.engine").stat().st_size > 0


@pytest.mark.tensorrt
def test_datacenter_build_runs_every_sla_node_of_a_bf16_export_on_the_plugin(tmp_path):
    """The exporter's bf16 graph of a head-dim-64 student: each SparseLinearAttention node is inlined and its
    nested core becomes the plugin (the float32 export of the same student would give function bodies)."""
    import lite3r
    from lite3r.exporter import export_onnx

    # Head dim 64 (embed 128, 2 heads), small otherwise; native 56 x 56 (no position-table interpolation).
    model = lite3r.load_model("vggt-tiny", embed_dim=128, num_heads=2, depth=2, dpt_layers=(0, 1, 1, 1), img_size=56,
                              dinov2_depth=1, camera_iterations=1)  # fmt: skip
    student = lite3r.convert_to_sla(model, layers="global")
    export = export_onnx(student, tmp_path / "model.onnx", image_size=(56, 56), precision="bf16")
    assert export.sla_core == "plugin"

    report = build_engine(export.path, tmp_path / "model.engine", target="tensorrt", frames="1:2:4")
    assert len(report.custom_nodes) == export.sla_nodes == 2
    assert all(r.on_plugin for r in report.custom_nodes), report.summary()
    assert report.sla_resolution == "plugin"
