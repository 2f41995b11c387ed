"""models.py: tiny real-architecture models through the public loaders, safe checkpoint
reading, verified downloads from a local HTTP server (never the internet), clear errors."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import pickle
import socket
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import pytest
import torch
import yaml

from vqclip import registry
from vqclip.config import DEFAULT_CLIP, DEFAULT_VQGAN, RunConfig
from vqclip.models import (
    VQGAN,
    ModelError,
    ModelInfo,
    Models,
    cache_dir,
    download,
    load_clip,
    load_models,
    load_vqgan,
    make_tiny_models,
    resolve_device,
)
from vqclip.registry import VQGANSource
from vqclip.testing import (
    _lightning_checkpoint_bytes,
    _tiny_clip,
    _tiny_vqgan,
    _tiny_vqgan_yaml,
)

LIGHTNING_CLASS = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_files(root: Path) -> list[str]:
    """Every file under the cache, hidden temporaries included."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*") if p.is_file())


def load_tiny_vqgan(tiny: dict[str, Path]):
    return load_vqgan(
        config_path=tiny["vqgan_config"], checkpoint_path=tiny["vqgan_checkpoint"], progress=False
    )


# --- tiny models and the public loaders ------------------------------------------------


def test_make_tiny_models_writes_real_formats_deterministically(tiny_model_dir, tmp_path):
    again = make_tiny_models(tmp_path / "again")
    assert set(again) == {"vqgan_config", "vqgan_checkpoint", "clip"}
    assert again["vqgan_config"] == (tmp_path / "again" / "vqgan.yaml").resolve()
    for role in ("vqgan_config", "vqgan_checkpoint", "clip"):
        assert again[role].read_bytes() == tiny_model_dir[role].read_bytes(), role
    assert [again[role].name for role in again] == ["vqgan.yaml", "vqgan.ckpt", "clip.pt"]
    config = yaml.safe_load(tiny_model_dir["vqgan_config"].read_text())
    assert config["model"]["target"] == "taming.models.vqgan.VQModel"
    assert set(config["model"]["params"]) == {"embed_dim", "n_embed", "ddconfig", "lossconfig"}
    # clip.pt is a TorchScript archive, like OpenAI's released files.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        archive = torch.jit.load(str(tiny_model_dir["clip"]), map_location="cpu")
    assert {t.dtype for t in archive.state_dict().values()} == {torch.float16}


