"""Animations (vqclip.motion): keyframes, the camera warp, kill and resume byte for byte,
restyled video flicker, the CLI's refusals, export, and reproducing a frame."""

import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from vqclip.cli import main
from vqclip.config import ConfigError
from vqclip.credentials import content_bytes
from vqclip.export import make_mp4, read_recipe
from vqclip.motion import (
    MotionConfig,
    animate,
    export_animation,
    finished_frames,
    frame_seed,
    frames_difference,
    read_animation,
    reproduce_frame,
    resume_animation,
)
from vqclip.motion_config import parse_keyframes
from vqclip.observers import reproduce
from vqclip.state import RunError
from vqclip.warp import affine_warp

# A zoom with two keyframed prompts: the done-when's 48 frames killed at 30, scaled down.
FRAMES, KILL_AT = 6, 3
TIMELINE = ["3: a forest"]


def _motion(**changes):
    values = dict(frames=FRAMES, steps_per_frame=2, zoom="0:1.0, 5:1.1", pan_x=2, rotate=1.0)
    return MotionConfig(**{**values, **changes})


def _config(tiny_config, out):
    return tiny_config.replace(timeline=TIMELINE, out=str(out), credentials=False)


# --- keyframes ------------------------------------------------------------------------------


def test_keyframes_interpolate_linearly_and_smoothly_and_hold_outside():
    keys = parse_keyframes("0:1.0, 10:2.0, 20:0", "zoom")
    assert [keys.at(f) for f in (-3, 0, 5, 10, 15, 20, 99)] == [1.0, 1.0, 1.5, 2.0, 1.0, 0.0, 0.0]
    assert keys.at(2.5, "smooth") == pytest.approx(1.15625)  # t=0.25 -> 3t^2-2t^3
    assert keys.at(5, "smooth") == 1.5 and keys.at(10, "smooth") == 2.0
    assert parse_keyframes("1.02", "zoom").at(1000) == 1.02
    assert parse_keyframes(0.5, "rotate").keys == ((0, 0.5),)
    assert parse_keyframes({60: 1.03, 0: 1}, "zoom").keys == ((0, 1.0), (60, 1.03))
    assert parse_keyframes(keys.text(), "zoom") == keys


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0:1, 0:2", "frame 0 twice"),
        ("fast", "'fast' is not 'FRAME:VALUE'"),
        ("-1:2", "is not 'FRAME:VALUE'"),
        ("", "is empty"),
        ("0:50", "between 0.1 and 10"),
        ("nan", "between"),
        (True, "not a number"),
    ],
)
def test_bad_keyframes_are_refused_naming_the_setting(value, says):
    with pytest.raises(ConfigError, match=says) as error:
        parse_keyframes(value, "zoom", 0.1, 10)
    assert error.value.field == "zoom" and "\n" not in str(error.value)


def test_camera_of_a_frame_follows_the_keyframes():
    motion = MotionConfig(zoom="0:1, 10:1.1", pan_x=2, pan_y="0:0, 10:-4", rotate=0.5)
    assert motion.camera(5) == {"zoom": pytest.approx(1.05), "pan": [2.0, -2.0], "rotate": 0.5}
    assert frame_seed(7, 0) == 7 and frame_seed(7, 1) == frame_seed(7, 1) != frame_seed(7, 2)


# --- the warp -------------------------------------------------------------------------------


