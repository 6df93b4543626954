"""SparseLinearAttention as an attention core, and convert_to_sla on a toy VGGT-shaped model and vggt-tiny."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lite3r
from lite3r.models.attention import Attention, DenseAttentionCore
from lite3r.models.vggt import VGGTConfig, vggt_family
from lite3r.sla import SparseLinearAttention, block_map, convert_to_sla
from lite3r.sla.reference import critical_attention

DIM, HEADS, FRAMES, TOKENS = 64, 2, 3, 70


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = Attention(DIM, HEADS, qk_norm=True)

    def forward(self, x):
        return x + self.attn(x)


def _blocks(n):
    return nn.ModuleList(Block() for _ in range(n))


class ToyAggregator(nn.Module):
    """VGGT's layout: patch-embed blocks, then frame attention (per frame) and global attention (all frames)."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.blocks = _blocks(1)
        self.frame_blocks, self.global_blocks = _blocks(2), _blocks(2)

    def forward(self, x):  # [B, S, P, C]
        b, s, p, c = x.shape
        x = x.reshape(b * s, p, c)
        for block in self.patch_embed.blocks:
            x = block(x)
        for frame, global_ in zip(self.frame_blocks, self.global_blocks):
            x = global_(frame(x).reshape(b, s * p, c)).reshape(b * s, p, c)
        return x.reshape(b, s, p, c)


class Toy(nn.Module):
    family = vggt_family(VGGTConfig())  # VGGT's module names, so VGGT's layer sets

    def __init__(self):
        super().__init__()
        self.aggregator = ToyAggregator()
        self.camera_head = nn.Module()
        self.camera_head.trunk = _blocks(1)

    def forward(self, x):
        x = self.aggregator(x)
        return self.camera_head.trunk[0](x.flatten(1, 2))


class BlockSparseCore(nn.Module):
    """What an untrained SLA core must compute: softmax attention over the critical blocks only."""

    def forward(self, q, k, v, frames=None):
        return critical_attention(q, k, v, block_map(q, k, 0.05, 0.10, 64, 64).critical, 64, 64)


def _cores(model):
    return {name: type(m.core) for name, m in model.named_modules() if isinstance(m, Attention)}


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    return Toy().eval()


def _images():
    return torch.randn(2, FRAMES, TOKENS, DIM)


def test_core_contract_and_zero_initialised_proj_lin():
    core = SparseLinearAttention(32, kh=0.2)
    q, k, v = (torch.randn(2, 2, 150, 32, dtype=torch.bfloat16) for _ in range(3))
    out = core(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert not core.proj_lin.weight.any() and not core.proj_lin.bias.any()
    assert "kh=0.2" in repr(core)


def test_global_converts_only_global_blocks(teacher):
    student = convert_to_sla(teacher)
    converted = {n for n, t in _cores(student).items() if t is SparseLinearAttention}
    assert converted == {"aggregator.global_blocks.0.attn", "aggregator.global_blocks.1.attn"}


def test_all_adds_frame_blocks_never_patch_embed_or_camera_trunk(teacher):
    cores = _cores(convert_to_sla(teacher, layers="all"))
    assert {n for n, t in cores.items() if t is DenseAttentionCore} == {
        "aggregator.patch_embed.blocks.0.attn",
        "camera_head.trunk.0.attn",
    }


def test_callable_selects_layers(teacher):
    student = convert_to_sla(teacher, layers=lambda name, module: name.endswith("frame_blocks.1.attn"))
    assert [n for n, t in _cores(student).items() if t is SparseLinearAttention] == ["aggregator.frame_blocks.1.attn"]


def test_only_proj_lin_is_trainable(teacher):
    student = convert_to_sla(teacher, layers="all")
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    expected = {f"aggregator.{kind}_blocks.{i}.attn.core.proj_lin.{p}"
                for kind in ("frame", "global") for i in range(2) for p in ("weight", "bias")}
    assert trainable == expected


def test_teacher_untouched_and_sharing_no_storage(teacher):
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = convert_to_sla(teacher, layers="all")
    after = teacher.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in teacher.parameters())
    assert set(_cores(teacher).values()) == {DenseAttentionCore}
    teacher_storage = {t.untyped_storage().data_ptr() for t in [*teacher.parameters(), *teacher.buffers()]}
    student_storage = {t.untyped_storage().data_ptr() for t in [*student.parameters(), *student.buffers()]}
    assert not teacher_storage & student_storage


