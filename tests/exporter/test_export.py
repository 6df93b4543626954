"""``export_onnx`` on an SLA student of vggt-tiny: the ONNX contract, onnxruntime against PyTorch (also at other
frame counts than the traced one), FP8 Q/DQ against ModelOpt's fake quantization, and bad inputs."""

from __future__ import annotations

import collections
import copy
import importlib.util

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch

import lite3r
from lite3r._io import OutputError
from lite3r.calibration import QuantStateError, quant_state
from lite3r.data import make_scene
from lite3r.exporter import ExportError, SLAExportError, export_onnx
from lite3r.plugins import contract
from lite3r.sla import SparseLinearAttention

OUTPUTS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf")
IMAGE_SIZE = (112, 112)  # as in conftest; asserted against the reports below


def dims(info: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def run_onnx(path, images: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {"images": images.numpy()})))


def run_torch(model, images: torch.Tensor) -> dict[str, np.ndarray]:
    with torch.no_grad():
        return {k: v.numpy() for k, v in model(images).items()}


@pytest.mark.slow
def test_student_graph_follows_the_contract(student, float_export):
    model = onnx.load(float_export.path)
    onnx.checker.check_model(model, full_check=True)
    height, width = IMAGE_SIZE
    assert float_export.image_size == IMAGE_SIZE
    assert [(i.name, dims(i)) for i in model.graph.input] == [("images", [1, "frames", 3, height, width])]
    assert [(o.name, dims(o)) for o in model.graph.output] == [
        ("pose_enc", [1, "frames", 9]),
        ("depth", [1, "frames", height, width, 1]),
        ("depth_conf", [1, "frames", height, width]),
        ("world_points", [1, "frames", height, width, 3]),
        ("world_points_conf", [1, "frames", height, width]),
    ]
    sla = [n for n in model.graph.node if n.domain == "lite3r"]
    converted = [m for m in student.modules() if isinstance(m, SparseLinearAttention)]
    assert len(sla) == len(converted) == 6 == float_export.sla_nodes
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in sla[0].attribute}
    assert attributes == pytest.approx(
        {"kh": 0.3, "kl": 0.3, "block_q": 64, "block_k": 64, "feature_map": b"softmax", "scale": 16**-0.5,
         "plugin_namespace": b"lite3r"}  # fmt: skip
    )
    assert [list(n.input)[3:] for n in sla][0] == [
        "aggregator.frame_blocks.0.attn.core.proj_lin.weight", "aggregator.frame_blocks.0.attn.core.proj_lin.bias"
    ]  # fmt: skip
    assert sorted((f.domain, f.name) for f in model.functions) == [
        ("lite3r", "SparseLinearAttention"), ("lite3r", "SparseLinearAttentionCore")
    ]  # fmt: skip
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert not {"Loop", "If", "Scan", "SequenceConstruct"} & ops.keys()  # no frame loops left in the graph
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.t.dims)]
    assert all(t.data_type != onnx.TensorProto.DOUBLE for t in tensors)
    assert float_export.nodes == len(model.graph.node) and float_export.qdq_pairs == 0
    assert float_export.external_data is None and float_export.file_bytes == float_export.path.stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("frames", [1, 2, 3, 4])
def test_onnxruntime_matches_the_pytorch_student(student, float_export, frames):
    """Traced at 2 frames, run at 1 to 4; from 3 frames on the global layers' block maps have all three classes."""
    images = make_scene(frames, *IMAGE_SIZE, seed=10 + frames).images[None]
    expected, actual = run_torch(student, images), run_onnx(float_export.path, images)
    for name in OUTPUTS:  # float32 end to end; only the order of sums differs
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_fp8_graph_quantizes_the_calibrated_linears(fp8_student, fp8_export):
    _, state = fp8_student
    model = onnx.load(fp8_export.path)
    onnx.checker.check_model(model, full_check=True)
    modules = {e["module"] for e in state["quantizers"]}
    assert fp8_export.qdq_pairs == len(state["quantizers"]) == 2 * len(modules)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] == len(modules) and ops["DequantizeLinear"] == 2 * len(modules)
    fp8_weights = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN and t.dims}
    assert fp8_weights == {f"{m}.weight_fp8" for m in modules}
    producers = {out: n for n in model.graph.node for out in n.output}
    for node in model.graph.node:
        if node.op_type == "MatMul" and any(i.endswith("quantizer.dq") for i in node.input):
            activation, weight = (producers[i] for i in node.input)
            assert activation.op_type == weight.op_type == "DequantizeLinear"
            assert producers[activation.input[0]].op_type == "QuantizeLinear"
            assert weight.input[0] in fp8_weights
    fp8_matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1].endswith("weight_quantizer.dq")]
    assert len(fp8_matmuls) == len(modules)
    assert fp8_export.sla_nodes == 6
    # Exported with external data (the size threshold lowered in conftest), as VGGT-1B is.
    assert fp8_export.external_data == fp8_export.path.with_name("student_fp8.onnx.data")
    assert fp8_export.file_bytes == fp8_export.path.stat().st_size + fp8_export.external_data.stat().st_size
    header = onnx.load(fp8_export.path, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in header.graph.initializer)


