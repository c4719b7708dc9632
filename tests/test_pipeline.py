"""A real `isco train` of a tiny model on a small sample, through the same pipeline as the full run.

The test builds a tiny encoder (2 layers, 32 hidden) as a Hugging Face directory and names it as the base
model in a test profile YAML; everything else (preprocessing, Trainer fine-tuning, calibration, evaluation,
dev sets, registry, promotion, corrections) is the production code path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from services.cli import build_app
from services.trainer.pipeline import unseen_records
from services.trainer.records import Example
from services.trainer.routing_fit import fit_routing
from shared import registry
from shared.db.session import session_scope
from tests.tiny_model import build_tiny_model_dir

TITLES = {
    "2221": ["nurse", "staff nurse", "registered nurse", "ward nurse", "theatre nurse", "night nurse"],
    "5120": ["cook", "line cook", "kitchen cook", "restaurant cook", "grill cook", "prep cook"],
    "2512": [
        "software developer",
        "programmer",
        "web developer",
        "app developer",
        "backend developer",
        "game developer",
    ],
    "8322": [
        "taxi driver",
        "car driver",
        "chauffeur",
        "delivery car driver",
        "cab driver",
        "limousine driver",
    ],
    "7411": [
        "electrician",
        "building electrician",
        "house electrician",
        "wiring electrician",
        "site electrician",
        "maintenance electrician",
    ],
}
DUTIES = {
    "2221": "cares for patients on the ward",
    "5120": "prepares and cooks meals",
    "2512": "writes and tests code",
    "8322": "drives passengers to their destination",
    "7411": "installs and repairs wiring",
}


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m") / "encoder"


@pytest.fixture
def env(tmp_path: Path, sqlite_url: str, tiny_base: Path) -> dict[str, str]:
    profile = tmp_path / "test_profile.yaml"
    profile.write_text(
        yaml.safe_dump(
            {
                "preprocess": {
                    "val_fraction": 0.2,
                    "test_fraction": 0.2,
                    "outliers": {"min_group_examples": 5},
                },
                "replay_size": 20,
                "correction_repeats": 2,
                "finetune": {
                    "base_model": str(tiny_base),
                    "epochs": 1,
                    "max_length": 32,
                    "device": "cpu",
                    "prototype_max_per_class": 5,
                    "disable_tqdm": True,
                    "knn_k": 3,
                    "seed": 1,
                    "rerank": True,
                    "rerank_k": 3,
                },
            }
        )
    )
    devsets = tmp_path / "devsets"
    devsets.mkdir()
    (devsets / "tiny_dev.csv").write_text(
        "job_title,duties_description,isco_code,accept\n"
        "head nurse,,2221,2221|3221\npastry cook,,5120,\nuber driver,drives people,8322,\n"
    )
    data = tmp_path / "coded.csv"
    lines = ["job_title,duties_description,isco_code,note"]
    for code, titles in TITLES.items():
        for title in titles:
            lines.append(f"{title},,{code},x")
            # each title's own duties: held-out records whose duties also train are dropped (preprocess)
            lines.append(f"{title},{DUTIES[code]} as a {title},{code},y")
    lines += ["broken row,,99999,z", ",,2221,empty"]
    data.write_text("\n".join(lines) + "\n")
    return {
        "ISCO_ENV": "test",
        "ISCO_DATA_DIR": str(tmp_path / "var"),
        "ISCO_DATABASE_URL": sqlite_url,
        "ISCO_PROFILE": str(profile),
        "ISCO_DEVSETS_DIR": str(devsets),
        "ISCO_USE_DEFAULT_CORPUS": "false",
        "DATA_CSV": str(data),
        "COLUMNS": "200",
    }


def _run(env: dict[str, str], *args: str):  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(build_app(), list(args), env=env, catch_exceptions=False)
    return result


def test_isco_train_registers_evaluates_promotes_and_corrects(env: dict[str, str], tmp_path: Path) -> None:
    result = _run(env, "train", "--data", env["DATA_CSV"])
    assert result.exit_code == 0, result.output
    assert "promoted to best" in result.output and "no current best model" in result.output

    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        best = registry.best_model(s)
        assert best is not None and best.status == "ready"
        first, first_hash, model_dir = best.version, best.eval_data_hash, Path(best.path)
        metrics = best.metrics
    assert set(metrics) >= {"test", "devsets", "training", "promotion"}
    assert metrics["test"]["n"] == 10  # 2 of 12 rows per group, 5 groups
    dev = metrics["devsets"]["tiny_dev"]
    assert dev["n"] == 3 and 0 <= dev["accuracy"] <= 1 and "coverage" in dev
    assert metrics["training"]["preprocess"]["invalid_rows"] == 2
    # the split keeps an occupation's titles together, so validation may take a whole occupation
    finetune = metrics["training"]["finetune"]
    assert finetune["train_size"] + finetune["val_size"] == 50 and finetune["train_size"] >= 36
    for name in ("model.json", "labels.json", "metrics.json", "training.json", "preprocess.json"):
        assert (model_dir / name).is_file(), name
    from shared.model.int8 import INT8_FP32_LAYERS
    from shared.model.onnx_export import ONNX_DIR, graph_name

    for quantize in ("none", "int8"):  # the ONNX graphs are an artefact of training, not of serving
        assert (model_dir / ONNX_DIR / graph_name(quantize, INT8_FP32_LAYERS)).is_file(), quantize
    # after scoring, the test records joined the indexes: every train, validation and test record is known
    assert metrics["test_records_indexed"] == 10
    assert metrics["head_refit"]["records"] == 60  # then the head was refitted on every indexed record
    from shared.model.directory import ModelDir

    signals = ModelDir.read(model_dir).signals()  # both signals are on by default
    assert signals.knn is not None and signals.knn.texts is not None and len(signals.knn) == 60
    assert signals.lexical is not None and len(signals.lexical) == 60
    assert signals.reranker is not None and signals.reranker.k == 3  # fitted on validation
    report = Path(env["ISCO_DATA_DIR"]) / "runs" / first / "invalid_rows.csv"
    assert "'99999' is not an ISCO-08 code" in report.read_text()
    # the run keeps what routing was fitted on and the test split as routing reads it
    from services.trainer.routing_data import ROUTING_DATA_FILES, RoutingData
    from shared.routing import RoutingModel

    fitted = RoutingData.load(report.parent / ROUTING_DATA_FILES["val"])
    test = RoutingData.load(report.parent / ROUTING_DATA_FILES["test"])
    assert len(fitted.inputs) == finetune["val_size"] and len(test.inputs) == 10
    assert test.kinds == ["user"] * 10 and test.flagged is not None and test.nearest is not None
    assert test.per_level[4].shape == (10, len(signals.codes)) and test.correct[4].dtype == bool
    # each record's occupation (the split's unit: the ESCO occupation of its title, else the title), which
    # routing's bounds count: a title's two records are one
    assert fitted.clusters is not None and len(fitted.clusters) == len(fitted.inputs)
    assert test.clusters is not None and all(c.startswith(("title:", "http")) for c in test.clusters)
    assert len(set(test.clusters)) < len(test.clusters)
    # refitting on the kept validation records gives the routing the run shipped
    routing = RoutingModel.load(model_dir)
    p_shipped, _ = routing.unit_routing(fitted.per_level, fitted.inputs, fitted.nearest)
    refit = fit_routing(
        fitted.per_level,
        fitted.correct,
        fitted.inputs,
        nearest=fitted.nearest,
        kinds=fitted.kinds,
        z=routing.bound_z,
        clusters=fitted.clusters,
    )
    assert refit.levels[4].threshold == routing.levels[4].threshold
    assert np.allclose(refit.unit_routing(fitted.per_level, fitted.inputs, fitted.nearest)[0], p_shipped)

    # The same data again: the same evaluation data, so the stored scores are compared directly and only a
    # strictly higher score replaces the best.
    again = _run(env, "train", "--data", env["DATA_CSV"])
    assert again.exit_code == 0, again.output
    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        versions = registry.list_versions(s)
        second = versions[0]
        assert len(versions) == 2 and second.eval_data_hash == first_hash
        assert "same evaluation data" in second.metrics["promotion"]["reason"]
        promoted = second.eval_score > metrics["test"]["accuracy"]  # type: ignore[operator]
        assert second.metrics["promotion"]["promoted"] is promoted
        best_version = registry.best_model(s).version  # type: ignore[union-attr]
        assert best_version == (second.version if promoted else first)

    # Corrections fine-tune the best; the test split is the parent's, so the comparison is like for like.
    fixes = tmp_path / "fixes"
    fixes.mkdir()
    (fixes / "batch1.csv").write_text(
        "text,corrected_isco_code\nchef de partie,5120\nsous chef,5120\nbad code,12\n"
    )
    corrected = _run(env, "train", "--corrections", str(fixes))
    assert corrected.exit_code == 0, corrected.output
    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        newest = registry.list_versions(s)[0]
        assert newest.status == "ready" and newest.parent_version == best_version
        assert newest.eval_data_hash == first_hash
        assert newest.metrics["corrections_fit"]["n"] == 2
        assert newest.metrics["test_records_indexed"] == 0  # the parent's entries already hold them
        assert "head_refit" not in newest.metrics  # a refit over every record would dilute the corrections
        corrected_dir = Path(newest.path)
    # a corrections run keeps the original validation split, and refits its reranker there
    reranker = ModelDir.read(corrected_dir).signals().reranker
    assert reranker is not None and reranker.fitted_on.startswith("validation split")
    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        newest = registry.list_versions(s)[0]
        composition = newest.metrics["training"]["composition"]
        assert composition == {
            "train_examples": 2 * 2 + 20,
            "corrections": 2,
            "replay": 20,
            "correction_repeats": 2,
        }

    # Other evaluation data (another split): both are scored on the candidate's test records that the best
    # never saw (the best trained on or indexed every record of the first split, so none are left).
    resplit = _run({**env, "ISCO_PREPROCESS__TEST_FRACTION": "0.3"}, "train", "--data", env["DATA_CSV"])
    assert resplit.exit_code == 0, resplit.output
    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        newest = registry.list_versions(s)[0]
        assert newest.eval_data_hash != first_hash
        promotion = newest.metrics["promotion"]
        assert promotion["promoted"] is False and "not comparable" in promotion["reason"]
    assert "has seen every test record" in resplit.output

    with session_scope(env["ISCO_DATABASE_URL"]) as s:
        best_now = registry.best_model(s).version  # type: ignore[union-attr]
    listed = _run(env, "models", "list")
    assert listed.exit_code == 0 and first in listed.output and best_now in listed.output
    shown = _run(env, "models", "show")
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == best_now

    evaluated = _run(
        env,
        "evaluate",
        "--data",
        str(Path(env["ISCO_DEVSETS_DIR"]) / "tiny_dev.csv"),
        "--output",
        str(tmp_path / "eval.json"),
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads((tmp_path / "eval.json").read_text())["model_version"] == best_now


def test_train_refuses_bad_input(env: dict[str, str], tmp_path: Path) -> None:
    missing = _run(env, "train", "--data", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    bad = tmp_path / "bad.csv"
    bad.write_text("job_title,code\nnurse,2221\n")
    result = _run(env, "train", "--data", str(bad))
    assert result.exit_code == 2 and "missing column isco_code" in result.output
    devset = Path(env["ISCO_DEVSETS_DIR"]) / "tiny_dev.csv"
    result = _run(env, "train", "--data", str(devset))
    assert result.exit_code == 2 and "refusing to train on a development set" in result.output
    result = _run(env, "train", "--profile", "no-such-profile")
    assert result.exit_code == 2 and "unknown profile" in result.output
    result = _run(env, "train", "--corrections", str(tmp_path))
    assert result.exit_code == 2 and "there is none" in result.output


def test_a_model_is_re_scored_only_on_titles_it_never_saw() -> None:
    def example(title: str, duties: str = "") -> Example:
        text = f"{title} : {duties}" if duties else title
        return Example(text, "2221", "user", title, duties, "test")

    # the best indexed "radiographer" alone and with its description: the same title with duties worded
    # otherwise (another corpus) is an occupation it knows
    seen = ["radiographer", "radiographer : radiographers scan patients", "x-ray operator : operate scanners"]
    test = [
        example("radiographer", "scan patients"),
        example("x-ray operator"),
        example("sonographer"),
        example("sonographer", "scan patients with ultrasound"),
    ]
    assert [e.text for e in unseen_records(test, seen)] == [
        "sonographer",
        "sonographer : scan patients with ultrasound",
    ]
