"""Argument checks of SearchR3.encode / reason: each bad value is a clear ValueError/TypeError, never a torch crash."""

import math

import pytest


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        ({"top_p": 0}, r"top_p must be in \(0, 1\], got 0"),
        ({"top_p": 5}, r"top_p must be in \(0, 1\], got 5"),
        ({"top_p": math.nan}, r"top_p must be in \(0, 1\], got nan"),
        ({"temperature": math.nan}, "temperature must be a finite number > 0, got nan"),
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
        ({"temperature": math.inf}, "temperature must be a finite number > 0, got inf"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ],
)
def test_reasoning_arguments_are_checked(tiny, kwargs, msg):
    sampling = {"do_sample": True} if "batch_size" not in kwargs else {}
    with pytest.raises(ValueError, match=msg):
        tiny.encode_query("paris", reasoning=True, max_new_tokens=2, **sampling, **kwargs)
    with pytest.raises(ValueError, match=msg):
        tiny.reason(["paris"], max_new_tokens=2, **sampling, **kwargs)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, True])
def test_batch_size_is_checked_on_every_path(tiny, batch_size):
    for call in (
        lambda: tiny.encode_document(["a"], batch_size=batch_size),
        lambda: tiny.encode_query([], batch_size=batch_size),
        lambda: tiny.encode_query(["a"], reasoning=True, batch_size=batch_size),
    ):
        with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
            call()


@pytest.mark.parametrize(
    "texts,msg",
    [
        ({"a": 1}, "texts is a dict; expected a string or a list of strings"),
        (b"bytes", "texts is a bytes"),
        (42, "texts is a int"),
        (["ok", None], r"texts\[1\] is NoneType, expected str"),
        (["ok", "fine", {"a": 1}], r"texts\[2\] is dict, expected str"),
    ],
)
def test_non_string_inputs_are_type_errors(tiny, texts, msg):
    with pytest.raises(TypeError, match=msg):
        tiny.encode_document(texts)
    with pytest.raises(TypeError, match=msg):
        tiny.reason(texts, max_new_tokens=1)


def test_truncated_flags(tiny):
    room = tiny.max_length - tiny.template("document").overhead
    word_ids = tiny.tokenizer(["cat"], add_special_tokens=False)["input_ids"][0]
    fits, over = " ".join(["cat"] * (room // len(word_ids) // 2)), " ".join(["cat"] * (room + 5))
    assert tiny.truncated([fits, over, ""]) == [False, True, False]
    assert tiny.truncated("short") == [False] and tiny.truncated([]) == []
    # Reasoning leaves room for the reasoning tokens, so a query that fits directly may not fit then.
    q_room = tiny.max_length - tiny.prompts.max_reasoning_tokens - 1 - tiny.template("query", True).overhead
    edge = " ".join(["cat"] * (q_room + 1))
    assert tiny.truncated([edge], "query", reasoning=True) == [True]
