"""TrainConfig: YAML + ``--set`` parsing, type and range checks, and the CLI's exit codes for bad input.

Config errors are caught before any model or data work, so most checks call ``training.__main__.main``
in-process (it returns the exit code the process would have); one test runs the real process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.__main__ import main
from training.config import ConfigError, TrainConfig, load_config, to_dict
from training.vision_pretrain import VisionPretrainConfig

from .conftest import REPO, run_cli

CONFIGS = sorted((REPO / "training" / "configs").glob("**/*.yaml"))


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_yaml_then_set_overrides(tmp_path):
    cfg = load_config(_yaml(tmp_path, "loss: lm\nbatch_size: 4\nlr: 1.0e-4\n"),
                      ["batch_size=2", "lr=3e-4", "grad_checkpointing=true", "notes={run: a}", "out_dir=x/y"])
    assert (cfg.loss, cfg.batch_size, cfg.lr, cfg.grad_checkpointing) == ("lm", 2, 3e-4, True)
    assert cfg.notes == {"run": "a"} and cfg.out_dir == "x/y"
    assert isinstance(cfg.lr, float) and isinstance(cfg.batch_size, int)


def test_yaml_numbers_without_a_dot_are_floats(tmp_path):
    # PyYAML reads "1e-5" as the string "1e-5"; an int where a float is expected is fine too.
    cfg = load_config(_yaml(tmp_path, "lr: 1e-5\ncon_weight: 2\n"))
    assert cfg.lr == 1e-5 and isinstance(cfg.lr, float)
    assert cfg.con_weight == 2.0 and isinstance(cfg.con_weight, float)


@pytest.mark.parametrize("text, message", [
    ("bogus_key: 1\n", "unknown config key(s) 'bogus_key'"),
    ("bach_size: 4\n", "'bach_size' (did you mean 'batch_size'?)"),
    ("batch_size: abc\n", "batch_size=abc: expected a value of type int"),
    ("batch_size: 2.5\n", "batch_size must be of type int, got float 2.5"),
    ("grad_checkpointing: 1\n", "grad_checkpointing must be of type bool"),
    ("lr: true\n", "lr must be of type float"),
    ("data: [a, b]\n", "data must be of type str"),
    ("- just\n- a list\n", "expected a mapping of config keys"),
    ("lr: [1\n", "is not valid YAML"),
])
def test_bad_yaml_is_a_config_error(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load_config(_yaml(tmp_path, text))
    assert message in str(e.value)


@pytest.mark.parametrize("item, message", [
    ("nope=1", "--set nope: unknown config key"),
    ("vison_lr=1", "'vison_lr' (did you mean 'vision_lr'?)"),
    ("batch_size=four", "--set batch_size=four: expected a value of type int"),
    ("max_steps=1.5", "expected a value of type int"),
    ("merge_lora=maybe", "expected a value of type bool"),
    ("notes=5", "notes must be of type dict"),
    ("batch_size", "--set expects key=value"),
])
def test_bad_set_is_a_config_error(item, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [item])
    assert message in str(e.value)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("no/such/config.yaml")


@pytest.mark.parametrize("item, message", [
    ("loss=both", "loss='both' is not one of"),
    ("mode=int4", "mode='int4' is not one of"),
    ("distributed=deepspeed", "distributed='deepspeed' is not one of"),
    ("batch_size=0", "must be >= 1"),
    ("log_every=0", "must be >= 1"),
    ("lr=-1", "lr=-1.0 must be >= 0"),
    ("warmup_ratio=1.5", "warmup_ratio=1.5 must be between 0 and 1"),
])
def test_validate_rejects_bad_values(item, message):
    cfg = load_config(None, ["data=somewhere", item])
    with pytest.raises(ConfigError) as e:
        cfg.validate()
    assert message in str(e.value)


def test_validate_requires_data():
    with pytest.raises(ConfigError, match="no training data"):
        TrainConfig().validate()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load_and_validate(path):
    # *-vision.yaml configs are for `python -m training pretrain-vision`; the rest for `train`.
    cls = VisionPretrainConfig if path.stem.endswith("-vision") else TrainConfig
    written = yaml.safe_load(path.read_text())
    cfg = load_config(path, [] if written.get("data") else ["data=somewhere"], cls=cls)  # llava-ov: --set data=
    cfg.validate()
    loaded = to_dict(cfg)
    for key, value in written.items():  # every key of the file reaches the config, typed
        if key == "data" and not value:
            continue
        assert loaded[key] == pytest.approx(value) if isinstance(value, float) else loaded[key] == value, key


def test_demo_recipe_stages_chain():
    """Each stage of the demo recipe starts from the previous stage's final folder, and writes its own."""
    stages = sorted((REPO / "training" / "configs").glob("demo-stage*.yaml"))
    assert len(stages) == 6
    outs = []
    for i, path in enumerate(stages):
        written = yaml.safe_load(path.read_text())
        if i == 0:
            assert written["base_model"].startswith("tiny:")
        else:
            assert written["base_model"] == f"{outs[-1]}/final", path.name
        outs.append(written["out_dir"])
    assert len(set(outs)) == len(outs)


def test_shipped_llava_ov_configs_follow_the_paper():
    # Authors' recipe: full fine-tune, lr 1e-5, vision lr 2e-6, cosine, warmup 0.03, wd 0, con_weight 1, bf16.
    for name in ("llava-ov-0.5b.yaml", "llava-ov-7b.yaml"):
        cfg = load_config(REPO / "training" / "configs" / name)
        assert (cfg.mode, cfg.loss, cfg.lr, cfg.vision_lr, cfg.schedule) == ("full", "cafe", 1e-5, 2e-6, "cosine")
        assert (cfg.warmup_ratio, cfg.weight_decay, cfg.con_weight, cfg.precision) == (0.03, 0.0, 1.0, "bf16")


# ------------------------------------------------------------------ the CLI's exit codes for bad config
@pytest.mark.parametrize("args, message", [
    (["--set", "nope=1"], "unknown config key 'nope'"),
    (["--set", "batch_size=x"], "expected a value of type int"),
    (["--set", "loss=both", "--set", "data=x"], "loss='both' is not one of"),
    ([], "no training data"),
])
def test_cli_config_errors_exit_2(capsys, args, message):
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_cli_unknown_yaml_key_exits_2(tmp_path, capsys):
    cfg = _yaml(tmp_path, "data: x\nlearning_rate: 1.0e-3\n")
    assert main(["train", "--config", str(cfg)]) == 2
    assert "unknown config key(s) 'learning_rate'" in capsys.readouterr().err


def test_cli_process_exit_code_for_unknown_set_key():
    """The real process (``python -m training``), not just main()'s return value."""
    proc = run_cli(["train", "--set", "data=x", "--set", "vison_lr=1e-3"], timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error: --set vison_lr: unknown config key 'vison_lr' (did you mean 'vision_lr'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_without_a_command_exits_2(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().err
