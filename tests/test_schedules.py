"""Snapshot schedules: parsing, union, bounds and error messages."""

from __future__ import annotations

import pytest

from vqclip.schedules import Schedule, ScheduleError, parse_schedule


def test_mixed_schedule():
    schedule = parse_schedule("10,25,50,every:100,last")
    assert schedule.iterations(300) == [10, 25, 50, 100, 200, 300]


def test_pow2():
    assert parse_schedule("pow2").iterations(300) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert parse_schedule("pow2").iterations(256)[-1] == 256
    assert parse_schedule("pow2").iterations(0) == []


def test_union_deduplicates_and_sorts():
    schedule = parse_schedule("64, pow2, every:32, 100, 100, every:32, last")
    assert schedule.iterations(100) == [1, 2, 4, 8, 16, 32, 64, 96, 100]
    assert schedule.every == (32,)


def test_iteration_zero_is_the_starting_image():
    assert parse_schedule("0,5").iterations(10) == [0, 5]
    assert 0 not in parse_schedule("every:5,pow2").iterations(10)
    assert parse_schedule("last").iterations(0) == [0]


def test_values_beyond_total_are_dropped():
    assert parse_schedule("10,500,every:40").iterations(100) == [10, 40, 80]
    assert parse_schedule("every:1000").iterations(300) == []


def test_case_spaces_and_empty_items():
    assert parse_schedule(" EVERY:50 , ,Last,").iterations(120) == [50, 100, 120]
    assert parse_schedule("last,,").iterations(10) == [10]


@pytest.mark.parametrize(
    ("text", "bad", "why"),
    [
        ("10,every:0", "every:0", "at least 1"),
        ("every:x,10", "every:x", "at least 1"),
        ("10,-5", "-5", "negative"),
        ("foo", "foo", "not understood"),
        ("1.5", "1.5", "not understood"),
    ],
)
def test_errors_name_the_bad_item(text, bad, why):
    with pytest.raises(ScheduleError, match=why) as info:
        parse_schedule(text)
    message = str(info.value)
    assert repr(bad) in message
    assert "every:N" in message  # and the message shows the syntax
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["--5", "²", "every:²"])
def test_odd_digits_raise_schedule_error(text):
    with pytest.raises(ScheduleError):
        parse_schedule(text)


@pytest.mark.parametrize(
    ("text", "total", "expected"),
    [
        ("every:5", 10, [5, 10]),  # the multiple equal to the total is kept
        ("every:5", 9, [5]),
        ("every:1", 3, [1, 2, 3]),
        ("every:3", 3, [3]),
        ("every:4,every:6", 12, [4, 6, 8, 12]),
        ("every:7", 6, []),
    ],
)
def test_every_keeps_each_multiple_up_to_and_including_the_total(text, total, expected):
    assert parse_schedule(text).iterations(total) == expected


def test_an_iteration_equal_to_the_total_is_kept():
    assert parse_schedule("0,10").iterations(10) == [0, 10]
    assert parse_schedule("11").iterations(10) == []


def test_the_parsed_schedule_holds_exactly_what_was_written():
    assert parse_schedule("5,every:3,every:2") == Schedule(frozenset({5}), (2, 3), False, False)
    assert parse_schedule("pow2") == Schedule(pow2=True)
    assert parse_schedule("last") == Schedule(last=True)


def test_the_messages_say_what_is_wrong_and_show_the_syntax():
    with pytest.raises(ScheduleError) as info:
        parse_schedule("every:0")
    assert str(info.value) == (
        "Snapshot item 'every:0': every:N needs N of at least 1. Use comma-separated items: "
        "an iteration number (50), every:N (every:100), pow2, last."
    )
    with pytest.raises(ScheduleError) as info:
        parse_schedule(" , ")
    assert str(info.value) == (
        "The snapshot schedule ' , ' names no iteration. Use comma-separated items: an "
        "iteration number (50), every:N (every:100), pow2, last. Write 'last' to keep only "
        "the final image."
    )
