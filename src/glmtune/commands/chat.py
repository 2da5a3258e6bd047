"""``glmtune chat``: talk to a model (with an optional LoRA adapter or P-Tuning prefix)."""

from __future__ import annotations

import argparse
import json
import sys

from ..errors import UserError

EPILOG = """\
When standard input is not a terminal, each input line is one user turn and
each event is printed on its own stdout line:
  prompt: [ids...]      the prompt ids as JSON (with --show-prompt)
  assistant: TEXT       a reply, JSON-string-escaped without the quotes
  tool_call: {...}      a parsed tool call {"name", "parameters"}; the next
                        input line is the tool's result (an observation turn)
  cleared               after an input line `clear`
  error: TEXT           the turn was refused (too long, not UTF-8); the
                        conversation goes on as it was
An input line `stop` or `exit` quits (also in place of an observation).
"""


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--model/--adapter/--prefix/--tokenizer/--dtype/--device, shared with eval and serve."""
    p.add_argument("--model", required=True, help="model folder (ChatGLM2/3, GLM-4 or GLM-4-0414, THUDM or native layout)")
    tuned = p.add_mutually_exclusive_group()
    tuned.add_argument("--adapter", help="LoRA/DoRA adapter folder to apply (unmerged)")
    tuned.add_argument("--prefix", help="P-Tuning v2 folder to apply")
    p.add_argument("--tokenizer", help="folder with tokenizer.model (default: the model's, then the adapter's)")
    p.add_argument("--family", default=None, help="model family (chatglm2, chatglm3, glm4, glm4-0414; default: "
                   "detected from the model folder)")
    p.add_argument("--dtype", default=None, help="bf16, fp16 or fp32 (default: checkpoint dtype on GPU, fp32 on CPU)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--quantize", type=int, choices=(4, 8), default=None,
                   help="load the base model's decoder in 4-bit NF4 or 8-bit (bitsandbytes), as QLoRA trains it "
                        "by default: ChatGLM3-6B's weights in about 4 GB (4-bit) or 7 GB (8-bit) instead of 12 on "
                        "the device (read on the CPU first); with --adapter (LoRA) or --prefix")


def add_sampling_arguments(p: argparse.ArgumentParser, *, temperature: float = 0.8, top_p: float = 0.8) -> None:
    p.add_argument("--temperature", type=float, default=temperature, help=f"0 = greedy (default {temperature})")
    p.add_argument("--top-p", dest="top_p", type=float, default=top_p, help=f"nucleus sampling (default {top_p})")
    p.add_argument("--top-k", dest="top_k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    p.add_argument("--repetition-penalty", dest="repetition_penalty", type=float, default=1.0)
    p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible sampling")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal or through a pipe",
                       description="Multi-turn chat with streamed output. `clear` resets the conversation, "
                                   "`stop`/`exit` quits. Generation stops at eos, <|user|> and <|observation|>.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--system", help="system prompt")
    p.add_argument("--tools", help="JSON file with a list of tools (ChatGLM3 or OpenAI function format)")
    p.add_argument("--prompt", help="answer this one message, print the reply and exit (as the official "
                                    "inference_hf.py --prompt); a tool call prints as JSON {\"name\", \"parameters\"}")
    p.add_argument("--single-turn", dest="single_turn", action="store_true",
                   help="answer each message on its own (no history)")
    p.add_argument("--show-prompt", dest="show_prompt", action="store_true",
                   help="print each prompt's token ids (debugging the prompt format)")
    add_sampling_arguments(p)
    p.set_defaults(func=run)


def sampling_from_args(args: argparse.Namespace):
    # deferred: imports torch; `--help` stays fast
    from ..infer.sampling import SamplingConfig

    try:
        return SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                              top_k=args.top_k, repetition_penalty=args.repetition_penalty, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    # deferred: imports torch; `--help` stays fast
    from ..infer.chat import ChatSession
    from ..infer.chat_repl import run_interactive, run_piped
    from ..infer.loading import load_for_inference, read_tools

    sampling = sampling_from_args(args)
    tools = read_tools(args.tools) if args.tools else None
    model, tok = load_for_inference(args.model, adapter=args.adapter, prefix=args.prefix, tokenizer=args.tokenizer,
                                    dtype=args.dtype, device=args.device, family=args.family, quantize=args.quantize)
    session = ChatSession(model, tok, system=args.system, tools=tools, sampling=sampling)
    if args.prompt is not None:
        return _one_reply(session, args.prompt, show_prompt=args.show_prompt)
    if hasattr(sys.stdin, "reconfigure"):
        # Undecodable bytes become lone surrogates, which the session refuses turn by turn, instead of
        # a UnicodeDecodeError that would end the session.
        sys.stdin.reconfigure(errors="surrogateescape")
    if sys.stdin.isatty():
        return run_interactive(session, single_turn=args.single_turn, show_prompt=args.show_prompt)
    print(f"glmtune chat: model {args.model} loaded; reading turns from standard input", file=sys.stderr)
    return run_piped(session, sys.stdin, sys.stdout, single_turn=args.single_turn, show_prompt=args.show_prompt)


def _one_reply(session, prompt: str, *, show_prompt: bool) -> int:
    # deferred: imports torch; `--help` stays fast
    from ..infer.chat_repl import tool_call_json

    reply = session.chat(prompt)
    if show_prompt:
        print("prompt: " + json.dumps(session.last_prompt))
    print(tool_call_json(reply) if reply.tool_call is not None else reply.content)
    return 0
