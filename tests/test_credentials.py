"""Content credentials (C2PA): every output signed, read back by c2pa's own Reader, tampering
caught, the local identity made in the (test's private) cache folder, verify offline."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from vqclip import credentials
from vqclip.cli import main
from vqclip.credentials import SOURCE_TYPE, content_bytes, local_identity, verify
from vqclip.export import (
    comparison_strip,
    export_run,
    make_gif,
    make_mp4,
    read_recipe,
    save_png,
)

c2pa = pytest.importorskip("c2pa")

RECIPE = {
    "config": {"prompt": "Oregon 💚 painting", "seed": 7, "size": [32, 24]},
    "iteration": 50,
    "models": {"vqgan": {"name": "tiny", "sha256": {"checkpoint": "ab" * 32}}},
}


def picture(shift: int = 0) -> np.ndarray:
    """[24, 32, 3] uint8, a gradient with blue = shift."""
    x = np.linspace(0, 255, 32)[None, :].repeat(24, 0)
    y = np.linspace(0, 255, 24)[:, None].repeat(32, 1)
    return np.stack([x, y, np.full_like(x, shift)], -1).round().astype(np.uint8)


def chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset, length) of each PNG chunk."""
    found, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        found.append((data[at + 4 : at + 8], at, length))
        at += 12 + length
    return found


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def c2pa_read(path: Path, anchor: Path | None = None) -> tuple[str, list[str], dict]:
    """c2pa's own reading, offline: (validation state, failure codes, active manifest)."""
    settings: dict = {"verify": {"remote_manifest_fetch": False}}
    if anchor is not None:
        settings["trust"] = {"user_anchors": anchor.read_text()}
    with c2pa.Reader(str(path), context=c2pa.Context.from_dict(settings)) as reader:
        results = reader.get_validation_results()["activeManifest"]
        failures = [item["code"] for item in results.get("failure", [])]
        return reader.get_validation_state(), failures, reader.get_active_manifest()


@pytest.fixture
def signed(tmp_path: Path) -> Path:
    return save_png(picture(), tmp_path / "000050.png", RECIPE)


def test_a_png_reads_back_valid_with_c2pas_own_reader_and_says_machine_made(signed):
    state, failures, manifest = c2pa_read(signed)
    assert state == "Valid" and failures == ["signingCredential.untrusted"]  # a local key
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    (created,) = actions["data"]["actions"]
    assert created["action"] == "c2pa.created" and created["digitalSourceType"] == SOURCE_TYPE
    assert created["softwareAgent"]["name"] == "vqclip"
    assert created["parameters"]["models"] == RECIPE["models"]
    recipe = next(a for a in manifest["assertions"] if a["label"] == "org.vqclip.recipe")
    assert recipe["data"]["format"] == "json" and json.loads(recipe["data"]["recipe"]) == RECIPE
    assert "thumbnail" not in manifest  # off: it would scale the picture up to 1024 px
    assert manifest["title"] == "000050.png"
    assert read_recipe(signed) == RECIPE  # the recipe chunk is still there
    with Image.open(signed) as im:
        assert np.array_equal(np.asarray(im), picture())


def test_the_local_identity_is_made_once_in_the_cache_and_is_trusted_only_by_its_ca(
    signed, tmp_path
):
    bundle, ca = local_identity()
    assert bundle.parent == Path(os.environ["VQCLIP_CACHE"]).resolve() / "credentials"
    assert bundle.stat().st_mode & 0o777 == 0o600  # it holds a private key
    data = bundle.read_bytes()
    assert data.count(b"PRIVATE KEY-----") == 2  # the leaf's key alone: the CA's is gone
    from cryptography import x509

    leaf = x509.load_pem_x509_certificates(data)[0]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert local_identity() == (bundle, ca) and bundle.read_bytes() == data  # made once
    assert c2pa_read(signed, ca)[:2] == ("Trusted", [])
    assert verify(signed, ca).state == "trusted"
    other = tmp_path / "other"
    _, stranger = local_identity(other)
    assert verify(signed, stranger).state == "valid"  # intact, but not under that anchor