def test_a_still_camera_is_the_identity():
    x = torch.rand(2, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    assert torch.equal(affine_warp(x, 1.0, (0.0, 0.0), 0.0), x)
    # the resampling path itself is the identity too (a turn of nothing)
    assert torch.allclose(affine_warp(x, 1.0, (0.0, 0.0), 1e-12), x, atol=1e-5)


def test_a_pan_moves_every_pixel_by_that_many_pixels():
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    out = affine_warp(x, 1.0, (3.0, 2.0), 0.0)  # right 3, down 2
    assert torch.allclose(out[..., 2:, 3:], x[..., :-2, :-3], atol=1e-5)
    assert not torch.allclose(out, x, atol=0.1)
    latent = affine_warp(x, 1.0, (8.0, 0.0), 0.0, scale=4)  # 8 px is 2 cells of an f4 latent
    assert torch.allclose(latent[..., 2:], x[..., :-2], atol=1e-5)


def test_rotate_turns_clockwise_and_zoom_comes_closer():
    x = torch.zeros(1, 1, 9, 9)
    x[..., 0, 4] = 1.0  # a dot at the top centre
    turned = affine_warp(x, 1.0, (0.0, 0.0), 90.0)
    assert turned[0, 0, 4, 8] == pytest.approx(1.0, abs=1e-4)  # now at the right centre
    y = torch.zeros(1, 1, 9, 9)
    y[..., 4, 3:6] = 1.0  # a bar three pixels wide in the middle
    closer = affine_warp(y, 3.0, (0.0, 0.0), 0.0)
    assert (closer[0, 0, 4] > 0.5).sum() >= 7  # three times as wide (about 9 px)


# --- an animation, killed and resumed -------------------------------------------------------


@pytest.fixture(scope="module")
def whole(tiny_model_dir, tiny_models, tmp_path_factory):
    """One uninterrupted animation (pixel warp), shared: never change it."""
    from vqclip.config import RunConfig

    config = RunConfig(
        prompt="a unicorn", size=[64, 64], cutn=4, seed=7, timeline=TIMELINE,
        vqgan_config=str(tiny_model_dir["vqgan_config"]),
        vqgan_checkpoint=str(tiny_model_dir["vqgan_checkpoint"]),
        clip_model=str(tiny_model_dir["clip"]), device="cpu", precision="fp32",
        out=str(tmp_path_factory.mktemp("whole")), credentials=False, name="whole",
    )  # fmt: skip
    frames = list(animate(config, _motion(), tiny_models))
    assert [f.index for f in frames] == list(range(FRAMES))
    return frames


def test_frames_follow_the_prompt_timeline_by_frame(whole):
    assert [f.prompts for f in whole] == ["a unicorn"] * 3 + ["a forest"] * 3
    record = read_animation(whole[0].anim_dir)
    assert record["status"] == "done" and record["frame"] == FRAMES
    recipe = read_recipe(whole[4].path)
    assert recipe["config"]["prompt"] == "a forest" and recipe["motion"]["previous"] == "000003.png"
    assert recipe["motion"]["camera"]["zoom"] == pytest.approx(1.08)
    assert recipe["iteration"] == 2 and recipe["config"]["seed"] == frame_seed(7, 4)
    # each frame moved on from the last: not the same picture
    assert len({f.image.tobytes() for f in whole}) == FRAMES


def test_a_frame_starts_from_the_previous_frame_moved_by_its_camera(whole, tiny_models):
    from vqclip.warp import encode, start_latent

    how = read_recipe(whole[4].path)["motion"]
    z = start_latent(how, whole[4].path.parent, tiny_models, (64, 64))  # [1, C, 16, 16]
    previous = np.asarray(Image.open(whole[3].path).convert("RGB"), dtype=np.uint8).copy()
    pixels = torch.from_numpy(previous).permute(2, 0, 1)[None].float() / 255
    moved = affine_warp(pixels, 1.08, (2.0, 0.0), 1.0)  # zoom keyed 1.0 -> 1.1 over frames 0-5
    assert torch.equal(z, encode(tiny_models.vqgan, moved))
    assert not torch.allclose(z, encode(tiny_models.vqgan, pixels), atol=1e-3)


def _flags(tiny_flags, out, *extra):
    return [
        "motion", "a unicorn", *tiny_flags, "--size", "64", "64", "--cutn", "4", "--seed", "7",
        "--frames", str(FRAMES), "--steps-per-frame", "2", "--zoom", "0:1.0, 5:1.1",
        "--pan", "2,0", "--rotate", "1", "--timeline", TIMELINE[0], "--out", str(out),
        "--name", "anim", "--no-credentials", "--quiet", *extra,
    ]  # fmt: skip


def test_sigkill_mid_animation_then_resume_is_byte_identical(tiny_flags, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "vqclip", *_flags(tiny_flags, tmp_path, "--steps-per-frame", "4")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    anim = tmp_path / "anim"
    deadline = time.monotonic() + 120
    while not (anim / "frames" / f"{KILL_AT - 1:06d}.png").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the frame never appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_animation(anim)["status"] == "running"  # it never got to say otherwise
    stopped = finished_frames(anim)
    assert KILL_AT <= stopped < FRAMES, "killed too late to test a resume"
    (anim / "frames" / f".{stopped:06d}.png.x1.tmp").write_bytes(b"torn")  # a write cut short
    # 4 steps a frame, so the kill lands mid-way; compared with the same flags uninterrupted
    assert main(["resume", str(anim), "--quiet"]) == 0
    assert not list(anim.rglob(".*.tmp"))
    assert main(_flags(tiny_flags, tmp_path / "again", "--steps-per-frame", "4")) == 0
    for index in range(FRAMES):
        name = f"{index:06d}.png"
        assert content_bytes(anim / "frames" / name) == content_bytes(
            tmp_path / "again" / "anim" / "frames" / name
        ), f"frame {index} differs after the resume"
    mp4s = [
        iio.imread(d / "animation.mp4", plugin="FFMPEG")
        for d in (anim, tmp_path / "again" / "anim")
    ]
    assert len(mp4s[0]) == FRAMES and np.array_equal(*mp4s)


def test_ctrl_c_stops_an_animation_cleanly_and_says_how_to_go_on(tiny_flags, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "vqclip", *_flags(tiny_flags, tmp_path, "--steps-per-frame", "4")]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    anim = tmp_path / "anim"
    deadline = time.monotonic() + 120
    while not (anim / "frames" / "000001.png").exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the frame never appeared"
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 130
    assert f"vqclip motion --resume {anim}" in process.stderr.read().decode()
    record = read_animation(anim)
    assert record["status"] == "stopped" and record["frame"] == finished_frames(anim) >= 2


def test_a_stopped_animation_resumes_to_the_same_bytes(tiny_config, tiny_models, tmp_path, whole):
    """Stopped by closing the generator mid-way, then by should_stop mid-frame; resumed."""
    config = _config(tiny_config, tmp_path).replace(name="whole")
    frames = animate(config, _motion(), tiny_models)
    for frame in frames:
        if frame.index == KILL_AT - 1:
            break
    frames.close()
    anim = frames.anim_dir
    assert read_animation(anim)["status"] == "stopped" and finished_frames(anim) == KILL_AT
    calls = []
    stop_later = lambda: calls.append(1) or len(calls) > 1  # noqa: E731 - mid-frame 3
    assert list(resume_animation(anim, tiny_models, should_stop=stop_later)) == []
    assert finished_frames(anim) == KILL_AT  # the frame being computed was dropped
    rest = list(resume_animation(anim, tiny_models))
    assert [f.index for f in rest] == list(range(KILL_AT, FRAMES))
    for mine, theirs in zip(sorted((anim / "frames").iterdir()), [f.path for f in whole]):
        assert content_bytes(mine) == content_bytes(theirs)


def test_latent_warp_resumes_byte_identical_too(tiny_config, tiny_models, tmp_path):
    config = _config(tiny_config, tmp_path)
    whole = list(animate(config.replace(name="a"), _motion(warp="latent"), tiny_models))
    cut = animate(config.replace(name="b"), _motion(warp="latent"), tiny_models)
    next(cut), next(cut)
    cut.close()
    list(resume_animation(cut.anim_dir, tiny_models))
    for frame in whole:
        assert content_bytes(frame.path) == content_bytes(cut.anim_dir / "frames" / frame.path.name)
    assert (cut.anim_dir / "latents" / "000005.pt").is_file()


def test_reproduce_a_frame_from_the_one_before_it(whole, tmp_path, capsys):
    frame = whole[4].path
    assert main(["reproduce", str(frame), "--out", str(tmp_path)]) == 0
    assert "identical to the original: yes" in capsys.readouterr().out
    assert content_bytes(tmp_path / frame.name) == content_bytes(frame)
    with pytest.raises(RunError, match="frame of an animation"):  # not from a seed
        reproduce(frame, tmp_path / "plain")
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / frame.name).write_bytes(frame.read_bytes())  # without the frame before it
    with pytest.raises(RunError, match="000003.png"):
        reproduce_frame(alone / frame.name, tmp_path / "x")


# --- restyle --------------------------------------------------------------------------------


def test_restyled_video_flickers_less_than_frames_styled_alone(tiny_config, tiny_models, tmp_path):
    yy, xx = np.mgrid[0:64, 0:64]
    video = [
        np.stack([128 + 100 * np.sin((xx + 3 * i) / 6), 128 + 100 * np.cos((yy - 2 * i) / 7),
                  np.full((64, 64), 90.0 + 5 * i)], -1).astype(np.uint8)
        for i in range(8)
    ]  # fmt: skip
    clip = make_mp4(video, tmp_path / "in.mp4", fps=8, hold_last=0, credentials=None)
    config = _config(tiny_config, tmp_path).replace(timeline=[], lr=0.01)
    change = {}
    for blend in (1.0, 0.3):
        motion = MotionConfig(frames=8, steps_per_frame=2, init_video=str(clip), blend=blend,
                              warp="latent")  # fmt: skip
        made = list(animate(config.replace(name=f"b{blend}"), motion, tiny_models))
        change[blend] = frames_difference([f.path for f in made])
    print(f"frame-to-frame change: alone {change[1.0]:.1f}, blend 0.3 {change[0.3]:.1f} levels")
    assert change[0.3] < 0.95 * change[1.0]


# --- CLI refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--frames", "0"], "--frames"),
        (["--zoom", "0:1, 0:2"], "frame 0 twice"),
        (["--pan", "2"], "two numbers X,Y"),
        (["--pan", "2,0", "--pan-x", "1"], "--pan gives both"),
        (["--blend", "2"], "--blend"),
        (["--warp", "sideways"], "--warp"),
        (["--init-video", "missing.mp4"], "missing.mp4"),
        (["--easing", "bouncy"], "--easing"),
        (["--motion-file", "MOTION"], "Unknown motion setting(s): speed"),
        (["--timeline", "x: y"], "timeline"),
    ],
)
def test_bad_motion_flags_exit_2_with_one_paragraph_and_write_nothing(
    tiny_flags, tmp_path, capsys, monkeypatch, extra, says
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "MOTION").write_text("frames: 4\nspeed: 2\n")
    assert main(_flags(tiny_flags, tmp_path / "out", *extra)) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_resume_of_an_animation_refuses_new_settings(whole, capsys):
    assert main(["motion", "--resume", str(whole[0].anim_dir), "--zoom", "2"]) == 2
    assert "leave out the other settings (zoom)" in capsys.readouterr().err
    assert main(["resume", str(whole[0].anim_dir), "--prompt", "x"]) == 2


