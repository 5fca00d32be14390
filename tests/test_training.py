"""The training loop: learns, repeats with a seed, writes a run folder, evaluates elsewhere."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from dmfnet.models import available_models, register_model
from dmfnet.training.metrics import classification_metrics
from dmfnet.training.runs import load_run
from dmfnet.training.trainer import evaluate, split_indices, train
from training_data import synthetic_flows

FAST = dict(epochs=8, batch_size=16, patience=0, device="cpu", progress=False)
TIMING_KEYS = ("train_seconds", "infer_flows_per_s")


def _history(run_dir):
    """history.csv without the timing column."""
    with open(run_dir / "history.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny batches train fastest on one thread (and do not fight other tests for cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_flows()


@pytest.fixture(scope="module")
def dmf_run(dataset, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "dmf"
    return run_dir, train(dataset, run_dir, model="dmf", seed=3, **FAST)


def test_dmf_beats_chance_on_a_learnable_dataset(dmf_run):
    _, result = dmf_run
    assert result["test_size"] == 18 and result["train_size"] == 144 and result["val_size"] == 18
    assert result["accuracy"] >= 0.8  # chance is 1/3
    assert result["f1_macro"] >= 0.75
    assert result["epochs_run"] == 8 and 1 <= result["best_epoch"] <= 8
    assert result["infer_flows_per_s"] > 0


def test_run_folder_records_model_config_split_and_history(dmf_run, dataset):
    run_dir, result = dmf_run
    for name in ("model.pt", "run.json", "history.csv", "metrics.json", "report.md"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["model"] == "dmf" and info["kind"] == "torch"
    assert info["classes"] == ["chat", "download", "ssh"]
    assert info["inputs"] == ["payload_packet_bytes", "lengths", "directions", "payload_lengths"]
    assert info["model_config"]["channels"] == [16, 32, 64]
    assert info["seed"] == 3 and info["split"] == "random"
    assert info["training"]["epochs"] == 8 and info["training"]["batch_size"] == 16
    assert info["split_sizes"] == {"train": 144, "val": 18, "test": 18}
    assert info["dataset"]["card"]["classes"]["ssh"] == 60
    assert {"dmfnet", "torch", "numpy", "python", "platform"} <= set(info["versions"])
    with open(run_dir / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert set(rows[0]) == {
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "val_f1_macro",
        "seconds",
    }
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["accuracy"] == result["accuracy"] and saved["confusion"] == result["confusion"]
    # The weights are a plain state dict of tensors.
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())


def test_same_seed_gives_identical_metrics(dmf_run, dataset, tmp_path):
    _, first = dmf_run
    again = train(dataset, tmp_path / "again", model="dmf", seed=3, **FAST)
    drop = lambda r: {k: v for k, v in r.items() if k not in TIMING_KEYS}  # noqa: E731
    assert drop(again) == drop(first)
    assert _history(tmp_path / "again") == _history(dmf_run[0])


def test_saved_run_loads_and_reproduces_the_test_metrics(dmf_run, dataset):
    run_dir, result = dmf_run
    model = load_run(run_dir)
    assert model.classes == ["chat", "download", "ssh"] and model.inputs == ("payload_packet_bytes", "lengths", "directions", "payload_lengths")
    _, _, test_idx, _ = split_indices(dataset, model.inputs, seed=3)
    arrays = {c: dataset[c][test_idx] for c in model.inputs}
    proba = model.predict_proba(arrays, batch_size=5)  # several batches
    assert proba.shape == (18, 3) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    again = classification_metrics(dataset.y[test_idx], proba.argmax(1), model.classes)
    assert again["confusion"] == result["confusion"]
    np.testing.assert_array_equal(
        load_run(run_dir).predict_proba(arrays), model.predict_proba(arrays)
    )
    assert list(model.predict(arrays)[:2]) == [model.classes[i] for i in proba.argmax(1)[:2]]


def test_predict_proba_names_a_missing_input(dmf_run, dataset):
    model = load_run(dmf_run[0])
    with pytest.raises(KeyError, match="lengths"):
        model.predict_proba({"bytes": dataset["bytes"]})


def test_evaluate_reports_unknown_classes_and_leaves_them_out(dmf_run, tmp_path):
    run_dir, _ = dmf_run
    other = synthetic_flows(("chat", "ssh", "zoom"), n_per_class=20, seed=9)
    result = evaluate(run_dir, other, tmp_path / "eval")
    assert result["unknown_classes"] == {"zoom": 20}
    assert result["unknown_flows"] == 20 and result["evaluated_flows"] == 40
    assert result["num_flows"] == 40 and result["classes_in_test"] == 2
    assert result["per_class"]["download"]["support"] == 0
    assert result["accuracy"] >= 0.8  # chat and ssh keep their patterns in the new dataset
    saved = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert saved["unknown_classes"] == {"zoom": 20}
    assert (tmp_path / "eval" / "metrics.json").is_file()
    assert (tmp_path / "eval" / "report.md").is_file()


def test_evaluate_without_any_known_class_is_an_error(dmf_run, tmp_path):
    other = synthetic_flows(("voip", "zoom"), n_per_class=5)
    with pytest.raises(ValueError, match="none of the dataset's classes"):
        evaluate(dmf_run[0], other, tmp_path / "eval")


def test_load_run_errors_name_the_problem(dmf_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="run.json"):
        load_run(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text((dmf_run[0] / "run.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_run(broken)
    (broken / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="model.pt cannot be loaded"):
        load_run(broken)
    info = json.loads((dmf_run[0] / "run.json").read_text())
    (broken / "run.json").write_text(json.dumps({**info, "model": "gone-model"}))
    with pytest.raises(ValueError, match="unknown model 'gone-model'"):
        load_run(broken)
    (broken / "run.json").write_text("{ truncated")
    with pytest.raises(ValueError, match="corrupt"):
        load_run(broken)


def test_duplicate_test_flows_are_removed_unless_kept(dataset):
    dup = synthetic_flows()
    for name in ("bytes", "lengths"):  # flows 2k and 2k+1 (same class) become identical
        dup.columns[name][1::2] = dup.columns[name][0::2]
    train_idx, _, test_idx, removed = split_indices(dup, ("bytes", "lengths"), seed=0)
    _, _, all_test, _ = split_indices(dup, ("bytes", "lengths"), seed=0, keep_duplicates=True)
    twin_in_train = np.isin(all_test ^ 1, train_idx)
    assert removed == int(twin_in_train.sum()) > 0
    np.testing.assert_array_equal(test_idx, all_test[~twin_in_train])
    _, _, kept, none_removed = split_indices(dataset, ("bytes", "lengths"), seed=0)
    assert none_removed == 0 and len(kept) == 18  # random bytes: no duplicates


def test_split_by_file_keeps_captures_apart(dataset):
    train_idx, val_idx, test_idx, _ = split_indices(
        dataset, ("bytes", "lengths"), seed=0, split="file"
    )
    files = [set(dataset["capture"][i]) for i in (train_idx, val_idx, test_idx)]
    assert not (files[0] & files[1]) and not (files[0] & files[2]) and not (files[1] & files[2])
    assert len(train_idx) + len(val_idx) + len(test_idx) == len(dataset)


def test_bad_training_options_are_rejected(dataset, tmp_path):
    with pytest.raises(ValueError, match="split"):
        train(dataset, tmp_path / "r", split="by-moon", progress=False)
    with pytest.raises(KeyError, match="unknown model"):
        train(dataset, tmp_path / "r", model="no-such-model", progress=False)
    with pytest.raises(ValueError, match="unknown key .no_such_knob.; known keys: "):
        train(dataset, tmp_path / "r", model_config={"no_such_knob": 1}, progress=False)


# --- the same loop for models with a post-fit step and for estimators ----------------


class _CentroidEstimator:
    """Nearest class centroid on packet lengths: an estimator with the registry's contract."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.centroids = np.zeros((num_classes, 30))

    def fit(self, train, y_train, val, y_val):
        x = train["lengths"].astype(np.float64)
        self.centroids = np.stack([x[y_train == c].mean(0) for c in range(self.num_classes)])
        return self

    def predict_proba(self, inputs):
        d = ((inputs["lengths"][:, None, :] - self.centroids[None]) ** 2).sum(-1)
        p = np.exp(-(d - d.min(1, keepdims=True)) / 1e5)
        return p / p.sum(1, keepdims=True)

    def save(self, folder):
        np.save(folder / "centroids.npy", self.centroids)

    def load(self, folder):
        self.centroids = np.load(folder / "centroids.npy")
        return self