def test_an_untrusted_but_valid_file_is_explained(signed):
    verdict = verify(signed)
    assert verdict.state == "valid" and verdict.ok
    assert "vqclip signer" in verdict.signer
    (reason,) = verdict.reasons
    assert "not on any trust list" in reason and "--trust-anchor" in reason
    assert "whoever holds that key" in verdict.explain()


def test_a_flipped_pixel_byte_reads_invalid(signed):
    data = bytearray(signed.read_bytes())
    _, at, _ = next(c for c in chunks(bytes(data)) if c[0] == b"IDAT")
    data[at + 8 + 20] ^= 1
    signed.write_bytes(bytes(data))
    verdict = verify(signed)
    assert verdict.state == "invalid" and not verdict.ok
    assert "changed after it was signed" in verdict.explain()
    assert "assertion.dataHash.mismatch" in c2pa_read(signed)[1]


def test_an_added_text_chunk_reads_invalid(signed):
    data = signed.read_bytes()
    end = chunks(data)[-1][1]  # IEND
    signed.write_bytes(data[:end] + chunk(b"tEXt", b"Comment\x00edited") + data[end:])
    assert Image.open(signed).text["Comment"] == "edited"
    assert verify(signed).state == "invalid"


def test_a_re_save_reads_invalid_or_missing(signed, tmp_path):
    # A tool that keeps every chunk but compresses the pixels anew: the manifest no longer fits.
    data = signed.read_bytes()
    found = chunks(data)
    with Image.open(signed) as im:
        rows = np.asarray(im.convert("RGB"))
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter 0 on every row
    body = [data[at : at + 12 + n] for kind, at, n in found if kind not in (b"IDAT", b"IEND")]
    resaved = tmp_path / "resaved.png"
    resaved.write_bytes(
        data[:8] + b"".join(body) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
    )
    with Image.open(resaved) as im:
        assert np.array_equal(np.asarray(im), picture())  # the same pixels
    assert verify(resaved).state == "invalid"
    # Pillow drops the manifest on a re-save: no credential left at all.
    plain = tmp_path / "plain.png"
    Image.open(signed).save(plain)
    verdict = verify(plain)
    assert verdict.state == "missing" and "re-saved" in verdict.explain()


def test_content_bytes_is_the_file_without_its_manifest(signed, tmp_path):
    unsigned = save_png(picture(), tmp_path / "unsigned.png", RECIPE, credentials=None)
    again = save_png(picture(), tmp_path / "again.png", RECIPE)
    assert b"caBX" in signed.read_bytes() and b"caBX" not in unsigned.read_bytes()
    assert signed.read_bytes() != again.read_bytes()  # every signature is unique
    assert content_bytes(signed) == content_bytes(again) == unsigned.read_bytes()
    other = save_png(picture(shift=1), tmp_path / "other.png", RECIPE)
    assert content_bytes(other) != content_bytes(signed)  # other pixels


def test_without_the_wheel_the_recipe_is_written_and_one_notice_says_why(tmp_path, monkeypatch):
    monkeypatch.setattr(credentials, "unavailable", lambda: "c2pa-python is not installed")
    monkeypatch.setattr(credentials, "_noticed", False)
    with pytest.warns(UserWarning, match="content credentials are off: c2pa-python is not"):
        path = save_png(picture(), tmp_path / "a.png", RECIPE)
    assert read_recipe(path) == RECIPE and b"caBX" not in path.read_bytes()
    assert not (Path(os.environ["VQCLIP_CACHE"]) / "credentials").exists()


