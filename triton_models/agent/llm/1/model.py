"""Streaming chat LLM as a decoupled Triton python model (llama.cpp, GGUF weights).

Tokens go out as they are sampled. Between tokens the model asks Triton whether
the request was cancelled (client disconnect, barge-in) and stops generating at
once, freeing the instance for the next user. Near the MAX_TOKENS limit the text
is released sentence by sentence, so a reply cut for length still ends with a
whole sentence (common/llm_text.py, tested offline).

Function calling: TOOLS (chat-format function tools) go to the model through its
chat template when the template renders tools (Qwen2.5), else into the system
prompt; calls are cut out of the generated text (never spoken) and sent as JSON in
TOOL_CALLS on the last response. TOOL_CHOICE "required" or "function:<name>"
constrains sampling with a grammar built from the tools' JSON schemas, so the
model must write a call with arguments of the declared shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import sys
import threading
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

# The rendered model repository has common/ next to the use-case folders.
sys.path.insert(0, str(Path(__file__).resolve().parents[2].parent / "common"))
from llm_text import (
    SentenceBudget,
    ToolCallParser,
    check_max_tokens,
    check_tool_choice,
    forced_call_schema,
    parse_messages,
    parse_tools,
    tool_messages,
)

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
# A reply that begins with a word, not a call (bare JSON, a code fence or a tag).
ANSWER_GRAMMAR = r"root ::= [A-Za-z0-9] [^\x00]*"


def _param(cfg: dict, key: str, default: str) -> str:
    return cfg.get("parameters", {}).get(key, {}).get("string_value", default)


def lean_llama_class():
    """Llama whose saved states leave out the logits of every prompt token.

    llama-cpp-python's prompt cache saves, per request, a copy of its (tokens x
    vocabulary) float32 score matrix (196 KB a token for SmolLM2's 49k vocabulary:
    200 MB for a 1,000-token conversation, uncounted by the cache's capacity: the
    stub grew to 2.8 GB in a 5-minute soak), and loading one scans the whole matrix.
    Without logits_all the matrix is never filled or read (sampling happens inside
    llama.cpp), so a state keeps none of it.
    """
    import ctypes

    import llama_cpp
    from llama_cpp import Llama, LlamaState

    class LeanLlama(Llama):
        def save_state(self) -> LlamaState:
            size = llama_cpp.llama_state_get_size(self._ctx.ctx)
            buffer = (ctypes.c_uint8 * int(size))()
            n_bytes = int(llama_cpp.llama_state_get_data(self._ctx.ctx, buffer, size))
            if n_bytes > int(size):
                raise RuntimeError("llama.cpp wrote more state than it announced")
            # string_at copies at memcpy speed; slicing a ctypes array builds a list
            # of ints first (0.3 s for 20 MB, paid by every request)
            return LlamaState(input_ids=self.input_ids.copy(),
                              scores=self.scores[:0].copy(), n_tokens=self.n_tokens,
                              llama_state=ctypes.string_at(buffer, n_bytes),
                              llama_state_size=n_bytes, seed=self._seed)

        def load_state(self, state: LlamaState) -> None:
            self.input_ids = state.input_ids.copy()
            self.n_tokens = state.n_tokens
            self._requires_eval = True
            self._seed = state.seed
            data = (ctypes.c_uint8 * state.llama_state_size).from_buffer_copy(
                state.llama_state)
            if llama_cpp.llama_state_set_data(self._ctx.ctx, data,
                                              state.llama_state_size) \
                    != state.llama_state_size:
                raise RuntimeError("llama.cpp refused the saved state")

    return LeanLlama


def _free_large_buffers_to_the_os() -> None:
    """Saved states are 10-40 MB buffers, one allocated and one freed every turn. glibc
    raises its mmap threshold to the size of a freed mmapped block, so after the first
    turns they come from the heap, which fragments: with 3 states (~30 MB) cached, the
    process grew 452 -> 625 MB over 100 turns; with a fixed 1 MB threshold it stays at
    ~475 MB. (mallopt is glibc's; elsewhere this does nothing.)"""
    import ctypes
    import ctypes.util

    m_mmap_threshold = -3
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(m_mmap_threshold, 1 << 20)


def conversation_cache(capacity_bytes: int):
    """A RAM prompt cache that keeps about one state per conversation.

    Each turn saves a new state for its conversation; the state it was served from is
    then superseded (the new one covers the same prefix and more), so it is dropped at
    once instead of filling the capacity: memory follows the live sessions.
    """
    from llama_cpp import Llama, LlamaRAMCache

    _free_large_buffers_to_the_os()

    class ConversationCache(LlamaRAMCache):
        """Shared by the instance's contexts (one thread each): locked, and the state a
        turn was served from and the conversation it belongs to are kept per thread.

        A conversation keeps one saved state: its newest. With a conversation id (the
        request's CONVERSATION_ID) the previous state of that id is dropped on save.
        Without one, the state the turn was served from is dropped when the new state
        extends most of it; that misses a history the client shortened (only the
        instructions are shared), and both versions then stayed until the cache was
        full (the llm stub grew 418 -> 804 MB in a 10-minute soak)."""

        def __init__(self, capacity_bytes: int) -> None:
            super().__init__(capacity_bytes)
            self._lock = threading.RLock()
            self._turn = threading.local()
            self._latest: dict[str, tuple] = {}  # conversation id -> its saved state's key

        def begin(self, conversation: str | None) -> None:
            """The calling thread's next turn belongs to this conversation."""
            self._turn.conversation = conversation
            self._turn.served_from = None

        def __contains__(self, key) -> bool:
            with self._lock:
                return super().__contains__(key)

        def __getitem__(self, key):
            with self._lock:
                self._turn.served_from = self._find_longest_prefix_key(tuple(key))
                return super().__getitem__(key)

        def __setitem__(self, key, value) -> None:
            key, old = tuple(key), getattr(self._turn, "served_from", None)
            conversation = getattr(self._turn, "conversation", None)
            self._turn.served_from = None
            with self._lock:
                if conversation:
                    old = self._latest.pop(conversation, None)
                    self._latest[conversation] = key
                elif old is not None and Llama.longest_token_prefix(old, key) * 4 <= \
                        len(old) * 3:
                    old = None  # another session's state: it shares only the instructions
                if old is not None and old != key and old in self.cache_state:
                    del self.cache_state[old]
                super().__setitem__(key, value)
                if len(self._latest) > 2 * len(self.cache_state) + 16:  # evicted ones
                    live = set(self.cache_state)
                    self._latest = {c: k for c, k in self._latest.items() if k in live}

        def conversations(self) -> int:
            with self._lock:
                return len(self._latest)

    return ConversationCache(capacity_bytes=capacity_bytes)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:

        cfg = json.loads(args["model_config"])
        store = Path(os.environ.get("AI_MODELS_DIR", "/opt/ai-models"))
        folder = store / _param(cfg, "weights", "agent/smollm2-135m")
        ggufs = sorted(folder.glob("*.gguf"))
        if not ggufs:
            raise pb_utils.TritonModelException(
                f"no .gguf in {folder}; run `rtmedia models install-defaults`")
        gpu = args.get("model_instance_kind") == "GPU"
        # `parallel` contexts of one model, a worker thread each, share the CPU threads:
        # a turn that ends while another session's reply is being generated starts at
        # once instead of waiting for that reply to finish (the 1.3-1.4 s minutes of
        # the 3-session soak). Each context uses n_threads / (replies running). On CPU
        # the contexts share the mmapped weights; on a GPU each would hold a copy, so
        # "auto" means one there (continuous batching is the GPU backends' job). Three
        # on CPU: with two, the third of three sessions waited for a whole reply now
        # and then (first audio p95 2.0 s at 3 sessions, 0.75 s with three contexts).
        self.threads = int(_param(cfg, "n_threads", "2"))
        parallel = _param(cfg, "parallel", "auto")
        self.parallel = (1 if gpu else 3) if parallel == "auto" else max(1, int(parallel))
        self._running = 0
        self._running_lock = threading.Lock()
        self._local = threading.local()
        self.contexts = [lean_llama_class()(
            model_path=str(ggufs[0]),
            n_ctx=int(_param(cfg, "n_ctx", "2048")),
            n_threads=self.threads,
            n_gpu_layers=int(_param(cfg, "n_gpu_layers", "-1")) if gpu else 0,
            main_gpu=int(args.get("model_instance_device_id", 0)),
            verbose=False,
        ) for _ in range(self.parallel)]
        self._local.llm = self.contexts[0]
        # Several sessions take turns on this instance, so llama.cpp's KV cache holds
        # another conversation at each request and every turn would re-read its whole
        # history (time to first token grew 150 ms -> 2.6 s over 12 turns of 3 sessions).
        # The RAM cache keeps the state of recent conversations by token prefix: a turn
        # evaluates only its new tokens (~300 ms at turn 12).
        cache_mb = int(_param(cfg, "prompt_cache_mb", "256"))
        if cache_mb > 0:
            cache = conversation_cache(cache_mb << 20)
            for llm in self.contexts:
                llm.set_cache(cache)
        self._start_workers()
        self.max_tokens_limit = int(_param(cfg, "max_tokens_limit", "1024"))
        self.max_messages_bytes = int(_param(cfg, "max_messages_bytes", "65536"))
        self.sentence_margin = int(_param(cfg, "sentence_margin_tokens", "24"))
        self.sentence_grace = int(_param(cfg, "sentence_grace_tokens", "24"))
        self.penalties = {
            "repeat_penalty": float(_param(cfg, "repeat_penalty", "1.0")),
            "frequency_penalty": float(_param(cfg, "frequency_penalty", "0.0")),
            "presence_penalty": float(_param(cfg, "presence_penalty", "0.0")),
        }
        self.eos = self.llm.token_eos()
        # Templates that render tools themselves (Qwen2.5) get them natively.
        template = self.llm.metadata.get("tokenizer.chat_template") or ""
        self.native_tools = "tools" in template
        # tokens allowed past MAX_TOKENS for the calls themselves (not spoken text)
        self.tool_tokens = int(_param(cfg, "tool_call_tokens", "256"))
        # Small models given a call's result tend to call the same function again
        # instead of answering. With chain_calls off, a reply to a result is made
        # without the tools in the prompt, must begin with a word (a grammar), may not
        # open a call (Qwen2.5's token banned), and any call it writes is dropped.
        # Measured on Qwen2.5-Coder-0.5B (weather in Rome/Oslo, result given): with the
        # tools in the prompt it called again; without, at temperature 0 it answered
        # "The weather in Rome is cloudy with a temperature of 14 degrees Celsius."
        opener = self.llm.tokenize(b"<tool_call>", add_bos=False, special=True)
        self.call_token = opener[0] if len(opener) == 1 else None
        self.chain_calls = _param(cfg, "chain_calls", "false") == "true"

    @property
    def llm(self):
        """The context of the calling worker thread."""
        return self._local.llm

    def _start_workers(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._workers = [threading.Thread(target=self._work, args=(llm,), daemon=True,
                                          name=f"llm-{i}")
                         for i, llm in enumerate(self.contexts)]
        for worker in self._workers:
            worker.start()

    def _work(self, llm) -> None:
        self._local.llm = llm
        while (request := self._queue.get()) is not None:
            sender = request.get_response_sender()
            with self._running_lock:
                self._running += 1
            try:
                self._generate(request, sender)
            except Exception as exc:
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=FINAL)
            finally:
                with self._running_lock:
                    self._running -= 1

    def _share_cores(self) -> None:
        """Give this context its share of the threads for its next decode."""
        import llama_cpp

        n = max(1, self.threads // max(1, self._running))
        llama_cpp.llama_set_n_threads(self.llm._ctx.ctx, n, n)

    def execute(self, requests):
        for request in requests:
            self._queue.put(request)
        return None

    def finalize(self) -> None:
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(timeout=5)

    def _parse(self, request) -> tuple[list[dict], dict, SentenceBudget | None,
                                       ToolCallParser | None]:
        raw = pb_utils.get_input_tensor_by_name(request, "MESSAGES").as_numpy().reshape(-1)[0]
        messages = parse_messages(raw, self.max_messages_bytes)
        tools = parse_tools(_string(request, "TOOLS", b""), self.max_messages_bytes)
        choice = check_tool_choice(_string(request, "TOOL_CHOICE", b"auto").decode(), tools)
        if choice == "none":
            tools = []
        max_tokens = check_max_tokens(_scalar(request, "MAX_TOKENS", 256),
                                      self.max_tokens_limit)
        opts = {
            "max_tokens": max_tokens,
            "temperature": float(_scalar(request, "TEMPERATURE", 0.7)),
            "top_p": float(_scalar(request, "TOP_P", 0.95)),
            **self.penalties,
        }
        seed = _scalar(request, "SEED", None)
        if seed is not None:
            opts["seed"] = int(seed)
        budget = None
        if bool(_scalar(request, "IGNORE_EOS", False)):
            # Benchmarks: raw tokens up to MAX_TOKENS, no holding back.
            opts["logit_bias"] = {self.eos: -1e9}
        elif self.sentence_margin > 0 or self.sentence_grace > 0:
            budget = SentenceBudget(max_tokens, self.sentence_margin, self.sentence_grace)
            opts["max_tokens"] = budget.limit
        parser = None
        # a reply to a function's result, in answer mode (see chain_calls)
        answer = bool(tools) and choice == "auto" and not self.chain_calls and \
            messages[-1]["role"] == "tool"
        if tools or any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
            messages, native = tool_messages(messages, [] if answer else tools,
                                             self.native_tools)
            if native:
                opts["tools"] = native
        if tools:
            parser = ToolCallParser(keep_calls=not answer)
            opts["max_tokens"] += self.tool_tokens
            schema = forced_call_schema(tools, choice)
            if schema is not None:
                opts["grammar"] = _call_grammar(schema)
            elif answer:
                from llama_cpp.llama_grammar import LlamaGrammar

                opts["grammar"] = LlamaGrammar.from_string(ANSWER_GRAMMAR, verbose=False)
                if self.call_token is not None:
                    opts["logit_bias"] = {self.call_token: -1e9}
        return messages, opts, budget, parser

    def _generate(self, request, sender) -> None:
        if sender.is_cancelled():
            # Cancelled while queued (its client left): skip even the prompt evaluation,
            # or abandoned requests of gone sessions starve the live ones.
            sender.send(flags=FINAL)
            return
        messages, opts, budget, parser = self._parse(request)
        cache = getattr(self.llm, "cache", None)
        if cache is not None:
            cache.begin(_string(request, "CONVERSATION_ID", b"").decode() or None)
        # llama.cpp raises a ValueError naming the sizes when the prompt overflows n_ctx.
        self._share_cores()
        stream = self.llm.create_chat_completion(messages=messages, stream=True, **opts)
        reason, produced, ran_out = "stop", 0, False
        try:
            for chunk in stream:
                self._share_cores()
                if sender.is_cancelled():
                    reason = "cancelled"
                    break
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content") or ""
                if piece:
                    produced += 1
                    if parser is not None:
                        piece = parser.push(piece)
                text = (budget.push(piece) if budget else piece) if piece else ""
                if text:
                    sender.send(_response(text, ""))
                if choice.get("finish_reason"):
                    reason = choice["finish_reason"]
                if budget and budget.done:
                    break
            else:
                ran_out = True  # llama-cpp-python saved the state itself
        finally:
            stream.close()  # stops llama.cpp from sampling further tokens
            if not ran_out:
                self._remember()
        if reason == "cancelled":
            sender.send(flags=FINAL)
            return
        calls: list[dict] = []
        if parser is not None:
            rest, calls = parser.finish()
            if rest:
                rest = budget.push(rest) if budget else rest
                if rest:
                    sender.send(_response(rest, ""))
        if budget:
            tail = budget.finish(model_stopped=reason == "stop")
            if tail:
                sender.send(_response(tail, ""))
            reason = budget.reason
        if calls:
            reason = "tool_calls"
        sender.send(_response("", reason, {"completion_tokens": produced}, calls),
                    flags=FINAL)


    def _remember(self) -> None:
        """Save the conversation's state in the prompt cache after a stop of our own
        (sentence budget, cancel): llama-cpp-python saves only when its generator runs
        to the end, so a session whose replies are cut re-read its whole history at
        every turn (TTFT +600 ms a turn, while sessions with short replies stayed flat)."""
        cache = getattr(self.llm, "cache", None)
        n = self.llm.n_tokens
        if cache is not None and n:
            cache[self.llm.input_ids[:n].tolist()] = self.llm.save_state()


def _call_grammar(schema: dict):
    """A llama.cpp grammar for exactly one call: ``<tool_call>`` + the JSON of the
    schema (name and arguments) + ``</tool_call>``."""
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    rules = re.sub(r"^root ::=", "call ::=", json_schema_to_gbnf(json.dumps(schema)),
                   flags=re.M)
    return LlamaGrammar.from_string('root ::= "<tool_call>\\n" call "\\n</tool_call>"\n'
                                    + rules, verbose=False)


def _response(text: str, reason: str, usage: dict | None = None,
              calls: list[dict] | None = None):
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("TEXT", np.array([text.encode()], dtype=np.object_)),
        pb_utils.Tensor("FINISH_REASON", np.array([reason.encode()], dtype=np.object_)),
        pb_utils.Tensor("USAGE", np.array([json.dumps(usage or {}).encode()], dtype=np.object_)),
        pb_utils.Tensor("TOOL_CALLS", np.array([json.dumps(calls).encode() if calls else b""],
                                               dtype=np.object_)),
    ])


def _string(request, name: str, default: bytes) -> bytes:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value if isinstance(value, bytes) else str(value).encode()


def _scalar(request, name: str, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return tensor.as_numpy().reshape(-1)[0].item() if tensor is not None else default
