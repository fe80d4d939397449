"""Every shipped config file is valid and names its source."""

from pathlib import Path

import pytest

from conftest import ROOT
from envs import family_of
from models import check_model
from utils import config

CONFIGS = sorted((ROOT / "configs").rglob("config.json"))


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs").parent))
def test_config_is_valid(path: Path):
    cfg = config.resolve(path, [])
    check_model(cfg["model"])
    family_of(cfg["env"])
    assert cfg["source"], "every config records where its numbers come from"
    assert path.parent.name == cfg["model"]
