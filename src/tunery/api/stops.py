"""Stop strings on top of the engine's text stream.

The engine stops on the template's stop tokens; OpenAI's ``stop`` strings are
arbitrary text, so they are handled here, on the decoded pieces: a reply is cut
right before the first stop string, the generation is cancelled as soon as one
appears (no tokens are wasted on text nobody receives), and while streaming,
text that could be the start of a stop string is held back until it is clear
that it is not.
"""

from collections.abc import Iterator

from tunery.infer.engine import Reply, TextStream


class StopCutter:
    """Feeds text pieces through; returns what may be shown, holding back possible stop-string starts."""

    def __init__(self, stops: list[str]):
        self.stops = [stop for stop in stops if stop]
        self.pending = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that can be released now (everything before a stop string, once one appears)."""
        if self.stopped:
            return ""
        text = self.pending + piece
        cut = first_stop(text, self.stops)
        if cut is not None:
            self.stopped, self.pending = True, ""
            return text[:cut]
        held = longest_stop_prefix(text, self.stops)
        self.pending = text[len(text) - held:] if held else ""
        return text[: len(text) - held]

    def flush(self) -> str:
        """The held-back tail, once the reply has ended without a stop string."""
        tail, self.pending = self.pending, ""
        return tail


def first_stop(text: str, stops: list[str]) -> int | None:
    """Where the earliest stop string in ``text`` begins, or None."""
    found = [at for at in (text.find(stop) for stop in stops) if at >= 0]
    return min(found) if found else None


def longest_stop_prefix(text: str, stops: list[str]) -> int:
    """The length of the longest end of ``text`` that begins some stop string (0 if none)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


class StoppedStream:
    """Reads a TextStream, cut at stop strings. Iterate for text pieces (or call ``read_all``);
    afterwards ``text``, ``finish_reason`` and ``reply()`` describe the whole reply."""

    def __init__(self, stream: TextStream, stops: list[str]):
        self.stream = stream
        self.cutter = StopCutter(stops)
        self.text = ""

    def __iter__(self) -> Iterator[str]:
        pieces = iter(self.stream)
        for piece in pieces:
            released = self.cutter.feed(piece)
            if released:
                self.text += released
                yield released
            if self.cutter.stopped:
                self.stream.close()  # cancel the generation: the rest of the reply is cut off anyway
                for _ in pieces:  # wait for it to wind down, so the token count is final
                    pass
                return
        if tail := self.cutter.flush():
            self.text += tail
            yield tail

    def read_all(self) -> str:
        for _ in self:
            pass
        return self.text

    @property
    def finish_reason(self) -> str:
        return "stop" if self.cutter.stopped else self.stream.finish_reason

    def reply(self) -> Reply:
        return Reply(
            text=self.text,
            prompt_tokens=self.stream.prompt_tokens,
            completion_tokens=self.stream.completion_tokens,
            finish_reason=self.finish_reason,
        )
