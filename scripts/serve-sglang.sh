#!/usr/bin/env bash
# Serve a glmtune model with SGLang (OpenAI-compatible API). UNTESTED HERE: written without a GPU.
#
#   merged:      scripts/serve-sglang.sh --model BASE [--adapter RUN/final] --export DIR [-- SGLANG ARGS...]
#   base + LoRA: scripts/serve-sglang.sh --model BASE --lora NAME=RUN/final --export DIR
#                (RUN/final: the training result's PEFT LoRA folder, not `glmtune export --adapter-only`)
# The steps are scripts/serve-vllm.sh's (export, chat template); only the server differs.
#
# Tool calls: SGLang's --tool-call-parser takes only its built-in parsers (no plugin file as vLLM has), and
# none reads GLM-4-9B's "name\n{json}" or ChatGLM3's tool_call(...) replies. The chat template does render
# the request's tools, so the model calls them, but the call arrives as the message's text: read it on the
# client with glmtune's parser (`from glmtune.serving.vllm_tool_parser import parse_glm4`, or
# parse_chatglm3), or serve with vLLM (scripts/serve-vllm.sh) for OpenAI tool_calls in the response.
set -euo pipefail
ENGINE=sglang exec bash "$(dirname "$0")/serve-vllm.sh" "$@"
