#!/usr/bin/env bash
# Serve a glmtune model with vLLM (OpenAI-compatible API), tool calls read by glmtune's parser plugin.
# UNTESTED HERE: written without a GPU (vLLM needs one); bench/vllm_smoke.py checks a running server.
#
#   merged:      scripts/serve-vllm.sh --model BASE [--adapter RUN/final] --export DIR [-- VLLM ARGS...]
#                exports BASE (+ the adapter merged in) to DIR, then `vllm serve DIR`
#   base + LoRA: scripts/serve-vllm.sh --model BASE --lora NAME=RUN/final [--lora NAME2=RUN2/final] --export DIR
#                exports BASE alone to DIR and serves each adapter unmerged; a request picks one with
#                "model": "NAME" (the base is "model": DIR). RUN/final is the training result's LoRA folder,
#                a PEFT adapter on GlmForCausalLM's q_proj/k_proj/v_proj... as vLLM expects; NOT the
#                `glmtune export --adapter-only` folder (THUDM's fused query_key_value, for the official code).
#
# DIR is reused when it already holds a glmtune export (glmtune_export.json); otherwise glmtune export writes
# it and refuses a non-empty folder. Environment: GLMTUNE (default: glmtune), PYTHON (default: python),
# HOST (default 127.0.0.1), PORT (default 8000; 30000 for SGLang), ENGINE (vllm, or sglang as
# scripts/serve-sglang.sh sets it: the same steps, then SGLang's server).
set -euo pipefail
engine="${ENGINE:-vllm}"
me="serve-$engine.sh"
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
    *) echo "$me: unknown option $1 (see the comment at the top of this script)" >&2; exit 2 ;;
  esac
done
if [ -z "$model" ] || [ -z "$export_dir" ]; then
  echo "$me: --model BASE and --export DIR are required" >&2; exit 2
fi
if [ -n "$adapter" ] && [ ${#loras[@]} -gt 0 ]; then
  echo "$me: --adapter (merged) and --lora (served unmerged) exclude each other" >&2; exit 2
fi

if [ -f "$export_dir/glmtune_export.json" ]; then
  echo "$me: reusing the export in $export_dir" >&2
else
  "$GLMTUNE" export --model "$model" ${adapter:+--adapter "$adapter"} --out "$export_dir"
fi

args=()
# GLM-4-9B exports keep THUDM's template, which ignores the request's tools= and tool messages: serve with
# glmtune's equivalent template instead (in a temporary file: the export stays as glmtune wrote it).
template="$("$PYTHON" -c 'import sys
from glmtune.serving.templates import engine_chat_template
print(engine_chat_template(sys.argv[1]), end="")' "$export_dir")"
if [ -n "$template" ]; then
  template_file="$(mktemp --suffix=.jinja)"
  printf '%s' "$template" > "$template_file"
  args+=(--chat-template "$template_file")
fi

if [ "$engine" = sglang ]; then
  # SGLang has no tool-parser plugin: replies carry calls as text (see scripts/serve-sglang.sh).
  args+=(--model-path "$export_dir" --host "${HOST:-127.0.0.1}" --port "${PORT:-30000}")
  [ ${#loras[@]} -eq 0 ] || args+=(--enable-lora --lora-paths "${loras[@]}")
  set -x
  exec "$PYTHON" -m sglang.launch_server "${args[@]}" "$@"
fi

# The family's parser (glmtune-chatglm3 / glmtune-glm4); ChatGLM2 has no tools: served without tool parsing.
plugin="$("$PYTHON" -c 'import glmtune.serving.vllm_tool_parser as m; print(m.__file__)')"
parser="$("$PYTHON" -c 'import sys
from glmtune.families import detect_family
from glmtune.serving.vllm_tool_parser import FAMILY_PARSERS
print(FAMILY_PARSERS.get(detect_family(sys.argv[1]).name, ""))' "$export_dir")"
args+=(--host "${HOST:-127.0.0.1}" --port "${PORT:-8000}")
if [ -n "$parser" ]; then
  args+=(--enable-auto-tool-choice --tool-parser-plugin "$plugin" --tool-call-parser "$parser")
fi
if [ ${#loras[@]} -gt 0 ]; then
  # vLLM refuses adapters above --max-lora-rank (default 16) and takes only some values (8, 16, 32, 64, ...):
  # the largest rank of the adapters served, rounded up to a power of two.
  rank="$("$PYTHON" -c 'import json, sys
r = max(json.load(open(p.split("=", 1)[1] + "/adapter_config.json"))["r"] for p in sys.argv[1:])
print(max(8, 1 << (r - 1).bit_length()))' "${loras[@]}")"
  args+=(--enable-lora --max-lora-rank "$rank" --lora-modules "${loras[@]}")
fi
set -x
exec vllm serve "$export_dir" "${args[@]}" "$@"
