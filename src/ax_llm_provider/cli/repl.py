"""`ax-llm run MODEL`: one answer, or the interactive chat with ollama run's slash commands and multi-line input."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any, TextIO

from ..engine.errors import EngineError
from ..model.errors import ModelError
from .common import EXIT_OK, CliError, store_of
from .models import describe, ensure_model, modelfile, print_info
from .run import ChatSession, check_options, parse_value, session_from_args

HELP = '''Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a different model (clears the conversation)
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use """ to begin a multi-line message.
'''

SET_HELP = '''Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
'''

PARAMETER_HELP = '''Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size (capped at the compiled capacity)
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter stop <string> <string> ...   Set the stop parameters
Any other Ollama option name works too (typical_p, presence_penalty, num_keep, ...).
'''

SHOW_HELP = '''Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
'''

SHORTCUTS_HELP = '''Available keyboard shortcuts:
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit (at an empty prompt)
  Up / Down           Previous / next message (when readline is available)
'''


class Repl:
    """Reads messages and slash commands; each message is one streamed turn of the ChatSession."""

    def __init__(self, session: ChatSession, args: argparse.Namespace, *, stdin: TextIO, out: TextIO,
                 err: TextIO) -> None:
        self.session, self.args = session, args
        self.stdin, self.out, self.err = stdin, out, err
        self.tty = stdin.isatty()
        if self.tty:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401 - importing it gives input() line editing and history

    # ---- input -----------------------------------------------------------------------------------

    def _readline(self, prompt: str) -> str | None:
        if self.tty:
            try:
                return input(prompt)
            except EOFError:
                return None
        line = self.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def read_message(self) -> str | None:
        """One message or command; None at end of input. A line with an unclosed \"\"\" continues it."""
        line = self._readline(">>> ")
        if line is None:
            return None
        if line.count('"""') % 2 == 1:
            parts = [line]
            while True:
                more = self._readline("... ")
                if more is None:
                    break
                parts.append(more)
                if '"""' in more:
                    break
            line = "\n".join(parts)
        return line.replace('"""', "").strip() if '"""' in line else line.strip()

    # ---- loop ------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out)

    def run(self, first_prompt: str | None = None) -> int:
        self.session.engine.load(self.session.model, keep_alive=self.session.keep_alive)
        if first_prompt:
            self.turn(first_prompt)
        while True:
            try:
                text = self.read_message()
            except KeyboardInterrupt:
                self.say("\nUse Ctrl + d or /bye to exit.")
                continue
            if text is None:
                return EXIT_OK
            if not text:
                continue
            if text.startswith("/"):
                if self.command(text) == "bye":
                    return EXIT_OK
                continue
            self.turn(text)

    def turn(self, text: str) -> None:
        try:
            self.session.send(text)
        except KeyboardInterrupt:
            self.say("")  # the reply was cut; the turn is forgotten and the prompt comes back
        except (EngineError, ModelError, CliError) as exc:
            print(f"Error: {exc}", file=self.err)
        if self.tty:
            self.say("")

    # ---- slash commands --------------------------------------------------------------------------

    def command(self, text: str) -> str | None:
        words = text.split()
        head, rest = words[0].lower(), words[1:]
        if head == "/bye":
            return "bye"
        if head in ("/?", "/help"):
            topic = rest[0].lower() if rest else ""
            helps = {"set": SET_HELP, "show": SHOW_HELP, "shortcuts": SHORTCUTS_HELP, "shortcut": SHORTCUTS_HELP,
                     "parameter": PARAMETER_HELP}
            self.say(helps.get(topic, HELP))
        elif head == "/set":
            self.set(text[len(words[0]):].strip())
        elif head == "/show":
            self.show(rest[0].lower() if rest else "")
        elif head == "/clear":
            self.session.clear()
            self.say("Cleared session context")
        elif head == "/load":
            self.load(rest)
        else:
            self.say(f"Unknown command '{words[0]}'. Type /? for help")
        return None

    def set(self, argument: str) -> None:
        words = argument.split()
        if not words:
            self.say(SET_HELP)
            return
        what = words[0].lower()
        s = self.session
        if what == "parameter":
            self.set_parameter(words[1:])
        elif what == "system":
            s.system = argument[len(words[0]):].strip() or None
            self.say("Set system message." if s.system else "Cleared system message.")
        elif what == "format" and words[1:] == ["json"]:
            s.format = "json"
            self.say("Set format to 'json' mode.")
        elif what == "noformat":
            s.format = None
            self.say("Disabled format.")
        elif what in ("verbose", "quiet"):
            s.verbose = what == "verbose"
            self.say("Set 'verbose' mode." if s.verbose else "Set 'quiet' mode.")
        elif what in ("think", "nothink"):
            s.think = what == "think"
            self.say("Set 'think' mode." if s.think else "Set 'nothink' mode.")
        elif what in ("wordwrap", "nowordwrap"):
            s.wordwrap = what == "wordwrap"
            self.say("Set 'wordwrap' mode." if s.wordwrap else "Set 'nowordwrap' mode.")
        else:
            self.say(f"Unknown command '/set {words[0]}'. Type /? for help")

    def set_parameter(self, words: list[str]) -> None:
        if len(words) < 2:
            self.say(PARAMETER_HELP)
            return
        name, values = words[0], words[1:]
        value: Any = [str(parse_value(v)) if v.startswith('"') else v for v in values] if name == "stop" \
            else parse_value(" ".join(values))
        try:
            check_options({name: value})
        except CliError as exc:
            self.say(f"Couldn't set parameter: {exc}")
            return
        self.session.options[name] = value
        shown = ", ".join(map(str, value)) if isinstance(value, list) else value
        self.say(f"Set parameter '{name}' to '{shown}'")

    def show(self, what: str) -> None:
        s = self.session
        if what == "parameters":
            if s.options:
                self.say("User defined parameters:")
                for name, value in s.options.items():
                    self.say(f"{name:<16}{value}")
            self.say("Model defined parameters:\nNo parameters were specified for this model "
                     "(Ollama's defaults apply).")
        elif what == "system":
            self.say(s.system or "No system message was specified for this model.")
        elif what == "license":
            self.say("No license was specified for this model (see the model's source repository).")
        elif what in ("info", "modelfile", "template"):
            try:
                facts = describe(self.args, s.model)
            except (EngineError, ModelError) as exc:
                print(f"Error: {exc}", file=self.err)
                return
            if what == "info":
                print_info(facts, self.out)
            elif what == "modelfile":
                self.out.write(modelfile(facts))
            else:
                self.say(facts["template"] or "No prompt template was specified for this model.")
        else:
            self.say(SHOW_HELP)

    def load(self, words: list[str]) -> None:
        if len(words) != 1:
            self.say("Usage:\n  /load <model>")
            return
        name = words[0]
        self.say(f"Loading model '{name}'")
        try:
            ensure_model(name, self.session.engine.store)
            self.session.engine.load(name, keep_alive=self.session.keep_alive)
        except (EngineError, ModelError) as exc:
            print(f"Error: {exc}", file=self.err)
            return
        self.session.model = name
        self.session.clear()


def cmd_run(args: argparse.Namespace) -> int:
    stdin, out, err = sys.stdin, sys.stdout, sys.stderr
    session = session_from_args(args, out, err)  # usage errors before any download or load
    ensure_model(args.model, store_of(args))
    interactive = args.interactive or (args.prompt is None and stdin.isatty())
    if interactive:
        repl = Repl(session, args, stdin=stdin, out=out, err=err)
        return repl.run(first_prompt=args.prompt)
    text = args.prompt if args.prompt is not None else stdin.read()
    if not text.strip():  # nothing to ask: load the model (as a preload would) and stop
        session.engine.load(args.model, keep_alive=args.keepalive)
        return EXIT_OK
    session.send(text)
    return EXIT_OK