@pytest.mark.slow
@pytest.mark.parametrize("frames", [2, 3])
def test_fp8_onnxruntime_matches_modelopt_fake_quantization(student, fp8_student, fp8_export, frames):
    quantized, _ = fp8_student
    images = make_scene(frames, *IMAGE_SIZE, seed=20 + frames).images[None]
    fake_quant, actual = run_torch(quantized, images), run_onnx(fp8_export.path, images)
    full_precision = run_torch(student, images)
    for name in OUTPUTS:
        # Same FP8 codes (ModelOpt's convention, lite3r.quant); only float summation order differs.
        np.testing.assert_allclose(actual[name], fake_quant[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # ... and FP8 really changes the result: the camera head reads the quantized trunk directly.
    assert np.abs(full_precision["pose_enc"] - fake_quant["pose_enc"]).max() > 1e-2


@pytest.mark.slow
def test_fake_quantized_model_exports_its_own_scales(tmp_path, fp8_student, fp8_export):
    """The ModelOpt model itself (no quant_state): traced with its quantizers off, Q/DQ from its own amax."""
    quantized, _ = fp8_student
    report = export_onnx(quantized, tmp_path / "quantized.onnx", image_size=IMAGE_SIZE, example_frames=1)
    assert (report.qdq_pairs, report.sla_nodes) == (fp8_export.qdq_pairs, fp8_export.sla_nodes)
    images = make_scene(3, *IMAGE_SIZE, seed=30).images[None]
    ours, reference = run_onnx(report.path, images), run_onnx(fp8_export.path, images)
    for name in OUTPUTS:
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    assert quant_state(quantized) == fp8_student[1]  # the quantizers are back on, unchanged


# --- 16-bit exports ----------------------------------------------------------------------------------------------


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    return types | {t.name: t.data_type for t in graph.initializer}


@pytest.mark.slow
def test_bf16_graph_is_strongly_typed(student, fp8_student, bf16_fp8_export):
    """Weights, FP8 scales and SLA inputs in bf16, the core fed exactly the plugin's types (not marked for the
    plugin at head dim 16), float32 images in and outputs out; the caller's float32 student is untouched."""
    bf16, fp32 = onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT
    report = bf16_fp8_export
    assert (report.precision, report.opset) == ("bf16", 22)
    assert report.sla_core == "function body (head dim 16; the plugin takes 64 or 128)"
    assert report.qdq_pairs == len(fp8_student[1]["quantizers"])
    model = onnx.load(report.path)
    onnx.checker.check_model(model, full_check=True)
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata == {"lite3r.precision": "bf16", "lite3r.sla_core": report.sla_core}
    types = _value_types(model)
    assert [types[v.name] for v in (*model.graph.input, *model.graph.output)] == [fp32] * 6
    weights = {name for name, p in student.named_parameters()}
    stored = {t.name: t.data_type for t in model.graph.initializer}
    assert {stored[name] for name in weights & stored.keys()} == {bf16}
    assert {dtype for name, dtype in stored.items() if name.endswith("quantizer.scale")} == {bf16}
    # ModelOpt's codes: the activation is multiplied and quantized in float32 (Cast -> Mul -> Q(1)), as ModelOpt does
    assert {dtype for name, dtype in stored.items() if name.endswith("multiplier")} == {fp32}
    casts = {n.output[0] for n in model.graph.node if n.op_type == "Cast" and n.name.endswith(".input_cast")}
    assert len(casts) == sum(n.op_type == "QuantizeLinear" for n in model.graph.node) == report.qdq_pairs // 2
    sla = [n for n in model.graph.node if n.domain == "lite3r"]
    assert len(sla) == 6 and {types[i] for n in sla for i in n.input} == {bf16}
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["ConvTranspose"] == 0 and ops["DepthToSpace"] == 4  # the DPT heads' upsampling, exactly rewritten

    outer_inlined = onnx.inliner.inline_selected_functions(model, [("lite3r", "SparseLinearAttention")])
    inferred = _value_types(onnx.shape_inference.infer_shapes(outer_inlined))
    cores = [n for n in outer_inlined.graph.node if n.op_type == "SparseLinearAttentionCore"]
    assert len(cores) == 6 and not any(a.name == "plugin_namespace" for n in cores for a in n.attribute)
    plugin_types = {"bf16": bf16, "fp32": fp32, "i32": onnx.TensorProto.INT32}
    expected = [plugin_types[contract.dtypes("bf16")[name]] for name, _ in contract.INPUTS]
    assert all([inferred[i] for i in core.input] == expected for core in cores)
    assert {p.dtype for p in student.parameters()} == {torch.float32}


@pytest.mark.slow
def test_bf16_onnxruntime_passes_parity_against_the_bf16_student(tmp_path, fp8_student, bf16_fp8_export):
    """Parity reads the precision from the file, compares with a bf16 copy of the (float32) fake-quant student, and
    widens the bf16 gate by that student's own error against the float32 one (the noise rule)."""
    from lite3r.parity import check

    scenes = [make_scene(frames, *IMAGE_SIZE, seed=40 + frames).images for frames in (2, 3)]
    result = check(tmp_path, scenes, student=fp8_student[0], onnx_path=bf16_fp8_export.path)
    [export] = result.comparisons
    assert (export.candidate, export.reference, export.gate, result.precision) == ("onnx", "student", "export-bf16",
                                                                                   "bf16")  # fmt: skip
    assert result.passed, result.failures()
    for gated in export.outputs:
        assert gated.noise_floor > 0 and gated.atol_used == pytest.approx(2**-7 + 2 * gated.noise_floor)
    assert any("ort_16bit" in note for note in result.notes)
    assert {p.dtype for p in fp8_student[0].parameters()} == {torch.float32}


@pytest.mark.slow
def test_head_dim_64_bf16_export_marks_every_core_for_the_plugin(tmp_path):
    """At a head dim the plugin runs, the bf16 export marks the nested cores for it (plugin_namespace). TensorRT-RTX
    has no plugins: it still parses and builds the file, running the function bodies, and says why."""
    # Head dim 64 (embed 128, 2 heads), small otherwise; native 56 x 56 (no position-table interpolation).
    model = lite3r.load_model("vggt-tiny", embed_dim=128, num_heads=2, depth=2, dpt_layers=(0, 1, 1, 1), img_size=56,
                              dinov2_depth=1, camera_iterations=1)  # fmt: skip
    report = export_onnx(lite3r.convert_to_sla(model, layers="global"), tmp_path / "d64.onnx", image_size=(56, 56),
                         precision="bf16")  # fmt: skip
    assert (report.sla_core, report.sla_nodes) == ("plugin", 2)
    exported = onnx.load(report.path)
    [core_function] = [f for f in exported.functions if f.name == "SparseLinearAttention"]
    [core] = [n for n in core_function.node if n.op_type == "SparseLinearAttentionCore"]
    assert {a.name: a.s for a in core.attribute if a.name == "plugin_namespace"} == {"plugin_namespace": b"lite3r"}
    if importlib.util.find_spec("tensorrt_rtx_bindings") is None:
        pytest.skip("TensorRT-RTX is not installed here: the build half of this test did not run")
    from lite3r.deploy import build_engine

    build = build_engine(report.path, tmp_path / "d64.engine", target="tensorrt-rtx", frames="1:2:2")
    assert build.sla_resolution == "function" and len(build.custom_nodes) == 2
    assert "exported SLA cores for TensorRT: plugin" in build.notes


@pytest.mark.slow
def test_fp16_export_passes_parity_against_the_fp16_student(tmp_path, student, scenes):
    from lite3r.parity import check

    fp16_student = copy.deepcopy(student).half()
    report = export_onnx(fp16_student, tmp_path / "student_fp16.onnx", image_size=IMAGE_SIZE)  # precision: its own
    assert (report.precision, report.opset) == ("fp16", 21)
    result = check(tmp_path, [s.images for s in scenes], student=fp16_student, onnx_path=report.path)
    assert (result.comparisons[-1].gate, result.passed) == ("export-fp16", True), result.failures()


# --- bad inputs: one-line errors before any tracing, and no file -----------------------------------------------


def _fails(tmp_path, model, error, match, **options):
    path = tmp_path / "out" / "model.onnx"
    with pytest.raises(error, match=match) as info:
        export_onnx(model, path, **{"image_size": IMAGE_SIZE, **options})
    assert "\n" not in str(info.value)
    assert not path.exists() and not path.with_name("model.onnx.data").exists()


@pytest.mark.parametrize(
    "size, match",
    [((112, 100), r"multiples of the patch size 14; got \(112, 100\) \(nearest: 112x98\)"),
     (0, r"got 0"), ((112,), r"got \(112,\)")],
)  # fmt: skip
def test_image_size_must_be_patch_multiples(tmp_path, tiny, size, match):
    _fails(tmp_path, tiny, ExportError, match, image_size=size)


def test_bad_frames_and_opset(tmp_path, tiny):
    _fails(tmp_path, tiny, ExportError, r"example_frames must be a positive integer; got 0", example_frames=0)
    _fails(tmp_path, tiny, ExportError, r"opset must be one of \(19, 20, 21, 22\) \(FP8 Q/DQ need 19\); got 18",
           opset=18)  # fmt: skip


def test_runtime_settings_are_refused(tmp_path, student):
    """``dense_below`` and ``qk_codes`` are TorchRuntime settings; an ONNX graph runs SLA at every length, with
    16-bit scores."""
    fallback = copy.deepcopy(student)
    fallback.aggregator.global_blocks[0].attn.core.dense_below = 4096
    _fails(tmp_path, fallback, ExportError, r"the SLA layers have dense_below=4096 \(a TorchRuntime setting\)")
    scored = copy.deepcopy(student)
    scored.aggregator.global_blocks[0].attn.core.qk_codes = "int8"
    _fails(tmp_path, scored, ExportError, r"the SLA layers have qk_codes='int8' \(a TorchRuntime setting\)")


def test_unwritable_path(tmp_path, tiny):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot create output folder"):
        export_onnx(tiny, tmp_path / "file" / "model.onnx", image_size=IMAGE_SIZE)


def _state(module: str) -> dict:
    entry = {"module": module, "format": "e4m3", "num_bits": [4, 3], "axis": None, "amax": 1.0}
    return {"format": "lite3r.quant_state", "version": 1, "quantizers": [{**entry, "tensor": "input"}]}


def test_quant_state_must_match_the_model(tmp_path, student):
    _fails(tmp_path, student, QuantStateError, r"names 'aggregator\.frame_blocks\.9\.attn\.qkv', which is not an "
           r"nn\.Linear layer of this model", quant_state=_state("aggregator.frame_blocks.9.attn.qkv"))  # fmt: skip
    _fails(tmp_path, student, QuantStateError, r"inside an SLA core: SLA nodes run unquantized",
           quant_state=_state("aggregator.global_blocks.0.attn.core.proj_lin"))  # fmt: skip
    _fails(tmp_path, student, QuantStateError, r"quant state not found: .*missing\.json",
           quant_state=tmp_path / "missing.json")  # fmt: skip


def test_sla_options_must_be_one_exact_set(tmp_path, tiny):
    mixed = lite3r.convert_to_sla(tiny, layers="global", kh=0.3)
    mixed = lite3r.convert_to_sla(mixed, layers=lambda name, m: ".frame_blocks." in name, kh=0.2)
    _fails(tmp_path, mixed, SLAExportError, r"must share one option set .* this model has 2")
    _fails(tmp_path, lite3r.convert_to_sla(tiny, kh=0.1 + 1e-12), SLAExportError, r"no exact small fraction")


def test_precision_must_be_known_and_fit_the_opset(tmp_path, tiny):
    _fails(tmp_path, tiny, ExportError, r"precision must be one of fp32, bf16, fp16; got 'float16'",
           precision="float16")  # fmt: skip
    _fails(tmp_path, tiny, ExportError, r"a bf16 graph needs opset 22 or later \(bf16 convolutions\); got 21",
           precision="bf16", opset=21)  # fmt: skip
    tiny.camera_head.half()  # mixed dtypes: the exporter cannot guess which one is meant
    _fails(tmp_path, tiny, ExportError, r"parameters are \['torch.float16', 'torch.float32'\]: pass precision=")


