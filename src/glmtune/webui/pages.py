"""The five pages' components and their wiring; each callback is a thin call into a plain function.

Every callback goes through :func:`.context.ui_errors`, so bad input shows the
same one-line message the CLI prints, in the page.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr  # this module is imported only by app.build_app (the web UI's heavy dependency)

from ..errors import UserError
from . import chat as chat_state
from . import forms, runs, tasks
from .context import AppContext, ui_errors
from ..infer.evaluate import EvalSettings
from ..infer.sampling import SamplingConfig
from ..train.layout import LOG_FILE
from ..train.plots import loss_figure, read_log

FORMATS = ["auto", "chatglm3", "alpaca", "base", "openai", "sharegpt", "columns"]


def _paths(text: str) -> list[str]:
    return [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]


def data_page(ctx: AppContext) -> None:
    gr.Markdown("Check data files as `glmtune data check` does, and see how a record is tokenized and labelled.")
    with gr.Row():
        files = gr.Textbox(label="data files or folders (one per line)", value=ctx.data, lines=2, scale=3)
        upload = gr.File(label="or upload", file_count="multiple", type="filepath", scale=1)
    with gr.Row():
        model = gr.Textbox(label="model folder (for its tokenizer)", value=ctx.model, scale=3)
        fmt = gr.Dropdown(FORMATS, value="auto", label="format", scale=1)
        max_in = gr.Number(value=512, precision=0, label="max input length", scale=1)
        max_out = gr.Number(value=512, precision=0, label="max output length", scale=1)
    check = gr.Button("Check data", variant="primary")
    summary = gr.Textbox(label="summary", lines=6, elem_id="data-summary")
    problems = gr.Dataframe(headers=["where", "problem (expected, fix)"], label="problems", wrap=True)
    histogram = gr.Plot(label="sample lengths")
    with gr.Row():
        index = gr.Number(value=0, precision=0, label="record (0-based, valid records)", scale=1)
        preview = gr.Button("Preview tokens and labels", scale=1)
    head = gr.Markdown()
    table = gr.Dataframe(headers=tasks.PREVIEW_HEADERS, label="token / id / label", max_height=420)

    upload.upload(lambda paths: "\n".join(paths or []), upload, files)

    @ui_errors
    def do_check(paths, model_path, fmt_value, max_input, max_output):
        result = tasks.check_data(_paths(paths), model_path, tasks.data_config(fmt_value, max_input, max_output))
        cap = (int(max_input) + int(max_output) + 1) if max_input and max_output else None
        histogram = tasks.length_histogram(result.full_lengths, cap)
        return result.summary, result.problems or [["-", "no problems"]], histogram

    @ui_errors
    def do_preview(paths, model_path, fmt_value, max_input, max_output, record):
        chosen = _paths(paths)
        if not chosen:
            raise UserError("no data file: pick or upload one, or type its path")
        return tasks.preview_record(chosen[0], model_path, tasks.data_config(fmt_value, max_input, max_output),
                                    int(record or 0))

    check.click(do_check, [files, model, fmt, max_in, max_out], [summary, problems, histogram])
    preview.click(do_preview, [files, model, fmt, max_in, max_out, index], [head, table])


def _train_form(ctx: AppContext) -> dict:
    c: dict = {}
    with gr.Row():
        c["model_path"] = gr.Textbox(label="model folder", value=ctx.model, scale=3, elem_id="train-model")
        info = gr.Markdown(forms.model_summary(ctx.model) if ctx.model else "")
    with gr.Row():
        c["train_file"] = gr.Textbox(label="training data file", value=ctx.data, scale=2, elem_id="train-data")
        c["val_file"] = gr.Textbox(label="validation data file (optional)", scale=2)
        c["data_format"] = gr.Dropdown(FORMATS, value="auto", label="format", scale=1)
    with gr.Row():  # or datasets by name, as `glmtune train --dataset` (DATASET_DIR/dataset_info.json, else bundled)
        c["dataset"] = gr.Dropdown(forms.dataset_choices(), multiselect=True, allow_custom_value=True, scale=3,
                                   label="or datasets by name (replace the training file)", elem_id="train-dataset")
        c["dataset_dir"] = gr.Textbox(label="dataset folder", value="data", scale=1)
    c["dataset_dir"].change(lambda d: gr.update(choices=forms.dataset_choices(d)), c["dataset_dir"], c["dataset"])
    with gr.Row():
        c["output_root"] = gr.Textbox(label="runs folder", value=str(ctx.runs_root), scale=2)
        c["run_name"] = gr.Textbox(label="run name", value="run-1", scale=1, elem_id="train-run-name")
    with gr.Row():
        c["method"] = gr.Radio(list(forms.METHODS), value="lora", label="method")
        c["precision"] = gr.Dropdown(list(forms.PRECISIONS), value="auto", label="precision")
        c["gradient_checkpointing"] = gr.Checkbox(label="gradient checkpointing")
        c["packing"] = gr.Checkbox(label="packing")
    with gr.Accordion("method options", open=False):
        with gr.Row():
            c["lora_r"] = gr.Number(value=8, precision=0, label="LoRA r")
            c["lora_alpha"] = gr.Number(value=32, label="LoRA alpha")
            c["lora_dropout"] = gr.Number(value=0.1, label="LoRA dropout")
            c["lora_target"] = gr.Dropdown(["qkv", "all-linear"], value="qkv", label="LoRA target",
                                           allow_custom_value=True)
            c["prefix_tokens"] = gr.Number(value=128, precision=0, label="P-Tuning prefix tokens")
            c["freeze_layers"] = gr.Number(value=2, precision=0, label="freeze: trainable last layers")
    with gr.Row():
        c["max_input_length"] = gr.Number(value=512, precision=0, label="max input length", elem_id="train-max-in")
        c["max_output_length"] = gr.Number(value=512, precision=0, label="max output length",
                                             elem_id="train-max-out")
        c["batch_size"] = gr.Number(value=4, precision=0, label="batch size", elem_id="train-batch")
        c["gradient_accumulation_steps"] = gr.Number(value=1, precision=0, label="grad accumulation")
    with gr.Row():
        c["learning_rate"] = gr.Number(value=2e-4, label="learning rate", elem_id="train-lr")
        c["lr_scheduler"] = gr.Dropdown(list(forms.SCHEDULERS), value="cosine", label="scheduler")
        c["warmup_steps"] = gr.Number(value=0, precision=0, label="warmup steps")
        c["max_steps"] = gr.Number(value=100, precision=0, label="max steps (0: use epochs)", elem_id="train-steps")
        c["num_epochs"] = gr.Number(value=3, label="epochs")
    with gr.Row():
        c["logging_steps"] = gr.Number(value=10, precision=0, label="log every (steps)", elem_id="train-log-steps")
        c["save_steps"] = gr.Number(value=100, precision=0, label="checkpoint every (steps)")
        c["eval_strategy"] = gr.Dropdown(list(forms.EVAL_STRATEGIES), value="no", label="evaluation")
        c["eval_steps"] = gr.Number(value=100, precision=0, label="evaluate every (steps)")
        c["eval_generate"] = gr.Checkbox(label="ROUGE/BLEU during evaluation")
    c["model_path"].change(forms.model_summary, c["model_path"], info)
    return c


def train_page(ctx: AppContext) -> None:
    gr.Markdown("Fill the form, check the resolved config, start. Training runs as its own "
                "`glmtune train` process: closing this page or the UI does not stop it.")
    comps = _train_form(ctx)
    names, inputs = list(comps), list(comps.values())
    with gr.Row():
        show = gr.Button("Show resolved config")
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
    with gr.Accordion("resolved config (YAML)", open=False):
        yaml_box = gr.Code(language="yaml", label="config", interactive=False, elem_id="train-yaml")
        yaml_file = gr.File(label="download", elem_id="train-yaml-file")
    message = gr.Markdown(elem_id="train-message")
    gr.Markdown("## Runs")
    with gr.Row():
        run_list = gr.Dropdown(choices=_run_choices(ctx), label="run", scale=3, elem_id="run-select",
                               allow_custom_value=True)
        refresh = gr.Button("Refresh list", scale=1)
        stop = gr.Button("Stop (save checkpoint)", variant="stop", scale=1)
        resume = gr.Button("Resume", scale=1)
    status = gr.Markdown(elem_id="run-status")
    plot = gr.Plot(label="loss", elem_id="loss-plot")
    tail = gr.Textbox(label="console (last lines)", lines=10, max_lines=10, autoscroll=True)
    timer = gr.Timer(2.0)

    def form_of(values) -> forms.TrainForm:
        return forms.TrainForm(**dict(zip(names, values)))

    @ui_errors
    def do_show(*values):
        _, text = forms.resolve(form_of(values))
        path = Path(tempfile.mkdtemp(prefix="glmtune-webui-")) / "train.yaml"
        path.write_text(text, encoding="utf-8")
        return text, str(path)

    @ui_errors
    def do_start(*values):
        form = form_of(values)
        config, text = forms.resolve(form)
        proc = runs.start_training(form.run_dir(), config)
        choice = str(form.run_dir())
        return (text, f"started `glmtune train` (pid {proc.pid}) in `{choice}`",
                gr.update(choices=_run_choices(ctx, form.output_root), value=choice))

    @ui_errors
    def do_resume(run):
        proc = runs.start_training(_run(run), {}, resume=True)
        return f"resumed {run} (pid {proc.pid}, training.resume=yes)"

    show.click(do_show, inputs, [yaml_box, yaml_file])
    start.click(do_start, inputs, [yaml_box, message, run_list])
    refresh.click(lambda root: gr.update(choices=_run_choices(ctx, root)), comps["output_root"], run_list)
    stop.click(ui_errors(lambda run: runs.stop_training(_run(run))), run_list, message)
    resume.click(do_resume, run_list, message)
    drawn = gr.State(None)  # (run, log size, log mtime) of the plot on screen
    for event in (timer.tick, run_list.change):
        event(watch, [run_list, drawn], [status, plot, tail, drawn], show_progress="hidden")


def _run_choices(ctx: AppContext, root: str | None = None) -> list[str]:
    return [str(p) for p in runs.list_runs(Path(root or ctx.runs_root).expanduser())]


def _run(run: str | None) -> Path:
    if not run:
        raise UserError("no run selected: pick one in the runs list (Refresh list shows new ones)")
    return Path(run)


def watch(run: str | None, drawn):
    """Progress line, loss figure and console tail of the selected run (the timer calls this).

    The figure is redrawn only when the log changed (``drawn`` remembers what is on screen).
    """
    if not run or not Path(run).is_dir():
        return "no run selected", None, "", None
    folder = Path(run)
    log = folder / LOG_FILE
    stat = log.stat() if log.is_file() else None
    key = [run, stat.st_size if stat else 0, stat.st_mtime if stat else 0]
    figure = gr.skip() if key == drawn else loss_figure(read_log(log), folder.name)
    return f"**{folder.name}**: {runs.read_progress(folder).summary()}", figure, runs.log_tail(folder), key


def _model_picker(ctx: AppContext, prefix: str) -> tuple:
    """Run + result dropdowns that fill model / adapter / prefix boxes (which can also be typed)."""
    with gr.Row():
        run = gr.Dropdown(choices=_run_choices(ctx), label="run", scale=3, allow_custom_value=True,
                          elem_id=f"{prefix}-run")
        result = gr.Dropdown(choices=[], label="result", scale=1, allow_custom_value=True)
        use = gr.Button("Use run result", scale=1, elem_id=f"{prefix}-use-run")
    with gr.Row():
        model = gr.Textbox(label="model folder", value=ctx.model, scale=2, elem_id=f"{prefix}-model")
        adapter = gr.Textbox(label="LoRA adapter (optional)", scale=2)
        prefix_box = gr.Textbox(label="P-Tuning prefix (optional)", scale=2)
    run.focus(lambda: gr.update(choices=_run_choices(ctx)), None, run)
    run.change(lambda r: gr.update(choices=tasks.run_results(Path(r)) if r else [],
                                   value=(tasks.run_results(Path(r)) or [None])[0] if r else None), run, result)

    @ui_errors
    def use_run(r, which):
        w = tasks.run_weights(_run(r), which or "final")
        return w["model"], w["adapter"] or "", w["prefix"] or ""

    use.click(use_run, [run, result], [model, adapter, prefix_box])
    return model, adapter, prefix_box


def _weights(model: str, adapter: str, prefix: str) -> dict:
    return {"model": model.strip(), "adapter": adapter.strip() or None, "prefix": prefix.strip() or None}


def eval_page(ctx: AppContext, state) -> None:
    """``state``: the chat page's model state too, so one model is in memory for both pages."""
    model, adapter, prefix = _model_picker(ctx, "eval")
    with gr.Row():
        data = gr.Textbox(label="dataset file", value=ctx.data, scale=3)
        fmt = gr.Dropdown(FORMATS, value="auto", label="format", scale=1)
        names = gr.Dropdown(forms.dataset_choices(), multiselect=True, allow_custom_value=True, scale=2,
                            label="or datasets by name (data/dataset_info.json, else bundled)")
        max_samples = gr.Number(value=20, precision=0, label="max samples", scale=1, elem_id="eval-max-samples")
        max_new = gr.Number(value=128, precision=0, label="max new tokens", scale=1, elem_id="eval-max-new")
        batch = gr.Number(value=8, precision=0, label="batch size", scale=1)
    run_eval = gr.Button("Evaluate", variant="primary", elem_id="eval-go")
    metrics = gr.JSON(label="metrics", elem_id="eval-metrics")
    table = gr.Dataframe(headers=["source", "reference", "prediction", "ROUGE-L"], wrap=True, label="predictions")

    @ui_errors
    def do_eval(st, m, a, p, path, fmt_value, chosen, n, new_tokens, batch_size, progress=gr.Progress()):
        chat_state.load(st, _weights(m, a, p), reset=False)
        settings = EvalSettings(batch_size=int(batch_size), max_new_tokens=int(new_tokens),
                                max_samples=int(n) if n else None)
        progress(0, desc="generating")
        result, rows = tasks.evaluate_file(st.loaded.model, st.loaded.tokenizer, path, fmt_value, settings,
                                           progress=lambda done, total: progress(done / max(total, 1),
                                                                                 desc=f"{done}/{total} samples"),
                                           dataset=chosen)
        return result.metrics, rows

    run_eval.click(do_eval, [state, model, adapter, prefix, data, fmt, names, max_samples, max_new, batch],
                   [metrics, table])


