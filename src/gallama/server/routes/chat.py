"""POST /v1/chat/completions."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from gallama.agentic.chat_template import TemplateError
from gallama.agentic.reasoning import ReasoningSplitter, ReasoningTags
from gallama.agentic.schema_check import AnswerCheck
from gallama.agentic.thinking import ThinkingTemplate, ThinkingTemplateError
from gallama.agentic.custom_input import CustomInput
from gallama.agentic.tool_parser import ArgumentsDelta, CallEnd, CallStart, TextDelta
from gallama.agentic.tools import ToolPlan, ToolRequestError, plan_tools
from gallama.engines.base import EngineOverloaded
from gallama.protocol.errors import AnswerInvalid, InvalidRequest, RateLimited
from gallama.protocol.requests import ChatCompletionRequest, ChatMessage
from gallama.protocol.responses import ResponseHeader, chat_logprobs, usage
from gallama.router.served_model import ServedModel
from gallama.server.choices import ChoiceRun, ChoiceSpec, Piece, merge_choices, start_choices
from gallama.server.planning import (
    choice_spec,
    choice_specs,
    constraint_grammar,
    output_budget,
    requested_constraints,
    schema_check,
)
from gallama.server.sse import sse_response
from gallama.server.thinking_run import ReasoningPiece, ThinkingRun
from gallama.server.verification import Verification

router = APIRouter()

REASONING_TAGS = ReasoningTags()
DEFAULT_THINKING_TOKENS = 512


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    rendered = []
    for message in messages:
        # Few templates know the developer role; it means what system meant before it.
        role = {"developer": "system", "function": "tool"}.get(message.role, message.role)
        entry: dict[str, Any] = {"role": role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        calls = [call.model_dump() for call in message.tool_calls or []]
        if message.function_call is not None:
            calls = [{"id": "call_0", "type": "function", "function": message.function_call.model_dump()}]
        if calls:
            entry["tool_calls"] = calls
        rendered.append(entry)
    return rendered


def tool_plan(model: ServedModel, body: ChatCompletionRequest, custom: dict[str, CustomInput] | None = None) -> ToolPlan | None:
    tools = [tool.model_dump() for tool in body.tools] if body.tools else None
    choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    try:
        return plan_tools(tools, choice, body.parallel_tool_calls, model.tool_format, custom)
    except ToolRequestError as error:
        raise InvalidRequest(str(error), param=error.param) from error


def answer_grammar(model: ServedModel, body: ChatCompletionRequest, plan: ToolPlan | None) -> str | None:
    """The request's grammar: tool calls (with a schema for a text answer), or its one constraint."""
    if plan is None:
        return constraint_grammar(model, body)
    others = [name for name, _ in requested_constraints(body) if name != "response_format"]
    if others:
        raise InvalidRequest(f"tools and {others[0]} cannot be combined in one request", param=others[0])
    text_schema = None
    if body.response_format is not None and body.response_format.type != "text":
        text_schema = (
            body.response_format.json_schema.schema_ if body.response_format.type == "json_schema" else {"type": "object"}
        )
    return constraint_grammar(model, body, grammar_override=plan.grammar(text_schema), param="tools")


def answer_verification(body: ChatCompletionRequest, plan: ToolPlan | None) -> Verification | None:
    """The schemas a finished answer is checked against: the text's, and each tool's parameters."""
    found = schema_check(body)
    param, text = found if found is not None else ("response_format", None)
    if plan is not None:
        return Verification(plan.answer_check(text), "tools" if text is None else param)
    return Verification(AnswerCheck(text=text), param) if text is not None else None


def with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + note}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def chat_prompt_text(
    model: ServedModel, body: ChatCompletionRequest, plan: ToolPlan | None, note: str | None = None
) -> str:
    """The rendered prompt up to the assistant's answer (without the leading prompt)."""
    messages = template_messages(body.messages)
    extra: dict[str, Any] = {}
    if plan is not None:
        messages, extra = plan.template_messages(messages)
    if note is not None:
        messages = with_system_note(messages, note)
    if body.reasoning_effort is not None:  # templates of reasoning models read this switch
        extra["enable_thinking"] = body.reasoning_effort != "none"
    try:
        return model.render_chat(messages, **extra)
    except TemplateError as error:
        raise InvalidRequest(str(error), param="messages") from error


