"""DMF and its ablations: shapes, deep fusion, loss (eq. 8-11)."""

import pytest
import torch

from dmfnet.models import create_model, get_entry
from dmfnet.models.dmf import DMF, PAPER_CONFIG, DMFConfig, DMFOutput, contrastive_fusion_loss

DMF_NAMES = ["dmf", "dmf-no-lengths", "dmf-no-bytes", "dmf-late"]


def raw_inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (batch, 1600), dtype=torch.uint8, generator=g)
    lengths = torch.randint(40, 1500, (batch, 30), dtype=torch.int32, generator=g)
    return {
        "bytes": raw,
        "payload_packet_bytes": raw.flip(1),
        "lengths": lengths,
        "directions": (torch.randint(0, 2, (batch, 30), generator=g) * 2 - 1).to(torch.int8),
        "payload_lengths": (lengths - 52).clamp(min=0),
    }


def call(name: str, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> DMFOutput:
    return model(*(inputs[c] for c in get_entry(name).inputs))


@pytest.mark.parametrize("name", DMF_NAMES)
def test_output_shapes(name):
    torch.manual_seed(0)
    model = create_model(name, 5)
    out = call(name, model, raw_inputs(4))
    assert out.logits.shape == (4, 5)
    has_bytes = "payload_packet_bytes" in get_entry(name).inputs
    has_lengths = "lengths" in get_entry(name).inputs
    assert (out.byte_rep is not None) == has_bytes
    assert (out.length_rep is not None) == has_lengths
    if has_bytes and has_lengths:
        assert out.byte_logits.shape == (4, 5)
        assert out.length_logits.shape == (4, 5)
        assert out.byte_rep.shape == (4, 64) and out.length_rep.shape == (4, 64)
    else:
        assert out.byte_logits is None and out.length_logits is None


def test_registry_groups_and_inputs():
    assert get_entry("dmf").group == "multimodal"
    for name in DMF_NAMES[1:]:
        assert get_entry(name).group == "ablation"
    # dmfnet's DMF: the first payload packets' bytes, the lengths of the packets that carry
    # payload signed by direction; the ablations follow it, so that Tables 4-5 compare like
    # with like.
    lengths = ("lengths", "directions", "payload_lengths")
    both = ("payload_packet_bytes", *lengths)
    assert get_entry("dmf").inputs == both
    assert get_entry("dmf-no-lengths").inputs == ("payload_packet_bytes",)
    assert get_entry("dmf-no-bytes").inputs == lengths
    assert get_entry("dmf-late").inputs == both
    assert get_entry("dmf-paper").inputs == ("bytes", "lengths")


def test_late_fusion_has_no_fusion_blocks_and_dmf_one_per_stage():
    assert len(create_model("dmf", 3).fusions) == 3
    assert len(create_model("dmf-late", 3).fusions) == 0


@pytest.mark.parametrize("name, fused", [("dmf", True), ("dmf-late", False)])
def test_byte_head_sees_lengths_only_with_deep_fusion(name, fused):
    torch.manual_seed(0)
    model = create_model(name, 4).eval()
    a = raw_inputs(8, seed=1)
    b = dict(a, lengths=raw_inputs(8, seed=2)["lengths"])  # same bytes, other lengths
    with torch.no_grad():
        out_a, out_b = call(name, model, a), call(name, model, b)
    changed = not torch.allclose(out_a.byte_logits, out_b.byte_logits, atol=1e-6)
    assert changed == fused
    # The length head always depends on the lengths.
    assert not torch.allclose(out_a.length_logits, out_b.length_logits)


def separable_batch(n_per_class: int = 8, classes: int = 3):
    """Each class has its own byte value and packet-length level: trivially separable."""
    g = torch.Generator().manual_seed(0)
    target = torch.arange(classes).repeat_interleave(n_per_class)
    base_bytes = torch.tensor([20, 120, 230])[target]
    bytes_ = (base_bytes[:, None] + torch.randint(0, 10, (len(target), 1600), generator=g)).to(
        torch.uint8
    )
    base_len = torch.tensor([60, 600, 1400])[target]
    lengths = (base_len[:, None] + torch.randint(0, 20, (len(target), 30), generator=g)).int()
    return bytes_, lengths, target


def separable_inputs(n_per_class: int = 8) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """:func:`separable_batch` as every column DMF and its variants may read."""
    bytes_, lengths, target = separable_batch(n_per_class)
    directions = torch.ones_like(lengths, dtype=torch.int8)
    directions[:, 1::2] = -1
    inputs = {"bytes": bytes_, "payload_packet_bytes": bytes_, "lengths": lengths,
              "directions": directions, "payload_lengths": (lengths - 40).clamp(min=0)}  # fmt: skip
    return inputs, target


@pytest.mark.parametrize("name", DMF_NAMES)
def test_loss_is_finite_and_decreases_on_separable_batch(name):
    torch.manual_seed(0)
    model = create_model(name, 3)
    inputs, target = separable_inputs()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.loss(call(name, model, inputs), target)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_dmf_loss_sums_all_four_terms():
    torch.manual_seed(0)
    model = create_model("dmf", 3, alpha=0.0, beta=0.0, gamma=0.0).eval()
    inputs, target = separable_inputs(2)
    out = call("dmf", model, inputs)
    ce = torch.nn.functional.cross_entropy(out.logits, target)
    assert torch.allclose(model.loss(out, target), ce)
    model.config.alpha = 1.0
    ce_b = torch.nn.functional.cross_entropy(out.byte_logits, target)
    assert torch.allclose(model.loss(out, target), ce + ce_b)


def test_contrastive_zero_when_positives_coincide_and_negatives_beyond_margin():
    e = torch.eye(3)
    target = torch.tensor([0, 1, 2])
    # D^2 = 0 for (i, i), D^2 = 2 > m = 1 for every other pair.
    assert contrastive_fusion_loss(e, e.clone(), target, margin=1.0).item() == 0.0


def test_contrastive_hand_computed():
    z_bytes = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    z_lengths = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    target = torch.tensor([0, 1, 0])
    # D^2 matrix (bytes i, lengths j): [[2,2,0],[0,0,2],[2,2,0]].
    # Positives (i,i): 2, 0, 0 -> mean 2/3.
    # Negatives (classes differ): (0,1)=2, (1,0)=0, (1,2)=2, (2,1)=2; m=3 -> 1,3,1,1 -> mean 1.5.
    # Same-class pairs (0,2), (2,0) are ignored.
    loss = contrastive_fusion_loss(z_bytes, z_lengths, target, margin=3.0)
    assert loss.item() == pytest.approx(0.5 * (2 / 3 + 1.5))


def test_contrastive_without_negatives_is_positive_term_only():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = contrastive_fusion_loss(z, torch.flip(z, [0]), torch.tensor([1, 1]), margin=1.0)
    assert loss.item() == pytest.approx(0.5 * 2.0)


def test_scaling_of_raw_inputs():
    model = DMF(DMFConfig(num_classes=2, **PAPER_CONFIG))
    assert model.scale("bytes", torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]
    signed = torch.tensor([-1500, 0, 375, 65535], dtype=torch.int32)
    expected = [1.0, 0.0, 0.5, (65535 / 1500) ** 0.5]
    assert model.scale("lengths", signed).tolist() == pytest.approx(expected)
    log = DMF(DMFConfig(num_classes=2, length_scaling="log", length_direction="none"))
    signed = torch.tensor([-65535, 0, 65535, 255], dtype=torch.int32)
    assert log.scale("lengths", signed).tolist() == pytest.approx([1.0, 0.0, 1.0, 0.5], abs=1e-3)
    linear = DMF(DMFConfig(num_classes=2, length_scaling="linear", length_direction="none"))
    assert linear.scale("lengths", signed).tolist() == pytest.approx([1.0, 0.0, 1.0, 255 / 65535])


def test_default_length_scaling_keeps_neighbouring_lengths_apart():
    # Lengths a classifier must tell apart (583 vs 590 bytes) must not collapse to one
    # input value: the first layer could not separate them.
    lengths = torch.tensor([583, 590], dtype=torch.int32)
    gaps = {
        name: float(
            DMF(DMFConfig(length_scaling=name, length_direction="none"))
            .scale("lengths", lengths)
            .diff()
        )
        for name in ("sqrt", "log", "linear")
    }
    assert gaps["sqrt"] > 0.003
    assert gaps["sqrt"] > 3 * gaps["log"] > 30 * gaps["linear"]


def test_bad_configuration_and_inputs_are_refused():
    with pytest.raises(ValueError, match="modalities must be one or both of"):
        DMF(DMFConfig(modalities=("payload",)))
    with pytest.raises(ValueError, match="length_scaling"):
        DMF(DMFConfig(length_scaling="cubic"))
    model = create_model("dmf", 2)
    with pytest.raises(ValueError, match="expects 4 inputs"):
        model(raw_inputs(2)["bytes"])


def test_config_from_json_lists():
    model = create_model("dmf", 2, channels=[8, 16, 32])
    assert model.config.channels == (8, 16, 32)
    assert call("dmf", model, raw_inputs(2)).byte_rep.shape == (2, 32)


def test_state_dict_round_trip_gives_same_logits():
    torch.manual_seed(0)
    model = create_model("dmf", 3).eval()
    clone = create_model("dmf", 3).eval()
    clone.load_state_dict(model.state_dict())
    x = raw_inputs(3)
    with torch.no_grad():
        assert torch.equal(call("dmf", model, x).logits, call("dmf", clone, x).logits)


def test_transformer_layer_matches_the_reference_post_norm_layer():
    """Eq. 1-6 as written equal PyTorch's post-norm encoder layer with the same weights."""
    from dmfnet.models.dmf import TransformerLayer

    torch.manual_seed(0)
    ours = TransformerLayer(32, 4, 4, dropout=0.0).eval()
    ref = torch.nn.TransformerEncoderLayer(
        32, 4, 128, dropout=0.0, activation="gelu", batch_first=True, norm_first=False
    ).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.qkv.weight)
        ref.self_attn.in_proj_bias.copy_(ours.qkv.bias)
        ref.self_attn.out_proj.weight.copy_(ours.w_out.weight)
        ref.self_attn.out_proj.bias.copy_(ours.w_out.bias)
        ref.linear1.load_state_dict(ours.ffn[0].state_dict())
        ref.linear2.load_state_dict(ours.ffn[2].state_dict())
        ref.norm1.load_state_dict(ours.norm_attention.state_dict())
        ref.norm2.load_state_dict(ours.norm_ffn.state_dict())
        x = torch.randn(3, 16, 32)
        assert torch.allclose(ours(x), ref(x), atol=1e-5)
    with pytest.raises(ValueError, match="divisible"):
        TransformerLayer(30, 4, 4, 0.0)


