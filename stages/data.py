"""``alignment data inspect SOURCE [--model_name_or_path X] [--dataset_format F] [--invalid_records skip]``.

Prints what a dataset holds (format, record counts by kind, invalid records by reason, token
lengths under the model's chat template, two rendered examples) before any training run.
"""

from __future__ import annotations

import dataclasses
import sys

from alignment.core.config import ConfigError, DataConfig, ModelConfig, parse_config
from data_schemas.errors import RecordError

CONFIG_TYPES = (ModelConfig, DataConfig)
USAGE = "usage: alignment data inspect SOURCE [--model_name_or_path X] [--dataset_format F] [--invalid_records skip]"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(USAGE)
        return
    if len(argv) < 2 or argv[0] != "inspect" or argv[1].startswith("--"):
        raise ConfigError(f"expected `inspect SOURCE`\n{USAGE}")
    cfg = parse_config(CONFIG_TYPES, argv[2:], prog="alignment data inspect SOURCE")
    from alignment.data.inspect import format_report, inspect_source
    from alignment.modeling.load import load_tokenizer

    data_cfg = dataclasses.replace(cfg.data, dataset_name=argv[1])
    try:
        report = inspect_source(
            argv[1],
            load_tokenizer(cfg.model),
            cfg.data.dataset_format,
            invalid=cfg.data.invalid_records,
            data_cfg=data_cfg,
        )
    except RecordError:
        raise
    except ValueError as e:  # unknown format, a kind the format cannot give: user input, not a crash
        raise ConfigError(str(e)) from None
    print(format_report(report))


if __name__ == "__main__":
    main()