@dataclass
class ChatStart:
    """A chat request under way: one run per choice, and what assembles each choice's answer."""

    runs: list
    outputs: list["ChoiceOutput"]
    header: ResponseHeader
    n_prompt: int
    verification: Verification | None = None  # the exact schema's check of each finished answer


def start_chat(model: ServedModel, body: ChatCompletionRequest, custom: dict[str, CustomInput] | None = None) -> ChatStart:
    """Plans and starts a chat request: the core that every chat-shaped API (chat, Responses, Messages) runs.

    custom: the tools whose input is freeform text (Responses custom tools); their calls' arguments are that text.
    """
    plan = tool_plan(model, body, custom)
    grammar = answer_grammar(model, body, plan)
    verification = answer_verification(body, plan)
    answer_text = chat_prompt_text(model, body, plan)
    leading = body.leading_prompt or ""
    prompt_tokens = model.tokenize_prompt(answer_text + leading)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    if body.thinking_template is not None:
        runs = start_thinking(model, body, plan, answer_text, grammar, top_logprobs)
    else:
        max_tokens = output_budget(model, prompt_tokens, body.output_limit(), param)
        specs = choice_specs(
            model, body, prompt_tokens, max_tokens, top_logprobs, body.stop_list(), body.return_stop_word, grammar
        )
        runs = start_choices(model, specs)
        if verification is not None and not body.stream:  # a stream's deltas are out: it cannot take them back

            def retry(index: int, attempt: int) -> ChoiceRun:
                model.metrics.schema_retries.inc()
                spec = choice_spec(model, body, index, prompt_tokens, max_tokens, top_logprobs, body.stop_list(),
                                   body.return_stop_word, grammar, attempt=attempt)
                return start_choices(model, [spec])[0]

            verification.retry = retry
    # A template that opens the thinking tag itself leaves the model inside it.
    thinking_open = answer_text.rstrip().endswith(REASONING_TAGS.open) and not leading
    outputs = [
        ChoiceOutput(model, plan, legacy=body.legacy_functions, return_thinking=body.return_thinking,
                     thinking_open=thinking_open)
        for _ in runs
    ]
    header = ResponseHeader("chatcmpl", "chat.completion", body.model)
    return ChatStart(runs, outputs, header, len(prompt_tokens), verification)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    chat = start_chat(model, body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(chat.runs, chat.outputs, chat.header, chat.n_prompt, include_usage, body.logprobs,
                               chat.verification)
        return sse_response(chunks, chat.runs, request)
    return await complete(chat.runs, chat.outputs, chat.header, chat.n_prompt, body.logprobs, chat.verification)


def start_thinking(
    model: ServedModel, body: ChatCompletionRequest, plan: ToolPlan | None, answer_text: str, grammar: str | None,
    top_logprobs: int | None,
) -> list[ThinkingRun]:
    """Each choice thinks under the template's grammar, then answers after its own thinking."""
    try:
        template = ThinkingTemplate.parse(body.thinking_template)
    except ThinkingTemplateError as error:
        raise InvalidRequest(str(error), param="thinking_template") from error
    thinking_tokens = model.tokenize_prompt(chat_prompt_text(model, body, plan, note=template.instruction()))
    budget = body.thinking_max_tokens or DEFAULT_THINKING_TOKENS
    output_budget(model, thinking_tokens, budget, "thinking_max_tokens")
    answer_tokens = model.tokenize_prompt(answer_text + (body.leading_prompt or ""))
    # The answer's prompt will hold the thinking too: check the worst case now, not mid-answer.
    answer_limit = body.output_limit()
    output_budget(model, answer_tokens, budget + (answer_limit or 1), "thinking_max_tokens")
    thinking_grammar = constraint_grammar(model, body, grammar_override=template.grammar(budget), param="thinking_template")
    thinking_specs = choice_specs(model, body, thinking_tokens, budget, None, [], grammar=thinking_grammar)

    def answer_spec(index: int):
        def build(thought: str) -> ChoiceSpec:
            tokens = model.tokenize_prompt(answer_text + thought + "\n\n" + (body.leading_prompt or ""))
            limit = output_budget(model, tokens, answer_limit, "max_tokens")
            return choice_spec(
                model, body, index, tokens, limit, top_logprobs, body.stop_list(), body.return_stop_word, grammar
            )
        return build

    runs: list[ThinkingRun] = []
    try:
        for index, spec in enumerate(thinking_specs):
            runs.append(ThinkingRun(model, spec, answer_spec(index)))
    except EngineOverloaded as error:
        for run in runs:
            run.cancel()
        raise RateLimited(str(error), error.retry_after_s) from error
    return runs


@dataclass
class ChoiceOutput:
    """One choice's answer as it builds up: text, tool calls, finish reason, logprobs."""

    model: ServedModel
    plan: ToolPlan | None
    legacy: bool = False  # the request used `functions`: answer with `function_call`
    return_thinking: bool = False
    thinking_open: bool = False
    content: str = ""
    reasoning: str = ""
    events: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_string: str | None = None  # the stop string that ended the answer
    call_ids: list[str] = field(default_factory=list)
    repeated: bool = False  # the model repeated a call: the turn is over
    _held: list[dict[str, Any]] = field(default_factory=list)

    def restarted(self) -> ChoiceOutput:
        """An empty output for a new try of the same choice."""
        return ChoiceOutput(self.model, self.plan, self.legacy, self.return_thinking, self.thinking_open)

    def __post_init__(self) -> None:
        self.parser = self.plan.parser() if self.plan else None
        self.splitter = ReasoningSplitter(REASONING_TAGS, already_open=self.thinking_open)

    def piece_deltas(self, piece: Piece) -> list[dict[str, Any]]:
        """Deltas of a piece: reasoning first (kept apart from content), then the answer."""
        finished = piece.finish_reason is not None
        self.stop_string = piece.stop_string or self.stop_string
        if isinstance(piece, ReasoningPiece):
            reasoning, answer = piece.text, ""
        else:
            reasoning, answer = self.splitter.feed(piece.text)
            if finished:
                tail_reasoning, tail_answer = self.splitter.flush()
                reasoning, answer = reasoning + tail_reasoning, answer + tail_answer
        deltas = []
        if reasoning:
            self.reasoning += reasoning
            if self.return_thinking:
                deltas.append({"reasoning_content": reasoning, "reasoning": reasoning})
        return deltas + self.deltas(answer, piece.finish_reason)

    def deltas(self, text: str, finish_reason: str | None) -> list[dict[str, Any]]:
        """The message deltas this text adds (content and tool-call pieces).

        The first call streams as it is written. Later calls are held until they
        close: small models tend to repeat a call forever, and a repeat of an
        earlier call ends the turn instead of reaching the client.
        """
        if self.parser is None:
            self.content += text
            return [{"content": text}] if text else []
        events = self.parser.feed(text)
        if finish_reason is not None:  # an input that runs to the end of the answer is whole unless cut off
            events += self.parser.finish(ended=finish_reason != "length")
        deltas = []
        for event in events:
            if self.repeated:
                break
            if isinstance(event, TextDelta):
                self.content += event.text
                deltas.append({"content": event.text})
            elif isinstance(event, CallStart):
                self.call_ids.append(f"call_{secrets.token_hex(12)}")
                self._held = [{"tool_calls": [{
                    "index": event.index, "id": self.call_ids[-1], "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }]}]
            elif isinstance(event, ArgumentsDelta):
                self._held.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
            elif isinstance(event, CallEnd):
                calls = self.parser.complete_calls
                if calls[-1] in calls[:-1]:
                    self.repeated = True
                    self.parser.drop_last_call()
                    self.call_ids.pop()
                    self._held = []
                    break
            if self._held and (len(self.parser.calls) == 1 or isinstance(event, CallEnd)):
                deltas.extend(self._held)
                self._held = []
        return [self._legacy_delta(d) for d in deltas] if self.legacy else deltas

    @staticmethod
    def _legacy_delta(delta: dict[str, Any]) -> dict[str, Any]:
        if "tool_calls" not in delta:
            return delta
        function = delta["tool_calls"][0]["function"]
        return {"function_call": function}

    def tool_calls(self) -> list[dict[str, Any]]:
        if self.parser is None:
            return []
        return [
            {"id": self.call_ids[i], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for i, c in enumerate(self.parser.complete_calls)
        ]

    def final_reason(self, engine_reason: str | None) -> str | None:
        if (engine_reason == "stop" or self.repeated) and self.tool_calls():
            return "function_call" if self.legacy else "tool_calls"
        return engine_reason

    def message(self) -> dict[str, Any]:
        calls = self.tool_calls()
        message: dict[str, Any] = {"role": "assistant", "content": self.content if self.content or not calls else None,
                                   "refusal": None}
        if calls and self.legacy:
            message["function_call"] = calls[0]["function"]
        elif calls:
            message["tool_calls"] = calls
        if self.return_thinking and self.reasoning:
            message["reasoning_content"] = message["reasoning"] = self.reasoning
        return message


async def collect(run: ChoiceRun, output: ChoiceOutput) -> None:
    async for piece in run.pieces():
        output.piece_deltas(piece)
        output.events.extend(piece.events)
        output.finish_reason = piece.finish_reason or output.finish_reason
        if output.repeated:
            run.cancel()


async def complete(runs: list[ChoiceRun], outputs: list[ChoiceOutput], header: ResponseHeader, n_prompt: int, logprobs,
                   verification: Verification | None = None):
    spent = list(runs)  # every try's run: usage counts all their tokens

    async def settle(index: int) -> None:
        """Collects the choice; an answer that breaks its schema is drawn again while tries remain."""
        for attempt in range(verification.tries if verification else 1):
            if attempt:
                runs[index] = verification.retry(index, attempt)
                spent.append(runs[index])
                outputs[index] = outputs[index].restarted()
            await collect(runs[index], outputs[index])
            violation = verification.violation(outputs[index]) if verification else None
            if violation is None:
                return
        raise AnswerInvalid(violation, verification.tries, verification.param)

    tasks = [asyncio.create_task(settle(index)) for index in range(len(runs))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for run in spent:
            run.cancel()
    choices = [
        {
            "index": i,
            "message": output.message(),
            "logprobs": {"content": chat_logprobs(output.events, output.model.engine.token_bytes), "refusal": None}
            if logprobs
            else None,
            "finish_reason": output.final_reason(output.finish_reason),
        }
        for i, output in enumerate(outputs)
    ]
    return header.wrap(choices=choices, usage=usage(n_prompt, sum(r.completion_tokens for r in spent), spent))


async def stream_chunks(
    runs: list[ChoiceRun],
    outputs: list[ChoiceOutput],
    header: ResponseHeader,
    n_prompt: int,
    include_usage: bool,
    logprobs: bool,
    verification: Verification | None = None,
) -> AsyncIterator[dict[str, Any]]:
    header.object = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, events=None) -> dict[str, Any]:
        model = outputs[index].model
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": {"content": chat_logprobs(events, model.engine.token_bytes), "refusal": None}
            if logprobs and events
            else None,
            "finish_reason": finish_reason,
        }
        return header.wrap(choices=[choice], **extra)

    for index in range(len(runs)):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
    async for index, piece in merge_choices([run.pieces() for run in runs]):
        output = outputs[index]
        deltas = output.piece_deltas(piece)
        for number, delta in enumerate(deltas):
            yield chunk(index, delta, events=piece.events if number == 0 else None)
        if not deltas and logprobs and piece.events:
            yield chunk(index, {"content": ""}, events=piece.events)
        if output.repeated and output.finish_reason is None:
            runs[index].cancel()
            output.finish_reason = output.final_reason(None)
        elif piece.finish_reason is not None:
            output.finish_reason = piece.finish_reason
        else:
            continue
        # The deltas went out as they came; an answer that breaks its schema ends with an error, not a stop.
        violation = verification.violation(output) if verification else None
        if violation is not None:
            raise AnswerInvalid(violation, 1, verification.param)
        yield chunk(index, {}, output.final_reason(output.finish_reason))
    if include_usage:
        yield header.wrap(choices=[], usage=usage(n_prompt, sum(r.completion_tokens for r in runs), runs))
