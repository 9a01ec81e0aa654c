"""Everything about a scenario that can be wrong, found before any process starts: its zoo, its
models (cards, ONNX files, input shapes), its data against those shapes, the heavy models'
batch profiles, and whether the host's memory holds its devices. `testbed run --check` runs
only this; a run runs it before it creates its run folder, so a failed check leaves nothing
half-written and never shows up as a device's traceback in a log.

The policy's name is checked by the CLI (`_check_policy`), which may import the server's
policies; this module stays on the harness's side of the layering (common only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cascade_testbed.common.batch_profiles import BatchProfile, heavy_model_names, profile_for
from cascade_testbed.common.config import ScenarioConfig
from cascade_testbed.common.link_trace import LinkTraceError, read_link_trace
from cascade_testbed.common.model_output import OutputError, card_output, session_output
from cascade_testbed.common.modelzoo import Zoo, ZooError, open_session, open_zoo
from cascade_testbed.common.zoo_checks import ZooFormatError, check_fits, model_classes


class CheckFailed(ValueError):
    """The scenario cannot run; one sentence naming what and where."""


@dataclass
class Checked:
    """What the check found, for `run --check` to print."""

    zoo: str
    data: str
    lines: list[str] = field(default_factory=list)


def check_scenario(cfg: ScenarioConfig) -> Checked:
    """Raise `CheckFailed` for the first thing that would stop the run, else say what ran."""
    try:
        return _check(cfg)
    except (ZooError, ZooFormatError) as exc:
        raise CheckFailed(str(exc)) from None


def _check(cfg: ScenarioConfig) -> Checked:
    zoo = open_zoo(cfg.zoo)
    data = zoo.dataset("test")
    shape = tuple(data.x.shape[1:])
    out = Checked(zoo=str(zoo.root), data=f"{len(data.y)} test samples {data.x.dtype} "
                                          f"{list(shape)}, {zoo.classes or '?'} classes")
    if cfg.policy.name == "gears" or any(t.rule == "agreement" for t in cfg.tiers.values()):
        zoo.dataset("val")  # planning and calibration read the validation split
    sessions: dict[str, str] = {}

    def model(name: str, role: str, where: str) -> dict[str, Any]:
        card = zoo.card(name)
        if card.get("role") != role and not (role == "heavy" and card.get("stages")):
            raise CheckFailed(f"{where}: model {name} is a {card.get('role')} model, not a "
                              f"{role} one")
        if name not in sessions and "file" in card:
            task = card.get("task", "")
            sessions[name] = _session_shape(zoo, name, shape,
                                            zoo.label_mod(task) if task else None)
        return card

    for tier, spec in cfg.tiers.items():
        for member in spec.members:
            model(member, "light", f"tier {tier}")
        out.lines.append(f"tier {tier}: {'+'.join(spec.members)} "
                         f"(input {sessions.get(spec.members[0], '?')})")
    heavies = heavy_model_names(cfg.server, zoo)
    for name in [*heavies, *cfg.server.ensemble, *cfg.idn.catalog, *cfg.idn.edge_serve]:
        model(name, "heavy", "server")
    catalog = cfg.idn.catalog or tuple(zoo.index.get("heavy_variants") or [zoo.heavy])
    served = {zoo.task_of(m) for m in catalog}
    for tier, spec in cfg.tiers.items():
        if spec.task:
            zoo.label_mod(spec.task)  # a task the zoo has
            if zoo.canonical_task(spec.task) not in served:
                raise CheckFailed(f"tier {tier}: no model of task {spec.task} in the "
                                  f"inference delivery network's catalog {list(catalog)}")
    base = BatchProfile(cfg.server.batch_base_ms, cfg.server.batch_per_sample_ms)
    for name in heavies:
        profile_for(zoo, name, heavies[0], base, cfg.server.profiles)
    out.lines.append(f"server: {', '.join(heavies)}")
    out.lines.extend(_link_traces(cfg))
    if cfg.devices.cpu_limit == "cgroup":
        out.lines.extend(_cgroups(cfg))
    return out


def _cgroups(cfg: ScenarioConfig) -> list[str]:
    """A `cpu_limit = "cgroup"` run needs a cpu hierarchy this process may write (probed
    with a cgroup made and removed), and says each tier's quota."""
    from cascade_testbed.testbed import cgroups  # the harness's side; no model runs unless asked

    try:
        h = cgroups.host_hierarchy()
        cgroups.probe(h, f"{os.getpid()}-preflight")
    except cgroups.CgroupUnavailable as exc:
        raise CheckFailed(f"devices.cpu_limit = 'cgroup': {exc}") from None
    lines = []
    for tier, spec in cfg.tiers.items():
        host = cgroups.host_light_ms(cfg.zoo, spec.members)
        quota = cgroups.quota_for(spec.compute_ms, host)
        what = "unthrottled (the host is not faster than the target)" if quota is None else (
            f"{quota.quota_us} us every {quota.period_us} us ({quota.share:.2%} of a CPU"
            f"{', the kernel minimum' if quota.clamped else ''})")
        lines.append(f"tier {tier}: light model {host:.3f} ms here, target "
                     f"{spec.compute_ms:g} ms: cgroup v{h.version} quota {what}")
    return lines


def _link_traces(cfg: ScenarioConfig) -> list[str]:
    """Every link trace a tier names, read as its devices will read it."""
    lines = []
    for tier, spec in cfg.tiers.items():
        for direction, link in (("uplink", spec.uplink), ("downlink", spec.downlink)):
            if not link.trace:
                continue
            try:
                trace = read_link_trace(link.trace)
            except LinkTraceError as exc:
                raise CheckFailed(f"tier {tier} {direction}: {exc}") from None
            lines.append(f"tier {tier} {direction}: trace {Path(link.trace).name} "
                         f"(mean {trace.mean_mbps():.2f} Mbit/s over a period of "
                         f"{trace.period_ms / 1e3:g} s, + {link.delay_ms:g} ms delay)")
    return lines


def _session_shape(zoo: Zoo, name: str, sample_shape: tuple[int, ...],
                   task_classes: int | None = None) -> str:
    """Open the model as devices and the server do; its input must take the data's samples
    and its output have as many classes as the data has (or as its task has)."""
    path = zoo.model_path(name)
    try:
        session = open_session(path, 1, 1)
    except Exception as exc:  # onnxruntime's own error types
        raise CheckFailed(f"model {name}: {path.name} cannot be loaded by onnxruntime "
                          f"({str(exc).splitlines()[0][:160]})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise CheckFailed(f"model {name}: needs exactly one float32 input")
    check_fits(sample_shape, inputs[0].shape, name, f"the zoo's data ({zoo.root})")
    try:
        output = session_output(session, card_output(zoo.card(name)), name)
    except OutputError as exc:
        raise CheckFailed(str(exc)) from None
    classes = model_classes(output.shape)
    expected = task_classes or zoo.classes
    if classes is not None and expected is not None and classes != expected:
        raise CheckFailed(f"model {name}: outputs {classes} classes, its "
                          f"{'task' if task_classes else 'dataset'} has {expected}")
    return str([d if isinstance(d, int) else None for d in inputs[0].shape])
