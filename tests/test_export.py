"""dmfnet export and classify --engine: the ONNX model scores flows as the torch model does."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime (dmfnet[onnx]) is not installed")
onnx = pytest.importorskip("onnx", reason="onnx (dmfnet[onnx]) is not installed")

from dmfnet import export  # noqa: E402
from dmfnet.classify import classify_captures, run_flow_config  # noqa: E402
from dmfnet.cli import main  # noqa: E402
from dmfnet.export import (  # noqa: E402
    ONNX_FILE,
    ExportError,
    OnnxModel,
    example_flows,
    export_onnx,
    read_metadata,
    scoring_engine,
)
from dmfnet.models import available_models, create_model, get_entry  # noqa: E402
from dmfnet.training.runs import TrainedModel, load_run  # noqa: E402
from training_data import synthetic_flows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEMO_CAPTURES = REPO / "demo" / "captures"
# Real captures of ../shared scored in the comparison with torch when they are there.
SHARED_CAPTURES = (
    "data/ndpi/pcaps/telegram.pcap",
    "data/ndpi/pcaps/whatsapp.pcap",
    "data/ndpi/pcaps/quic.pcap",
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run folder: DMF trained for one epoch on a tiny synthetic dataset."""
    from dmfnet.training.trainer import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("export") / "run"
        train(synthetic_flows(n_per_class=20), out, epochs=1, batch_size=32, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``dmfnet export RUN -o FILE`` of the run."""
    out = tmp_path_factory.mktemp("onnx") / "dmf.onnx"
    assert main(["export", str(run_dir), "-o", str(out)]) == 0
    return out


def _real_flows(trained: TrainedModel, captures: list[Path]) -> dict[str, np.ndarray]:
    """The model's input columns of every kept flow of ``captures``, as classify makes them."""
    import dataclasses

    from dmfnet.capture import read_packets
    from dmfnet.data.dataset import flows_to_dataset
    from dmfnet.flows import assemble_flows
    from dmfnet.problems import ProblemLog

    config = dataclasses.replace(run_flow_config(trained.info), payload_packet_bytes=True)
    parts = []
    for path in captures:
        for chunk in assemble_flows(read_packets(path, ProblemLog()), config, capture=str(path)):
            flows = flows_to_dataset(chunk, columns=list(trained.inputs), kept_only=True)
            parts.append(flows.columns)
    return {c: np.concatenate([p[c] for p in parts]) for c in trained.inputs}


def test_metadata_holds_class_names_and_inputs_are_the_raw_dataset_columns(
    run_dir: Path, exported: Path
) -> None:
    trained = load_run(run_dir)
    meta = read_metadata(exported)
    assert meta["classes"] == trained.classes == ["chat", "download", "ssh"]
    assert meta["inputs"] == list(trained.inputs)
    assert meta["model"] == "dmf"
    assert meta["rejection"] == trained.info["rejection"]  # the threshold training calibrated
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto)
    types = {i.name: i.type.tensor_type for i in proto.graph.input}
    assert list(types) == list(trained.inputs)
    expected = {"payload_packet_bytes": "UINT8", "lengths": "INT32", "directions": "INT8",
                "payload_lengths": "INT32"}  # fmt: skip
    for name, tensor in types.items():
        assert onnx.TensorProto.DataType.Name(tensor.elem_type) == expected[name]
        batch, width = tensor.shape.dim
        assert batch.dim_param and not batch.HasField("dim_value")  # dynamic batch
        assert width.dim_value == (1600 if name == "payload_packet_bytes" else 60)
    assert [o.name for o in proto.graph.output] == ["probabilities"]


