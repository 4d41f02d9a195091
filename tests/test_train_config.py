import pytest

from imvedit.errors import UsageError
from imvedit.training.train import TrainConfig


def test_yaml_then_flags(tmp_path, pairs_folder):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(f"pairs_dir: {pairs_folder}\noutput: {tmp_path / 'run'}\nlr: 0.001\nadapter:\n  rank: 4\n")
    cfg = TrainConfig.from_sources(cfg_file, {"lr": 0.01, "seed": 3})
    assert cfg.lr == 0.01 and cfg.seed == 3 and cfg.adapter == {"rank": 4} and cfg.epochs == 5
    cfg.validate()


def test_unknown_keys_and_python_tags_are_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pairs_dir: x\noutput: y\nlearning_rate: 0.1\n")
    with pytest.raises(UsageError, match="Unknown training option.*learning_rate"):
        TrainConfig.from_sources(bad, {})
    evil = tmp_path / "evil.yaml"
    evil.write_text("pairs_dir: !!python/object/apply:os.system ['echo hacked']\noutput: y\n")
    with pytest.raises(UsageError, match="Could not read config"):
        TrainConfig.from_sources(evil, {})
    with pytest.raises(UsageError, match="No output given"):
        TrainConfig.from_sources(None, {"pairs_dir": "x"})


def test_validate_refuses_bad_values(tmp_path, pairs_folder):
    base = {"pairs_dir": pairs_folder, "output": tmp_path / "run"}
    for bad, match in [
        ({"lr": 0}, "lr"),
        ({"gate_text": "both"}, "gate_text"),
        ({"adapter": {"rnk": 2}}, "Unknown adapter option"),
    ]:
        with pytest.raises(UsageError, match=match):
            TrainConfig.from_sources(None, {**base, **bad}).validate()