@pytest.mark.parametrize("length", [86, 43, 22, 8, 5])
def test_pooling_and_upsampling_matrices_equal_torch_ops(length):
    from dmfnet.models.dmf import average_pooling, linear_upsampling

    F = torch.nn.functional
    x = torch.randn(4, 3, length)
    assert torch.allclose(x @ average_pooling(length, 8, x), F.adaptive_avg_pool1d(x, 8), atol=1e-6)
    t = torch.randn(4, 3, 8)
    expected = F.interpolate(t, size=length, mode="linear", align_corners=False)
    assert torch.allclose(t @ linear_upsampling(8, length, t), expected, atol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        {"fusion_dim": 48},  # channels projected to a common d_model and back
        {"fusion_layers": 2, "fusion_heads": 4},
        {"fusion_tokens": 4, "channels": (8, 16, 32)},
        {"length_scaling": "linear", "fusion_dropout": 0.1},
    ],
)
def test_configuration_variants_build_and_train(config):
    torch.manual_seed(0)
    model = create_model("dmf", 3, **config)
    inputs, target = separable_inputs(2)
    out = call("dmf", model, inputs)
    assert out.logits.shape == (6, 3)
    model.loss(out, target).backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------- input representations


def test_learned_values_start_at_the_fixed_scalings_and_are_trained():
    model = create_model("dmf", 3)  # learned byte and length values by default
    assert model.scale("bytes", torch.tensor([0, 51, 255], dtype=torch.uint8)).tolist() == (
        pytest.approx([0.0, 0.2, 1.0])
    )
    lengths = torch.tensor([[375, 1500, 1501, 65535, 0]], dtype=torch.int32)
    directions = torch.tensor([[1, -1, 1, 1, 0]], dtype=torch.int8)
    got = model.scale("lengths", lengths, directions)[0].tolist()
    # 1501 shares the value of 1501..1756 (initialised at 1756), 65535 that of 65501..65756.
    assert got == pytest.approx([0.5, -1.0, (1756 / 1500) ** 0.5, (65756 / 1500) ** 0.5, 0.0],
                                rel=1e-3)  # fmt: skip
    inputs, target = separable_inputs(2)
    model.loss(call("dmf", model, inputs), target).backward()
    assert model.byte_values.grad.abs().sum() > 0 and model.length_values.grad.abs().sum() > 0
    paper = create_model("dmf-paper", 2)
    assert not hasattr(paper, "byte_values") and not hasattr(paper, "length_values")


