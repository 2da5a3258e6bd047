"""``glmtune webui``: a Gradio app over the same functions the command line uses.

One page per stage: data (check, preview), train (form -> resolved YAML ->
``python -m glmtune train`` in its own process; live progress read back from
the run folder), evaluate, chat, export. The modules here other than
:mod:`.app` hold the callbacks as plain functions (no Gradio import), so they
are tested without a browser; :mod:`.app` only lays them out.
"""
