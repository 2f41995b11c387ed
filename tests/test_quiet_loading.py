"""Loading a VQGAN is quiet without touching sys.stdout: the panel loads models in a
background thread while the person runs other cells, whose output must not vanish."""

from __future__ import annotations

import sys

import taming.modules.diffusionmodules.model as taming_model

from vqclip.config import RunConfig
from vqclip.models import load_models


def test_building_a_vqgan_keeps_sys_stdout_and_prints_nothing(tiny_model_dir, monkeypatch, capsys):
    seen = []
    build = taming_model.Decoder.__init__

    def watch(self, *args, **kwargs):
        seen.append(sys.stdout)
        build(self, *args, **kwargs)

    monkeypatch.setattr(taming_model.Decoder, "__init__", watch)
    stdout = sys.stdout
    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
    )
    load_models(config, progress=False)
    assert seen and all(current is stdout for current in seen)
    assert "Working with z of shape" not in capsys.readouterr().out