def test_signed_lengths_reach_the_model_with_their_sign():
    lengths = torch.tensor([[100, 1500, 0]], dtype=torch.int32)
    directions = torch.tensor([[1, -1, 0]], dtype=torch.int8)
    signed = DMF(DMFConfig(num_classes=2, length_direction="sign"))
    scaled = signed.scale("lengths", lengths, directions)
    assert scaled[0].tolist() == pytest.approx([(100 / 1500) ** 0.5, -1.0, 0.0])
    # The paper's reading drops the direction: both directions scale alike.
    plain = DMF(DMFConfig(num_classes=2, length_direction="none"))
    assert plain.scale("lengths", lengths, directions)[0].tolist() == pytest.approx(
        [(100 / 1500) ** 0.5, 1.0, 0.0]
    )
    # A second channel: lengths then directions, 60 values into the length MLP.
    channel = DMF(DMFConfig(num_classes=2, length_direction="channel"))
    assert channel.scale("lengths", lengths, directions)[0, 3:].tolist() == [1.0, -1.0, 0.0]
    assert channel.mlps["lengths"].net[0].in_features == 60


def test_direction_changes_the_prediction_only_when_the_model_reads_it():
    g = torch.Generator().manual_seed(1)
    b = torch.randint(0, 256, (3, 1600), dtype=torch.uint8, generator=g)
    lengths = torch.randint(40, 1500, (3, 30), dtype=torch.int32, generator=g)
    forward = torch.ones(3, 30, dtype=torch.int8)
    flipped = -forward
    for direction, differs in (("sign", True), ("channel", True)):
        torch.manual_seed(0)
        model = DMF(DMFConfig(num_classes=3, length_direction=direction, byte_column="bytes",
                              length_packets="all"))  # fmt: skip
        model.eval()
        assert model.inputs == ("bytes", "lengths", "directions")
        a = model(b, lengths, forward).logits
        c = model(b, lengths, flipped).logits
        assert (not torch.allclose(a, c)) == differs
    torch.manual_seed(0)
    paper = DMF(DMFConfig(num_classes=3, **PAPER_CONFIG)).eval()
    assert paper.inputs == ("bytes", "lengths")


