"""Plain dataclasses for one run, typed `key=value` overrides, variant resolution and the run id.

A run is fully described by a `RunConfig`; everything that changes a number lives here, and nothing
that only says *where* (data root, results dir, device) does, so the run id survives a move. Each
field declares its allowed values beside it (`knob`), and `resolve` is the one place they are checked.
"""

from bench.config.ids import drop_not_in_id, flatten, from_flat, id_from_parts, id_parts, run_id, to_dict  # noqa: F401
from bench.config.resolve import resolve  # noqa: F401
from bench.config.rules import check_fields, check_value, coerce, override, parse_sets  # noqa: F401
from bench.config.schema import (  # noqa: F401
    LLM_KNOBS,
    NOT_IN_RUN_ID,
    RELATIVE_LAYERS,
    RLLM_DEFAULTS,
    BoosterConfig,
    DataConfig,
    ResolvedConfig,
    RunConfig,
    TrainConfig,
    VitConfig,
    added_defaults,
    all_keys,
    field_types,
    fields,
    knob,
    leaf_types,
    rules,
)
