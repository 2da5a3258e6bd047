"""Every data option, as one typed dataclass (the ``data:`` section of a training config)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DataError
from .formats import FORMATS

TRUNCATION_POLICIES = ("right", "drop")


@dataclass
class DataConfig:
    """Where the data is, how to read it, and how to turn it into training samples.

    Length policy: with ``max_input_length``/``max_output_length`` (the
    official demo's options) a chat sample is cut to
    ``max_input_length + max_output_length + 1`` tokens and a base sample's
    context to ``max_input_length`` tokens (specials included) and its target
    to ``max_output_length``; ``max_seq_length``, if set, caps every sample's
    total length instead. ``truncation="right"`` cuts the end of a sample
    (official); ``"drop"`` leaves over-long samples out. Either way each
    affected sample is counted in the report, and a sample left with no
    learned token is dropped and reported, never trained on.
    """

    train_file: str | None = None
    """Training data file (or a list of files in ``train_files``); relative paths resolve against ``data_dir``."""
    val_file: str | None = None
    """Validation data file (optional)."""
    test_file: str | None = None
    """Test data file (optional)."""
    data_dir: str | None = None
    """Folder that relative ``*_file`` paths (and registry files) are resolved against, as in the official demo."""
    train_files: list[str] = field(default_factory=list)
    """Extra training files, concatenated after ``train_file``."""
    format: str = "auto"
    """Record format: auto (detected by keys), chatglm3, alpaca, base, openai, sharegpt, columns."""
    columns: dict[str, str] = field(default_factory=dict)
    """Column mapping for the ``columns`` format (or to rename keys of another format), e.g.
    ``{content: user, summary: assistant}`` for AdvertiseGen; targets: system, user, assistant, context, target,
    or a canonical key of the chosen format (e.g. ``conversations``, ``instruction``)."""
    registry_file: str | None = None
    """Dataset registry (JSON or YAML): name -> {file, format, columns, ratio}, or a LLaMA-Factory
    ``dataset_info.json`` (file_name, formatting, columns, tags); ``bundled``: the registry of common public
    datasets shipped with glmtune (alpaca_zh, belle_*, firefly, AdvertiseGen, identity...), whose files are
    looked for in ``data_dir``."""
    datasets: list[str] = field(default_factory=list)
    """Names from ``registry_file`` to mix into the training set (``name`` or ``name:ratio``; a string is split
    at commas, as LLaMA-Factory's ``dataset: a,b``)."""
    val_size: float | None = None
    """Hold out this share of the training records for validation when no ``val_file`` is given: a fraction
    (0.1) or a record count (200). Seeded by ``seed``: the same split on every run, never overlapping training."""
    max_samples: int | None = None
    """Use at most the first N records of each training file or dataset (LLaMA-Factory's ``max_samples``)."""
    combine: bool | None = None
    """GLM-4 only (its official ``combine``): true renders the whole conversation at once and learns only the last
    answer; false renders message by message and learns every assistant message. None: the family's default
    (true, as in every config the GLM-4 repo ships). Other families have no such option."""
    max_input_length: int | None = 512
    """Prompt budget in tokens (official ``max_input_length``)."""
    max_output_length: int | None = 512
    """Answer budget in tokens (official ``max_output_length``)."""
    max_seq_length: int | None = None
    """Total length cap; when set, it replaces input+output+1 as the chat cap."""
    truncation: str = "right"
    """right: cut over-long samples at the end (official); drop: leave them out (reported)."""
    packing: bool | None = None
    """Pack several samples into rows of ``pack_length`` tokens with no padding (position ids restart per sample,
    no attention across samples; rows taken in a random order of steps of about equal work, see
    :mod:`glmtune.data.sampler`). null (default): packed whenever a row length is known; false: the official
    right-padded batches in the Trainer's random order."""
    pack_length: int | None = None
    """Row length for packing; defaults to ``max_seq_length`` or input+output+1."""
    skip_invalid: bool = False
    """False: any invalid record stops training with every problem listed. True: skip and report them."""
    num_workers: int | None = None
    """Processes that encode large files; None = automatic (all cores for files over 20k records), 1 = no workers."""
    cache: bool = True
    """Reuse encoded data when nothing that changes it has changed (files, options, tokenizer, template)."""
    cache_dir: str | None = None
    """Where encodings are cached; default ``$GLMTUNE_CACHE`` or ``~/.cache/glmtune/data``."""
    seed: int = 0
    """Seed for registry sampling ratios and the ``val_size`` split."""

    def __post_init__(self) -> None:
        # YAML writes an empty section as null; treat it as empty, not as a type error.
        self.columns = self.columns if self.columns is not None else {}
        self.train_files = self.train_files if self.train_files is not None else []
        self.datasets = self.datasets if self.datasets is not None else []
        if self.format != "auto":
            if self.format not in FORMATS:
                raise DataError(f"data.format: unknown format {self.format!r} "
                                f"(expected one of: auto, {', '.join(FORMATS)})")
        if self.truncation not in TRUNCATION_POLICIES:
            raise DataError(f"data.truncation: unknown policy {self.truncation!r} "
                            f"(expected one of: {', '.join(TRUNCATION_POLICIES)})")
        for name in ("max_input_length", "max_output_length", "max_seq_length", "pack_length", "num_workers"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise DataError(f"data.{name}: {value!r} is not a positive integer (expected e.g. 512, or null)")
        if not isinstance(self.columns, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                         for k, v in self.columns.items()):
            raise DataError(f"data.columns: {self.columns!r} (expected a mapping of source column -> role/key, "
                            "e.g. {content: user, summary: assistant})")
        if isinstance(self.train_files, str):
            self.train_files = [self.train_files]
        if isinstance(self.datasets, str):
            self.datasets = [s.strip() for s in self.datasets.split(",") if s.strip()]
        if self.datasets and not self.registry_file:
            raise DataError("data.datasets is set but data.registry_file is not "
                            "(expected the registry file that defines those names: glmtune's, a LLaMA-Factory "
                            "dataset_info.json, or `bundled` for the common public datasets; fix: set "
                            "data.registry_file)")
        self._check_split()
        if self.packing and self.row_length is None:
            raise DataError("data.packing needs a row length (fix: set data.pack_length or data.max_seq_length)")

    def _check_split(self) -> None:
        if self.max_samples is not None and (not isinstance(self.max_samples, int) or isinstance(self.max_samples, bool)
                                             or self.max_samples < 1):
            raise DataError(f"data.max_samples: {self.max_samples!r} is not a positive integer (expected e.g. 1000)")
        value = self.val_size
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 \
                or (value >= 1 and value != int(value)) or value != value:
            raise DataError(f"data.val_size: {value!r} (expected a fraction between 0 and 1, e.g. 0.1, or a record "
                            "count, e.g. 200)")
        if value >= 1:
            self.val_size = int(value)
        if self.val_file:
            raise DataError("data.val_size and data.val_file are both set (fix: hold out part of the training data "
                            "with val_size, or give a validation file, not both)")

    @property
    def chat_length(self) -> int | None:
        """Token cap of a chat sample under the length policy (None: no cap)."""
        if self.max_seq_length is not None:
            return self.max_seq_length
        if self.max_input_length is not None and self.max_output_length is not None:
            return self.max_input_length + self.max_output_length + 1
        return None

    @property
    def packs(self) -> bool:
        """Whether training batches are packed rows (``packing``, or by default whenever a row length is known)."""
        return self.packing if self.packing is not None else self.row_length is not None

    def batching_note(self) -> str:
        """How training batches are formed, for the data report."""
        if self.packs:
            how = "by default" if self.packing is None else "data.packing=true"
            return (f"training batches: packed rows of {self.row_length} tokens, no padding, no attention across "
                    f"samples, steps of balanced work ({how}; data.packing=false gives the official right-padded "
                    f"batches)")
        return "training batches: right-padded to the longest sample of each batch (data.packing=false)"

    @property
    def row_length(self) -> int | None:
        """Length of a packed row."""
        return self.pack_length or self.chat_length

    def has_train(self) -> bool:
        return bool(self.train_file or self.train_files or self.datasets)