def test_untrained_student_is_block_sparse_attention(teacher):
    student = convert_to_sla(teacher, dense_tokens=0)
    expected = copy.deepcopy(teacher)
    for block in expected.aggregator.global_blocks:
        block.attn.core = BlockSparseCore()
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(student(images), expected(images))
        assert not torch.allclose(student(images), teacher(images), atol=1e-3)


def test_dense_tokens_attend_exactly_and_leave_every_other_row_to_sla():
    """The first ``dense_tokens`` of every frame (VGGT's camera + registers) get exact attention over all frames'
    keys; the other rows are the plain SLA core's, bit for bit; without ``frames`` the sequence is one frame."""
    torch.manual_seed(0)
    plain, core = SparseLinearAttention(32, kh=0.2), SparseLinearAttention(32, kh=0.2, dense_tokens=3)
    torch.nn.init.normal_(plain.proj_lin.weight, std=0.1)
    core.load_state_dict(plain.state_dict())
    q, k, v = (torch.randn(2, 2, 4 * 50, 32) for _ in range(3))  # 4 frames of 50 tokens
    exact, sla = torch.nn.functional.scaled_dot_product_attention(q, k, v), plain(q, k, v)
    for frames in (4, None):
        dense = torch.arange(200) % (50 if frames else 200) < 3
        out = core(q, k, v, frames=frames)
        torch.testing.assert_close(out[:, :, dense], exact[:, :, dense])
        assert torch.equal(out[:, :, ~dense], sla[:, :, ~dense])
        assert not torch.allclose(sla[:, :, dense], exact[:, :, dense], atol=1e-3)  # the rows did change
    assert "dense_tokens=3" in repr(core)
    with pytest.raises(ValueError, match="dense_tokens must be an integer >= 0"):
        SparseLinearAttention(32, dense_tokens=-1)


def test_dense_below_gives_exact_attention_to_short_sequences_only():
    torch.manual_seed(0)
    core = SparseLinearAttention(32, kh=0.2, dense_tokens=3)
    torch.nn.init.normal_(core.proj_lin.weight, std=0.1)
    q, k, v = (torch.randn(1, 2, 200, 32) for _ in range(3))
    sla = core(q, k, v, frames=4)
    core.dense_below = 201
    assert torch.equal(core(q, k, v, frames=4), torch.nn.functional.scaled_dot_product_attention(q, k, v))
    core.dense_below = 200  # not shorter: SLA
    assert torch.equal(core(q, k, v, frames=4), sla) and "dense_below=200" in repr(core)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="dense_below must be a token count >= 0"):
            SparseLinearAttention(32, dense_below=bad)


def test_dense_tokens_default_to_the_family_summary_tokens():
    torch.manual_seed(0)
    vggt = lite3r.load_model("vggt-tiny")
    assert {m.core.dense_tokens for m in convert_to_sla(vggt).modules() if isinstance(m, Attention)
            and isinstance(m.core, SparseLinearAttention)} == {vggt.aggregator.patch_start_idx}  # fmt: skip
    assert all(m.dense_tokens == 0 for m in convert_to_sla(vggt, dense_tokens=0).modules()
               if isinstance(m, SparseLinearAttention))  # fmt: skip
    da3 = convert_to_sla(lite3r.load_model("da3-tiny"))
    assert all(m.dense_tokens == 0 for m in da3.modules() if isinstance(m, SparseLinearAttention))