def test_motion_file_keyframes_and_flags_override_it(tmp_path):
    from vqclip.cli import build_parser
    from vqclip.cli_motion import motion_from_args

    (tmp_path / "m.yaml").write_text("frames: 30\nzoom: {0: 1.0, 20: 1.04}\neasing: smooth\n")
    args = build_parser().parse_args(["motion", "x", "--motion-file", str(tmp_path / "m.yaml"),
                                      "--frames", "12", "--pan", "1,-2"])  # fmt: skip
    motion = motion_from_args(args)
    assert (motion.frames, motion.zoom, motion.easing) == (12, "0:1, 20:1.04", "smooth")
    assert motion.camera(10)["zoom"] == pytest.approx(1.02) and motion.camera(3)["pan"] == [1, -2]


# --- export ---------------------------------------------------------------------------------


def test_export_writes_a_playable_mp4_and_gif_at_the_animation_fps(whole, tmp_path):
    import shutil

    anim = tmp_path / "anim"
    shutil.copytree(whole[0].anim_dir, anim)
    gif, mp4 = export_animation(anim, gif=True, mp4=True, fps=10, labels=True, credentials=None)
    meta = iio.immeta(mp4, plugin="FFMPEG")
    assert meta["fps"] == 10 and meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p")
    assert len(iio.imread(mp4, plugin="FFMPEG")) == FRAMES
    with Image.open(gif) as im:
        assert im.n_frames == FRAMES and im.info["duration"] == 100
    json.loads(Image.open(gif).info["comment"])  # the animation's settings travel inside
    assert main(["export", str(anim), "--mp4", "--interpolate", "2", "--no-credentials"]) == 0
    smooth = iio.immeta(anim / "animation.mp4", plugin="FFMPEG")
    assert smooth["fps"] == 2 * read_animation(anim)["motion"]["fps"]
    assert len(iio.imread(anim / "animation.mp4", plugin="FFMPEG")) > FRAMES


