"""Session policy on a scripted fake model (fast): context fitting, interruption, /set limits."""

from __future__ import annotations

import numpy as np
import pytest
from fake_model import FakeModel

from g4cli.chat.media import Media
from g4cli.chat.session import Reply, Session
from g4cli.chat.settings import ChatOptions, LoadOptions, Sampling
from g4cli.errors import CapabilityError, RuntimeFailure, UsageError


def _image(name: str = "a.png") -> Media:
    return Media("image", name, name.encode().hex().ljust(64, "0"), pixels=np.zeros((4, 4, 3), np.uint8))


def test_the_oldest_turns_go_first_and_the_system_prompt_stays() -> None:
    model = FakeModel(replies=["w " * 40], n_ctx=400)
    session = Session(model, system="Be brief.", sampling=Sampling(max_tokens=40))
    notices = []
    for i in range(12):
        notices += [e.text for e in session.send(f"message {i} " + "x " * 30) if e.kind == "notice"]
    assert notices and "dropped" in notices[0]
    sent = model.seen[-1]
    assert sent[0].role == "system" and sent[0].text == "Be brief."
    assert sent[-1].text.startswith("message 11")
    assert [t.text for t in sent[1:]] == [t.text for t in session.turns[:-1]]  # the session forgot the same turns
    assert model.prompt_tokens(sent) + 40 <= 400  # the prompt and the answer's room fit


def test_a_message_that_cannot_fit_changes_nothing() -> None:
    model = FakeModel(n_ctx=200)
    session = Session(model)
    list(session.send("hello"))
    with pytest.raises(RuntimeFailure, match="does not fit the context"):
        list(session.send("word " * 400))
    assert [t.text for t in session.turns] == ["hello", "ok"]


def test_an_interrupted_reply_keeps_its_text_and_its_stats() -> None:
    session = Session(FakeModel(replies=["one two three four five"]))
    reply = Reply()
    stream = session.send("go", reply)
    next(stream), next(stream)
    stream.close()  # what Ctrl-C or a closed pipe does
    assert reply.interrupted and reply.finish == "interrupted"
    assert session.turns[-1].text == "one two"
    assert session.last_stats is reply.stats and reply.stats.interrupted and reply.stats.gen_tokens == 2
    assert reply.stats.as_dict()["interrupted"] is True


def test_media_the_model_cannot_take_is_refused_before_any_work() -> None:
    model = FakeModel(capabilities=set())
    session = Session(model)
    with pytest.raises(CapabilityError, match="cannot take images"):
        session.attach_media(_image())
    assert session.pending == [] and model.seen == []


def test_regen_puts_the_attachments_back() -> None:
    session = Session(FakeModel(replies=["a", "b"]))
    session.attach_media(_image())
    list(session.send("look"))
    assert session.regen() == "look" and len(session.pending) == 1 and session.turns == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("temp", "0.5", 0.5), ("top-k", "7", 7), ("think", "on", True), ("max_tokens", "none", None), ("seed", "3", 3)],
)
def test_set_parses_and_assigns(key: str, value: str, expected: object) -> None:
    s = Sampling()
    assert s.set(key, value) == expected
    assert getattr(s, {"temp": "temperature", "top-k": "top_k"}.get(key, key)) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("temperature", "-3", "out of range (must be >= 0)"),
        ("top_p", "0", "out of range (must be in (0, 1]"),
        ("think", "maybe", "not a valid value"),
        ("nonsense", "1", "unknown setting"),
    ],
)
def test_set_refuses_what_the_command_line_refuses(key: str, value: str, message: str) -> None:
    s = Sampling()
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        s.set(key, value)
    assert s == Sampling()


def test_the_command_line_limits_are_the_same_table() -> None:
    with pytest.raises(UsageError, match="--temp must be >= 0"):
        ChatOptions(sampling=Sampling(temperature=-1)).validate()
    with pytest.raises(UsageError, match="--ctx 10 is too small"):
        ChatOptions(load=LoadOptions(ctx=10)).validate()
    with pytest.raises(UsageError, match="only one attachment can come from stdin"):
        ChatOptions(image=["-"], audio=["-"]).validate()