@pytest.mark.parametrize("batch", [1, 2, 57])
def test_onnxruntime_matches_torch_at_any_batch_size(
    run_dir: Path, exported: Path, batch: int
) -> None:
    trained = load_run(run_dir)
    engine = OnnxModel(exported, threads=1)
    flows = synthetic_flows(n_per_class=20, seed=5).columns
    arrays = {c: flows[c][:batch] for c in trained.inputs}
    got = engine.predict_proba(arrays)
    want = trained.predict_proba(arrays)
    assert got.shape == (batch, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("source", ["demo", "shared"])
def test_onnxruntime_matches_torch_on_real_flows(
    run_dir: Path, exported: Path, source: str
) -> None:
    """Flows of the bundled real captures, and of ../shared's when present, in batches of 64."""
    trained = load_run(run_dir)
    if source == "demo":
        captures = sorted(DEMO_CAPTURES.glob("*/*-1.pcap"))
    else:
        captures = [SHARED / p for p in SHARED_CAPTURES if (SHARED / p).is_file()]
        if not captures:
            pytest.skip("../shared captures are not available")
    flows = _real_flows(trained, captures)
    assert len(flows["lengths"]) >= 10
    assert flows["payload_packet_bytes"].any() and (flows["directions"] < 0).any()
    got = OnnxModel(exported, threads=1).predict_proba(flows, batch_size=64)
    want = trained.predict_proba(flows, batch_size=64)
    assert np.abs(got - want).max() <= 1e-4
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def test_rejection_threshold_of_the_run_goes_into_the_metadata(
    run_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    info = json.loads((run / "run.json").read_text())
    info["rejection"] = {"score": "max_softmax", "threshold": 0.61, "accepted_known": 0.95}
    (run / "run.json").write_text(json.dumps(info))
    assert main(["export", str(run)]) == 0  # default: RUN/model.onnx
    meta = read_metadata(run / ONNX_FILE)
    assert meta["rejection"] == info["rejection"]
    assert meta["classes"] == info["classes"]


def test_classify_with_the_onnx_engine_writes_the_torch_classes(
    run_dir: Path, tmp_path: Path
) -> None:
    captures = sorted(DEMO_CAPTURES.glob("*/*-2.pcap"))
    rows = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / f"{engine}.csv"
        code = main(["classify", str(run_dir), *map(str, captures), "-o", str(out),
                     "--engine", engine, "-q"])  # fmt: skip
        assert code == 0
        with open(out, newline="") as handle:
            rows[engine] = list(csv.DictReader(handle))
    assert len(rows["onnx"]) == len(rows["torch"]) >= 10
    for a, b in zip(rows["torch"], rows["onnx"], strict=True):
        assert (a["community_id"], a["predicted"]) == (b["community_id"], b["predicted"])
        assert abs(float(a["probability"]) - float(b["probability"])) <= 2e-4  # 4 decimals


def test_auto_engine_uses_a_current_export_and_never_a_stale_one(
    run_dir: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    trained = load_run(run)
    assert scoring_engine(trained, "auto", run) is trained  # nothing exported yet
    export_onnx(trained, run / ONNX_FILE)
    engine = scoring_engine(trained, "auto", run)
    assert isinstance(engine, OnnxModel) and engine.classes == trained.classes
    assert scoring_engine(trained, "torch", run) is trained
    with torch.no_grad():  # other weights (a run trained again): the export is stale
        trained.model.head.bias.add_(1.0)
    assert scoring_engine(trained, "auto", run) is trained
    onnx_engine = scoring_engine(trained, "onnx", run)  # exported afresh, in memory
    assert isinstance(onnx_engine, OnnxModel)
    assert onnx_engine.weights_sha256 != read_metadata(run / ONNX_FILE)["weights_sha256"]
    flows = example_flows(trained.inputs, 9, seed=3)
    np.testing.assert_allclose(
        onnx_engine.predict_proba(flows), trained.predict_proba(flows), atol=1e-4, rtol=0
    )
    summary = classify_captures(
        trained, sorted(DEMO_CAPTURES.glob("https-small/*.pcap")), tmp_path / "p.csv",
        progress=False, engine="onnx",
    )  # fmt: skip
    assert summary.flows_classified > 0


def test_engine_onnx_without_onnxruntime_is_one_clear_line(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(export, "onnxruntime_available", lambda: False)
    capture = sorted(DEMO_CAPTURES.glob("*/*.pcap"))[0]
    code = main(["classify", str(run_dir), str(capture), "-o", str(tmp_path / "p.csv"),
                 "--engine", "onnx", "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert "onnxruntime" in err and "pip install" in err
    # auto falls back to torch without a word
    assert main(["classify", str(run_dir), str(capture), "-o", str(tmp_path / "a.csv"), "-q"]) == 0
    assert main(["export", str(run_dir), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "pip install" in capsys.readouterr().err


def test_an_xgboost_run_is_refused_with_a_reason() -> None:
    trained = TrainedModel(
        object(), name="xgboost", kind="estimator", classes=["a", "b"], inputs=("packets",)
    )
    with pytest.raises(ExportError, match="only torch models"):
        export_onnx(trained)
    with pytest.raises(ExportError, match="--engine torch"):
        scoring_engine(trained, "onnx")
    assert scoring_engine(trained, "auto") is trained


TORCH_MODELS = [m for m in available_models() if get_entry(m).kind == "torch"]


@pytest.mark.parametrize("name", TORCH_MODELS)
def test_every_torch_model_of_the_registry_exports_and_matches_torch(name: str) -> None:
    """export_onnx checks onnxruntime against torch at batch 1 and 7; it raises otherwise."""
    torch.manual_seed(0)
    model = create_model(name, 4).eval()
    if name == "acid":  # the trained path: nearest fitted centre (a branch on a buffer)
        with torch.no_grad():
            model.centres.normal_()
            model.centre_class.copy_(torch.arange(len(model.centre_class)) % 3)  # class 3: none
            model.clustered.fill_(True)
    inputs = get_entry(name).inputs
    trained = TrainedModel(model, name=name, kind="torch", classes=list("abcd"), inputs=inputs)
    model_bytes = export_onnx(trained)
    engine = OnnxModel(model_bytes, threads=1)
    assert engine.inputs == inputs
    flows = example_flows(inputs, 33, seed=9)
    np.testing.assert_allclose(
        engine.predict_proba(flows), trained.predict_proba(flows), atol=1e-4, rtol=0
    )


def test_the_dynamo_exporter_takes_over_where_the_tracer_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback path (torch.export + onnxscript) gives a model that matches torch too."""
    pytest.importorskip("onnxscript", reason="onnxscript (dmfnet[onnx]) is not installed")
    real_export = torch.onnx.export
    used = []

    def tracer_fails(*args, dynamo: bool = True, **kwargs):
        used.append(dynamo)
        if not dynamo:
            raise RuntimeError("unsupported operator")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", tracer_fails)
    torch.manual_seed(0)
    model = create_model("dmf-no-bytes", 3).eval()
    inputs = get_entry("dmf-no-bytes").inputs
    trained = TrainedModel(model, name="dmf-no-bytes", kind="torch", classes=list("abc"),
                           inputs=inputs)  # fmt: skip
    engine = OnnxModel(export_onnx(trained), threads=1)  # checked at batch 1 and 7 inside
    assert used == [False, True]
    flows = example_flows(inputs, 40, seed=4)
    np.testing.assert_allclose(
        engine.predict_proba(flows), trained.predict_proba(flows), atol=1e-4, rtol=0
    )
    assert engine.classes == ["a", "b", "c"]
