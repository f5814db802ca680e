"""The plan printed for a person: every figure that was not measured on a chip says so."""

from __future__ import annotations

from typing import TYPE_CHECKING

from morejax.train.plan_chips import GiB

if TYPE_CHECKING:
    from morejax.train.plan import Plan


def size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def flop(n: float) -> str:
    for unit, scale in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} FLOP"


def hours(h: float) -> str:
    return f"{h:,.2f}" if h >= 1 else f"{h:.2g}"


def seconds(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


def report(p: Plan) -> str:
    """The plan for a person: every figure that was not measured on a chip says so."""
    chip = p.chip_facts
    lines = [
        f"plan for {p.config} on {p.topology} ({p.chips} x {p.device_kind}), mesh data "
        f"{p.mesh['data']} x model {p.mesh['model']}, sharding {p.sharding}: compiled here for "
        "the chip, never run on it, so every time and cost below is estimated",
        f"HBM per chip: {size(p.hbm_bytes)} that the compiler allows ({chip['source']}; "
        f"peak bf16 {chip['peak_bf16'] / 1e12:g} TFLOP/s)",
        "",
        f"{'program':<9} {'compile':>8}  {'fits':<4} {'peak/chip':>10}   arguments per chip"
        f" {'':<46} {'temporaries':>11}",
    ]
    for prog in p.programs:
        args = ", ".join(f"{k} {size(v)}" for k, v in prog.arguments.items()) or prog.note
        took = "cached" if prog.cached else f"{prog.compile_s:.1f} s"
        lines.append(
            f"{prog.name:<9} {took:>8}  {'yes' if prog.fits else 'NO':<4} "
            f"{size(prog.peak_bytes):>10}   {args:<65} "
            f"{size(prog.temp_bytes) if prog.fits else '-':>11}"
        )
        if prog.note and prog.arguments:
            lines.append(f"{'':<9} {prog.note}")
    lines.append("")
    s = p.speed
    if s is not None:
        bound = "compute" if s.compute_s >= s.memory_s else "HBM"
        lines += [
            f"train step, per chip: {flop(s.xla_flops)} (XLA's count), {flop(s.model_flops)} "
            f"(model-FLOPs formula)",
            f"estimated step time (roofline, {bound}-bound): {seconds(s.step_s)} (compute "
            f"{seconds(s.compute_s)}, HBM {seconds(s.memory_s)}); estimated "
            f"{s.tokens_per_s:,.0f} tokens/s ({s.tokens_per_step:,} tokens a step)",
            f"estimated run: {s.steps:,} steps ({p.steps_from}) x {seconds(s.step_s)} = "
            f"{hours(s.chip_hours)} chip-hours on {p.chips} chips",
        ]
    train = next((x for x in p.programs if x.name == "train" and x.fits), None)
    if train is not None:
        moved = ", ".join(f"{k} {size(v)}" for k, v in train.collectives.items() if v)
        lines.append(f"collectives per chip per train step (compiled HLO): {moved or 'none'}")
    if p.load_bytes > p.hbm_bytes:
        lines.append(
            f"warning: setup holds the whole model on one chip before sharding it (at least "
            f"{size(p.load_bytes)} in base_dtype > {size(p.hbm_bytes)}): `morejax train` runs out "
            "of memory there before its first step"
        )
    if p.fits:
        lines.append("fits: yes")
        return "\n".join(lines)
    worst = max(p.programs, key=lambda x: x.peak_bytes)
    lines.append(
        f"fits: NO ({worst.name} needs {size(worst.peak_bytes)} per chip, "
        f"{size(p.hbm_bytes)} allowed)"
    )
    for c in p.searched:
        verdict = f"fits, estimated {hours(c.chip_hours)} chip-hours" if c.fits else "does not fit"
        lines.append(f"  tried {c.change}: train {size(c.peak_bytes)} per chip, {verdict}")
    if p.suggestion is not None:
        lines.append(f"cheapest setting that fits (estimated): {p.suggestion.change}")
    elif p.searched:
        lines.append("none of the settings tried fits: plan a larger slice")
    return "\n".join(lines)
