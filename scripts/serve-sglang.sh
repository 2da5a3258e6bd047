#!/usr/bin/env bash
# Serve a glmtune model with SGLang (OpenAI-compatible API). UNTESTED HERE: written without a GPU.
#
#   merged:      scripts/serve-sglang.sh --model BASE [--adapter RUN/final] --export DIR [-- SGLANG ARGS...]
#   base + LoRA: scripts/serve-sglang.sh --model BASE --lora NAME=RUN/final --export DIR
#                (RUN/final: the training result's PEFT LoRA folder, not `glmtune export --adapter-only`)
#
# Tool calls: SGLang's --tool-call-parser takes only its built-in parsers (no plugin file as vLLM has), and
# none reads GLM-4-9B's "name\n{json}" or ChatGLM3's tool_call(...) replies. The chat template does render
# the request's tools, so the model calls them, but the call arrives as the message's text: read it on the
# client with glmtune's parser (`from glmtune.serving.vllm_tool_parser import parse_glm4`, or
# parse_chatglm3), or serve with vLLM (scripts/serve-vllm.sh) for OpenAI tool_calls in the response.
# Environment: GLMTUNE (default: glmtune), PYTHON (default: python), HOST (127.0.0.1), PORT (30000).
set -euo pipefail
GLMTUNE="${GLMTUNE:-glmtune}"
PYTHON="${PYTHON:-python}"
model="" adapter="" export_dir="" loras=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --adapter) adapter="$2"; shift 2 ;;
    --lora) loras+=("$2"); shift 2 ;;
    --export) export_dir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "serve-sglang.sh: unknown option $1 (see the comment at the top of this script)" >&2; exit 2 ;;
  esac
done
if [ -z "$model" ] || [ -z "$export_dir" ]; then
  echo "serve-sglang.sh: --model BASE and --export DIR are required" >&2; exit 2
fi
if [ -n "$adapter" ] && [ ${#loras[@]} -gt 0 ]; then
  echo "serve-sglang.sh: --adapter (merged) and --lora (served unmerged) exclude each other" >&2; exit 2
fi
if [ -f "$export_dir/glmtune_export.json" ]; then
  echo "serve-sglang.sh: reusing the export in $export_dir" >&2
else
  "$GLMTUNE" export --model "$model" ${adapter:+--adapter "$adapter"} --out "$export_dir"
fi
args=(--model-path "$export_dir" --host "${HOST:-127.0.0.1}" --port "${PORT:-30000}")
# GLM-4-9B exports keep THUDM's template, which ignores the request's tools= and tool messages: serve with
# glmtune's equivalent template instead (in a temporary file: the export stays as glmtune wrote it).
template="$("$PYTHON" -c 'import sys
from glmtune.serving.vllm_tool_parser import engine_chat_template
print(engine_chat_template(sys.argv[1]), end="")' "$export_dir")"
if [ -n "$template" ]; then
  template_file="$(mktemp --suffix=.jinja)"
  printf '%s' "$template" > "$template_file"
  args+=(--chat-template "$template_file")
fi

if [ ${#loras[@]} -gt 0 ]; then
  args+=(--enable-lora --lora-paths "${loras[@]}")
fi
set -x
exec "$PYTHON" -m sglang.launch_server "${args[@]}" "$@"