def test_verify_command_states_and_exit_codes(signed, tmp_path, capsys):
    assert main(["verify", str(signed)]) == 0
    out = capsys.readouterr().out
    assert f"{signed}: valid" in out and "--trust-anchor" in out
    _, ca = local_identity()
    assert main(["verify", str(signed), "--trust-anchor", str(ca)]) == 0
    assert f"{signed}: trusted" in capsys.readouterr().out
    data = bytearray(signed.read_bytes())
    data[chunks(bytes(data))[-2][1] + 9] ^= 1  # a byte of the last IDAT
    signed.write_bytes(bytes(data))
    assert main(["verify", str(signed)]) == 1
    assert f"{signed}: invalid" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "nothing.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["verify", str(signed), "--trust-anchor", str(local_identity()[0].parent)]) == 2
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["verify", str(tmp_path / "notes.txt")]) == 2
    assert "vqclip signs PNG, GIF and MP4" in capsys.readouterr().err


def test_a_bad_trust_anchor_is_refused_clearly(signed, tmp_path):
    key_only = tmp_path / "key.pem"
    key_only.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(credentials.CredentialError, match="holds no PEM certificate"):
        verify(signed, key_only)


def test_every_output_of_a_run_verifies(tiny_config, tiny_models):
    from vqclip.observers import generate
    from vqclip.state import SNAPSHOT_DIR

    result = generate(
        tiny_config.replace(iterations=2, snapshots="1,2"), tiny_models, progress=False
    )
    files = sorted((result.run_dir / SNAPSHOT_DIR).glob("*.png")) + [result.final]
    files.append(result.run_dir / "best.png")  # keep-best's picture, signed as the others
    assert len(files) == 4 and all(path.is_file() for path in files)
    _, ca = local_identity()
    for path in files:
        assert verify(path, ca).state == "trusted", path
        assert c2pa_read(path)[0] == "Valid"
        manifest = c2pa_read(path)[2]
        stored = next(a for a in manifest["assertions"] if a["label"] == "org.vqclip.recipe")
        assert json.loads(stored["data"]["recipe"]) == read_recipe(path)


def frames() -> list[np.ndarray]:
    return [picture(shift) for shift in (0, 80, 160)]


@pytest.mark.parametrize(("name", "write"), [("a.gif", make_gif), ("a.mp4", make_mp4)])
def test_gif_and_mp4_read_back_valid_and_hold_the_recipe(tmp_path, name, write):
    path = write(frames(), tmp_path / name, metadata=RECIPE)
    state, failures, manifest = c2pa_read(path)
    assert state == "Valid" and failures == ["signingCredential.untrusted"]
    actions = next(a for a in manifest["assertions"] if a["label"].startswith("c2pa.actions"))
    assert actions["data"]["actions"][0]["digitalSourceType"] == SOURCE_TYPE
    stored = next(a for a in manifest["assertions"] if a["label"] == "org.vqclip.recipe")
    assert json.loads(stored["data"]["recipe"]) == RECIPE
    assert verify(path, local_identity()[1]).state == "trusted"
    assert len(iio.imread(path, index=None)) >= 3  # still a readable animation


@pytest.mark.parametrize(("name", "write"), [("a.gif", make_gif), ("a.mp4", make_mp4)])
def test_content_bytes_of_two_signings_of_an_animation_agree(tmp_path, name, write):
    one = write(frames(), tmp_path / f"one-{name}", metadata=RECIPE)
    two = write(frames(), tmp_path / f"two-{name}", metadata=RECIPE)
    bare = write(frames(), tmp_path / f"bare-{name}", metadata=RECIPE, credentials=None)
    assert one.read_bytes() != two.read_bytes()
    assert content_bytes(one) == content_bytes(two)
    if name.endswith(".gif"):  # a GIF's manifest is one block: without it, the unsigned file
        assert content_bytes(one) == bare.read_bytes()


def test_a_changed_frame_reads_invalid_in_a_gif(tmp_path):
    path = make_gif(frames(), tmp_path / "a.gif", metadata=RECIPE)
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x55  # inside the last frame's compressed pixels
    path.write_bytes(bytes(data))
    verdict = verify(path)
    assert verdict.state == "invalid" and "changed after it was signed" in verdict.explain()


