"""`tunery chat`: a streaming chat in the terminal that keeps the history.

Type a message and press Enter; `clear` forgets the history, `exit` quits.
"""

import sys

from tunery.config import RunConfig
from tunery.data.conversation import Message, Role
from tunery.infer.engine import ChatEngine, create_engine

HELP = "Type a message and press Enter. `clear` resets the history, `exit` quits."


def chat_in_terminal(config: RunConfig, read=input, write=sys.stdout.write, engine=None) -> None:
    """Run the read-reply loop until `exit` or end of input (``engine`` defaults to the config's)."""
    if engine is None:
        write("Loading the model...\n")
        engine = create_engine(config)
    system = config.data.default_system or ""
    history: list[Message] = []
    write(HELP + "\n")
    while True:
        try:
            text = read("\nUser: ").strip()
        except EOFError:
            write("\n")
            return
        if text == "exit":
            return
        if text == "clear":
            history.clear()
            write("History cleared.\n")
            continue
        if not text:
            continue
        history.append(Message(Role.USER, text))
        history.append(Message(Role.ASSISTANT, stream_reply(engine, history, system, write)))


def stream_reply(engine: ChatEngine, history: list[Message], system: str, write) -> str:
    write("Assistant: ")
    pieces = []
    for piece in engine.stream_chat(history, system=system):
        pieces.append(piece)
        write(piece)
        sys.stdout.flush()  # show each piece as it arrives
    write("\n")
    return "".join(pieces)