def test_byte_column_names_the_dataset_column_the_byte_branch_reads():
    cfg = DMFConfig(num_classes=2, byte_column="payload_packet_bytes", length_direction="sign")
    assert DMF(cfg).inputs == ("payload_packet_bytes", "lengths", "directions", "payload_lengths")
    only_bytes = DMFConfig(num_classes=2, modalities=("bytes",), byte_column="payload_packet_bytes")
    assert DMF(only_bytes).inputs == ("payload_packet_bytes",)
    with pytest.raises(ValueError, match="byte_column"):
        DMF(DMFConfig(num_classes=2, byte_column="flow_head"))
    with pytest.raises(ValueError, match="length_direction"):
        DMF(DMFConfig(num_classes=2, length_direction="both"))


def test_registry_inputs_follow_the_configuration():
    from dmfnet.models import model_inputs

    assert model_inputs("dmf-paper", {"length_direction": "sign"}) == (
        "bytes", "lengths", "directions",
    )  # fmt: skip
    assert model_inputs("dmf-no-bytes", {"length_direction": "none"}) == (
        "lengths", "payload_lengths",
    )  # fmt: skip
    assert model_inputs("dmf-no-lengths", {"byte_column": "payload_packet_bytes"}) == (
        "payload_packet_bytes",
    )
    # A model built with overrides reads what model_inputs says.
    model = create_model("dmf-late", 3, length_direction="channel")
    assert model.inputs == model_inputs("dmf-late", {"length_direction": "channel"})