def test_lightning_checkpoint_needs_the_allow_list_and_loads(tiny_model_dir):
    ckpt = tiny_model_dir["vqgan_checkpoint"]
    # Plain weights-only loading refuses it, exactly like a real taming last.ckpt.
    assert torch.serialization.get_unsafe_globals_in_checkpoint(ckpt) == [LIGHTNING_CLASS]
    with pytest.raises(pickle.UnpicklingError, match="ModelCheckpoint"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    from vqclip.hub import _STAND_INS

    with torch.serialization.safe_globals(_STAND_INS):
        raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert {"epoch", "global_step", "optimizer_states", "callbacks", "state_dict"} <= set(raw)
    assert any(k.startswith("loss.") for k in raw["state_dict"])
    model, info = load_tiny_vqgan(tiny_model_dir)
    # The loader kept exactly the model's weights: loss.* dropped, nothing missing.
    assert set(model.state_dict()) == {k for k in raw["state_dict"] if not k.startswith("loss.")}
    assert info.name == "vqgan.ckpt"
    assert info.sha256["checkpoint"] == sha256(ckpt)


def test_vqgan_round_trip_is_exact(tiny_model_dir):
    saved = _tiny_vqgan()
    loaded, info = load_tiny_vqgan(tiny_model_dir)
    assert isinstance(loaded, VQGAN)
    assert set(loaded.state_dict()) == set(saved.state_dict())
    for key, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = loaded.encode(x)
        assert torch.equal(z, saved.encode(x))
        assert torch.equal(loaded.decode(z), saved.decode(z))
    assert info.files == {
        "config": str(tiny_model_dir["vqgan_config"].resolve()),
        "checkpoint": str(tiny_model_dir["vqgan_checkpoint"].resolve()),
    }
    assert info.sha256["config"] == sha256(tiny_model_dir["vqgan_config"])


def test_vqgan_shapes_factor_codebook_and_frozen(tiny_models):
    vqgan = tiny_models.vqgan
    assert (vqgan.factor, vqgan.embed_dim, vqgan.n_embed, vqgan.gumbel) == (4, 32, 256, False)
    assert vqgan.codebook.shape == (256, 32)
    assert vqgan.codebook is vqgan.quantize.embedding.weight
    assert vqgan.codebook.abs().max() > 0.5  # re-spread, not taming's ±1/n_embed
    with torch.no_grad():
        z = vqgan.encode(torch.zeros(2, 3, 64, 48))
        assert z.shape == (2, 32, 16, 12)
        image = vqgan.decode(torch.randn(1, 32, 5, 7, generator=torch.Generator().manual_seed(0)))
    assert image.shape == (1, 3, 20, 28)
    assert not vqgan.training
    assert not any(p.requires_grad for p in vqgan.parameters())
    assert {p.device.type for p in vqgan.parameters()} == {"cpu"}


def test_clip_round_trip_is_exact_and_fp32_on_cpu(tiny_model_dir):
    import clip

    saved = _tiny_clip()
    loaded, info = load_clip(str(tiny_model_dir["clip"]), device="cpu", progress=False)
    assert set(loaded.state_dict()) == set(saved.state_dict())
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    for key, tensor in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    image = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    tokens = clip.tokenize(["Oregon 💚 painting", "a heptagonal stop sign"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(image), saved.encode_image(image))
        assert torch.equal(loaded.encode_text(tokens), saved.encode_text(tokens))
    assert loaded.visual.input_resolution == 32
    # Several heads in each tower, and as many after reload (build_model infers them), so the
    # lean modules are compared with CLIP's where heads interact.
    heads = [
        {block.attn.num_heads for block in tower.resblocks}
        for tower in (loaded.visual.transformer, loaded.transformer)
    ]
    assert heads == [{3}, {2}]
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert info == ModelInfo(
        "clip.pt",
        {"weights": str(tiny_model_dir["clip"].resolve())},
        {"weights": sha256(tiny_model_dir["clip"])},
    )


def test_load_models_from_runconfig(tiny_models, tiny_model_dir):
    assert isinstance(tiny_models, Models)
    assert tiny_models.device == torch.device("cpu")
    assert tiny_models.clip_size == 32
    assert tiny_models.vqgan_info.name == "vqgan.ckpt"
    assert tiny_models.clip_info.name == "clip.pt"
    recipe = json.loads(json.dumps(tiny_models.vqgan_info.to_dict()))
    assert recipe["sha256"]["checkpoint"] == sha256(tiny_model_dir["vqgan_checkpoint"])
    assert {p.dtype for p in tiny_models.clip.parameters()} == {torch.float32}


def test_loading_leaves_the_global_rng_alone(tiny_model_dir):
    # Building the networks draws throw-away initial weights; a seeded run must not
    # depend on whether models were loaded before or after seeding.
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    load_tiny_vqgan(tiny_model_dir)
    load_clip(str(tiny_model_dir["clip"]), progress=False)
    assert torch.equal(torch.rand(4), expected)


def test_load_models_needs_both_local_vqgan_files(tiny_model_dir):
    config = RunConfig(vqgan_config=str(tiny_model_dir["vqgan_config"]), device="cpu")
    with pytest.raises(ModelError, match="needs both files"):
        load_models(config, progress=False)


def test_gumbel_vqgan_loads_with_embed_codebook(tmp_path):
    params = _tiny_vqgan_yaml()["model"]["params"]
    torch.manual_seed(0)
    saved = VQGAN(params["ddconfig"], params["embed_dim"], params["n_embed"], gumbel=True)
    config = _tiny_vqgan_yaml()
    config["model"]["target"] = "taming.models.vqgan.GumbelVQ"
    (tmp_path / "gumbel.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "gumbel.ckpt").write_bytes(_lightning_checkpoint_bytes(saved.state_dict()))
    loaded, _ = load_vqgan(
        config_path=tmp_path / "gumbel.yaml", checkpoint_path=tmp_path / "gumbel.ckpt"
    )
    assert loaded.gumbel
    assert loaded.codebook is loaded.quantize.embed.weight
    assert loaded.codebook.shape == (256, 32)
    assert "quantize.proj.weight" in loaded.state_dict()
    assert torch.equal(loaded.codebook, saved.codebook)


# --- refusals and clear errors ---------------------------------------------------------


class RunsCode:
    """Pickles as a call to os.system: loading it unsafely would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class UnknownThing:
    """A class no checkpoint loader should instantiate."""


def test_checkpoint_with_code_is_refused_and_nothing_runs(tiny_model_dir, tmp_path):
    marker = tmp_path / "executed"
    state = _tiny_vqgan().state_dict()
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "hook": RunsCode(marker)}, evil)
    with pytest.raises(ModelError) as err:
        load_vqgan(config_path=tiny_model_dir["vqgan_config"], checkpoint_path=evil)
    assert f"{os.system.__module__}.system" in str(err.value)
    assert str(evil) in str(err.value)
    assert not marker.exists()


def test_checkpoint_with_unknown_class_is_refused(tiny_model_dir, tmp_path):
    odd = tmp_path / "odd.ckpt"
    torch.save({"state_dict": _tiny_vqgan().state_dict(), "extra": UnknownThing()}, odd)
    with pytest.raises(ModelError) as err:
        load_vqgan(config_path=tiny_model_dir["vqgan_config"], checkpoint_path=odd)
    assert f"{UnknownThing.__module__}.UnknownThing" in str(err.value)
    assert "Traceback" not in str(err.value)


def test_mismatched_config_and_checkpoint_names_both_and_the_keys(tiny_model_dir, tmp_path):
    config = _tiny_vqgan_yaml()
    config["model"]["params"]["ddconfig"]["ch"] = 64
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError) as err:
        load_vqgan(config_path=other, checkpoint_path=tiny_model_dir["vqgan_checkpoint"])
    message = str(err.value)
    assert "other.yaml" in message and "vqgan.ckpt" in message
    assert "do not belong together" in message
    assert "encoder.conv_in.weight: config [64, 3, 3, 3] vs checkpoint [32, 3, 3, 3]" in message
    assert "size mismatch" not in message


def test_config_that_is_not_a_taming_vqgan(tiny_model_dir, tmp_path):
    ckpt = tiny_model_dir["vqgan_checkpoint"]
    kl = tmp_path / "kl.yaml"
    kl.write_text(
        "model:\n  target: ldm.models.autoencoder.AutoencoderKL\n  params: {embed_dim: 4}\n"
    )
    with pytest.raises(ModelError, match="kl.yaml is not a taming VQGAN config"):
        load_vqgan(config_path=kl, checkpoint_path=ckpt)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ModelError, match="not readable YAML"):
        load_vqgan(config_path=broken, checkpoint_path=ckpt)
    config = _tiny_vqgan_yaml()
    del config["model"]["params"]["ddconfig"]["z_channels"]
    partial = tmp_path / "partial.yaml"
    partial.write_text(yaml.safe_dump(config))
    with pytest.raises(ModelError, match="ddconfig.z_channels"):
        load_vqgan(config_path=partial, checkpoint_path=ckpt)


def test_missing_files_are_named(tiny_model_dir, tmp_path):
    with pytest.raises(ModelError, match="checkpoint file .*nowhere.ckpt does not exist"):
        load_vqgan(
            config_path=tiny_model_dir["vqgan_config"], checkpoint_path=tmp_path / "nowhere.ckpt"
        )
    with pytest.raises(ModelError, match="needs both files"):
        load_vqgan(config_path=tiny_model_dir["vqgan_config"])
    with pytest.raises(ModelError, match="neither a known name nor an existing file"):
        load_clip(str(tmp_path / "nowhere.pt"))
    with pytest.raises(ModelError, match="Unknown VQGAN model 'nope'"):
        load_vqgan("nope")
    not_clip = tmp_path / "not-clip.pt"
    not_clip.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="Could not load CLIP weights"):
        load_clip(str(not_clip))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="Unknown device"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="cannot use a GPU here"):
            resolve_device("cuda")


def test_cache_dir_follows_env_and_is_created(tmp_path, monkeypatch):
    monkeypatch.setenv("VQCLIP_CACHE", str(tmp_path / "a" / "b"))
    assert cache_dir() == (tmp_path / "a" / "b").resolve()
    assert (tmp_path / "a" / "b").is_dir()


# --- downloads from a local server -----------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        server.hits.append(self.path)
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path in server.stall_before_headers:
            server.release.wait(10)  # answer nothing until the client gives up (or teardown)
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path in server.stall:
            self.wfile.write(data[:1000])  # a first block, then silence
            self.wfile.flush()
            server.release.wait(10)
            return
        if self.path in server.trickle:
            for i in range(200):  # a byte every 20 ms: never silent for the whole timeout
                if server.release.wait(0.02):
                    return
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
            return
        if self.path in server.truncate:
            self.wfile.write(data[: len(data) // 2])  # then hang up mid-stream
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    """A file server on 127.0.0.1: set .files {path: bytes}; .url(path); .hits."""
    for name in (
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.files, httpd.hits, httpd.truncate = {}, [], set()
    httpd.stall, httpd.stall_before_headers, httpd.redirects = set(), set(), {}
    httpd.trickle = set()
    httpd.release = threading.Event()  # ends every stalled answer at teardown
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


def closed_port_url(path: str = "/file") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def test_download_tries_urls_in_turn_and_records_hash(server, model_cache):
    data = os.urandom(3 * 1024 * 1024 + 7)  # several read blocks
    server.files["/good.bin"] = data
    dest = model_cache / "sub" / "good.bin"
    urls = [closed_port_url(), server.url("/missing.bin"), server.url("/good.bin")]
    assert download(urls, dest, what="test file", progress=False) == dest
    assert dest.read_bytes() == data
    record = json.loads((model_cache / "sub" / "good.bin.json").read_text())
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert record["size"] == len(data)
    assert record["source"] == urls[2]
    assert cache_files(model_cache) == ["sub/good.bin", "sub/good.bin.json"]


def test_download_from_file_url_and_html_refused(server, model_cache, tmp_path):
    source = tmp_path / "source.yaml"
    source.write_text("model: {}\n")
    dest = model_cache / "x.yaml"
    server.files["/page"] = b"<!DOCTYPE html><html><body>Log in</body></html>"
    with pytest.raises(ModelError, match="web page instead of the file"):
        download([server.url("/page")], dest, what="page", progress=False)
    assert cache_files(model_cache) == []
    download([source.as_uri()], dest, what="local file", progress=False)
    assert dest.read_text() == "model: {}\n"


def test_interrupted_download_leaves_nothing_in_the_cache(server, model_cache):
    server.files["/cut.ckpt"] = os.urandom(2 * 1024 * 1024)
    server.truncate.add("/cut.ckpt")
    with pytest.raises(ModelError) as err:
        download([server.url("/cut.ckpt")], model_cache / "cut.ckpt", what="cut", progress=False)
    assert "the connection closed after" in str(err.value)
    assert cache_files(model_cache) == []


def test_a_stalled_server_times_out_and_the_next_url_is_used(server, model_cache, monkeypatch):
    """A body that stops coming (or headers that never come) fails that URL after the
    timeout (VQCLIP_DOWNLOAD_TIMEOUT, 30 s unless set) and the next one is tried."""
    monkeypatch.setenv("VQCLIP_DOWNLOAD_TIMEOUT", "0.3")
    data = os.urandom(2 * 1024 * 1024)
    server.files["/slow.bin"] = server.files["/good.bin"] = server.files["/mute.bin"] = data
    server.stall.add("/slow.bin")
    server.stall_before_headers.add("/mute.bin")
    dest = model_cache / "m" / "slow.bin"
    started = time.monotonic()
    with pytest.raises(ModelError) as err:
        download([server.url("/slow.bin"), server.url("/mute.bin")], dest, what="w", progress=False)
    assert str(err.value).count("no data for 0.3 s (timed out)") == 2
    assert f"belongs at {dest}" in str(err.value)  # and how to put it there by hand
    assert cache_files(model_cache) == []  # the first 1000 bytes were not kept
    urls = [server.url("/slow.bin"), server.url("/good.bin")]
    assert download(urls, dest, what="w", progress=False).read_bytes() == data
    assert time.monotonic() - started < 5
    assert json.loads((model_cache / "m" / "slow.bin.json").read_text())["source"] == urls[1]
    assert cache_files(model_cache) == ["m/slow.bin", "m/slow.bin.json"]


def test_a_trickling_server_is_given_up_and_the_next_url_is_used(server, model_cache, monkeypatch):
    """A server that sends a byte now and then is never silent for the timeout, so each
    timeout must bring at least 1 MiB, or the URL counts as failed."""
    monkeypatch.setenv("VQCLIP_DOWNLOAD_TIMEOUT", "0.3")
    data = os.urandom(2 * 1024 * 1024)
    server.files["/drip.bin"] = server.files["/good.bin"] = data
    server.trickle.add("/drip.bin")
    dest = model_cache / "drip.bin"
    started = time.monotonic()
    urls = [server.url("/drip.bin"), server.url("/good.bin")]
    assert download(urls, dest, what="d", progress=False).read_bytes() == data
    assert time.monotonic() - started < 3
    with pytest.raises(ModelError) as err:
        download(urls[:1], model_cache / "only.bin", what="d", progress=False)
    assert "too slow:" in str(err.value) and "less than 1 MiB" in str(err.value)
    assert "VQCLIP_DOWNLOAD_TIMEOUT" in str(err.value)
    assert cache_files(model_cache) == ["drip.bin", "drip.bin.json"]


def test_a_redirect_is_followed_over_http_and_refused_elsewhere(server, model_cache, tmp_path):
    """Mirrors redirect (heibox's share links do): http(s) redirects are followed; one to a
    file:// address, a loop or a dead end fails that URL, is reported, and the next is tried."""
    data = os.urandom(1024 * 1024 + 3)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"local file a server must not make us read")
    server.files["/real.bin"] = data
    server.redirects.update(
        {
            "/moved": server.url("/real.bin"),
            "/to-a-local-file": secret.as_uri(),
            "/loop": "/loop",
            "/to-nowhere": server.url("/gone.bin"),
        }
    )
    dest = model_cache / "r.bin"
    tried = [server.url(p) for p in ("/to-a-local-file", "/loop", "/to-nowhere")]
    with pytest.raises(ModelError) as err:
        download(tried, dest, what="r", progress=False)
    message = str(err.value)
    refused = f"Redirection to url '{secret.as_uri()}' is not allowed"
    assert f"{tried[0]} (HTTP 302 Found - {refused})" in message
    assert (
        f"{tried[1]} (HTTP 302 The HTTP server returned a redirect error that would lead to an infinite loop."
        in message
    )
    assert f"{tried[2]} (HTTP 404 Not Found)" in message
    assert "\n" not in message
    assert cache_files(model_cache) == []
    assert download([*tried, server.url("/moved")], dest, what="r", progress=False) == dest
    assert dest.read_bytes() == data
    assert cache_files(model_cache) == ["r.bin", "r.bin.json"]


def test_ctrl_c_during_download_leaves_nothing_and_stops(server, model_cache, monkeypatch):
    import tqdm.auto

    class Interrupting(tqdm.auto.tqdm):
        def update(self, n=1):
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm.auto, "tqdm", Interrupting)
    server.files["/a.bin"] = server.files["/b.bin"] = os.urandom(2 * 1024 * 1024)
    with pytest.raises(KeyboardInterrupt):
        download([server.url("/a.bin"), server.url("/b.bin")], model_cache / "a.bin", what="a")
    assert server.hits == ["/a.bin"]  # Ctrl-C is not a failed URL: nothing more is tried
    assert cache_files(model_cache) == []


def test_registry_vqgan_downloads_verifies_and_detects_tampering(
    server, model_cache, tiny_model_dir, monkeypatch
):
    server.files["/m.yaml"] = tiny_model_dir["vqgan_config"].read_bytes()
    server.files["/m.ckpt"] = tiny_model_dir["vqgan_checkpoint"].read_bytes()
    source = VQGANSource(
        (server.url("/gone.yaml"), server.url("/m.yaml")),
        (closed_port_url("/m.ckpt"), server.url("/m.ckpt")),
    )
    monkeypatch.setitem(registry.VQGAN_MODELS, "tiny_test", source)
    model, info = load_vqgan("tiny_test", progress=False)
    ckpt = model_cache / "vqgan" / "tiny_test.ckpt"
    assert info.name == "tiny_test"
    assert info.files["checkpoint"] == str(ckpt)
    assert info.sha256["checkpoint"] == sha256(tiny_model_dir["vqgan_checkpoint"])
    record = json.loads((model_cache / "vqgan" / "tiny_test.ckpt.json").read_text())
    assert record["sha256"] == info.sha256["checkpoint"]
    assert record["size"] == ckpt.stat().st_size
    assert torch.equal(model.codebook, _tiny_vqgan().codebook)

    hits = len(server.hits)
    load_vqgan("tiny_test", progress=False)  # from the cache, verified, no network
    assert len(server.hits) == hits

    with open(ckpt, "r+b") as f:  # flip one byte somewhere in the weights
        f.seek(ckpt.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ModelError) as err:
        load_vqgan("tiny_test", progress=False)
    message = str(err.value)
    assert str(ckpt) in message
    assert info.sha256["checkpoint"] in message and sha256(ckpt) in message
    assert "Delete it" in message


def test_all_urls_failing_explains_everything(model_cache, monkeypatch):
    urls = (closed_port_url("/model.yaml"), closed_port_url("/mirror.yaml"))
    ckpt_urls = (closed_port_url("/last.ckpt"),)
    monkeypatch.setitem(registry.VQGAN_MODELS, DEFAULT_VQGAN, VQGANSource(urls, ckpt_urls))
    with pytest.raises(ModelError) as err:
        load_vqgan(DEFAULT_VQGAN, progress=False)
    message = str(err.value)
    assert repr(DEFAULT_VQGAN) in message
    for url in urls + ckpt_urls:
        assert url in message
    assert message.count("Connection refused") == 3
    assert str(model_cache / "vqgan" / f"{DEFAULT_VQGAN}.yaml") in message
    assert str(model_cache / "vqgan" / f"{DEFAULT_VQGAN}.ckpt") in message
    assert "--vqgan-config" in message and "--vqgan-checkpoint" in message
    assert "vqclip make-tiny-models DIR" in message
    assert cache_files(model_cache) == []


def test_offline_real_registry_names_every_real_url(model_cache, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(ModelError) as err:
        load_vqgan(progress=False)
    source = registry.VQGAN_MODELS[DEFAULT_VQGAN]
    for url in source.config_urls + source.checkpoint_urls:
        assert f"{url} (network disabled in tests)" in str(err.value)
    with pytest.raises(ModelError) as err:
        load_clip(progress=False)
    message = str(err.value)
    assert registry.CLIP_MODELS[DEFAULT_CLIP] in message
    assert str(model_cache / "clip" / "ViT-B-32.pt") in message
    assert "--clip FILE.pt" in message and "make-tiny-models" in message


def test_registry_clip_downloads_checks_url_hash(server, model_cache, tiny_model_dir, monkeypatch):
    data = tiny_model_dir["clip"].read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    server.files[f"/{digest}/Tiny-32.pt"] = data
    server.files[f"/{'0' * 64}/Bad-32.pt"] = data
    monkeypatch.setitem(registry.CLIP_MODELS, "Tiny/32", server.url(f"/{digest}/Tiny-32.pt"))
    monkeypatch.setitem(registry.CLIP_MODELS, "Bad/32", server.url(f"/{'0' * 64}/Bad-32.pt"))
    model, info = load_clip("Tiny/32", progress=False)
    assert info == ModelInfo(
        "Tiny/32", {"weights": str(model_cache / "clip" / "Tiny-32.pt")}, {"weights": digest}
    )
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    with pytest.raises(ModelError) as err:
        load_clip("Bad/32", progress=False)
    assert f"sha256 is {digest}, not the expected {'0' * 64}" in str(err.value)
    assert not (model_cache / "clip" / "Bad-32.pt").exists()
    # A damaged cached copy is caught against the hash in its URL.
    (model_cache / "clip" / "Tiny-32.pt").write_bytes(data[:-1])
    with pytest.raises(ModelError, match=f"expected sha256 {digest}"):
        load_clip("Tiny/32", progress=False)
