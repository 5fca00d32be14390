"""The five baselines and the shared flow-statistics block."""

import numpy as np
import pytest
import torch

from dmfnet.flows.schema import SCALAR_COLUMNS, SEQUENCE_COLUMNS
from dmfnet.models import available_models, create_model, get_entry
from dmfnet.models.baselines.acid import _adaptive_kmeans
from dmfnet.models.blocks import FLOW_STATISTICS_INPUTS, flow_statistics, flow_statistics_names

BASELINES = {"cnn1d", "xgboost", "acid", "appnet", "mimetic"}


def flow_columns(labels: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid dataset columns (schema dtypes and widths) whose values depend on the class."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    cols: dict[str, np.ndarray] = {}
    w = SEQUENCE_COLUMNS["lengths"][1]  # the packets a dataset records
    n_packets = 4 + 6 * labels  # class k: 4 + 6k packets of the first 30
    directions = np.zeros((n, w), dtype=np.int8)
    for i, p in enumerate(n_packets):
        directions[i, :p] = np.where(np.arange(p) % 2 == 0, 1, -1)
    valid = directions != 0
    lengths = (60 + 400 * labels[:, None] + rng.integers(0, 40, (n, w))) * valid
    cols["lengths"] = lengths.astype(np.int32)
    cols["directions"] = directions
    cols["iat"] = (rng.random((n, w)) * 0.01 * (1 + labels[:, None]) * valid).astype(np.float32)
    cols["payload_lengths"] = np.maximum(lengths - 52, 0).astype(np.int32)
    cols["tcp_windows"] = (valid * (1000 + 20000 * labels[:, None])).astype(np.int32)
    cols["tcp_flags"] = (valid * 0x18).astype(np.uint8)
    byte_level = (30 + 90 * labels[:, None] + rng.integers(0, 20, (n, 1600))).astype(np.uint8)
    cols["bytes"] = byte_level
    cols["payload_packet_bytes"] = byte_level[:, ::-1].copy()
    cols["flow_head"] = byte_level[:, :1024].copy()
    cols["payload_head"] = byte_level[:, 500:1524].copy()
    for name, (dtype, width) in SEQUENCE_COLUMNS.items():
        assert cols[name].dtype == np.dtype(dtype) and cols[name].shape == (n, width)
    for name, dtype in SCALAR_COLUMNS.items():
        if dtype == "str":
            cols[name] = np.array([f"{name}{i}" for i in range(n)])
        elif dtype == "bool":
            cols[name] = np.ones(n, dtype=bool)
        else:
            cols[name] = np.zeros(n, dtype=dtype)
    cols["protocol"][:] = 6
    cols["packets"] = n_packets.astype(np.int64)
    cols["packets_c2s"] = (valid & (directions > 0)).sum(1).astype(np.int64)
    cols["packets_s2c"] = cols["packets"] - cols["packets_c2s"]
    cols["ip_bytes"] = lengths.sum(1).astype(np.int64)
    cols["start_time"] = 1.7e9 + rng.random(n) * 100
    cols["end_time"] = cols["start_time"] + cols["iat"].sum(1)
    return cols


def torch_inputs(name: str, cols: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(cols[c])) for c in get_entry(name).inputs)


def logits_of(output) -> torch.Tensor:
    return getattr(output, "logits", output)


def loss_of(model, output, target) -> torch.Tensor:
    if hasattr(model, "loss"):
        return model.loss(output, target)
    return torch.nn.functional.cross_entropy(logits_of(output), target)


def test_all_baselines_registered_with_paper_groups():
    assert BASELINES <= set(available_models())
    assert get_entry("cnn1d").group == "non-multimodal"
    assert get_entry("xgboost").group == "non-multimodal"
    assert get_entry("xgboost").kind == "estimator"
    assert get_entry("acid").group == "non-multimodal"
    assert get_entry("appnet").group == "multimodal"
    assert get_entry("mimetic").group == "multimodal"


@pytest.mark.parametrize(
    "name", sorted(n for n in available_models() if get_entry(n).kind == "torch")
)
def test_every_torch_model_runs_forward_and_backward(name):
    """Every torch model of the registry, DMF and ablations included, on raw schema columns."""
    for column in get_entry(name).inputs:
        assert column in SEQUENCE_COLUMNS or column in SCALAR_COLUMNS
    torch.manual_seed(0)
    labels = np.array([0, 1, 2, 0, 1, 2])
    model = create_model(name, 3)
    out = model(*torch_inputs(name, flow_columns(labels)))
    assert logits_of(out).shape == (6, 3)
    loss = loss_of(model, out, torch.from_numpy(labels))
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)