def test_dmf_paper_is_the_papers_configuration():
    entry = get_entry("dmf-paper")
    assert entry.group == "multimodal"
    assert entry.inputs == ("bytes", "lengths")  # first 5 packets' bytes, plain lengths
    c = create_model("dmf-paper", 4).config
    assert (c.byte_column, c.length_direction, c.length_packets) == ("bytes", "none", "all")
    assert (c.label_smoothing, c.byte_mask) == (0.0, 0.0)
    assert (c.bytes_len, c.bytes_hidden, c.embed_len) == (1600, 512, 256)  # 1600 -> 512 -> 256
    assert (c.lengths_len, c.lengths_hidden) == (30, 128)  # 30 -> 128 -> 256
    assert (c.kernels, c.strides) == ((9, 7, 5), (3, 2, 2))
    assert c.deep_fusion and (c.alpha, c.beta, c.gamma) == (1.0, 1.0, 1.0)


def test_label_smoothing_and_byte_masking_act_in_training_only():
    torch.manual_seed(0)
    cfg = DMFConfig(**{**PAPER_CONFIG, "num_classes": 3, "label_smoothing": 0.2,
                       "byte_mask": 0.5, "gamma": 0.0})  # fmt: skip
    model = DMF(cfg)
    x = raw_inputs(6)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    model.eval()
    out = model(x["bytes"], x["lengths"])
    eval_loss = model.loss(out, target)
    plain = torch.nn.functional.cross_entropy
    expected = (
        plain(out.logits, target) + plain(out.byte_logits, target) + plain(out.length_logits, target)
    )
    assert torch.isclose(eval_loss, expected)  # no smoothing when scoring
    assert torch.equal(model(x["bytes"], x["lengths"]).logits, out.logits)  # no masking
    model.train()
    smoothed = model.loss(out, target)
    assert not torch.isclose(smoothed, expected)
    with pytest.raises(ValueError, match="byte_mask"):
        DMF(DMFConfig(num_classes=3, byte_mask=1.0))


def test_dmf_masks_a_tenth_of_the_bytes_by_default_and_the_paper_configuration_none():
    # The model study's choice (round 3): DMF and the ablations that read bytes mask 10 % of
    # byte positions in training; dmf-paper keeps the paper's training (no masking).
    for name in ("dmf", "dmf-late", "dmf-no-lengths"):
        assert create_model(name, 3).config.byte_mask == 0.1
    assert create_model("dmf-paper", 3).config.byte_mask == 0.0
    # In training the masked positions differ from call to call: with dropout and BatchNorm
    # held fixed, the same flows give other logits, and without masking the same ones.
    column = torch.randint(0, 256, (4, 1600), dtype=torch.uint8)
    for mask, differ in ((0.1, True), (0.0, False)):
        torch.manual_seed(0)
        model = create_model("dmf-no-lengths", 3, byte_mask=mask).train()
        for m in model.modules():
            if isinstance(m, (torch.nn.Dropout, torch.nn.BatchNorm1d)):
                m.eval()
        with torch.no_grad():
            first, second = model(column).logits, model(column).logits
        assert torch.equal(first, second) is not differ
