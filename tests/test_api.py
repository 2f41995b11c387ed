"""The public surface: three lines in a notebook, and an import without side effects."""

import subprocess
import sys

import vqclip


def test_three_lines(tiny_config):
    models = vqclip.load_models(tiny_config)
    result = vqclip.generate(
        tiny_config.replace(iterations=3, snapshots="last"), models, progress=False
    )
    assert result.status == "done" and result.final.is_file()
    assert [p.name for p in result.snapshots] == ["000003.png"]


def test_steps_can_be_iterated_directly(tiny_config, tiny_models):
    from vqclip.plan import prepare

    steps = list(
        vqclip.run(prepare(tiny_config.replace(iterations=2, snapshots="last"), tiny_models))
    )
    assert [s.iteration for s in steps] == [0, 1, 2] and isinstance(steps[0], vqclip.Step)


def test_import_is_light_and_has_no_side_effects():
    code = "import sys, vqclip, vqclip.config; print('torch' in sys.modules, vqclip.__version__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", vqclip.__version__]


def test_unknown_name_is_an_attribute_error():
    try:
        vqclip.nonsense  # noqa: B018
    except AttributeError as error:
        assert "nonsense" in str(error)
    else:
        raise AssertionError("no AttributeError")