class _LinearWithPostFit(torch.nn.Module):
    """A linear model on the first 30 lengths whose post_fit stores the training-flow count
    in a buffer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(30, num_classes)
        self.register_buffer("fitted_flows", torch.zeros((), dtype=torch.long))

    def forward(self, lengths):
        return self.linear(lengths[:, :30].float() / 1000.0)

    def post_fit(self, batches):
        for _ in range(2):  # the batches can be iterated more than once
            n = sum(len(target) for _, target in batches)
        self.fitted_flows.fill_(n)


class _InterruptedLinear(_LinearWithPostFit):
    """Raises KeyboardInterrupt (as Ctrl-C would) in training step ``interrupt_at``."""

    interrupt_at = 20

    def forward(self, lengths):
        if self.training:
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == self.interrupt_at:
                raise KeyboardInterrupt
        return super().forward(lengths)


if "test-centroid" not in available_models():
    register_model("test-centroid", inputs=("lengths",), kind="estimator", group="test")(
        _CentroidEstimator
    )
    register_model("test-linear-postfit", inputs=("lengths",), group="test")(_LinearWithPostFit)
    register_model("test-interrupted", inputs=("lengths",), group="test")(_InterruptedLinear)


def test_estimator_runs_through_the_same_split_metrics_and_run_folder(dataset, tmp_path):
    result = train(dataset, tmp_path / "est", model="test-centroid", progress=False)
    assert result["accuracy"] == 1.0 and result["epochs_run"] == 0
    assert (tmp_path / "est" / "estimator" / "centroids.npy").is_file()
    assert (tmp_path / "est" / "report.md").is_file()
    model = load_run(tmp_path / "est")
    assert model.kind == "estimator"
    proba = model.predict_proba({"lengths": dataset["lengths"]}, batch_size=50)  # 4 batches
    assert (proba.argmax(1) == dataset.y).mean() == 1.0


def test_post_fit_runs_once_on_the_training_flows_and_is_saved(dataset, tmp_path):
    result = train(
        dataset,
        tmp_path / "pf",
        model="test-linear-postfit",
        epochs=2,
        batch_size=13,  # 144 = 11 x 13 + 1: the last single flow joins the batch before
        progress=False,
    )
    state = torch.load(tmp_path / "pf" / "model.pt", weights_only=True)
    assert int(state["fitted_flows"]) == result["train_size"] == 144


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_training_saves_a_model_that_scores_the_same_on_cpu(dataset, tmp_path):
    result = train(dataset, tmp_path / "gpu", model="dmf", seed=1, **{**FAST, "device": "cuda"})
    info = json.loads((tmp_path / "gpu" / "run.json").read_text())
    assert info["training"]["device"].startswith("cuda")
    assert result["accuracy"] >= 0.8
    arrays = {c: dataset[c] for c in ("bytes", "lengths")}
    on_gpu = load_run(tmp_path / "gpu", device="cuda").predict_proba(arrays)
    on_cpu = load_run(tmp_path / "gpu").predict_proba(arrays)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)


def test_dataloader_workers_give_the_same_batches_as_in_process_gathering(dataset, tmp_path):
    common = dict(model="test-linear-postfit", epochs=2, batch_size=32, seed=2, progress=False)
    in_process = train(dataset, tmp_path / "w0", num_workers=0, **common)
    workers = train(dataset, tmp_path / "w1", num_workers=1, **common)
    assert _history(tmp_path / "w0") == _history(tmp_path / "w1")
    assert workers["confusion"] == in_process["confusion"]


def test_ctrl_c_after_an_epoch_keeps_and_tests_the_best_checkpoint(dataset, tmp_path):
    # 144 flows in batches of 16: 9 steps per epoch, so step 20 falls in epoch 3.
    common = dict(model="test-interrupted", epochs=10, batch_size=16, patience=0, progress=False)
    result = train(dataset, tmp_path / "int", **common)
    assert result["stopped"] == "interrupted" and result["epochs_run"] == 2
    info = json.loads((tmp_path / "int" / "run.json").read_text())
    assert info["stopped"] == "interrupted" and (tmp_path / "int" / "model.pt").is_file()
    assert len(_history(tmp_path / "int")) == 2

    _InterruptedLinear.interrupt_at = 3  # in the first epoch: nothing to keep, Ctrl-C stops all
    try:
        with pytest.raises(KeyboardInterrupt):
            train(dataset, tmp_path / "int1", **common)
    finally:
        _InterruptedLinear.interrupt_at = 20