def test_steering_changes_the_prompts_from_the_next_frame_and_is_recorded(
    tiny_config, tiny_models, tmp_path
):
    from vqclip.timeline import Steering

    steering = Steering()
    steering.steer("a castle")  # asked before the first frame: takes effect at frame 1
    config = _config(tiny_config, tmp_path).replace(timeline=[], name="steered")
    made = list(animate(config, _motion(frames=3), tiny_models, steering=steering))
    assert [f.prompts for f in made] == ["a unicorn", "a castle", "a castle"]
    assert read_animation(made[0].anim_dir)["config"]["timeline"] == ["1: a castle"]
    with pytest.raises(ConfigError, match="ended"):
        steering.steer("a tree")


def test_info_of_an_animation_directory_says_how_far_it_got(whole, capsys):
    anim_dir = whole[0].anim_dir
    assert main(["info", str(anim_dir)]) == 0
    said = capsys.readouterr().out
    assert f"animation directory: {anim_dir}" in said and "prompt: a unicorn" in said
    assert "from frame 3: a forest" in said
    assert f"status: done, {FRAMES} of {FRAMES} frames made" in said
    assert main(["info", str(anim_dir), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["frames"], shown["planned"], shown["status"]) == (FRAMES, FRAMES, "done")


def test_an_interrupt_between_a_frame_and_its_count_leaves_the_record_true(
    tiny_config, tiny_models, tmp_path, monkeypatch
):
    """Ctrl-C can land after a frame's PNG is written and before animation.json counts it:
    the record written on the way out counts the finished frames on disk."""
    import vqclip.motion as motion

    update = motion._update

    def interrupted(anim_dir, record, **changes):
        if changes.get("frame") == 2 and "status" not in changes:
            raise KeyboardInterrupt  # frame 1's PNG is on disk, its count not yet
        return update(anim_dir, record, **changes)

    monkeypatch.setattr(motion, "_update", interrupted)
    frames = animate(_config(tiny_config, tmp_path), _motion(frames=3), tiny_models)
    with pytest.raises(KeyboardInterrupt):
        list(frames)
    record = read_animation(frames.anim_dir)
    assert (record["status"], record["frame"], finished_frames(frames.anim_dir)) == (
        "stopped",
        2,
        2,
    )