def test_every_proj_lin_gets_a_gradient(teacher):
    """Distillation trains proj_lin everywhere: earlier layers' gradients flow through later SLA layers."""
    student = convert_to_sla(teacher, layers="all", kh=0.2, kl=0.1)
    student(_images()).square().mean().backward()
    grads = [m.core.proj_lin.weight.grad for m in student.modules() if isinstance(m, Attention)
             and isinstance(m.core, SparseLinearAttention)]
    assert len(grads) == 4 and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "layers, options, message",
    [
        ("global_only", {}, "layers must be one of"),
        (lambda name, module: False, {}, "matched no Attention layer"),
        ("global", {"kh": 2.0}, "kh and kl"),
        ("global", {"backend": "gpu"}, "backend must be one of"),
    ],
)
def test_bad_arguments_raise_one_clear_error(teacher, layers, options, message):
    with pytest.raises(ValueError, match=message):
        convert_to_sla(teacher, layers, **options)


def test_converting_a_student_again_is_refused(teacher):
    with pytest.raises(ValueError, match="already uses SparseLinearAttention"):
        convert_to_sla(convert_to_sla(teacher))


def test_vggt_tiny_converts_and_runs():
    if "vggt-tiny" not in lite3r.list_models():
        pytest.skip("vggt-tiny is not registered")
    torch.manual_seed(0)
    teacher = lite3r.load_model("vggt-tiny").eval()
    student = lite3r.convert_to_sla(teacher, layers="all")
    converted = [n for n, t in _cores(student).items() if t is SparseLinearAttention]
    assert len(converted) == len(teacher.aggregator.global_blocks) + len(teacher.aggregator.frame_blocks)
    assert all(".global_blocks." in n or ".frame_blocks." in n for n in converted)
    images = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        got, want = student(images), teacher(images)
    assert got.keys() == want.keys()
    assert all(got[key].shape == want[key].shape and torch.isfinite(got[key]).all() for key in got)


def test_autocast_runs_q_k_v_in_the_autocast_dtype_like_sdpa():
    """q/k-norm leaves q, k in float32 under autocast while v is bf16: SLA must accept that, as SDPA does."""
    from lite3r.sla.op import sparse_linear_attention

    q, k = torch.randn(2, 1, 2, 130, 64).unbind(0)
    v = torch.randn(1, 2, 130, 64).bfloat16()
    weight, bias = torch.randn(64, 64) * 0.1, torch.randn(64) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_linear_attention(q, k, v, weight, bias)
    expected = sparse_linear_attention(q.bfloat16(), k.bfloat16(), v, weight.bfloat16(), bias.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)


def test_autocast_does_not_reach_inside_the_op():
    """Inside the op, block scores and accumulations keep their own precision: same result with autocast on."""
    from lite3r.sla.op import sparse_linear_attention

    q, k, v = torch.randn(3, 1, 2, 200, 64).bfloat16().unbind(0)
    weight, bias = torch.randn(64, 64) * 0.1, torch.randn(64) * 0.1
    expected = sparse_linear_attention(q, k, v, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = sparse_linear_attention(q, k, v, weight, bias)
    torch.testing.assert_close(got, expected, atol=0, rtol=0)


def test_da3_layer_sets_follow_its_alternation():
    teacher = lite3r.load_model("da3-tiny")  # alternation from block 2: per-view 2, 4; cross-view 3, 5
    blocks = "backbone.pretrained.blocks.{}.attn"
    assert set(_sla(convert_to_sla(teacher))) == {blocks.format(i) for i in (3, 5)}
    assert set(_sla(convert_to_sla(teacher, layers="all"))) == {blocks.format(i) for i in (2, 3, 4, 5)}
    with torch.device("meta"):
        large = lite3r.models.DepthAnything3()
    selected = [n for n, m in large.named_modules() if large.family.sla_filter("global")(n, m)]
    assert selected == [blocks.format(i) for i in range(9, 24, 2)]


def _sla(model):
    return [name for name, core in _cores(model).items() if core is SparseLinearAttention]

