import json
import subprocess
import sys

import pytest

from conftest import ROOT
from utils import config
from utils.errors import UserError


def test_values_are_parsed_to_the_type_of_the_key():
    assert config.parse_cli_value("n_steps", "5e5") == 500_000
    assert isinstance(config.parse_cli_value("n_steps", "5e5"), int)
    assert config.parse_cli_value("learning_rate", "3e-4") == pytest.approx(3e-4)
    assert config.parse_cli_value("learning_rate", "1") == 1.0
    assert config.parse_cli_value("adv_norm", "false") is False
    assert config.parse_cli_value("clip_range_vf", "null") is None
    assert config.parse_cli_value("clip_range_vf", "0.2") == 0.2
    assert config.parse_cli_value("env", "MiniGrid-MemoryS7-v0") == "MiniGrid-MemoryS7-v0"


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("n_steps", "2.5", "not a valid int"),
        ("n_envs", "abc", "not a valid int"),
        ("adv_norm", "maybe", "not a valid bool"),
        ("learning_rate", "null", "not a valid float"),
        ("optimizer", "SGD", "not one of"),
    ],
)
def test_wrong_types_name_key_value_and_type(key, value, fragment):
    with pytest.raises(UserError, match=fragment) as info:
        config.parse_cli_value(key, value)
    assert key in str(info.value)


def test_unknown_key_suggests_close_ones():
    with pytest.raises(UserError, match="unknown config key 'learning_rat'.*learning_rate"):
        config.parse_overrides(["learning_rat=1e-3"])


def test_file_values_are_checked(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"n_envs": "four"}))
    with pytest.raises(UserError, match="n_envs"):
        config.resolve(bad, [])
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"n_env": 4}))
    with pytest.raises(UserError, match="did you mean n_envs"):
        config.resolve(unknown, [])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        config.resolve(broken, [])


def test_override_order_defaults_file_var(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"n_envs": 4, "gamma": 0.9}))
    cfg = config.resolve(path, ["gamma=0.5"])
    assert cfg["n_envs"] == 4 and cfg["gamma"] == 0.5 and cfg["n_epochs"] == config.SCHEMA["n_epochs"].default


def test_config_json_holds_every_key_and_is_valid():
    data = json.loads((ROOT / "config.json").read_text())
    assert set(data) == set(config.SCHEMA)
    config.resolve(ROOT / "config.json", [])


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--var", "modle=CNN-PPO"], "unknown config key 'modle'"),
        (["--var", "n_envs=1.5"], "config key 'n_envs'"),
        (["--var", "env=NoSuchEnv-v0"], "unknown env 'NoSuchEnv-v0'"),
        (["--var", "env=MiniGrid-NoSuch-v0"], "unknown MiniGrid env"),
        (["--var", "model=DQN"], "unknown model 'DQN'"),
        (["--config", "/no/such/file.json"], "config file not found"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(args, fragment, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args, "--experiments-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert not any(tmp_path.iterdir()), "a failed start must not leave a run directory"


def test_the_configuration_reference_is_generated_from_the_schema():
    from conftest import ROOT

    assert (ROOT / "docs" / "configuration.md").read_text() == config.reference_markdown(), \
        "docs/configuration.md differs from the schema: python -m utils.config > docs/configuration.md"
    assert all(key.help for key in config.SCHEMA.values())  # every key says what it means
