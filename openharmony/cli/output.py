"""Printing for the commands: a streamed harmony reply, a chat turn, statistics."""

from __future__ import annotations

import sys

import typer

from ..chat import REASONING, TEXT, TOOL_CALL


def write(text: str, dim: bool = False) -> None:
    # click.echo drops the styling when stdout is not a terminal.
    typer.echo(typer.style(text, dim=True) if dim else text, nl=False)
    sys.stdout.flush()


class ReplyPrinter:
    """Prints a streamed harmony reply: what is meant for the user (the final answer, and
    commentary preambles) plainly, the reasoning (analysis channel) dimmed when asked for,
    tool calls dimmed as `[tool call] RECIPIENT ARGUMENTS`."""

    def __init__(self, show_reasoning: bool):
        self.show_reasoning = show_reasoning
        self._current: int | None = None
        self._wrote_any = False

    def __call__(self, event) -> None:
        if event.message_index != self._current:
            self._start_message(event)
            self._current = event.message_index
        if event.kind == TEXT:
            write(event.delta)
        elif self.show_reasoning or event.kind != REASONING:
            write(event.delta, dim=True)

    def _start_message(self, event) -> None:
        if event.kind == REASONING and not self.show_reasoning:
            return
        if self._wrote_any:
            write("\n")
        if event.kind == TOOL_CALL:
            write(f"[tool call] {event.recipient} ", dim=True)
        elif event.kind == REASONING:
            write("[analysis] ", dim=True)
        self._wrote_any = True

    def end(self) -> None:
        if self._wrote_any:
            write("\n")


def print_stats(stats) -> None:
    """One line of `GenerationStats` on stderr."""
    typer.echo(
        f"prompt: {stats.prompt_tokens} tokens ({stats.reused_prompt_tokens} reused) in "
        f"{stats.prompt_seconds:.2f} s, {stats.prompt_tokens_per_second:.1f} tokens/s; "
        f"generation: {stats.generated_tokens} tokens, "
        f"{stats.generation_tokens_per_second:.1f} tokens/s; "
        f"peak memory {stats.peak_memory_bytes / 1e9:.2f} GB", err=True)


def chat_turn(model, tokenizer, conversation, flags, prompt_cache):
    """Generate the assistant's reply to `conversation` (options from `flags`, a TurnFlags),
    stream it, and append it; its statistics."""
    from ..chat import ChatTurn

    turn = ChatTurn(model, tokenizer, conversation.render(), max_tokens=flags.max_tokens,
                    sampling=flags.sampling(), seed=flags.seed, prompt_cache=prompt_cache)
    printer = ReplyPrinter(flags.show_reasoning)
    for event in turn:
        printer(event)
    printer.end()
    if turn.finish_reason == "length":
        # Long reasoning can use up the budget before the answer starts: say so.
        typer.echo(f"(the reply reached --max-tokens {flags.max_tokens})", err=True)
    conversation.add_assistant_messages(turn.messages)
    return turn.stats