def test_a_changed_byte_reads_invalid_in_an_mp4(tmp_path):
    path = make_mp4(frames(), tmp_path / "a.mp4", metadata=RECIPE)
    data = bytearray(path.read_bytes())
    at = data.index(b"mdat") + 200  # inside the video stream
    data[at] ^= 0x55
    path.write_bytes(bytes(data))
    verdict = verify(path)
    assert verdict.state == "invalid" and "video's bytes changed" in verdict.explain()


def test_export_run_signs_the_gif_and_mp4_and_the_strip(tmp_path):
    run = tmp_path / "run"
    for i, frame in zip((1, 2, 4), frames()):
        save_png(frame, run / "snapshots" / f"{i:06d}.png", {**RECIPE, "iteration": i})
    written = export_run(run, gif=True, mp4=True)
    strip = comparison_strip(run, at=[1, 4])
    assert [p.name for p in written] == ["animation.gif", "animation.mp4"]
    for path in [*written, strip]:
        assert verify(path).state == "valid", path
    manifest = c2pa_read(written[0])[2]
    stored = next(a for a in manifest["assertions"] if a["label"] == "org.vqclip.recipe")
    assert json.loads(stored["data"]["recipe"])["iteration"] == 4  # the last snapshot's recipe


def own_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """(cert chain, key, CA) files of an identity of one's own, as separate PEM files."""
    bundle, ca = local_identity(folder)
    data = bundle.read_bytes()
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(credentials._pem_blocks(data, b"CERTIFICATE")))
    key.write_bytes(credentials._pem_blocks(data, b"PRIVATE KEY")[0])
    return cert, key, ca


def test_no_credentials_writes_unsigned_files_with_their_recipe(tiny_config, tiny_models):
    from vqclip.observers import generate

    config = tiny_config.replace(iterations=2, snapshots="1", credentials=False)
    result = generate(config, tiny_models, progress=False)
    for path in (result.run_dir / "snapshots" / "000001.png", result.final):
        assert verify(path).state == "missing"
        assert read_recipe(path)["iteration"] in (1, 2)
    assert not (Path(os.environ["VQCLIP_CACHE"]) / "credentials").exists()  # no key made


def test_a_run_signs_with_the_users_own_certificate(tiny_config, tiny_models, tmp_path):
    from vqclip.observers import generate

    cert, key, ca = own_certificate(tmp_path / "mine")
    config = tiny_config.replace(iterations=2, snapshots="1", signing_cert=str(cert))
    config = config.replace(signing_key=str(key)).validate()
    result = generate(config, tiny_models, progress=False)
    assert verify(result.final, ca).state == "trusted"
    assert not (Path(os.environ["VQCLIP_CACHE"]) / "credentials").exists()  # not the local one
    assert "signing_cert" not in read_recipe(result.final)["config"]  # where, not what


def test_signing_settings_are_checked_with_the_others(tmp_path, tiny_config):
    from vqclip.config import ConfigError

    cert, key, _ = own_certificate(tmp_path / "mine")
    with pytest.raises(ConfigError, match="signing_cert and signing_key go together") as caught:
        tiny_config.replace(signing_cert=str(cert)).validate()
    assert caught.value.field == "signing_key"
    with pytest.raises(ConfigError, match="signing_key file .* does not exist"):
        tiny_config.replace(signing_cert=str(cert), signing_key=str(tmp_path / "no")).validate()
    with pytest.raises(ConfigError, match="not an http"):
        tiny_config.replace(timestamp_url="ftp://tsa").validate()


def test_a_ca_certificate_as_signer_is_refused_before_anything_is_written(
    tmp_path, tiny_flags, capsys
):
    _, _, ca = own_certificate(tmp_path / "mine")
    ca_key = tmp_path / "mine" / "key.pem"  # any key: c2pa refuses a CA as a signer first
    out = tmp_path / "runs"
    flags = ["--signing-cert", str(ca), "--signing-key", str(ca_key), "--out", str(out)]
    code = main(["generate", "a unicorn", *tiny_flags, "--iterations", "2", *flags])
    err = capsys.readouterr().err
    assert code == 2 and "c2pa could not sign" in err and "not a CA" in err
    assert not out.exists()


