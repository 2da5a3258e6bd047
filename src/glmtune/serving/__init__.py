"""Pieces glmtune ships for other serving engines (vLLM, SGLang) that serve its exports.

:mod:`glmtune.serving.vllm_tool_parser` is a vLLM tool-call parser plugin
(``--tool-parser-plugin FILE --tool-call-parser glmtune-glm4``) whose parsing is the families' own;
it imports without vLLM (its pure helpers are tested here, the plugin class exists only under vLLM).
"""