def chat_page(ctx: AppContext, state) -> None:
    model, adapter, prefix = _model_picker(ctx, "chat")
    with gr.Row():
        load = gr.Button("Load", variant="primary", elem_id="chat-load")
        loaded = gr.Markdown(elem_id="chat-loaded")
    with gr.Accordion("system prompt, tools, sampling", open=False):
        system = gr.Textbox(label="system prompt", lines=2)
        tools = gr.Code(label="tools (JSON list, ChatGLM3 or OpenAI function format)", language="json", lines=4)
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.8, step=0.05, label="temperature (0 = greedy)",
                                    elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1, value=0.8, step=0.05, label="top p")
            max_new = gr.Number(value=256, precision=0, label="max new tokens")
    bot = gr.Chatbot(label="chat", height=380, elem_id="chat-box")
    with gr.Row():
        text = gr.Textbox(label="message", scale=4, elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
    with gr.Row():
        observation = gr.Textbox(label="tool result (observation)", scale=4)
        send_obs = gr.Button("Send observation", scale=1)
        clear = gr.Button("Clear", scale=1)

    load.click(ui_errors(lambda st, m, a, p: chat_state.load(st, _weights(m, a, p))),
               [state, model, adapter, prefix], loaded).then(lambda: [], None, bot)

    def sender(role: str):
        @ui_errors
        def go(st, message, system_text, tools_text, temp, p, n):
            sampling = SamplingConfig(max_new_tokens=int(n), temperature=float(temp), top_p=float(p))
            yield from chat_state.send(st, message, role, system_text or "", tools_text or "", sampling)
        return go

    inputs = [state, text, system, tools, temperature, top_p, max_new]
    for trigger in (send.click, text.submit):
        trigger(sender("user"), inputs, bot).then(lambda: "", None, text)
    send_obs.click(sender("observation"), [state, observation, *inputs[2:]], bot).then(lambda: "", None, observation)
    clear.click(chat_state.clear, state, bot)


def export_page(ctx: AppContext) -> None:
    model, adapter, prefix = _model_picker(ctx, "export")
    with gr.Row():
        out = gr.Textbox(label="export folder (new or empty)", scale=3, elem_id="export-out")
        layout = gr.Radio(["native", "chatglm3"], value="native", label="layout", scale=1)
        dtype = gr.Dropdown(["", "bf16", "fp16", "fp32"], value="", label="dtype (empty: the base's)", scale=1)
    go = gr.Button("Export", variant="primary", elem_id="export-go")
    result = gr.Textbox(label="result", lines=4, elem_id="export-result")
    go.click(ui_errors(lambda m, a, p, o, lay, dt: tasks.export(_weights(m, a, p), o, lay, dt)),
             [model, adapter, prefix, out, layout, dtype], result)