def test_info_shows_the_credential_and_the_gallery_too(signed, capsys):
    assert main(["info", str(signed)]) == 0
    assert "content credential: valid" in capsys.readouterr().out
    data = signed.read_bytes()
    end = chunks(data)[-1][1]  # an edit that keeps the PNG readable: a chunk added
    signed.write_bytes(data[:end] + chunk(b"tEXt", b"Comment\x00edited") + data[end:])
    assert main(["info", str(signed)]) == 0
    assert "content credential: INVALID" in capsys.readouterr().out

    from vqclip.ui.gallery import Gallery

    gallery = Gallery()
    save_png(picture(), signed.parent / "snapshots" / "000001.png", RECIPE)
    gallery.load(signed.parent)
    assert "content credential: valid" in gallery.label.value
    gallery.add(2, Image.fromarray(picture(1)))  # a live frame: not a file, nothing to check
    assert gallery.label.value == "it 2 (2 of 2)"


def test_the_local_identity_lives_in_hubs_cache_folder_and_a_damaged_one_is_named():
    from vqclip.hub import cache_dir

    bundle, _ = local_identity()
    assert credentials.credentials_dir() == cache_dir() / "credentials" == bundle.parent
    bundle.write_bytes(bundle.read_bytes().split(b"-----BEGIN PRIVATE KEY")[0])  # key lost
    with pytest.raises(credentials.CredentialError, match="is damaged.*Delete it"):
        save_png(picture(), bundle.parent.parent / "x.png", RECIPE)
    assert not (bundle.parent.parent / "x.png").exists()  # nothing half-written instead


def test_export_command_signs_unless_told_not_to(tmp_path):
    run = tmp_path / "run"
    for i, frame in zip((1, 2), frames()):
        save_png(frame, run / "snapshots" / f"{i:06d}.png", {**RECIPE, "iteration": i})
    assert main(["export", str(run), "--gif"]) == 0
    assert verify(run / "animation.gif").state == "valid"
    assert main(["export", str(run), "--gif", "--no-credentials"]) == 0
    assert verify(run / "animation.gif").state == "missing"


def test_a_failed_signing_leaves_the_previous_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "out"
    old = save_png(picture(), out / "000001.png", RECIPE)
    before = old.read_bytes()

    def refuse(self, *args, **kwargs):
        raise c2pa.C2paError("disk gone mid-signing")

    monkeypatch.setattr(c2pa.Builder, "sign", refuse)
    with pytest.raises(credentials.CredentialError, match="could not sign 000001.png"):
        save_png(picture(1), out / "000001.png", RECIPE)
    assert old.read_bytes() == before and verify(old).state == "valid"
    assert [p.name for p in out.iterdir()] == ["000001.png"]  # neither temp file is left


@pytest.mark.parametrize("signed", [True, False])
def test_a_sweeps_sheets_and_the_panels_export_sign_as_their_settings_say(
    signed, tiny_config, tiny_models, tmp_path
):
    """Every output follows the run's (or the sweep's) --no-credentials, sheets and the
    panel's Export button too, not only the snapshots."""
    from vqclip.sweep import load_judge, rank_sweep, run_sweep, sheets, start_sweep
    from vqclip.ui import Panel

    base = tiny_config.replace(iterations=2, snapshots="1,last", credentials=signed)
    folder = start_sweep(base.replace(seed=None, name=None), ["a cat"], ["", "ink"], [1], "s")
    run_sweep(folder, tiny_models, progress=False)
    rank_sweep(folder, *load_judge(None, tiny_models))
    want = "valid" if signed else "missing"
    assert {verify(sheet).state for sheet in sheets(folder)} == {want}

    panel = Panel(base, models=tiny_models, out=tmp_path / "runs")
    run = sorted(p.parent for p in folder.rglob("run.json"))[0]
    panel.show_run(run)
    (gif,) = panel.export()
    assert verify(gif).state == want
