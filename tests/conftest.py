"""Shared fixtures: one torch thread, a private model cache, tiny real-architecture models.

The suite means "a machine without a GPU" unless asked otherwise: any GPU is hidden
(CUDA_VISIBLE_DEVICES="", inherited by the CLI processes and notebook kernels it starts), so
a GPU host runs the same CPU paths as a laptop. The tests marked ``cuda`` need one; they run
with ``python -m pytest -m cuda`` (which leaves the GPU visible) on a machine that has it,
and skip elsewhere. ``VQCLIP_TEST_GPU=1`` leaves the GPU visible for any selection; then the
rows that mean "no GPU" (marked ``no_gpu``, or with "without-a-gpu" in their id) skip.
"""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

GPU_ENV = "VQCLIP_TEST_GPU"


def pytest_configure(config: pytest.Config) -> None:
    # Before torch is imported here, and before anything starts CUDA (which reads the
    # variable once): collection, which imports the test modules, comes after this hook.
    if not gpu_visible(config):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    # A shell without job control starts `cmd &` with Ctrl-C ignored, and the CLI processes
    # and kernels the suite starts inherit that: the interrupt tests then see no Ctrl-C.
    # Give the suite the terminal's Ctrl-C wherever it was started from.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    import torch

    # Two cores: oversubscribed intra-op threads make torch many times slower.
    torch.set_num_threads(1)


def gpu_visible(config: pytest.Config) -> bool:
    """Whether this session keeps the GPU visible: asked for by -m cuda or VQCLIP_TEST_GPU=1."""
    return os.environ.get(GPU_ENV) == "1" or config.getoption("markexpr", "").strip() == "cuda"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    has_gpu = torch.cuda.is_available()
    needs_gpu = pytest.mark.skip(
        reason="needs a GPU: run `python -m pytest -m cuda` on a machine with one"
    )
    means_none = pytest.mark.skip(
        reason=f"means a machine without a GPU, and {GPU_ENV}=1 shows one"
    )
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "without-a-gpu" in callspec.id:
            item.add_marker(pytest.mark.no_gpu)
        if item.get_closest_marker("cuda") and not has_gpu:
            item.add_marker(needs_gpu)
        if item.get_closest_marker("no_gpu") and has_gpu:
            item.add_marker(means_none)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Module- and session-scoped fixtures run before model_cache: point VQCLIP_CACHE at a
    temp dir for them too, so no fixture writes into ~/.cache (a signed snapshot makes the
    local signing identity in the cache folder)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQCLIP_CACHE", str(tmp_path_factory.mktemp("session-cache")))
        yield


@pytest.fixture(autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point VQCLIP_CACHE at a fresh temp dir for every test: no test touches ~/.cache."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VQCLIP_CACHE", str(path))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """make_tiny_models' files in a session temp dir: {"vqgan_config", "vqgan_checkpoint",
    "clip"} -> Path (vqgan.yaml, vqgan.ckpt, clip.pt in one directory)."""
    from vqclip.models import make_tiny_models

    return make_tiny_models(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir: dict[str, Path]):
    """The tiny models loaded on CPU through the public path (RunConfig -> load_models)."""
    from vqclip.config import RunConfig
    from vqclip.models import load_models

    config = RunConfig(
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
    )
    return load_models(config, progress=False)


@pytest.fixture
def tiny_config(tiny_model_dir: dict[str, Path], tmp_path: Path):
    """A short, fully deterministic run on the tiny models, writing under tmp_path/runs."""
    from vqclip.config import RunConfig

    return RunConfig(
        prompt="a unicorn",
        size=[64, 64],
        iterations=12,
        cutn=4,
        seed=7,
        snapshots="0,3,every:5,last",
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]),
        device="cpu",
        precision="fp32",
        out=str(tmp_path / "runs"),
    )


@pytest.fixture(scope="session")
def a_run(tiny_model_dir: dict[str, Path], tiny_models, tmp_path_factory) -> Iterator[Path]:
    """One finished two-iteration run (snapshots 0, 1 and 2, and their latents to branch
    from), shared by every test that needs one: copy it before changing anything in it."""
    import vqclip

    config = vqclip.RunConfig(
        prompt="a lighthouse", size=[32, 32], iterations=2, cutn=2, seed=3, snapshots="0,1,last",
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]), device="cpu", precision="fp32",
        out=str(tmp_path_factory.mktemp("a_run")),
    )  # fmt: skip
    run_dir = vqclip.generate(config, tiny_models, progress=False).run_dir
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    yield run_dir
    after = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    assert after == before, "a test changed the shared a_run instead of a copy of it"


@pytest.fixture(scope="session")
def tiny_flags(tiny_model_dir: dict[str, Path]) -> list[str]:
    """CLI flags selecting the tiny models on the CPU."""
    return [
        "--vqgan-config", str(tiny_model_dir["vqgan_config"]),
        "--vqgan-checkpoint", str(tiny_model_dir["vqgan_checkpoint"]),
        "--clip", str(tiny_model_dir["clip"]),
        "--device", "cpu", "--precision", "fp32",
    ]  # fmt: skip


def skip_unless_required(reason: str, promise: str = "VQCLIP_REQUIRE_BROWSER") -> None:
    """Skip a test (or a test module) whose tools are missing here, but fail it where CI has
    promised them.

    .ci/run installs chromium and Ray and sets VQCLIP_REQUIRE_BROWSER=1 and
    VQCLIP_REQUIRE_RAY=1, so a broken install fails CI instead of passing it with those tests
    quietly skipped.
    """
    if os.environ.get(promise) == "1":
        pytest.fail(f"{reason}, and {promise}=1 says it must be here")
    pytest.skip(reason, allow_module_level=True)


def import_unless_required(name: str, promise: str) -> ModuleType:
    """pytest.importorskip, but a module that cannot be imported fails where ``promise``=1."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        skip_unless_required(f"{name} cannot be imported ({error})", promise)
        raise  # not reached: skip_unless_required raises
