"""Conversation helpers as pure functions: channel splitting, placeholders, template messages."""

from __future__ import annotations

from g4cli.chat.conversation import ChannelSplitter, Turn, escape_placeholders, to_template_messages


def _run(stream: list[tuple[str | None, bytes]]) -> list[tuple[str, str]]:
    s = ChannelSplitter()
    events = [e for control, data in stream for e in s.feed(control, data)] + s.finish()
    merged: list[tuple[str, str]] = []
    for e in events:
        if merged and merged[-1][0] == e.kind:
            merged[-1] = (e.kind, merged[-1][1] + e.text)
        else:
            merged.append((e.kind, e.text))
    return merged


def test_thinking_then_answer_with_the_label_split_across_tokens() -> None:
    stream = [("open", b""), (None, b"tho"), (None, b"ught"), (None, b"\nLet me"), (None, b" add."), ("close", b"")]
    stream += [(None, b"The answer"), (None, b" is 4.")]
    assert _run(stream) == [("thought", "Let me add."), ("text", "The answer is 4.")]


def test_utf8_split_across_tokens_is_joined() -> None:
    e = "é".encode()
    assert _run([(None, b"caf"), (None, e[:1]), (None, e[1:]), (None, b"!")]) == [("text", "café!")]


def test_thought_not_starting_with_the_label_is_kept_whole() -> None:
    assert _run([("open", b""), (None, b"Hmm, "), (None, b"ok"), ("close", b""), (None, b"Yes")]) == [
        ("thought", "Hmm, ok"),
        ("text", "Yes"),
    ]


def test_empty_thought_channel_gives_only_the_answer() -> None:
    assert _run([("open", b""), (None, b"thought\n"), ("close", b""), (None, b"Hi")]) == [("text", "Hi")]


def test_placeholders_in_typed_text_cannot_become_media_slots() -> None:
    typed = "what does <|image|> mean?"
    assert "<|image|>" not in escape_placeholders(typed)
    msgs = to_template_messages([Turn("user", typed)])
    assert "<|image|>" not in msgs[0]["content"]