# Narrower than the defaults, to keep the suite fast: the training logic is what is tested.
SMALL = {
    "cnn1d": {"hidden": 64},
    "appnet": {"conv_channels": (16, 32), "lstm_hidden": 32, "hidden": 64},
    "mimetic": {},
    "acid": {},
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_baseline_learns_a_separable_set(name):
    torch.manual_seed(0)
    labels = np.repeat(np.arange(3), 8)
    inputs = torch_inputs(name, flow_columns(labels))
    target = torch.from_numpy(labels)
    model = create_model(name, 3, **SMALL[name])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(20):
        model.train()
        loss = loss_of(model, model(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        predicted = logits_of(model(*inputs)).argmax(1)
    assert set(predicted.tolist()) == {0, 1, 2}
    assert (predicted == target).float().mean() >= 0.9


# ------------------------------------------------------------------ flow statistics


def test_flow_statistics_hand_computed():
    cols = {c: np.zeros(1, dtype=np.int64) for c in FLOW_STATISTICS_INPUTS[:10]}
    cols["packets"][:] = 3
    cols["start_time"] = np.array([100.0])
    cols["end_time"] = np.array([102.5])
    lengths = np.zeros((1, 30), dtype=np.int32)
    lengths[0, :3] = [100, 300, 200]
    directions = np.zeros((1, 30), dtype=np.int8)
    directions[0, :3] = [1, -1, 1]
    iat = np.zeros((1, 30), dtype=np.float32)
    iat[0, :3] = [0.0, 1.0, 1.5]
    cols.update(lengths=lengths, directions=directions, iat=iat)
    x = flow_statistics(*(torch.from_numpy(cols[c]) for c in FLOW_STATISTICS_INPUTS))
    f = dict(zip(flow_statistics_names(), x[0].tolist(), strict=True))
    assert x.shape == (1, len(flow_statistics_names()))
    assert f["packets"] == 3 and f["duration"] == 2.5
    assert f["first_packets_all"] == 3 and f["first_packets_c2s"] == 2
    assert f["length_mean_all"] == pytest.approx(200.0)
    assert f["length_std_all"] == pytest.approx(np.std([100, 300, 200]))
    assert (f["length_min_c2s"], f["length_max_c2s"]) == (100.0, 200.0)
    assert (f["length_min_s2c"], f["length_max_s2c"], f["iat_mean_s2c"]) == (300, 300, 1.0)
    assert f["signed_length_0"] == 100 and f["signed_length_1"] == -300
    assert f["signed_length_3"] == 0


def test_baselines_read_the_first_30_of_the_recorded_packets():
    """Datasets record 60 packets per flow; the baselines read the first 30, as their papers
    do: packets 31-60 change neither the flow statistics nor AppNet's or MIMETIC's output."""
    from dmfnet.flows.schema import M_PACKETS, RECORDED_PACKETS

    assert (M_PACKETS, RECORDED_PACKETS) == (30, 60)
    cols = flow_columns(np.array([0, 1, 2]))
    later = {c: v.copy() for c, v in cols.items()}
    for c in ("lengths", "directions", "iat", "payload_lengths", "tcp_windows"):
        later[c][:, M_PACKETS:] = 7  # packets past the 30th
    stats = [flow_statistics(*(torch.from_numpy(x[c]) for c in FLOW_STATISTICS_INPUTS))
             for x in (cols, later)]  # fmt: skip
    assert torch.equal(stats[0], stats[1]) and stats[0].shape[1] == 11 + 27 + M_PACKETS
    assert len(flow_statistics_names(RECORDED_PACKETS)) == stats[0].shape[1]
    for name in ("appnet", "mimetic"):
        torch.manual_seed(0)
        model = create_model(name, 3).eval()
        with torch.no_grad():
            a, b = (model(*(torch.from_numpy(x[c]) for c in get_entry(name).inputs))
                    for x in (cols, later))  # fmt: skip
        assert torch.equal(a, b), name


def test_flow_statistics_of_an_empty_direction_are_zero():
    labels = np.array([0])
    cols = flow_columns(labels)
    cols["directions"][cols["directions"] < 0] = 1  # everything client -> server
    x = flow_statistics(*(torch.from_numpy(cols[c]) for c in FLOW_STATISTICS_INPUTS))
    f = dict(zip(flow_statistics_names(), x[0].tolist(), strict=True))
    assert f["first_packets_s2c"] == 0
    assert f["length_min_s2c"] == 0 and f["length_max_s2c"] == 0 and f["iat_std_s2c"] == 0
    assert torch.isfinite(x).all()


# ------------------------------------------------------------------ xgboost


def test_xgboost_fits_and_predicts_every_class(tmp_path):
    labels = np.repeat(np.arange(3), 20)
    cols = flow_columns(labels)
    val_labels = np.repeat(np.arange(3), 5)
    val = flow_columns(val_labels, seed=1)
    model = create_model("xgboost", 4, n_estimators=50)  # class 3 is absent from training
    inputs = get_entry("xgboost").inputs
    model.fit({c: cols[c] for c in inputs}, labels, {c: val[c] for c in inputs}, val_labels)
    proba = model.predict_proba({c: val[c] for c in inputs})
    assert proba.shape == (15, 4)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-5)
    assert (proba.argmax(1) == val_labels).all()

    model.save(tmp_path / "estimator")
    again = create_model("xgboost", 4).load(tmp_path / "estimator")
    assert np.allclose(again.predict_proba({c: val[c] for c in inputs}), proba)


def test_xgboost_refuses_bad_input(tmp_path):
    model = create_model("xgboost", 2)
    with pytest.raises(FileNotFoundError, match="booster.json"):
        model.load(tmp_path)
    with pytest.raises(KeyError, match="lengths"):
        model.features({"packets": np.zeros(2)})
    labels = np.array([0, 1, 2])
    cols = flow_columns(labels)
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        model.fit(cols, labels)
    with pytest.raises(RuntimeError, match="before fit"):
        model.predict_proba(cols)


# ------------------------------------------------------------------ acid


def test_acid_post_fit_predicts_by_nearest_cluster():
    torch.manual_seed(0)
    labels = np.repeat(np.arange(3), 12)
    cols = flow_columns(labels)
    inputs = torch_inputs("acid", cols)
    target = torch.from_numpy(labels)
    model = create_model("acid", 4)  # class 3 never seen: no centre
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(30):
        model.train()
        loss = model.loss(model(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batches = [
        (tuple(t[:18] for t in inputs), target[:18]),
        (tuple(t[18:] for t in inputs), target[18:]),
    ]
    model.post_fit(batches)
    assert bool(model.clustered)
    owners = model.centre_class[model.centre_class >= 0]
    assert set(owners.tolist()) == {0, 1, 2}

    with torch.no_grad():
        out = model(*inputs)
        e = model.embedding(*inputs)
    used = model.centre_class >= 0
    d2 = torch.cdist(e, model.centres[used]).pow(2)
    nearest_owner = model.centre_class[used][d2.argmin(1)]
    assert torch.equal(out.logits.argmax(1), nearest_owner)
    expected = -d2[:, model.centre_class[used] == 0].amin(1)
    assert torch.allclose(out.logits[:, 0], expected, rtol=1e-3, atol=1e-4)
    assert (out.logits[:, 3] <= -1e3).all()
    assert (out.logits.argmax(1) == target).float().mean() >= 0.9

    fresh = create_model("acid", 4).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(*inputs).logits, out.logits)


def test_adaptive_kmeans_finds_two_blobs_and_one():
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    from dmfnet.models.baselines.acid import ACIDConfig

    rng = np.random.default_rng(0)
    two = np.concatenate([rng.normal(0, 0.1, (40, 2)), rng.normal(5, 0.1, (40, 2))])
    one = rng.normal(0, 1.0, (80, 2))
    config = ACIDConfig(max_clusters=4)
    centres = _adaptive_kmeans(two, config, KMeans, silhouette_score)
    assert len(centres) == 2
    assert sorted(np.round(centres[:, 0]).tolist()) == [0.0, 5.0]
    assert len(_adaptive_kmeans(one[:1], config, KMeans, silhouette_score)) == 1


# ------------------------------------------------------------------ appnet, mimetic, cnn1d


def test_appnet_length_tokens_and_first_packet_mask():
    model = create_model("appnet", 2)
    lengths = torch.tensor([[60, 1500, 1501, 65535, 0]])
    directions = torch.tensor([[1, -1, 1, -1, 0]], dtype=torch.int8)
    tokens = model.length_tokens(lengths, directions)
    m = model.max_token
    assert tokens.tolist() == [[60, 1500 + m, 1501, m + m, 0]]
    assert int(tokens.max()) < model.length_embedding.num_embeddings
    flow_head = torch.full((1, 1024), 7, dtype=torch.uint8)
    first = model.first_packet(flow_head, torch.tensor([[40, 500]]))
    assert first.shape == (1, 1014)
    assert first[0, :40].eq(7).all() and first[0, 40:].eq(0).all()


def test_mimetic_protocol_fields_use_first_twenty_packets():
    model = create_model("mimetic", 2)
    cols = flow_columns(np.array([2]))
    fields = model.protocol_fields(
        *(
            torch.from_numpy(cols[c])
            for c in ("payload_lengths", "iat", "directions", "tcp_windows")
        )
    )
    assert fields.shape == (1, 20, 4)
    assert fields[0, 0, 2] == 1 and fields[0, 1, 2] == -1
    assert fields[0, 0, 3] == pytest.approx(41000 / 65535)
    assert fields.min() >= -1 and fields.max() <= 1


def test_cnn1d_reads_only_the_first_784_bytes():
    torch.manual_seed(0)
    model = create_model("cnn1d", 2).eval()
    head = torch.randint(0, 256, (2, 1024), dtype=torch.uint8)
    changed_tail = head.clone()
    changed_tail[:, 784:] = 0
    with torch.no_grad():
        assert torch.equal(model(head), model(changed_tail))
        changed_head = head.clone()
        changed_head[:, 0] ^= 0xFF
        assert not torch.equal(model(head), model(changed_head))
