"""``clipkit-train [overrides]``: a Hydra app. With no arguments it trains the demo experiment."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path

import hydra
from hydra._internal.utils import get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig

from clipkit.cli.errors import USER_ERRORS, fail
from clipkit.cli.launch import run_main
from clipkit.config.compose import CONF_DIR, HYDRA_VERSION_BASE, arch_shorthand, compose_config, register_schema
from clipkit.errors import ConfigError
from clipkit.lifetime import die_with_torchrun
from clipkit.plugins import check_plugins
from clipkit.train.preemption import EXIT_PREEMPTED, Preempted, requeue_if_asked
from clipkit.train.prepare import precheck

PROGRAM = "clipkit-train"
log = logging.getLogger("clipkit")
# Hydra's own informational modes; it reports those itself.
HYDRA_MODES = ("help", "hydra_help", "cfg", "info", "shell_completion", "multirun")


def _check_override_syntax(overrides: list) -> None:
    """Name the override Hydra's grammar rejects; brace patterns are the usual culprit."""
    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as exc:
            key, _, value = override.partition("=")
            hint = f"; quote the value: '{key}=\"{value}\"'" if "{" in value or "[" in value else ""
            raise ConfigError(key, f"cannot parse override '{override}' ({str(exc).splitlines()[0]}){hint}") from None


def _precheck_argv(argv: list) -> None:
    """Compose and check the config exactly as Hydra will, so errors are one line and exit 2."""
    args = get_args_parser().parse_args(argv)
    if any(getattr(args, mode, None) for mode in HYDRA_MODES):
        return
    _check_override_syntax(args.overrides)
    overrides = [o for o in args.overrides if not o.startswith("hydra.")]
    precheck(compose_config(overrides, config_dir=args.config_dir, config_name=args.config_name or "config"))


def warn_demo_recipe_on_own_data(choices: Mapping[str, str | None]) -> None:
    """The default experiment is the demo's recipe; data=webdataset alone keeps it, and with it the
    demo's model, batch, step count and loss weights, which Hydra cannot drop by the data choice."""
    if choices.get("experiment") == "demo" and choices.get("data") != "demo":
        log.warning(
            "experiment=demo (the default) applies the demo's recipe (model, batch, steps, loss weights) "
            "to data=%s; name your own (--config-dir DIR experiment=NAME) or drop it (~experiment)",
            choices.get("data"),
        )


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=HYDRA_VERSION_BASE)
def _train(raw: DictConfig) -> None:
    from clipkit.distributed import launched_rank  # heavy imports only once the config is good
    from clipkit.train.run import train

    if launched_rank() == 0:
        warn_demo_recipe_on_own_data(HydraConfig.get().runtime.choices)
    preempted: Preempted | None = None
    try:
        train(raw, Path(HydraConfig.get().runtime.output_dir))
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)
    except Preempted as stop:
        preempted = stop
        if launched_rank() == 0:
            log.warning("%s", stop)
            requeue_if_asked(stop.signum)
    if preempted is not None:
        sys.exit(EXIT_PREEMPTED)


def main() -> None:
    die_with_torchrun()
    register_schema()
    try:
        check_plugins()  # before Hydra looks for a plugin's tower
        sys.argv[1:] = arch_shorthand(sys.argv[1:])  # before Hydra reads them
        _precheck_argv(sys.argv[1:])
    except USER_ERRORS as exc:
        fail(PROGRAM, exc)
    _train()


if __name__ == "__main__":
    run_main(main)
