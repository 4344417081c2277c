"""A talking-lantern installation loop, written for langchain-ollama's ChatOllama.

langchain_chatollama_original.py is the program as written for ChatOllama (it talks to an Ollama
server); langchain_chatollama_example.py is the same program on ChatAXOllama (the model runs in this
process, on the AX650N card or its CPU twin). The two files differ only in the import line and the
class name; tests/integrations/test_langchain_e2e.py checks that and runs the ChatAXOllama version.

    python examples/langchain_chatollama_example.py

The options are the installation's: num_predict 100, temperature 0.99, top_k 85, top_p 0.9,
repeat_penalty 1.5, repeat_last_n 64, stop ["#", "["], keep_alive -1, no thinking. The full history
is resent every turn, and an error becomes a spoken fallback line instead of a crash.
"""

# ruff: noqa: I001  (the ChatOllama import keeps its place so that swapping it is a one-line change)
import os
import sys

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_ollama import ChatOllama

MODEL = os.environ.get("EXAMPLE_MODEL", "smollm2:135m")
NUM_PREDICT = int(os.environ.get("EXAMPLE_NUM_PREDICT", "100"))
SYSTEM = ("You are the voice of a talking lantern in an art installation. "
          "Answer visitors warmly in one or two short sentences.")
VISITOR_LINES = ["Hello lantern, who are you?", "What do you see tonight?"]
FALLBACK = "The lantern flickers quietly. Please ask me again."

llm = ChatOllama(
    model=MODEL,
    num_predict=NUM_PREDICT,
    temperature=0.99,
    top_k=85,
    top_p=0.9,
    repeat_penalty=1.5,
    repeat_last_n=64,
    stop=["#", "["],
    keep_alive=-1,
    reasoning=False,
)
prompt = ChatPromptTemplate.from_messages(
    [("system", SYSTEM), MessagesPlaceholder("history"), ("human", "{line}")]
)
chain = prompt | llm | StrOutputParser()


def speak(line: str, history: list) -> str:
    """One visitor turn: the whole history goes out again (the client keeps no state)."""
    try:
        return chain.invoke({"history": history, "line": line}).strip() or FALLBACK
    except Exception as exc:  # noqa: BLE001 - the installation says something rather than crash
        print(f"[LLM error, fallback line used: {exc}]", file=sys.stderr)
        return FALLBACK


def main() -> int:
    history: list = []
    for line in VISITOR_LINES:
        reply = speak(line, history)
        print(f"visitor: {line}\nlantern: {reply}")
        history += [HumanMessage(line), AIMessage(reply)]
    print("lantern (streamed): ", end="", flush=True)
    for chunk in llm.stream([*prompt.format_messages(history=history, line="Goodbye!")]):
        print(chunk.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
