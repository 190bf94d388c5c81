"""A model file never names code for us to run: only trusted factories build models from files."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from napari_qlty.models import ModelLoadError, ModelSpec, clear_model_cache, load_model
from napari_qlty.models.checkpoints import checkpoint_recipe, write_checkpoint
from napari_qlty.models.factories import ENTRY_POINT_GROUP, trusted_factories
from napari_qlty.train import checkpoint_spec, load_checkpoint, save_checkpoint
from napari_qlty.train.networks import unet

FACTORY = '''
import torch

def build(channels=2):
    return torch.nn.Conv3d(1, channels, 3, padding=1)
'''


@pytest.fixture
def marker(tmp_path):
    """A file that only appears if a factory named by a file was run."""
    return tmp_path / "ran.txt"


def _os_system_checkpoint(path, marker) -> None:
    write_checkpoint({}, path, {"factory": "os:system", "factory_kwargs": {"command": f"touch {marker}"}})


def test_a_checkpoint_naming_foreign_code_is_refused_and_nothing_runs(tmp_path, marker):
    path = tmp_path / "evil.pt"
    _os_system_checkpoint(path, marker)
    clear_model_cache()
    for load in (lambda: load_model(ModelSpec(str(path))), lambda: load_checkpoint(path)):
        with pytest.raises(ModelLoadError, match=r"names the factory 'os:system'.*never runs code that a file"):
            load()
    assert not marker.exists()


def test_the_first_layout_json_beside_is_checked_too(tmp_path, marker):
    path = tmp_path / "old.pt"
    torch.save(unet(dims=3, channels=2).state_dict(), path)
    path.with_suffix(".json").write_text(json.dumps({
        "format": "napari-qlty/checkpoint/1", "factory": "os:system",
        "factory_kwargs": {"command": f"touch {marker}"}}))
    clear_model_cache()
    with pytest.raises(ModelLoadError, match="os:system"):
        load_model(checkpoint_spec(path))
    assert not marker.exists()


def test_a_typed_factory_is_the_users_choice(tmp_path, monkeypatch):
    """weights.pt::package.module:function names code the user chose: it is run."""
    (tmp_path / "my_factories_mod.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = torch.nn.Conv3d(1, 2, 3, padding=1)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    clear_model_cache()
    loaded = load_model(ModelSpec.parse(f"{tmp_path / 'w.pt'}::my_factories_mod:build"))
    x = torch.randn(1, 1, 6, 6, 6)
    torch.testing.assert_close(loaded(x), net(x))
    # the same factory named by a file is refused: nobody vouched for it
    write_checkpoint(net.state_dict(), tmp_path / "c.pt", {"factory": "my_factories_mod:build"})
    with pytest.raises(ModelLoadError, match="my_factories_mod:build"):
        load_model(ModelSpec(str(tmp_path / "c.pt")))


def test_factories_registered_by_installed_packages_are_trusted(tmp_path, monkeypatch):
    (tmp_path / "vouched_mod.py").write_text(FACTORY)
    info = tmp_path / "vouched-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vouched\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nconv = vouched_mod:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert trusted_factories()["vouched_mod:build"] == "vouched"
    net = torch.nn.Conv3d(1, 3, 3, padding=1)
    write_checkpoint(net.state_dict(), tmp_path / "c.pt",
                     {"factory": "vouched_mod:build", "factory_kwargs": {"channels": 3}})
    clear_model_cache()
    x = torch.randn(1, 1, 6, 6, 6)
    torch.testing.assert_close(load_model(ModelSpec(str(tmp_path / "c.pt")))(x), net(x))
    sys.modules.pop("vouched_mod", None)


def test_our_checkpoint_carries_what_inference_needs(tmp_path):
    net = unet(dims=3, channels=2)
    save_checkpoint(net, tmp_path / "u.pt", "napari_qlty.train.networks:unet", {"dims": 3, "channels": 2},
                    {"window": [16, 16, 16], "classes": ["background", "filament"],
                     "normalisation": {"mode": "percentile", "low": 1.0, "high": 99.8}})
    recipe = checkpoint_recipe(tmp_path / "u.pt")
    assert recipe["classes"] == ["background", "filament"] and recipe["window"] == [16, 16, 16]
    clear_model_cache()
    loaded = load_model(ModelSpec(str(tmp_path / "u.pt")))  # no factory typed: the recipe says
    assert loaded.napari_qlty_normalisation.mode == "percentile"
    assert loaded.napari_qlty_info["classes"] == ["background", "filament"]
    x = torch.randn(1, 1, 12, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x))
